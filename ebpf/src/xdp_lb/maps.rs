//! Rust mirrors of the map layouts in `programs/xdp_lb.h`, field by field.

#![allow(unsafe_code)]

/// `FG_NO_BACKEND`: the ring slot value of a VIP without backends (slots hold id + 1).
pub(crate) const NO_BACKEND: u32 = 0;
/// `FG_VIP_NAT`.
pub(crate) const VIP_NAT: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct FgFlow {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct FgVipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FgVipMeta {
    pub id: u32,
    pub flags: u32,
    pub ring: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FgBackend {
    pub addr: [u32; 4],
    pub port: u16,
    pub mac: [u8; 6],
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FgCounter {
    pub packets: u64,
    pub bytes: u64,
}

// SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and integer arrays with
// explicit padding fields, so every bit pattern is valid and there are no implicit padding
// bytes; the sizes match the C structs (checked by `layouts_match_c` below).
unsafe impl aya::Pod for FgFlow {}
// SAFETY: as above.
unsafe impl aya::Pod for FgVipKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FgVipMeta {}
// SAFETY: as above.
unsafe impl aya::Pod for FgBackend {}
// SAFETY: as above.
unsafe impl aya::Pod for FgCounter {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_c() {
        assert_eq!(size_of::<FgFlow>(), 40);
        assert_eq!(size_of::<FgVipKey>(), 20);
        assert_eq!(size_of::<FgVipMeta>(), 16);
        assert_eq!(size_of::<FgBackend>(), 28);
        assert_eq!(size_of::<FgCounter>(), 16);
    }
}
