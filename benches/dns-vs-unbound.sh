#!/usr/bin/env bash
# DNS benchmark: Flowgate against unbound, same run, one thread each on CPU 1, dnsperf
# (one thread) on CPU 0.
#
#   auth: "api.svc.test A" (3 addresses) — Flowgate's dns-respond vs unbound local-data
#   fwd:  10 names under fwd.test — Flowgate's dns-forward answering from its cache (the
#         upstream is a second unbound on CPU 0, asked once per name during warm-up) vs
#         unbound answering the same names from local-data
#
# For each: max queries/s (closed loop, 100 outstanding, DUR seconds), then latency
# percentiles from dnsperf -v, at max load and at a fixed rate of RATE queries/s; ROUNDS
# rounds alternating who goes first, medians reported (about 3 minutes by default).
#
#   benches/dns-vs-unbound.sh                 # DUR=5 RATE=20000 ROUNDS=3
#   DUR=2 ROUNDS=1 benches/dns-vs-unbound.sh  # quick look
#
# Needs: unbound, dnsperf (apt-get install -y unbound dnsperf).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
DUR=${DUR:-5}
RATE=${RATE:-20000}
ROUNDS=${ROUNDS:-3}
(cd "$root" && cargo build --release --bin flowgate -q)
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowgate
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

UB=15401   # unbound, the peer
UP=15402   # unbound, Flowgate's upstream
FG=15403   # Flowgate

local_data() {
  cat <<DATA
  local-zone: "svc.test." static
  local-data: "api.svc.test. 30 IN A 10.0.0.1"
  local-data: "api.svc.test. 30 IN A 10.0.0.2"
  local-data: "api.svc.test. 30 IN A 10.0.0.3"
  local-zone: "fwd.test." static
DATA
  for i in $(seq 0 9); do
    echo "  local-data: \"n$i.fwd.test. 3600 IN A 192.0.2.$((i + 1))\""
  done
}

unbound_conf() { # port dir
  cat <<CONF
server:
  interface: 127.0.0.1@$1
  port: $1
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "$2"
  pidfile: "$2/unbound-$1.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  so-reuseport: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: yes
  module-config: "iterator"
$(local_data)
remote-control:
  control-enable: no
CONF
}

unbound_conf $UB "$work" > "$work/peer.conf"
unbound_conf $UP "$work" > "$work/upstream.conf"
cat > "$work/flowgate.yaml" <<YAML
workers: 1
listeners:
  - { listen: "127.0.0.1:$FG", protocol: udp, pipeline: dns }
pipelines:
  dns:
    - decode-dns
    - dns-respond:
        zone: svc.test
        ttl: 30
        services:
          - { name: api, endpoints: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] }
    - dns-forward: { endpoints: ["127.0.0.1:$UP"] }
    - encode-dns
YAML
for i in $(seq 1 1000); do echo "api.svc.test A"; done > "$work/auth.txt"
for i in $(seq 1 100); do for n in $(seq 0 9); do echo "n$n.fwd.test A"; done; done > "$work/fwd.txt"

taskset -c 1 unbound -d -c "$work/peer.conf" & pids+=($!); pid_unbound=$!
taskset -c 0 unbound -d -c "$work/upstream.conf" & pids+=($!)
RUST_LOG=warn taskset -c 1 "$bin" run "$work/flowgate.yaml" --workers 1 --no-watch & pids+=($!); pid_flowgate=$!
for port in $UB $UP $FG; do
  for _ in $(seq 1 100); do
    kdig @127.0.0.1 -p $port n0.fwd.test A +short +timeout=1 +retry=0 2>/dev/null | grep -q 192.0.2.1 && break
    sleep 0.1
  done
done

perf() { # port file [extra dnsperf args]
  local port=$1 file=$2; shift 2
  taskset -c 0 dnsperf -s 127.0.0.1 -p "$port" -d "$file" -l "$DUR" -c 1 -T 1 -q 100 "$@"
}
qps() { awk '/Queries per second/ {print int($4)}'; }
lost() { awk '/Queries lost/ {print $3}'; }
# dnsperf -v prints "> RCODE NAME TYPE LATENCY" per answer.
pcts() { awk '/^> / {print $NF}' | sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "- -"; exit}
  printf "%.0f %.0f\n", a[int(NR*0.50)+1]*1e6, a[int(NR*0.99)+1]*1e6}'; }

