//! The BGP message decoder on arbitrary bytes, under every combination of session options:
//! it must never panic, and every message it decodes must encode again and decode to the
//! same message (RFC 7606 error records aside: they describe the input, not the message).
#![no_main]

use flowgate_bgp::bytes::BytesMut;
use flowgate_bgp::packet::{Codec, Message, Options};
use libfuzzer_sys::fuzz_target;

fn without_errors(m: Message) -> Message {
    match m {
        Message::Update(mut u) => {
            u.errors.clear();
            Message::Update(u)
        }
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    for (four_octet_as, extended_message, ebgp) in [
        (true, false, false),
        (false, false, false),
        (true, true, false),
        (true, false, true),
        (false, false, true),
    ] {
        let options = Options {
            four_octet_as,
            extended_message,
            ebgp,
        };
        let mut codec = Codec::with_options(options);
        let mut buf = BytesMut::from(data);
        // Bounded: each decoded message consumes at least 19 bytes.
        while let Ok(Some(msg)) = codec.decode(&mut buf) {
            let msg = without_errors(msg);
            let mut wire = BytesMut::new();
            codec
                .encode(&msg, &mut wire)
                .expect("a decoded message re-encodes");
            let again = Codec::with_options(options)
                .decode(&mut wire)
                .expect("our own encoding decodes")
                .expect("our own encoding is complete");
            assert_eq!(without_errors(again), msg);
            assert!(wire.is_empty());
        }
        let _ = codec.decode_eof(&mut buf);
    }
});
