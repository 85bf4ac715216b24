//! `dns-block` and `dns-rewrite`: answering listed names locally, and renaming queries
//! (and their answers back).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use flowgate_dns::hickory::op::Message;
use flowgate_dns::types::{rcode, rtype};
use flowgate_dns::{Limits, NameKey, Owner, ResponseWriter, answer_code, name, name_key, validate};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Context, Description, Event, Filter, Transform};
use serde::{Deserialize, Serialize};

use super::{DnsQuery, Gather, Renamed, emit};

// === DnsBlock ===

/// What `dns-block` answers for a listed name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockAction {
    /// NXDOMAIN (the default).
    #[default]
    Nxdomain,
    /// REFUSED.
    Refused,
    /// `0.0.0.0` for A, `::` for AAAA, no data for other types.
    Null,
}

/// Configuration of [`DnsBlock`] (`dns-block:` in YAML). A listed name blocks itself and
/// every name under it.
///
/// ```yaml
/// - dns-block:
///     names: [ads.example, tracker.test]
///     files: [blocklist.txt]        # one name per line; `#` starts a comment
///     action: nxdomain              # or refused, null
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsBlockConfig {
    /// Blocked names.
    #[serde(default)]
    pub names: Vec<String>,
    /// Files of blocked names, relative to the configuration file.
    #[serde(default)]
    pub files: Vec<String>,
    /// The answer. Default `nxdomain`.
    #[serde(default)]
    pub action: BlockAction,
    /// TTL of `null` answers, in seconds. Default 60.
    #[serde(default = "default_block_ttl")]
    pub ttl: u32,
}

fn default_block_ttl() -> u32 {
    60
}

impl FilterConfig for DnsBlockConfig {
    fn build(self: Box<Self>, cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let mut names = HashSet::new();
        for (i, n) in self.names.iter().enumerate() {
            let k = NameKey::from_dotted(n)
                .ok_or_else(|| ConfigError::new(format!("names[{i}]"), "not a domain name"))?;
            names.insert(k);
        }
        for (i, f) in self.files.iter().enumerate() {
            let field = format!("files[{i}]");
            let text = std::fs::read_to_string(cx.path(f))
                .map_err(|e| ConfigError::new(&field, format!("cannot read {f}: {e}")))?;
            for (ln, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let k = NameKey::from_dotted(line).ok_or_else(|| {
                    ConfigError::new(&field, format!("line {}: not a domain name", ln + 1))
                })?;
                names.insert(k);
            }
        }
        Ok(Arc::new(DnsBlock {
            names: Arc::new(names),
            config: Arc::new(*self),
        }))
    }
}

/// Answers queries for listed names (and names under them) itself.
#[derive(Clone, Debug)]
pub struct DnsBlock {
    names: Arc<HashSet<NameKey>>,
    config: Arc<DnsBlockConfig>,
}

impl DnsBlock {
    /// Whether `n` or a name above it is listed.
    pub fn blocks(&self, n: &NameKey) -> bool {
        let mut cur = Some(*n);
        while let Some(c) = cur {
            if self.names.contains(&c) {
                return true;
            }
            cur = c.parent();
        }
        false
    }

    fn answer(&self, q: &DnsQuery) -> Option<Vec<u8>> {
        let question = q.info.question.as_ref()?;
        if !self.blocks(&question.name) {
            return None;
        }
        Some(match self.config.action {
            BlockAction::Nxdomain => answer_code(&q.wire, &q.info, rcode::NXDOMAIN, true),
            BlockAction::Refused => answer_code(&q.wire, &q.info, rcode::REFUSED, true),
            BlockAction::Null => {
                let mut w = ResponseWriter::new(&q.wire, &q.info, rcode::NOERROR, false);
                w.recursion_available(true);
                match question.qtype {
                    rtype::A => w.answer(Owner::Question, rtype::A, self.config.ttl, &[0; 4]),
                    rtype::AAAA => {
                        w.answer(Owner::Question, rtype::AAAA, self.config.ttl, &[0; 16])
                    }
                    _ => {}
                }
                w.finish(None)
            }
        })
    }
}

impl Filter for DnsBlock {
    fn describe(&self) -> Description {
        Description::filter("dns-block").options(serde_json::json!({
            "names": self.names.len(),
            "action": self.config.action,
        }))
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        let this = self.clone();
        let mut gather = Gather::default();
        Some(Box::new(move |ev: Event, out: &mut dyn FnMut(Event)| {
            gather.on_event(
                ev,
                out,
                &mut |m, out| match (m.answered, this.answer(&m.query)) {
                    (false, Some(r)) => m.answer(Bytes::from(r), out),
                    _ => m.pass(out),
                },
            );
        }))
    }
}

// === DnsRewrite ===

