#!/usr/bin/env bash
# XDP load balancer throughput: packets/s of 64-byte UDP frames (16,384 flows) through
# flowgate-ebpf's XDP balancer on a veth pair, against the same frames forwarded by the
# Linux stack without the balancer, same run, three rounds (medians reported).
#
#   sudo benches/ebpf-xdp-lb.sh
#
# Needs root (network namespaces, XDP) and clang/llvm/libbpf-dev for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p flowgate-ebpf --bench xdp_vs_stack "$@"
