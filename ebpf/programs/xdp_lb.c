// SPDX-License-Identifier: MIT
/* flowgate XDP L4 load balancer (Katran-style).
 *
 *   frame ─▶ parse eth / IPv4|IPv6 / TCP|UDP (every read bounds-checked)
 *        ─▶ vips[dst addr, dst port, proto] ── miss ─▶ NAT reply? ─▶ translate back, XDP_TX
 *        │                                              └─ else XDP_PASS (the stack)
 *        └─ hit ─▶ SYN or no conntrack entry: rings[vip][hash(flow) % ring_size] (Maglev)
 *                  else: conntrack[flow] (LRU) — existing flows stay on their backend
 *               ─▶ DSR: dst MAC := backend MAC, XDP_TX
 *                  NAT: dst IP/port := backend, checksums fixed, reply entry recorded, XDP_TX
 *
 * Each VIP owns two rings of ring_size slots; user space writes the idle ring and then
 * flips vip_meta.ring with one map update, so a table change is atomic for the data path. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdp_lb.h"

/* Set by the loader before load (aya override_global); a prime. */
volatile const __u32 ring_size = 65537;

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct fg_vip_key);
    __type(value, struct fg_vip_meta);
    __uint(max_entries, 64);
} vips SEC(".maps");

/* (vip id * 2 + ring) * ring_size + slot -> backend id + 1. Sized by the loader. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 1);
} rings SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, struct fg_backend);
    __uint(max_entries, 1024);
} backends SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, struct fg_flow);
    __type(value, struct fg_conn);
    __uint(max_entries, 65536);
} conntrack SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, struct fg_flow);
    __type(value, struct fg_nat_reply);
    __uint(max_entries, 65536);
} nat_replies SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, struct fg_counter);
    __uint(max_entries, 64);
} vip_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, struct fg_counter);
    __uint(max_entries, 1024);
} backend_stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, FG_STAT_COUNT);
} lb_stats SEC(".maps");

static __always_inline void stat(__u32 idx)
{
    __u64 *v = bpf_map_lookup_elem(&lb_stats, &idx);
    if (v)
        *v += 1;
}

static __always_inline void count(void *map, __u32 idx, __u64 bytes)
{
    struct fg_counter *c = bpf_map_lookup_elem(map, &idx);
    if (c) {
        c->packets += 1;
        c->bytes += bytes;
    }
}

/* The flow hash; ebpf/src/xdp_lb/flow.rs computes the same function. */
static __always_inline __u64 flow_hash(const struct fg_flow *f)
{
    const __u32 *w = (const __u32 *)f;
    __u64 h = 0x9e3779b97f4a7c15ULL;
#pragma unroll
    for (int i = 0; i < 10; i++) {
        h ^= w[i];
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 29;
    }
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* RFC 1624 incremental update: HC' = ~(~HC + ~m + m'). Byte-order independent. */
static __always_inline void csum_replace4(__u16 *check, __u32 from, __u32 to)
{
    __u32 sum = (__u16)~*check;
    sum += (~from & 0xffff) + (~from >> 16);
    sum += (to & 0xffff) + (to >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    *check = (__u16)~sum;
}

static __always_inline void csum_replace2(__u16 *check, __u16 from, __u16 to)
{
    __u32 sum = (__u16)~*check;
    sum += (__u16)~from;
    sum += to;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    *check = (__u16)~sum;
}

struct l4 {
    __u16 *sport;
    __u16 *dport;
    __u16 *check; /* NULL: UDP without checksum */
    int syn;
};

/* Finds the TCP/UDP ports. Returns 0 on success, -1 for a truncated or invalid header. */
static __always_inline int parse_l4(void *l4, void *end, __u8 proto, struct l4 *out)
{
    if (proto == IPPROTO_TCP) {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > end)
            return -1;
        if (tcp->doff < 5)
            return -1;
        out->sport = &tcp->source;
        out->dport = &tcp->dest;
        out->check = &tcp->check;
        out->syn = tcp->syn && !tcp->ack;
        return 0;
    }
    struct udphdr *udp = l4;
    if ((void *)(udp + 1) > end)
        return -1;
    out->sport = &udp->source;
    out->dport = &udp->dest;
    out->check = udp->check ? &udp->check : 0;
    out->syn = 0;
    return 0;
}

