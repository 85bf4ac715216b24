//! Byte-vector tests of the validation pass, the response writer and truncation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use flowgate_dns::hickory::rr::RecordType;
use flowgate_dns::types::{rcode, rtype};
use flowgate_dns::{
    ClientSubnet, Limits, Owner, ResponseWriter, WireError, decode, formerr, query, truncate,
    validate,
};

const HDR_Q: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00";

fn q(name_wire: &[u8]) -> Vec<u8> {
    let mut v = HDR_Q.to_vec();
    v.extend_from_slice(name_wire);
    v.extend_from_slice(b"\x00\x01\x00\x01");
    v
}

fn err(msg: &[u8]) -> WireError {
    validate(msg, &Limits::default()).unwrap_err()
}

#[test]
fn a_plain_query_validates_and_lowercases() {
    let m = q(b"\x03WWW\x07Example\x03com\x00");
    let info = validate(&m, &Limits::default()).unwrap();
    let qn = info.question.unwrap();
    assert_eq!(qn.name.to_string(), "www.example.com.");
    assert_eq!((qn.qtype, qn.qclass, qn.start, qn.end), (1, 1, 12, m.len()));
    assert_eq!(info.header.id, 0x1234);
    assert!(!info.header.is_response());
    assert_eq!(info.client_udp_payload(), 512);
}

#[test]
fn matches_hickory_for_what_hickory_builds() {
    for (name, t) in [
        ("a.b.c", RecordType::A),
        ("x.example", RecordType::SRV),
        (".", RecordType::NS),
    ] {
        let m = query(name, t, 77, true, Some(4096)).unwrap();
        let (msg, info) = decode(&m, &Limits::default()).unwrap();
        assert_eq!(msg.metadata.id, info.header.id);
        assert_eq!(
            u16::from(msg.queries[0].query_type()),
            info.question.unwrap().qtype
        );
        assert_eq!(info.opt.unwrap().udp_payload, 4096);
    }
}

#[test]
fn short_and_long_messages() {
    assert_eq!(err(b"\x12\x34\x01"), WireError::TooShort { len: 3 });
    let big = vec![0u8; 70_000];
    assert!(matches!(err(&big), WireError::TooLong { len: 70_000, .. }));
}

#[test]
fn pointer_loop_is_refused() {
    // A name that is only a pointer to itself.
    assert_eq!(
        err(&q(b"\xc0\x0c")),
        WireError::BadPointer {
            offset: 12,
            target: 12
        }
    );
    // Two labels, then a pointer back to the first label: a loop a -> b -> a.
    let m = q(b"\x01a\x01b\xc0\x0c");
    assert!(matches!(
        err(&m),
        WireError::BadPointer {
            offset: 16,
            target: 12
        }
    ));
    // An answer whose owner points forward.
    let mut m = q(b"\x01a\x00");
    m[7] = 1; // ANCOUNT = 1
    m.extend_from_slice(b"\xc0\x30\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01");
    assert!(matches!(
        err(&m),
        WireError::BadPointer { target: 0x30, .. }
    ));
    // Into the header.
    assert!(matches!(
        err(&q(b"\xc0\x02")),
        WireError::BadPointer { target: 2, .. }
    ));
}

#[test]
fn backward_pointers_are_followed() {
    let mut m = q(b"\x03api\x03svc\x04test\x00");
    m[7] = 1;
    // Owner: "x" + pointer to "svc.test" at offset 16.
    m.extend_from_slice(b"\x01x\xc0\x10\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01");
    let (_, recs) = flowgate_dns::wire::records(&m, &Limits::default()).unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].ttl, 60);
}

#[test]
fn oversized_label_and_long_name() {
    let mut label = vec![64u8];
    label.extend_from_slice(&[b'a'; 64]);
    label.push(0);
    assert_eq!(
        err(&q(&label)),
        WireError::LabelTooLong {
            offset: 12,
            len: 64
        }
    );
    assert!(matches!(
        err(&q(b"\x80\x00")),
        WireError::BadLabelType { byte: 0x80, .. }
    ));
    // 5 labels of 63 bytes = 320 bytes > 255.
    let mut n = Vec::new();
    for _ in 0..5 {
        n.push(63);
        n.extend_from_slice(&[b'b'; 63]);
    }
    n.push(0);
    assert_eq!(err(&q(&n)), WireError::NameTooLong { offset: 12 });
}

#[test]
fn truncated_packets() {
    let m = q(b"\x03www\x07example\x03com\x00");
    for cut in 13..m.len() {
        let e = err(&m[..cut]);
        assert!(
            matches!(
                e,
                WireError::Truncated { .. } | WireError::CountsExceedMessage { .. }
            ),
            "cut at {cut}: {e:?}"
        );
    }
    let mut t = m.clone();
    t.push(0);
    assert!(matches!(err(&t), WireError::TrailingBytes { len: 1, .. }));
}

