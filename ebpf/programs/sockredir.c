// SPDX-License-Identifier: MIT
/* flowgate socket redirect for sidecars: the eBPF replacement for iptables interception.
 *
 *   app connect(orig) ─▶ cgroup/connect4: dst := sidecar; cookie_dst[cookie] := orig
 *   TCP established   ─▶ sockops: both ends local → socks[4-tuple] := socket;
 *                        active side with a cookie_dst entry → orig_dst[local ip:port] := orig
 *   send(data)        ─▶ sk_msg: socks[reversed 4-tuple] found → bpf_msg_redirect_hash
 *                        (BPF_F_INGRESS): the bytes land in the peer's receive queue,
 *                        never crossing the loopback TCP/IP path.
 *
 * The sidecar reads orig_dst with its accepted socket's peer address as the key.
 *
 *   SYN to a local address ─▶ sk_lookup (attached to the network namespace): new TCP
 *                             connections to any port not in inbound_skip are given to the
 *                             sidecar's inbound listener (inbound_listener[0]); the accepted
 *                             socket's local address is where the peer meant to connect.
 *                             Without a listener set they are refused, never let through. */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sockredir.h"

#define FG_EEXIST 17

/* Set by the loader (network byte order); port 0 disables connect4 steering. */
volatile const __u32 sidecar_ip = 0;
volatile const __u32 sidecar_port = 0;
/* Connects from this process (the sidecar itself) are never steered. */
volatile const __u32 sidecar_tgid = 0;

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __type(key, struct fg_sock_key);
    __type(value, __u32);
    __uint(max_entries, 65536);
} socks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, __u64);
    __type(value, struct fg_orig_dst);
    __uint(max_entries, 65536);
} cookie_dst SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, struct fg_orig_key);
    __type(value, struct fg_orig_dst);
    __uint(max_entries, 65536);
} orig_dst SEC(".maps");

/* The sidecar's inbound listening socket (one of its SO_REUSEPORT group: the kernel
 * picks within the group afterwards). */
struct {
    __uint(type, BPF_MAP_TYPE_SOCKMAP);
    __type(key, __u32);
    __type(value, __u32);
    __uint(max_entries, 1);
} inbound_listener SEC(".maps");

/* The namespace's own addresses (network order): connect4 leaves connects to them alone,
 * as iptables' OUTPUT rules do for traffic routed over lo. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u32);
    __type(value, __u8);
    __uint(max_entries, 64);
} own_addrs SEC(".maps");

/* Local ports (host order) whose connections sk_lookup leaves alone. */
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u16);
    __type(value, __u8);
    __uint(max_entries, 256);
} inbound_skip SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, FG_SR_COUNT);
} sr_stats SEC(".maps");

static __always_inline void add(__u32 idx, __u64 n)
{
    __u64 *v = bpf_map_lookup_elem(&sr_stats, &idx);
    if (v)
        *v += n;
}

static __always_inline int is_local(__u32 ip_be)
{
    return (bpf_ntohl(ip_be) >> 24) == 127;
}

SEC("sockops")
int fg_sockops(struct bpf_sock_ops *skops)
{
    if (skops->family != 2 /* AF_INET */)
        return 1;
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB &&
        skops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
        return 1;
    struct fg_sock_key key = {};
    key.sip = skops->local_ip4;
    key.dip = skops->remote_ip4;
    key.sport = bpf_htonl(skops->local_port); /* host → network order, like remote_port */
    key.dport = skops->remote_port;

    if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        __u64 cookie = bpf_get_socket_cookie(skops);
        struct fg_orig_dst *o = bpf_map_lookup_elem(&cookie_dst, &cookie);
        if (o) {
            struct fg_orig_key ok = {.ip = key.sip, .port = (__u16)skops->local_port};
            struct fg_orig_dst copy = *o;
            bpf_map_update_elem(&orig_dst, &ok, &copy, BPF_ANY);
            bpf_map_delete_elem(&cookie_dst, &cookie);
        }
    }
    if (!is_local(key.sip) || !is_local(key.dip))
        return 1;
    if (bpf_sock_hash_update(skops, &socks, &key, BPF_ANY) == 0)
        add(FG_SR_SOCKETS, 1);
    return 1;
}

SEC("sk_msg")
int fg_sk_msg(struct sk_msg_md *msg)
{
    if (msg->family != 2)
        return SK_PASS;
    struct fg_sock_key peer = {};
    peer.sip = msg->remote_ip4;
    peer.dip = msg->local_ip4;
    peer.sport = msg->remote_port;
    peer.dport = bpf_htonl(msg->local_port);
    __u64 len = msg->size;
    long verdict = bpf_msg_redirect_hash(msg, &socks, &peer, BPF_F_INGRESS);
    if (verdict == SK_PASS) {
        add(FG_SR_REDIRECTED_MSGS, 1);
        add(FG_SR_REDIRECTED_BYTES, len);
    } else {
        add(FG_SR_PASSED_MSGS, 1);
    }
    /* A socket whose peer is not in the map keeps the normal TCP path. */
    return SK_PASS;
}

SEC("cgroup/connect4")
int fg_connect4(struct bpf_sock_addr *ctx)
{
    if (sidecar_port == 0 || ctx->protocol != IPPROTO_TCP)
        return 1;
    __u32 tgid = (__u32)(bpf_get_current_pid_tgid() >> 32);
    if (tgid == sidecar_tgid)
        return 1;
    __u32 dip = ctx->user_ip4;
    __u16 dport = (__u16)ctx->user_port;
    if (dip == sidecar_ip && dport == (__u16)sidecar_port)
        return 1;
    /* Loopback and the namespace's own addresses are local traffic, not outbound. */
    if (is_local(dip) || bpf_map_lookup_elem(&own_addrs, &dip))
        return 1;
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct fg_orig_dst o = {.ip = dip, .port = dport};
    bpf_map_update_elem(&cookie_dst, &cookie, &o, BPF_ANY);
    ctx->user_ip4 = sidecar_ip;
    ctx->user_port = sidecar_port;
    add(FG_SR_STEERED, 1);
    return 1;
}

SEC("sk_lookup")
int fg_sk_lookup(struct bpf_sk_lookup *ctx)
{
    if (ctx->family != 2 /* AF_INET */ || ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    /* Local traffic is not inbound: to loopback, or from one of our own addresses (the
     * sidecar dialling its workload on the pod address uses that address as its source),
     * as iptables' PREROUTING never sees locally generated connections. */
    if (is_local(ctx->local_ip4) || is_local(ctx->remote_ip4) ||
        ctx->remote_ip4 == ctx->local_ip4)
        return SK_PASS;
    __u16 port = (__u16)ctx->local_port;
    if (bpf_map_lookup_elem(&inbound_skip, &port))
        return SK_PASS;
    __u32 zero = 0;
    struct bpf_sock *sk = bpf_map_lookup_elem(&inbound_listener, &zero);
    if (!sk) {
        add(FG_SR_INBOUND_REFUSED, 1);
        return SK_DROP;
    }
    long err = bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    if (err == -FG_EEXIST) /* another sk_lookup program chose already: its choice stands */
        return SK_PASS;
    if (err)
        return SK_DROP;
    add(FG_SR_INBOUND, 1);
    return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