static __always_inline void set_macs(struct ethhdr *eth, const __u8 *dst)
{
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
}

/* Picks the backend of a flow to a VIP: conntrack first (unless SYN), else Maglev. */
static __always_inline struct fg_backend *pick(struct fg_flow *flow, struct fg_vip_meta *vip,
                                               int syn, __u32 *backend_id)
{
    struct fg_conn *conn = 0;
    if (!syn)
        conn = bpf_map_lookup_elem(&conntrack, flow);
    if (conn && conn->vip == vip->id) {
        stat(FG_STAT_CT_HIT);
        *backend_id = conn->backend;
        return bpf_map_lookup_elem(&backends, backend_id);
    }
    __u32 rs = ring_size;
    if (rs == 0)
        return 0;
    __u32 slot = (__u32)(flow_hash(flow) % rs);
    __u32 idx = (vip->id * 2 + (vip->ring & 1)) * rs + slot;
    __u32 *id = bpf_map_lookup_elem(&rings, &idx);
    if (!id || *id == FG_NO_BACKEND)
        return 0;
    *backend_id = *id - 1;
    struct fg_backend *b = bpf_map_lookup_elem(&backends, backend_id);
    if (!b)
        return 0;
    struct fg_conn fresh = {.backend = *backend_id, .vip = vip->id};
    bpf_map_update_elem(&conntrack, flow, &fresh, BPF_ANY);
    stat(FG_STAT_CT_NEW);
    return b;
}

static __always_inline int handle_v4(struct xdp_md *ctx, struct ethhdr *eth, void *end)
{
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5) {
        stat(FG_STAT_MALFORMED);
        return XDP_DROP;
    }
    __u32 ihl = ip->ihl * 4;
    void *l4p = (void *)ip + ihl;
    if (l4p > end || bpf_ntohs(ip->tot_len) < ihl) {
        stat(FG_STAT_MALFORMED);
        return XDP_DROP;
    }
    if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP) {
        stat(FG_STAT_PASS);
        return XDP_PASS;
    }
    if (ip->frag_off & bpf_htons(0x3fff)) {
        stat(FG_STAT_FRAGMENT);
        return XDP_PASS;
    }
    struct l4 l4 = {};
    if (parse_l4(l4p, end, ip->protocol, &l4) < 0) {
        stat(FG_STAT_MALFORMED);
        return XDP_DROP;
    }
    __u64 bytes = (__u64)(end - (void *)eth);

    struct fg_vip_key vk = {};
    vk.addr[0] = ip->daddr;
    vk.port = *l4.dport;
    vk.proto = ip->protocol;
    vk.family = 4;
    struct fg_vip_meta *vip = bpf_map_lookup_elem(&vips, &vk);

    struct fg_flow flow = {};
    flow.src[0] = ip->saddr;
    flow.dst[0] = ip->daddr;
    flow.sport = *l4.sport;
    flow.dport = *l4.dport;
    flow.proto = ip->protocol;

    if (!vip) {
        /* A backend's reply to a NATed flow? */
        struct fg_nat_reply *nr = bpf_map_lookup_elem(&nat_replies, &flow);
        if (!nr) {
            stat(FG_STAT_PASS);
            return XDP_PASS;
        }
        __u32 vaddr = nr->vip[0];
        __u16 vport = nr->vport;
        csum_replace4(&ip->check, ip->saddr, vaddr);
        if (l4.check) {
            csum_replace4(l4.check, ip->saddr, vaddr);
            csum_replace2(l4.check, *l4.sport, vport);
        }
        ip->saddr = vaddr;
        *l4.sport = vport;
        set_macs(eth, nr->client_mac);
        stat(FG_STAT_NAT_REPLY);
        return XDP_TX;
    }

    __u32 vip_id = vip->id;
    __u32 backend_id = 0;
    struct fg_backend *b = pick(&flow, vip, l4.syn, &backend_id);
    if (!b) {
        stat(FG_STAT_NO_BACKEND);
        return XDP_DROP;
    }
    count(&vip_stats, vip_id, bytes);
    count(&backend_stats, backend_id, bytes);

    if (vip->flags & FG_VIP_NAT) {
        __u32 baddr = b->addr[0];
        __u16 bport = b->port ? b->port : *l4.dport;
        struct fg_flow rev = {};
        rev.src[0] = baddr;
        rev.dst[0] = ip->saddr;
        rev.sport = bport;
        rev.dport = *l4.sport;
        rev.proto = ip->protocol;
        struct fg_nat_reply nr = {};
        nr.vip[0] = ip->daddr;
        nr.vport = *l4.dport;
        __builtin_memcpy(nr.client_mac, eth->h_source, ETH_ALEN);
        bpf_map_update_elem(&nat_replies, &rev, &nr, BPF_ANY);

        csum_replace4(&ip->check, ip->daddr, baddr);
        if (l4.check) {
            csum_replace4(l4.check, ip->daddr, baddr);
            csum_replace2(l4.check, *l4.dport, bport);
        }
        ip->daddr = baddr;
        *l4.dport = bport;
    }
    set_macs(eth, b->mac);
    return XDP_TX;
}

