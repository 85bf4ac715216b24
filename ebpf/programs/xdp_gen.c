// SPDX-License-Identifier: MIT
/* Benchmark traffic generator (benches/xdp_vs_stack.rs only): run with BPF_PROG_TEST_RUN
 * in live-frames mode, it gives each copy of the template UDP frame its own source port
 * (16,384 flows) and transmits it with XDP_TX out of the test's ingress interface.
 *
 * Live-frame pages are recycled without being reset, and a frame forwarded by the stack
 * comes back with new MACs and a lower TTL, so every run rewrites the Ethernet, IP and
 * UDP headers from the template the bench sets. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 1);
} gen_seq SEC(".maps");

#define HDR 42
volatile const __u8 tmpl[HDR] = {0};

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end || data + HDR > end)
        return XDP_DROP;
    __u8 *p = data;
#pragma unroll
    for (int i = 0; i < HDR; i++)
        p[i] = tmpl[i];
    __u32 zero = 0;
    __u32 *seq = bpf_map_lookup_elem(&gen_seq, &zero);
    if (!seq)
        return XDP_DROP;
    *seq += 1;
    udp->source = bpf_htons(1024 + (*seq & 0x3fff));
    return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