#[test]
fn counts_must_fit_the_message() {
    let mut m = q(b"\x00");
    m[7] = 0xff; // 255 answers in 17 bytes
    assert!(matches!(err(&m), WireError::CountsExceedMessage { .. }));
    m[6] = 0xff; // 65 535 answers: over the record limit
    assert!(matches!(err(&m), WireError::TooManyRecords { .. }));
    let mut two = q(b"\x00");
    two[5] = 2;
    assert!(matches!(
        err(&two),
        WireError::TooManyQuestions { count: 2, max: 1 }
    ));
}

#[test]
fn rdata_names_and_sizes_are_checked() {
    let mut m = q(b"\x01a\x00");
    m[7] = 1;
    // A record with 5 bytes of RDATA.
    m.extend_from_slice(b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x05\x0a\x00\x00\x01\x02");
    assert!(matches!(err(&m), WireError::BadRdata { rtype: 1, .. }));
    // CNAME whose name runs past RDLENGTH.
    let mut m = q(b"\x01a\x00");
    m[7] = 1;
    m.extend_from_slice(b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x00\x3c\x00\x02\x01b\x00");
    assert!(err(&m) != WireError::TooShort { len: 0 });
    // RDATA past the end.
    let mut m = q(b"\x01a\x00");
    m[7] = 1;
    m.extend_from_slice(b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x09abc");
    assert!(matches!(err(&m), WireError::Truncated { .. }));
}

#[test]
fn edns_and_client_subnet() {
    let mut m = q(b"\x01a\x00");
    m[11] = 1; // ARCOUNT
    // OPT: payload 1232, DO, ECS 198.51.100.0/24.
    m.extend_from_slice(b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x0b");
    m.extend_from_slice(b"\x00\x08\x00\x07\x00\x01\x18\x00\xc6\x33\x64");
    let info = validate(&m, &Limits::default()).unwrap();
    let opt = info.opt.unwrap();
    assert_eq!(opt.udp_payload, 1232);
    assert!(opt.dnssec_ok);
    assert_eq!(
        opt.client_subnet,
        Some(ClientSubnet::new("198.51.100.0".parse().unwrap(), 24))
    );
    // Address bytes longer than the prefix needs.
    let mut bad = m.clone();
    let n = bad.len();
    bad[n - 6] = 16; // source prefix 16, but 3 address bytes
    assert!(matches!(err(&bad), WireError::BadOption { code: 8, .. }));
    // Two OPT records.
    let mut two = m.clone();
    two[11] = 2;
    two.extend_from_slice(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00");
    assert!(matches!(err(&two), WireError::BadOpt { .. }));
}

#[test]
fn response_writer_round_trips_through_hickory() {
    let m = query("Api.Svc.Test", RecordType::A, 5, true, Some(1400)).unwrap();
    let info = validate(&m, &Limits::default()).unwrap();
    let mut w = ResponseWriter::new(&m, &info, rcode::NOERROR, true);
    w.answer(Owner::Question, rtype::A, 30, &[10, 1, 2, 3]);
    w.answer(Owner::Question, rtype::A, 30, &[10, 1, 2, 4]);
    let resp = w.finish(None);
    let (msg, rinfo) = decode(&resp, &Limits::default()).unwrap();
    assert_eq!(msg.metadata.id, 5);
    assert!(msg.metadata.authoritative);
    assert_eq!(msg.answers.len(), 2);
    assert_eq!(msg.answers[0].name.to_string(), "Api.Svc.Test.");
    assert_eq!(rinfo.opt.unwrap().udp_payload, 1232);
    assert_eq!(&resp[12..rinfo.question_end], &m[12..info.question_end]);
}

#[test]
fn truncation_keeps_question_and_opt() {
    let m = query("big.test", RecordType::A, 9, true, Some(600)).unwrap();
    let info = validate(&m, &Limits::default()).unwrap();
    let mut w = ResponseWriter::new(&m, &info, rcode::NOERROR, true);
    for i in 0..60u8 {
        w.answer(Owner::Question, rtype::A, 30, &[10, 0, 0, i]);
    }
    let resp = w.finish(None);
    let t = truncate(&resp, 600);
    assert!(t.len() <= 600);
    let ti = validate(&t, &Limits::default()).unwrap();
    assert!(ti.header.truncated());
    assert_eq!((ti.header.ancount, ti.header.arcount), (0, 1));
    assert_eq!(truncate(&resp, 100_000), resp);
    // A budget smaller than the question: header only.
    let h = truncate(&resp, 14);
    assert_eq!(h.len(), 12);
}

#[test]
fn formerr_keeps_the_id_and_ignores_responses() {
    let junk = q(b"\xc0\x0c");
    let r = formerr(&junk).unwrap();
    let h = flowgate_dns::Header::read(&r).unwrap();
    assert_eq!((h.id, h.rcode(), h.qdcount), (0x1234, rcode::FORMERR, 0));
    let mut resp = junk.clone();
    resp[2] |= 0x80;
    assert!(formerr(&resp).is_none());
}
