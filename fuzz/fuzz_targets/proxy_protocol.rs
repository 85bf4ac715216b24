//! The PROXY protocol decoder on arbitrary bytes: it must never panic, never claim more
//! bytes than it was given, and what it decodes must encode and decode to the same
//! addresses.
#![no_main]

use flowgate_filters_net::proxy_protocol::{Command, decode, encode_v1, encode_v2};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [16usize, 232, 4096] {
        let Ok(Some((h, used))) = decode(data, max) else { continue };
        assert!(used <= data.len() && used <= max.max(107));
        if h.command == Command::Proxy {
            if let (Some(s), Some(d)) = (h.source, h.destination) {
                for bytes in [encode_v1(Some((s, d))), encode_v2(Some((s, d)))] {
                    let (again, n) = decode(&bytes, 4096).ok().flatten().expect("our own header decodes");
                    assert_eq!(n, bytes.len());
                    if s.is_ipv4() == d.is_ipv4() {
                        assert_eq!((again.source, again.destination), (Some(s), Some(d)));
                    }
                }
            }
        }
    }
});
