#!/usr/bin/env bash
# XDP load balancer throughput: packets/s of 64-byte UDP frames (16,384 flows) through
# flowgate-ebpf's XDP balancer, against the same frames forwarded by the Linux stack
# without the balancer, same run, three rounds (medians reported).
#
#   sudo benches/ebpf-xdp-lb.sh [veth|test-run|all]
#
#   veth (default)  real traffic: a client namespace sends the frames from an AF_PACKET
#                   socket through a bridge to the LB namespace's veth (xdp_lb in native
#                   XDP, DSR, or no program and the stack's forwarding) and on to a
#                   backend namespace; counted at the backend's UDP socket. 2 s per run.
#   test-run        frames made in the kernel by BPF_PROG_TEST_RUN in live-frames mode
#                   on a veth pair, plus the balancer program's cost per packet. Some
#                   kernels refuse live frames (EPERM); the run then says so and fails.
#   all             both, veth first.
#
# Needs root (network namespaces, XDP), iproute2 (ip, bridge) and clang/llvm/libbpf-dev
# for the build. A run that cannot measure prints one line saying why and exits non-zero;
# the namespaces it creates (fg<pid>…) are removed when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-veth}"
case "$mode" in
veth | test-run | all) ;;
*)
    echo "ebpf-xdp-lb: unknown mode '$mode'; usage: benches/ebpf-xdp-lb.sh [veth|test-run|all]" >&2
    exit 2
    ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "ebpf-xdp-lb: cannot run: needs root (network namespaces, XDP)" >&2
    exit 1
fi
exec cargo bench -p flowgate-ebpf --bench xdp_vs_stack -- "$mode"
