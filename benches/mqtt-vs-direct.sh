#!/usr/bin/env bash
# MQTT through Flowgate's proxy-mqtt vs straight to mosquitto, same run: QoS 0 and QoS 1
# messages/s (one subscriber, four publishers, 64-byte payloads, rounds alternating direct
# and proxied; the median of each is reported), and the proxy's memory for 1,000 idle
# client connections. The load comes from benches/mqtt_load.rs (flowgate-mqtt's codec on
# tokio), so the client is cheap next to the broker.
#
#   benches/mqtt-vs-direct.sh                # 3 rounds of 200k messages per QoS
#   ROUNDS=1 MESSAGES=20000 benches/mqtt-vs-direct.sh
#
# Needs: mosquitto. Proxy: one worker. Nothing is pinned (2 cores: broker, proxy and load
# share them), so compare the ratio, not the absolute figures. The broker queues without
# limit (max_queued_messages 0) so that no QoS 1 message is dropped in either mode; a run
# that received fewer than it sent shows it in the raw lines.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${ROUNDS:-3}
messages=${MESSAGES:-50000}   # per publisher
publishers=4
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true   # 1,000 idle clients need ~3,000 descriptors
cd "$root"
cargo build --release --bin flowgate -q
target=${CARGO_TARGET_DIR:-$root/target}
load=$(cargo bench --bench mqtt_load --no-run 2>&1 | grep -o 'release/deps/mqtt_load-[0-9a-f]*' | head -1)
[ -n "$load" ] || { echo "mqtt-vs-direct: could not build the load generator" >&2; exit 1; }
load=$target/$load
bin=$target/release/flowgate
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

broker=18830; proxy=18831
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n' "$broker" > "$work/m.conf"
mosquitto -c "$work/m.conf" 2>"$work/mosquitto.log" & pids+=($!)
cat > "$work/proxy.yaml" <<YAML
workers: 1
listeners:
  - listen: 127.0.0.1:$proxy
    pipeline: mqtt
pipelines:
  mqtt:
    - proxy-mqtt: { endpoints: [127.0.0.1:$broker], log: false }
YAML
RUST_LOG=warn "$bin" run "$work/proxy.yaml" --no-watch & fg=$!; pids+=($fg)
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/$proxy) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/$broker) 2>/dev/null && break
  sleep 0.1
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rate() { sed -n 's/.*"rate":\([0-9]*\).*/\1/p'; }
echo "| QoS | direct msg/s | proxied msg/s | ratio |"
echo "|---|---|---|---|"
for qos in 0 1; do
  : > "$work/d"; : > "$work/p"
  for _ in $(seq "$rounds"); do
    timeout 120 "$load" flood 127.0.0.1:$broker $qos $publishers "$messages" 64 | tee -a "$work/raw" | rate >> "$work/d"
    timeout 120 "$load" flood 127.0.0.1:$proxy $qos $publishers "$messages" 64 | tee -a "$work/raw" | rate >> "$work/p"
  done
  d=$(median < "$work/d"); p=$(median < "$work/p")
  echo "| $qos | $d | $p | $(awk -v a="$p" -v b="$d" 'BEGIN {printf "%.2f", a/b}') |"
done

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
before=$(rss "$fg")
timeout 120 "$load" idle 127.0.0.1:$proxy 1000 8 > "$work/idle" & idlep=$!; pids+=($idlep)
for _ in $(seq 600); do grep -q ready "$work/idle" 2>/dev/null && break; sleep 0.1; done
sleep 1
after=$(rss "$fg")
wait "$idlep" || true
echo
echo "proxy RSS: idle ${before} KiB; with 1000 idle MQTT connections ${after} KiB; $(( (after - before) )) KiB per 1000 connections"
echo "(raw runs:)"; cat "$work/raw"
