//! Crafted Ethernet frames with correct checksums, and checksum verification.

#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const PSH: u8 = 0x08;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0, 0, 0, 1];
pub const LB_MAC: [u8; 6] = [0x02, 0x1b, 0, 0, 0, 1];

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn add(sum: &mut u32, bytes: &[u8]) {
    for c in bytes.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        *sum += u32::from(w);
    }
}

pub fn checksum(bytes: &[u8]) -> u16 {
    let mut s = 0;
    add(&mut s, bytes);
    fold(s)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = Vec::with_capacity(20);
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1000u32.to_be_bytes()); // seq
    t.extend_from_slice(&(if flags & ACK != 0 { 1u32 } else { 0 }).to_be_bytes());
    t.push(5 << 4); // doff 5
    t.push(flags);
    t.extend_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]); // check, urg
    t
}

fn l4_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, mut seg: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let mut s = 0u32;
    add(&mut s, &src.octets());
    add(&mut s, &dst.octets());
    s += u32::from(proto);
    s += seg.len() as u32;
    add(&mut s, &seg);
    let c = fold(s);
    seg[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    seg
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, DF
    ip.push(64);
    ip.push(proto);
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(seg);
    ip
}

/// Ethernet + IPv4 + TCP (no options) + payload, client → LB MACs.
pub fn tcp4(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp4_macs(CLIENT_MAC, LB_MAC, src, dst, flags, payload)
}

pub fn tcp4_macs(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut seg = tcp_header(src.port(), dst.port(), flags);
    seg.extend_from_slice(payload);
    let seg = l4_v4(*src.ip(), *dst.ip(), 6, seg, 16);
    let mut f = eth(dst_mac, src_mac, 0x0800);
    f.extend_from_slice(&ipv4(*src.ip(), *dst.ip(), 6, &seg));
    f
}

pub fn udp4(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut seg = Vec::new();
    seg.extend_from_slice(&src.port().to_be_bytes());
    seg.extend_from_slice(&dst.port().to_be_bytes());
    seg.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    seg.extend_from_slice(&[0, 0]);
    seg.extend_from_slice(payload);
    let seg = l4_v4(*src.ip(), *dst.ip(), 17, seg, 6);
    let mut f = eth(LB_MAC, CLIENT_MAC, 0x0800);
    f.extend_from_slice(&ipv4(*src.ip(), *dst.ip(), 17, &seg));
    f
}

pub fn icmp4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut seg = vec![8, 0, 0, 0, 0, 1, 0, 1];
    let c = checksum(&seg);
    seg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(LB_MAC, CLIENT_MAC, 0x0800);
    f.extend_from_slice(&ipv4(src, dst, 1, &seg));
    f
}

pub fn arp() -> Vec<u8> {
    let mut f = eth([0xff; 6], CLIENT_MAC, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[10, 0, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 0, 0, 2]);
    f
}

pub fn tcp6(src: SocketAddrV6, dst: SocketAddrV6, flags: u8) -> Vec<u8> {
    let mut seg = tcp_header(src.port(), dst.port(), flags);
    let mut s = 0u32;
    add(&mut s, &src.ip().octets());
    add(&mut s, &dst.ip().octets());
    s += seg.len() as u32 + 6;
    add(&mut s, &seg);
    let c = fold(s);
    seg[16..18].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(LB_MAC, CLIENT_MAC, 0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    f.push(6);
    f.push(64);
    f.extend_from_slice(&src.ip().octets());
    f.extend_from_slice(&dst.ip().octets());
    f.extend_from_slice(&seg);
    f
}

pub fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum of an Ethernet/IPv4 frame.
pub fn checksums_ok_v4(frame: &[u8]) -> bool {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if checksum(&ip[..ihl]) != 0 {
        return false;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let seg = &ip[ihl..total];
    let mut s = 0u32;
    add(&mut s, &ip[12..20]);
    s += u32::from(ip[9]);
    s += seg.len() as u32;
    add(&mut s, seg);
    fold(s) == 0
}

pub fn dst_mac(frame: &[u8]) -> [u8; 6] {
    frame[0..6].try_into().unwrap()
}

pub fn src_mac(frame: &[u8]) -> [u8; 6] {
    frame[6..12].try_into().unwrap()
}

pub fn ipv4_dst(frame: &[u8]) -> SocketAddrV4 {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let addr = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    SocketAddrV4::new(addr, u16::from_be_bytes([ip[ihl + 2], ip[ihl + 3]]))
}

pub fn ipv4_src(frame: &[u8]) -> SocketAddrV4 {
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let addr = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    SocketAddrV4::new(addr, u16::from_be_bytes([ip[ihl], ip[ihl + 1]]))
}
