//! Numbers of the DNS registries that the crate names.

/// Record types (the subset this crate names).
pub mod rtype {
    /// IPv4 address.
    pub const A: u16 = 1;
    /// Name server.
    pub const NS: u16 = 2;
    /// Canonical name.
    pub const CNAME: u16 = 5;
    /// Start of authority.
    pub const SOA: u16 = 6;
    /// Domain name pointer.
    pub const PTR: u16 = 12;
    /// Mail exchange.
    pub const MX: u16 = 15;
    /// Text.
    pub const TXT: u16 = 16;
    /// IPv6 address.
    pub const AAAA: u16 = 28;
    /// Service location (RFC 2782).
    pub const SRV: u16 = 33;
    /// Delegation name (RFC 6672).
    pub const DNAME: u16 = 39;
    /// EDNS0 pseudo-record (RFC 6891).
    pub const OPT: u16 = 41;
    /// Any type (a query only).
    pub const ANY: u16 = 255;
}

/// Classes.
pub mod class {
    /// The Internet.
    pub const IN: u16 = 1;
}

/// Response codes (the low four bits in the header).
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// The server could not interpret the query.
    pub const FORMERR: u8 = 1;
    /// The server failed.
    pub const SERVFAIL: u8 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u8 = 3;
    /// Not implemented (an opcode other than QUERY).
    pub const NOTIMP: u8 = 4;
    /// Refused by policy.
    pub const REFUSED: u8 = 5;
}

/// The sections of a message.
pub mod section {
    /// Which section a record is in.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Section {
        /// Answers.
        Answer,
        /// Authority records (SOA for negative answers, NS for referrals).
        Authority,
        /// Additional records (glue, OPT).
        Additional,
    }
}