/// One renaming: queries for `from` (or names under it) are asked as `to` (or the same
/// names under it); answers are renamed back before they leave.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteRule {
    /// The name clients ask for.
    pub from: String,
    /// The name asked instead.
    pub to: String,
}

/// Configuration of [`DnsRewrite`] (`dns-rewrite:` in YAML). The first matching rule wins.
///
/// ```yaml
/// - dns-rewrite:
///     rules:
///       - { from: db.internal, to: db-primary.svc.test }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRewriteConfig {
    /// The rules.
    pub rules: Vec<RewriteRule>,
}

impl FilterConfig for DnsRewriteConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let k = |s: &str, f: &str| {
                NameKey::from_dotted(s)
                    .ok_or_else(|| ConfigError::new(format!("rules[{i}].{f}"), "not a domain name"))
            };
            rules.push((k(&r.from, "from")?, k(&r.to, "to")?));
        }
        Ok(Arc::new(DnsRewrite {
            rules: Arc::new(rules),
            config: Arc::new(*self),
        }))
    }
}

/// Renames queries by suffix; `encode-dns` renames their answers back.
#[derive(Clone, Debug)]
pub struct DnsRewrite {
    rules: Arc<Vec<(NameKey, NameKey)>>,
    config: Arc<DnsRewriteConfig>,
}

impl DnsRewrite {
    fn rewrite(&self, q: &DnsQuery) -> Option<DnsQuery> {
        let info = &q.info;
        let question = info.question.as_ref()?;
        let (from, to) = self
            .rules
            .iter()
            .find(|(from, _)| question.name.is_subdomain_of(from))?;
        let new_name = question.name.replace_suffix(from, to)?;
        // Only plain queries (a question and an OPT at most) are renamed: records that
        // point into the question would point at the wrong bytes afterwards.
        let h = info.header;
        if h.ancount != 0
            || h.nscount != 0
            || usize::from(h.arcount) > usize::from(info.opt.is_some())
        {
            return None;
        }
        let mut wire = Vec::with_capacity(q.wire.len() + 32);
        wire.extend_from_slice(q.wire.get(..12)?);
        wire.extend_from_slice(new_name.as_bytes());
        wire.extend_from_slice(q.wire.get(question.end - 4..)?);
        let new_info = validate(&wire, &Limits::default()).ok()?;
        Some(DnsQuery {
            wire: Bytes::from(wire),
            info: new_info,
            transport: q.transport,
            peer: q.peer,
            renamed: Some(Arc::new(Renamed {
                original_question: q.wire.slice(12..info.question_end),
                from: question.name,
                to: new_name,
            })),
        })
    }
}

impl Filter for DnsRewrite {
    fn describe(&self) -> Description {
        Description::filter("dns-rewrite").options(&*self.config)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        let this = self.clone();
        let mut gather = Gather::default();
        Some(Box::new(move |ev: Event, out: &mut dyn FnMut(Event)| {
            gather.on_event(ev, out, &mut |m, out| {
                if m.answered {
                    return m.pass(out);
                }
                match this.rewrite(&m.query) {
                    Some(q) => {
                        let data = q.wire.clone();
                        emit(out, Arc::new(q), false, data);
                    }
                    None => m.pass(out),
                }
            });
        }))
    }
}

/// Renames an answer to a renamed query back: the question as the client sent it, and
/// every owner name under the asked name moved back under the client's name. Uses
/// hickory-proto to decode and re-encode; `None` when that fails (the answer then goes
/// out as it came).
pub(crate) fn rename_back(resp: &[u8], r: &Renamed) -> Option<Vec<u8>> {
    let mut m = Message::from_vec(resp).ok()?;
    let back = |n: &flowgate_dns::hickory::rr::Name| -> Option<flowgate_dns::hickory::rr::Name> {
        let k = name_key(n).ok()?;
        let renamed = k.replace_suffix(&r.to, &r.from)?;
        name(&renamed.to_string()).ok()
    };
    for q in m.queries.iter_mut() {
        if let Some(n) = back(q.name()) {
            q.set_name(n);
        }
    }
    for rec in m
        .answers
        .iter_mut()
        .chain(m.authorities.iter_mut())
        .chain(m.additionals.iter_mut())
    {
        if let Some(n) = back(&rec.name) {
            rec.name = n;
        }
    }
    let mut out = m.to_vec().ok()?;
    // The question goes back byte for byte, in the client's case.
    let q = &r.original_question;
    if out.len() >= 12 + q.len() {
        let info = validate(
            &out,
            &Limits {
                max_records: 4096,
                ..Limits::default()
            },
        )
        .ok()?;
        if info.question_end - 12 == q.len() {
            out[12..12 + q.len()].copy_from_slice(q);
        }
    }
    Some(out)
}
