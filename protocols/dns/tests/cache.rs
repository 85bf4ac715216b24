//! The TTL cache under a manual clock, and the DNS caching rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use flowgate_dns::cache::{CacheConfig, CacheKey, CacheTtl, ManualClock, TtlCache, cache_ttl};
use flowgate_dns::hickory::rr::RecordType;
use flowgate_dns::types::{rcode, rtype};
use flowgate_dns::{Limits, Owner, ResponseWriter, query, validate};

fn clocked(cfg: CacheConfig) -> (Arc<ManualClock>, TtlCache<u32, &'static str>) {
    let clock = Arc::new(ManualClock::new());
    (clock.clone(), TtlCache::with_clock(cfg, clock))
}

#[test]
fn entries_expire_and_ttls_are_clamped() {
    let cfg = CacheConfig {
        min_ttl: Duration::from_secs(5),
        max_ttl: Duration::from_secs(100),
        max_negative_ttl: Duration::from_secs(20),
        ..CacheConfig::default()
    };
    let (clock, mut c) = clocked(cfg);
    assert!(c.insert(1, "short", Duration::from_secs(1))); // raised to 5
    assert!(c.insert(2, "long", Duration::from_secs(1000))); // lowered to 100
    assert!(c.insert_with(3, "neg", Duration::from_secs(50), true)); // lowered to 20
    clock.advance(Duration::from_secs(4));
    assert_eq!(c.get(&1).unwrap().age, Duration::from_secs(4));
    clock.advance(Duration::from_secs(1));
    assert!(c.get(&1).is_none());
    clock.advance(Duration::from_secs(15));
    assert!(c.get(&3).is_none());
    assert_eq!(c.get(&2).unwrap().remaining, Duration::from_secs(80));
    let mut zero = TtlCache::<u32, ()>::new(CacheConfig::default());
    assert!(!zero.insert(1, (), Duration::ZERO));
}

#[test]
fn full_cache_evicts_expired_then_soonest() {
    let cfg = CacheConfig {
        max_entries: 3,
        ..CacheConfig::default()
    };
    let (clock, mut c) = clocked(cfg);
    c.insert(1, "a", Duration::from_secs(10));
    c.insert(2, "b", Duration::from_secs(30));
    c.insert(3, "c", Duration::from_secs(20));
    c.insert(4, "d", Duration::from_secs(40)); // evicts 1 (soonest)
    assert_eq!(c.len(), 3);
    assert!(c.get(&1).is_none());
    clock.advance(Duration::from_secs(25)); // 3 has expired
    c.insert(5, "e", Duration::from_secs(5)); // evicts 3
    assert!(c.get(&3).is_none());
    assert!(c.get(&2).is_some() && c.get(&4).is_some() && c.get(&5).is_some());
    c.purge_expired();
    assert_eq!(c.len(), 3);
}

#[test]
fn hot_entries_ask_for_prefetch_once() {
    let cfg = CacheConfig {
        prefetch_hits: 2,
        prefetch_percent: 10,
        ..CacheConfig::default()
    };
    let (clock, mut c) = clocked(cfg);
    c.insert(1, "x", Duration::from_secs(100));
    assert!(!c.get(&1).unwrap().prefetch);
    clock.advance(Duration::from_secs(89));
    assert!(!c.get(&1).unwrap().prefetch, "11% left: not yet");
    clock.advance(Duration::from_secs(2));
    assert!(c.get(&1).unwrap().prefetch, "hot and 9% left");
    assert!(!c.get(&1).unwrap().prefetch, "asked once");
    c.prefetch_failed(&1);
    assert!(c.get(&1).unwrap().prefetch, "asks again after a failure");
    // A cold entry near its end does not ask.
    c.insert(2, "y", Duration::from_secs(10));
    clock.advance(Duration::from_secs(9));
    assert!(!c.get(&2).unwrap().prefetch);
}

#[test]
fn checking_disabled_queries_have_their_own_cache_key() {
    let l = Limits::default();
    let q = query("www.example", RecordType::A, 1, true, None).unwrap();
    let mut cd = q.clone();
    cd[3] |= 0x10; // CD
    let plain = CacheKey::of(&validate(&q, &l).unwrap()).unwrap();
    let unchecked = CacheKey::of(&validate(&cd, &l).unwrap()).unwrap();
    assert!(!plain.checking_disabled && unchecked.checking_disabled);
    assert_ne!(plain, unchecked);
}

fn answer(ttls: &[u32], code: u8, soa: Option<(u32, u32)>) -> Vec<u8> {
    let q = query("www.example", RecordType::A, 1, true, None).unwrap();
    let info = validate(&q, &Limits::default()).unwrap();
    let mut w = ResponseWriter::new(&q, &info, code, false);
    for (i, t) in ttls.iter().enumerate() {
        w.answer(Owner::Question, rtype::A, *t, &[10, 0, 0, i as u8]);
    }
    if let Some((ttl, min)) = soa {
        let mut rd = b"\x02ns\x07example\x00\x02hm\x07example\x00".to_vec();
        for v in [1u32, 2, 3, 4, min] {
            rd.extend_from_slice(&v.to_be_bytes());
        }
        w.authority(Owner::Wire(b"\x07example\x00"), rtype::SOA, ttl, &rd);
    }
    w.finish(None)
}

#[test]
fn dns_ttl_rules() {
    let l = Limits::default();
    assert_eq!(
        cache_ttl(&answer(&[300, 60, 120], rcode::NOERROR, None), &l)
            .unwrap()
            .0,
        CacheTtl::Positive(60)
    );
    assert_eq!(
        cache_ttl(&answer(&[], rcode::NXDOMAIN, Some((900, 30))), &l)
            .unwrap()
            .0,
        CacheTtl::Negative(30)
    );
    assert_eq!(
        cache_ttl(&answer(&[], rcode::NOERROR, Some((20, 300))), &l)
            .unwrap()
            .0,
        CacheTtl::Negative(20)
    );
    assert_eq!(
        cache_ttl(&answer(&[], rcode::NXDOMAIN, None), &l)
            .unwrap()
            .0,
        CacheTtl::Uncacheable
    );
    assert_eq!(
        cache_ttl(&answer(&[30], rcode::SERVFAIL, None), &l)
            .unwrap()
            .0,
        CacheTtl::Uncacheable
    );
}

#[test]
fn cached_response_renders_id_case_and_aged_ttls() {
    let l = Limits::default();
    let (_, cached) = cache_ttl(&answer(&[300, 60], rcode::NOERROR, None), &l).unwrap();
    let q = query("WWW.Example", RecordType::A, 0xbeef, true, None).unwrap();
    let qi = validate(&q, &l).unwrap();
    let out = cached.render(0xbeef, Some(&q[12..qi.question_end]), 50);
    let (info, recs) = flowgate_dns::wire::records(&out, &l).unwrap();
    assert_eq!(info.header.id, 0xbeef);
    assert_eq!(&out[12..info.question_end], &q[12..qi.question_end]);
    assert_eq!(
        recs.iter().map(|r| r.ttl).collect::<Vec<_>>(),
        vec![250, 10]
    );
    assert_eq!(CacheKey::of(&info), CacheKey::of(&qi));
    // Aged past a TTL: zero, not a wrap-around.
    let old = cached.render(1, None, 100);
    let (_, recs) = flowgate_dns::wire::records(&old, &l).unwrap();
    assert_eq!(recs[1].ttl, 0);
}
