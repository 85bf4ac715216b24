/* Map layouts shared by sockredir.c and the Rust loader (ebpf/src/sockredir.rs mirrors
 * them). Addresses are in network byte order. */
#ifndef FLOWGATE_SOCKREDIR_H
#define FLOWGATE_SOCKREDIR_H

#include <linux/types.h>

/* sr_stats indices (per-CPU u64 counters) */
#define FG_SR_SOCKETS 0          /* sockets added to the sockhash */
#define FG_SR_REDIRECTED_MSGS 1  /* sendmsg calls redirected to the peer socket */
#define FG_SR_REDIRECTED_BYTES 2 /* bytes in those */
#define FG_SR_PASSED_MSGS 3      /* sendmsg calls left on the TCP path */
#define FG_SR_STEERED 4          /* connects steered to the sidecar */
#define FG_SR_INBOUND 5          /* inbound connections steered to the sidecar (sk_lookup) */
#define FG_SR_INBOUND_REFUSED 6  /* inbound connections refused: no sidecar listener set */
#define FG_SR_COUNT 8

/* One end of a local TCP connection; ports as the kernel reports remote_port
 * (network order in a u32). */
struct fg_sock_key {
    __u32 sip;
    __u32 dip;
    __u32 sport;
    __u32 dport;
};

/* The app side of a steered connection: local address, port in host order. */
struct fg_orig_key {
    __u32 ip;
    __u16 port;
    __u16 pad;
};

/* Where the app meant to connect; port in network order. */
struct fg_orig_dst {
    __u32 ip;
    __u16 port;
    __u16 pad;
};

#endif
