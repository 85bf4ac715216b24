#!/usr/bin/env bash
# HTTP/2 (h2c, prior knowledge) server side: Flowgate's demux-http against nginx's
# `listen ... http2`, same run, one worker each pinned to the same core, measured with
# h2load (nghttp2-client). Two cases:
#   static — the server answers by itself (flowgate `respond`, nginx `return 200`);
#   proxy  — the server relays to an HTTP/1.1 upstream nginx on another core (flowgate
#            `mux-http`, nginx `proxy_pass` with upstream keep-alive).
# Prints requests/s per case and the flowgate/nginx ratio.
#
#   benches/http2-vs-nginx.sh [REQUESTS] [CLIENTS] [STREAMS_PER_CLIENT]   # default 100000 16 10
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-100000}
c=${2:-16}
m=${3:-10}
command -v h2load >/dev/null || { echo "http2-vs-nginx: needs h2load (nghttp2-client)" >&2; exit 2; }
(cd "$root" && cargo build --release --bin flowgate -q)
bin=${CARGO_TARGET_DIR:-$root/target}/release/flowgate
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/logs"
cat > "$work/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $work/nginx.pid;
error_log $work/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/body; proxy_temp_path $work/proxy;
  upstream up { server 127.0.0.1:18180; keepalive 64; }
  server { listen 127.0.0.1:18182 http2; http2_max_concurrent_streams 100; keepalive_requests 10000000;
    location /static { return 200 "static hello\n"; }
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
cat > "$work/upstream.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $work/up.pid;
error_log $work/logs/up.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/ubody;
  server { listen 127.0.0.1:18180; keepalive_requests 100000; location / { return 200 "ok\n"; } } }
EOF
cat > "$work/fg.yaml" <<'YAML'
workers: 1
listeners:
  - listen: 127.0.0.1:18181
    pipeline: main
pipelines:
  main:
    - demux-http: { pipeline: request }
  request:
    - route:
        routes:
          - match: { path_prefix: /static }
            pipeline: static
        default: proxy
  static:
    - respond: { status: 200, body: "static hello\n" }
  proxy:
    - mux-http: { pipeline: upstream }
  upstream:
    - connect: { endpoints: 127.0.0.1:18180 }
YAML
taskset -c 1 nginx -p "$work" -c "$work/upstream.conf" & pids+=($!)
taskset -c 0 nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
RUST_LOG=warn taskset -c 0 "$bin" run "$work/fg.yaml" --workers 1 --no-watch & pids+=($!)
sleep 1
rate() { # URL -> requests/s
  taskset -c 1 h2load -n "$n" -c "$c" -m "$m" -t 1 "$1" 2>&1 |
    awk '/^finished in/ { gsub(",", "", $4); print $4 } /^requests:/ { if ($10 + 0 != 0 || $12 + 0 != 0) bad = 1 } END { if (bad) print "ERRORS" }'
}
echo "h2load -n $n -c $c -m $m (server on core 0, h2load and the upstream on core 1)"
for case in static proxy; do
  path=/$case
  [ "$case" = proxy ] && path=/hello
  rate "http://127.0.0.1:18181$path" >/dev/null # warm-up
  fg=$(rate "http://127.0.0.1:18181$path")
  ng=$(rate "http://127.0.0.1:18182$path")
  ratio=$(awk -v a="${fg%%$'\n'*}" -v b="${ng%%$'\n'*}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
  printf '%-7s flowgate %s req/s   nginx %s req/s   ratio %s\n' "$case" "$fg" "$ng" "$ratio"
done