# CPU time (user + system, in clock ticks) a process has used.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "# DNS: Flowgate vs unbound $(unbound -V | awk 'NR==1 {print $2}') — one thread each on CPU 1, dnsperf on CPU 0, ${DUR}s runs, median of $ROUNDS rounds"
echo
echo "| workload | server | max q/s | lost | p50 / p99 at max (µs) | p50 / p99 at ${RATE} q/s (µs) | server CPU µs/query at ${RATE} q/s |"
echo "|---|---|---:|---:|---:|---:|---:|"
for set in auth fwd; do
  # Warm-up: Flowgate's cache fills, both servers' sockets and caches are hot.
  perf $FG "$work/$set.txt" -l 2 > /dev/null 2>&1 || true
  perf $UB "$work/$set.txt" -l 2 > /dev/null 2>&1 || true
  for r in $(seq 1 "$ROUNDS"); do
    # Alternate who goes first, so a disturbance of the shared machine hits both.
    order="unbound flowgate"; [ $((r % 2)) = 0 ] && order="flowgate unbound"
    for who in $order; do
      port=$UB; [ $who = flowgate ] && port=$FG
      perf $port "$work/$set.txt" > "$work/max" 2>&1
      qps < "$work/max" >> "$work/$set-$who.qps"
      lost < "$work/max" >> "$work/$set-$who.lost"
      perf $port "$work/$set.txt" -v | pcts >> "$work/$set-$who.pmax"
      pid=$pid_unbound; [ $who = flowgate ] && pid=$pid_flowgate
      t0=$(ticks $pid)
      perf $port "$work/$set.txt" -v -Q "$RATE" > "$work/rate"
      t1=$(ticks $pid)
      pcts < "$work/rate" >> "$work/$set-$who.prate"
      n=$(awk '/Queries completed/ {print $3}' "$work/rate")
      awk -v a="$t0" -v b="$t1" -v n="$n" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%.1f\n", (b - a) / hz * 1e6 / n}' >> "$work/$set-$who.cpu"
    done
  done
  for who in unbound flowgate; do
    q=$(median < "$work/$set-$who.qps")
    l=$(median < "$work/$set-$who.lost")
    m50=$(awk '{print $1}' "$work/$set-$who.pmax" | median); m99=$(awk '{print $2}' "$work/$set-$who.pmax" | median)
    r50=$(awk '{print $1}' "$work/$set-$who.prate" | median); r99=$(awk '{print $2}' "$work/$set-$who.prate" | median)
    c=$(median < "$work/$set-$who.cpu")
    echo "| $set | $who | $q | $l | $m50 / $m99 | $r50 / $r99 | $c |"
    echo "$who $q $c" >> "$work/$set.summary"
  done
  awk -v s=$set '$1=="unbound" {u=$2; uc=$3} $1=="flowgate" {f=$2; fc=$3}
    END {printf "| %s | flowgate/unbound | %.2f× | | | | %.2f× |\n", s, f/u, fc/uc}' "$work/$set.summary"
done
echo
echo "all rounds (q/s): $(for f in "$work"/*.qps; do printf '%s=[%s] ' "$(basename "$f" .qps)" "$(paste -sd, "$f")"; done)"
echo "all rounds (p99 µs at max / at ${RATE} q/s): $(for f in "$work"/*.pmax; do b=$(basename "$f" .pmax); printf '%s=[%s / %s] ' "$b" "$(awk '{print $2}' "$f" | paste -sd,)" "$(awk '{print $2}' "$work/$b.prate" | paste -sd,)"; done)"
echo "all rounds (CPU µs/query): $(for f in "$work"/*.cpu; do printf '%s=[%s] ' "$(basename "$f" .cpu)" "$(paste -sd, "$f")"; done)"
