#!/usr/bin/env bash
# End-to-end HTTP/1.1 reverse proxy benchmark: Flowgate (demux-http → mux-http → connect)
# against nginx, HAProxy and Pingora as reverse proxies, same run, one worker each pinned to
# the same core, through the shared side-by-side harness (fixed-rate latency at 1000 req/s
# over 2..64 keep-alive connections, max throughput over 64, RSS, CPU). The upstream is an
# nginx returning "ok". Results land in benches/results/<timestamp>/results.md.
#
#   benches/http-vs-nginx.sh                 # nginx and haproxy as peers
#   benches/http-vs-nginx.sh pingora --quick # other peers / options of the harness
#
# Needs: nginx, haproxy, jq and the harness at ../shared/bench (or FLOWGATE_BENCH_HARNESS).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
harness=${FLOWGATE_BENCH_HARNESS:-$root/../shared/bench}
[ -x "$harness/run.sh" ] || { echo "http-vs-nginx: no bench harness at $harness" >&2; exit 2; }
(cd "$root" && cargo build --release --bin flowgate -q)
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowgate
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/http.yaml" <<'YAML'
workers: 1
listeners:
  - listen: 127.0.0.1:18089
    pipeline: main
pipelines:
  main:
    - demux-http: { pipeline: request }
  request:
    - mux-http: { pipeline: upstream }
  upstream:
    - connect: { endpoints: 127.0.0.1:18080 }
YAML
peers=(nginx haproxy)
args=()
for a in "$@"; do
  case "$a" in -*) args+=("$a") ;; *) peers=("$@"); break ;; esac
done
out=$root/benches/results/http-$(date +%Y%m%d-%H%M%S)
env -u CARGO_TARGET_DIR "$harness/run.sh" "${peers[@]}" \
  custom:"env RUST_LOG=warn $bin run $work/http.yaml --workers 1 --no-watch" \
  --proto http --port 18089 --name flowgate-http --out "$out" "${args[@]}"
