//! The DNS validation pass and everything behind it on arbitrary bytes: it must never
//! panic; what it accepts hickory-proto may still reject but must not panic on; FORMERR,
//! truncation and the cache must handle whatever the pass accepted; a truncated response
//! fits its budget and validates again.
#![no_main]

use flowgate_dns::cache::cache_ttl;
use flowgate_dns::{Limits, Owner, ResponseWriter, formerr, truncate, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = formerr(data);
    let Ok(info) = validate(data, &limits) else {
        return;
    };
    let _ = flowgate_dns::decode(data, &limits);
    if let Ok((_, cached)) = cache_ttl(data, &limits) {
        let q = info.question.map(|q| &data[q.start..q.end]);
        let _ = cached.render(7, q, 3);
    }
    let budget = 12 + (data.len() / 2);
    let t = truncate(data, budget);
    if data.len() > budget {
        assert!(
            t.len() <= budget.max(12),
            "truncate kept {} of {budget}",
            t.len()
        );
        assert!(validate(&t, &limits).is_ok(), "truncated copy validates");
    }
    if !info.header.is_response() && info.question.is_some() {
        let mut w = ResponseWriter::new(data, &info, 0, true);
        w.answer(Owner::Question, 1, 30, &[10, 0, 0, 1]);
        let r = w.finish(None);
        assert!(validate(&r, &limits).is_ok(), "our answer validates");
    }
});