static __always_inline int handle_v6(struct xdp_md *ctx, struct ethhdr *eth, void *end)
{
    struct ipv6hdr *ip6 = (void *)(eth + 1);
    if ((void *)(ip6 + 1) > end || ip6->version != 6) {
        stat(FG_STAT_MALFORMED);
        return XDP_DROP;
    }
    /* Extension headers are not walked: such packets go to the stack. */
    if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP) {
        stat(FG_STAT_PASS);
        return XDP_PASS;
    }
    struct l4 l4 = {};
    if (parse_l4((void *)(ip6 + 1), end, ip6->nexthdr, &l4) < 0) {
        stat(FG_STAT_MALFORMED);
        return XDP_DROP;
    }
    __u64 bytes = (__u64)(end - (void *)eth);

    struct fg_vip_key vk = {};
    __builtin_memcpy(vk.addr, &ip6->daddr, 16);
    vk.port = *l4.dport;
    vk.proto = ip6->nexthdr;
    vk.family = 6;
    struct fg_vip_meta *vip = bpf_map_lookup_elem(&vips, &vk);
    if (!vip) {
        stat(FG_STAT_PASS);
        return XDP_PASS;
    }
    struct fg_flow flow = {};
    __builtin_memcpy(flow.src, &ip6->saddr, 16);
    __builtin_memcpy(flow.dst, &ip6->daddr, 16);
    flow.sport = *l4.sport;
    flow.dport = *l4.dport;
    flow.proto = ip6->nexthdr;

    __u32 vip_id = vip->id;
    __u32 backend_id = 0;
    struct fg_backend *b = pick(&flow, vip, l4.syn, &backend_id);
    if (!b) {
        stat(FG_STAT_NO_BACKEND);
        return XDP_DROP;
    }
    count(&vip_stats, vip_id, bytes);
    count(&backend_stats, backend_id, bytes);
    /* IPv6 VIPs forward by L2 DSR only (the loader refuses NAT for them). */
    set_macs(eth, b->mac);
    return XDP_TX;
}

SEC("xdp")
int xdp_lb(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end) {
        stat(FG_STAT_MALFORMED);
        return XDP_DROP;
    }
    if (eth->h_proto == bpf_htons(ETH_P_IP))
        return handle_v4(ctx, eth, end);
    if (eth->h_proto == bpf_htons(ETH_P_IPV6))
        return handle_v6(ctx, eth, end);
    stat(FG_STAT_PASS);
    return XDP_PASS;
}

/* Lets a veth receive frames sent to it with XDP_TX/redirect in native mode: the kernel
 * delivers them only to a peer that runs an XDP program. */
SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
