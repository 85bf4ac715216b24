#!/usr/bin/env bash
# Socket redirection: request/response round trips per second between two local
# processes on one TCP connection, with sockops/sk_msg redirection (flowgate-ebpf's
# SockRedirect) against plain loopback TCP, same run, 64-byte and 16 KiB messages, three
# rounds each (medians reported).
#
#   sudo benches/ebpf-sockmap.sh
#
# Needs root and cgroup v2 at /sys/fs/cgroup/unified.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p flowgate-ebpf --bench sockmap_vs_loopback "$@"
