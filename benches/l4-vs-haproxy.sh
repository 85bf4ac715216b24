#!/usr/bin/env bash
# End-to-end L4 benchmark: Flowgate's TCP proxy against HAProxy in tcp mode, same run, one
# worker each pinned to the same core, through the shared side-by-side harness
# (fixed-rate latency at 1000 req/s over 2..64 connections, max throughput over 64
# connections, RSS and CPU). Results land in benches/results/<timestamp>/results.md.
#
#   benches/l4-vs-haproxy.sh            # full run (about 3 minutes)
#   benches/l4-vs-haproxy.sh --quick    # short runs
#
# Needs: haproxy, jq (apt-get install -y haproxy jq) and the harness at ../shared/bench
# (or FLOWGATE_BENCH_HARNESS=/path/to/bench).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
harness=${FLOWGATE_BENCH_HARNESS:-$root/../shared/bench}
[ -x "$harness/run.sh" ] || { echo "l4-vs-haproxy: no bench harness at $harness" >&2; exit 2; }
(cd "$root" && cargo build --release --bin flowgate -q)
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowgate
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/l4.yaml" <<'YAML'
workers: 1
listeners:
  - listen: 127.0.0.1:18089
    pipeline: proxy
pipelines:
  proxy:
    - connect: { endpoints: 127.0.0.1:18090 }
YAML
out=$root/benches/results/l4-$(date +%Y%m%d-%H%M%S)
env -u CARGO_TARGET_DIR "$harness/run.sh" haproxy-tcp \
  custom:"env RUST_LOG=warn $bin run $work/l4.yaml --workers 1 --no-watch" \
  --proto tcp --port 18089 --name flowgate-l4 --out "$out" "$@"
