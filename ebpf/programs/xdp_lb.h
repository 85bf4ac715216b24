/* Map layouts shared by xdp_lb.c and the Rust loader (ebpf/src/xdp_lb/maps.rs mirrors
 * every struct here field by field; keep them in sync).
 *
 * Addresses and ports are kept in network byte order, exactly as they sit in the packet.
 * An IPv4 address occupies addr[0]; addr[1..3] are zero. */
#ifndef FLOWGATE_XDP_LB_H
#define FLOWGATE_XDP_LB_H

#include <linux/types.h>

/* Ring slots hold backend id + 1; 0 (a fresh array's value) means "no backend": the
 * packet is dropped. */
#define FG_NO_BACKEND 0u

/* vip_meta.flags */
#define FG_VIP_NAT 1u /* rewrite destination IP and port (else L2 DSR) */

/* lb_stats indices (per-CPU u64 counters) */
#define FG_STAT_PASS 0      /* not a VIP: handed to the stack */
#define FG_STAT_MALFORMED 1 /* truncated or invalid IP/L4 header: dropped */
#define FG_STAT_CT_HIT 2    /* packet of a tracked flow */
#define FG_STAT_CT_NEW 3    /* flow placed by the Maglev table */
#define FG_STAT_NO_BACKEND 4 /* VIP without backends: dropped */
#define FG_STAT_NAT_REPLY 5 /* backend reply translated back to the VIP */
#define FG_STAT_FRAGMENT 6  /* IPv4 fragment: passed (cannot be balanced) */
#define FG_STAT_COUNT 8

/* A flow, as seen from the client: 40 bytes. Also the key of the NAT reply map, written
 * from the backend's side (src = backend, dst = client). */
struct fg_flow {
    __u32 src[4];
    __u32 dst[4];
    __u16 sport;
    __u16 dport;
    __u8 proto;
    __u8 pad[3];
};

struct fg_vip_key {
    __u32 addr[4];
    __u16 port;
    __u8 proto;
    __u8 family; /* 4 or 6 */
};

struct fg_vip_meta {
    __u32 id;    /* index into vip_stats and into the rings */
    __u32 flags; /* FG_VIP_* */
    __u32 ring;  /* which of the VIP's two rings is live (0 or 1) */
    __u32 pad;
};

struct fg_backend {
    __u32 addr[4];
    __u16 port; /* NAT target port (network order); 0 keeps the VIP's port */
    __u8 mac[6];
    __u32 flags; /* reserved */
};

struct fg_conn {
    __u32 backend;
    __u32 vip;
};

struct fg_nat_reply {
    __u32 vip[4];
    __u16 vport;
    __u8 client_mac[6];
};

struct fg_counter {
    __u64 packets;
    __u64 bytes;
};

#endif
