//! Configurations of the joint filters, for YAML files (`pipe`, `demux`, `mux`, `fork`).
//!
//! ```yaml
//! - pipe: { pipeline: plugins }
//! - demux: { pipeline: per-request, max_pending: 32 }
//! - mux: { pipeline: upstream-session, max_idle: 10s, max_queue: 1, max_messages: 1000 }
//! - fork: { mode: mirror, pipelines: [shadow] }
//! - branch:
//!     arms:
//!       - { when: { sni: "*.internal.example" }, pipeline: internal }
//!       - { when: { peer: 10.0.0.0/8, port: 8443 }, pipeline: admin }
//!       - { when: { destination: 10.96.0.0/12, destination_port: 80 }, pipeline: captured }
//!     otherwise: public
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Branch, Demux, DemuxOptions, Fork, ForkMode, Mux, MuxOptions, Pipe};
use crate::registry::{BuildContext, ConfigError, FilterConfig, Registry};
use crate::{Context, Dyn, Filter, SubPipeline};

/// `pipe:` — run the stream through another pipeline.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipeConfig {
    /// The pipeline's name.
    pub pipeline: String,
}

impl FilterConfig for PipeConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        Ok(Arc::new(Pipe::new(SubPipeline::named(self.pipeline))))
    }
}

/// `demux:` — one sub-pipeline per message, replies in order.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DemuxConfig {
    /// The per-message pipeline.
    pub pipeline: String,
    /// Messages in flight before input stops being read. Default 32.
    #[serde(default = "d_pending")]
    pub max_pending: usize,
}

fn d_pending() -> usize {
    DemuxOptions::default().max_pending
}

impl FilterConfig for DemuxConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.max_pending == 0 {
            return Err(ConfigError::new("max_pending", "must be at least 1"));
        }
        let opts = DemuxOptions {
            max_pending: self.max_pending,
            ..Default::default()
        };
        Ok(Arc::new(
            Demux::new(SubPipeline::named(self.pipeline)).options(opts),
        ))
    }
}

/// `mux:` — share keyed session pipelines between streams (a connection pool).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MuxConfig {
    /// The session pipeline.
    pub pipeline: String,
    /// Close a session idle this long. Default 10 s.
    #[serde(default = "m_idle", with = "crate::serde_duration")]
    pub max_idle: Duration,
    /// Messages in flight per session. Default 1.
    #[serde(default = "m_queue")]
    pub max_queue: usize,
    /// Retire a session after this many messages (0: never). Default 0.
    #[serde(default)]
    pub max_messages: u64,
}

fn m_idle() -> Duration {
    MuxOptions::default().max_idle
}
fn m_queue() -> usize {
    1
}

impl FilterConfig for MuxConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.max_queue == 0 {
            return Err(ConfigError::new("max_queue", "must be at least 1"));
        }
        let opts = MuxOptions {
            max_idle: self.max_idle,
            max_queue: self.max_queue,
            max_messages: self.max_messages,
            ..Default::default()
        };
        Ok(Arc::new(Mux::with(
            SubPipeline::named(self.pipeline),
            Dyn::value(String::new()),
            opts,
        )))
    }
}

/// `fork:` — copies of the stream to other pipelines.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForkConfig {
    /// `mirror`, `join` or `race`.
    pub mode: ForkMode,
    /// The pipelines that get a copy.
    pub pipelines: Vec<String>,
}

impl<'de> Deserialize<'de> for ForkMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "mirror" => Ok(ForkMode::Mirror),
            "join" => Ok(ForkMode::Join),
            "race" => Ok(ForkMode::Race),
            other => Err(serde::de::Error::unknown_variant(
                other,
                &["mirror", "join", "race"],
            )),
        }
    }
}

impl FilterConfig for ForkConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.pipelines.is_empty() {
            return Err(ConfigError::new("pipelines", "name at least one pipeline"));
        }
        let subs = self.pipelines.into_iter().map(SubPipeline::named).collect();
        Ok(Arc::new(Fork::new(self.mode, subs)))
    }
}

/// `branch:` — the first arm whose conditions all hold on the stream's connection facts.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BranchConfig {
    /// The arms, tried in order.
    pub arms: Vec<ArmConfig>,
    /// Where streams go when no arm matches; without it they pass through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<String>,
    /// Close streams no arm matches (and no `otherwise` takes) instead. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refuse_others: bool,
    /// Decide as the stream starts instead of on its first event. Needed when the server
    /// speaks first (a TCP protocol that greets), and right when the facts the arms test
    /// are known at the start: TLS facts behind `accept-tls` are, a peer address that
    /// `accept-proxy-protocol` reads from the first bytes is not. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_start: bool,
}

/// One arm of a `branch`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    /// The conditions (all must hold).
    pub when: Match,
    /// The pipeline for matching streams.
    pub pipeline: String,
}

/// Conditions on connection facts; an absent field always holds.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The TLS server name: exact (case-insensitive) or `*.suffix` for one or more labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The ALPN protocol agreed in the TLS handshake (`h2`, `http/1.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<String>,
    /// The local port the stream arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The peer's address is inside this prefix (`10.0.0.0/8`, `2001:db8::/32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The destination the client asked for (the original destination of a redirected
    /// connection, read with a `transparent` listener, else the local address) is inside
    /// this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The port of that destination: the port a captured client dialled, where `port` is
    /// the port it was redirected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// The peer's verified identity (from `accept-tls` with `client_auth`: a mesh's SPIFFE
    /// ID) is one of these; `*` for any verified identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
}

/// A parsed IP prefix.
#[derive(Clone, Copy, Debug)]
struct Prefix {
    addr: std::net::IpAddr,
    len: u8,
}

impl Prefix {
    fn parse(s: &str) -> Result<Prefix, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: std::net::IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.trim()
                .parse::<u8>()
                .map_err(|_| format!("`{s}` has a bad length"))?
        };
        if len > max {
            return Err(format!("`{s}`: length above {max}"));
        }
        Ok(Prefix { addr, len })
    }

    fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (std::net::IpAddr::V4(p), std::net::IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (std::net::IpAddr::V6(p), std::net::IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Whether a host or server name matches a pattern: exactly (ignoring case), or, for
/// `*.suffix`, any name that ends in `.suffix` with at least one label before it (routing
/// semantics: `*.example.com` matches `a.example.com` and `a.b.example.com`).
///
/// ```
/// use flowgate_pipeline::joint::config::host_matches;
/// assert!(host_matches("*.example.com", "a.b.Example.COM"));
/// assert!(!host_matches("*.example.com", "example.com"));
/// assert!(host_matches("api.test", "API.test"));
/// ```
pub fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

impl Match {
    fn compile(&self) -> Result<impl Fn(&Context) -> bool + Send + Sync + 'static, ConfigError> {
        let peer = self
            .peer
            .as_deref()
            .map(Prefix::parse)
            .transpose()
            .map_err(|e| ConfigError::new("peer", e))?;
        let destination = self
            .destination
            .as_deref()
            .map(Prefix::parse)
            .transpose()
            .map_err(|e| ConfigError::new("destination", e))?;
        let destination_port = self.destination_port;
        let (sni, alpn, port) = (self.sni.clone(), self.alpn.clone(), self.port);
        let identities = self.identities.clone();
        Ok(move |cx: &Context| {
            let conn = cx.conn();
            let tls = conn.tls.as_deref();
            sni.as_deref().is_none_or(|p| {
                tls.and_then(|t| t.sni.as_deref())
                    .is_some_and(|n| host_matches(p, n))
            }) && alpn
                .as_deref()
                .is_none_or(|p| tls.and_then(|t| t.alpn.as_deref()) == Some(p.as_bytes()))
                && port.is_none_or(|p| conn.local.map(|a| a.port()) == Some(p))
                && peer.is_none_or(|p| conn.peer.is_some_and(|a| p.contains(a.ip())))
                && (destination.is_none() && destination_port.is_none() || {
                    let to = conn.original_dst.or(conn.local);
                    destination.is_none_or(|p| to.is_some_and(|a| p.contains(a.ip())))
                        && destination_port.is_none_or(|p| to.map(|a| a.port()) == Some(p))
                })
                && (identities.is_empty()
                    || tls
                        .and_then(|t| t.peer_identity.as_deref())
                        .is_some_and(|id| identities.iter().any(|i| i == "*" || i == id)))
        })
    }
}

impl FilterConfig for BranchConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        if self.arms.is_empty() && !self.refuse_others {
            return Err(ConfigError::new(
                "arms",
                "give at least one arm (or `refuse_others: true` to close every stream)",
            ));
        }
        let mut b = Branch::new();
        for (i, arm) in self.arms.iter().enumerate() {
            let cond = arm
                .when
                .compile()
                .map_err(|e| ConfigError::new(format!("arms[{i}].when.{}", e.field), e.problem))?;
            let label = serde_json::to_string(&arm.when).unwrap_or_default();
            b = b.when(
                label,
                move |cx, _| cond(cx),
                SubPipeline::named(arm.pipeline.clone()),
            );
        }
        if let Some(o) = self.otherwise {
            b = b.otherwise(SubPipeline::named(o));
        }
        if self.refuse_others {
            b = b.refuse_others();
        }
        if self.on_start {
            b = b.on_start();
        }
        Ok(Arc::new(b))
    }
}

/// Registers `pipe`, `demux`, `mux`, `fork` and `branch`.
pub fn register(r: &mut Registry) {
    r.register::<BranchConfig>("branch");
    r.register::<PipeConfig>("pipe");
    r.register::<DemuxConfig>("demux");
    r.register::<MuxConfig>("mux");
    r.register::<ForkConfig>("fork");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnInfo, TlsInfo};

    fn cx(peer: &str, port: u16, sni: Option<&str>, alpn: Option<&str>) -> Context {
        Context::with_conn(ConnInfo {
            peer: Some(peer.parse().unwrap()),
            local: Some(format!("127.0.0.1:{port}").parse().unwrap()),
            tls: Some(Arc::new(TlsInfo {
                sni: sni.map(str::to_string),
                alpn: alpn.map(|a| a.as_bytes().to_vec()),
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    #[test]
    fn match_conditions() {
        let m = Match {
            sni: Some("*.example.com".into()),
            ..Default::default()
        }
        .compile()
        .unwrap();
        assert!(m(&cx("1.2.3.4:1", 1, Some("a.b.Example.COM"), None)));
        assert!(!m(&cx("1.2.3.4:1", 1, Some("example.com"), None)));
        assert!(!m(&cx("1.2.3.4:1", 1, Some("xexample.com"), None)));
        assert!(!m(&cx("1.2.3.4:1", 1, None, None)));
        let m = Match {
            peer: Some("10.0.0.0/8".into()),
            port: Some(8443),
            alpn: Some("h2".into()),
            ..Default::default()
        }
        .compile()
        .unwrap();
        assert!(m(&cx("10.9.8.7:5", 8443, None, Some("h2"))));
        assert!(m(&cx("[::ffff:10.1.1.1]:5", 8443, None, Some("h2"))));
        assert!(!m(&cx("11.0.0.1:5", 8443, None, Some("h2"))));
        assert!(!m(&cx("10.0.0.1:5", 80, None, Some("h2"))));
        assert!(!m(&cx("10.0.0.1:5", 8443, None, Some("http/1.1"))));
        let m = Match {
            peer: Some("2001:db8::/32".into()),
            ..Default::default()
        }
        .compile()
        .unwrap();
        assert!(m(&cx("[2001:db8::1]:5", 1, None, None)));
        assert!(!m(&cx("[2001:db9::1]:5", 1, None, None)));
        assert!(
            Match {
                peer: Some("10.0.0.0/33".into()),
                ..Default::default()
            }
            .compile()
            .is_err()
        );
        assert!(
            Match {
                peer: Some("nope".into()),
                ..Default::default()
            }
            .compile()
            .is_err()
        );
        let all = Match::default().compile().unwrap();
        assert!(all(&Context::new()));
        // The destination: the original one of a redirected connection, else the local.
        let captured = |dst: Option<&str>| {
            Context::with_conn(ConnInfo {
                local: Some("127.0.0.1:15001".parse().unwrap()),
                original_dst: dst.map(|d| d.parse().unwrap()),
                ..Default::default()
            })
        };
        let m = Match {
            destination: Some("10.96.0.0/16".into()),
            destination_port: Some(80),
            ..Default::default()
        }
        .compile()
        .unwrap();
        assert!(m(&captured(Some("10.96.3.4:80"))));
        assert!(!m(&captured(Some("10.96.3.4:81"))));
        assert!(!m(&captured(Some("10.97.3.4:80"))));
        assert!(!m(&captured(None)));
        let local = Match {
            destination_port: Some(15001),
            ..Default::default()
        }
        .compile()
        .unwrap();
        assert!(local(&captured(None)) && !local(&captured(Some("10.96.3.4:80"))));
    }

    fn with_identity(id: Option<&str>) -> Context {
        Context::with_conn(ConnInfo {
            tls: Some(Arc::new(TlsInfo {
                sni: Some("web".into()),
                peer_identity: id.map(str::to_string),
                ..Default::default()
            })),
            ..Default::default()
        })
    }

    #[test]
    fn identities_and_refusing_the_rest() {
        let buyer = "spiffe://cluster.local/ns/shop/sa/buyer";
        let m = Match {
            sni: Some("web".into()),
            identities: vec![buyer.into()],
            ..Default::default()
        }
        .compile()
        .unwrap();
        assert!(m(&with_identity(Some(buyer))));
        assert!(!m(&with_identity(Some(
            "spiffe://cluster.local/ns/shop/sa/thief"
        ))));
        assert!(!m(&with_identity(None)));
        let any = Match {
            identities: vec!["*".into()],
            ..Default::default()
        }
        .compile()
        .unwrap();
        assert!(any(&with_identity(Some("x"))) && !any(&with_identity(None)));

        // Closing what no arm takes, decided at the start (no input needed): a refused
        // identity meets a closed connection before it sends anything.
        let config: BranchConfig = serde_json::from_value(serde_json::json!({
            "arms": [{"when": {"identities": [buyer]}, "pipeline": "allowed"}],
            "refuse_others": true,
            "on_start": true,
        }))
        .unwrap();
        let branch = Box::new(config)
            .build(&BuildContext::new(std::path::Path::new(".")))
            .unwrap();
        let thief = with_identity(Some("spiffe://cluster.local/ns/shop/sa/thief"));
        let mut h = crate::testing::Harness::with_context(&*branch, &thief);
        let Some(crate::Event::StreamEnd(Some(e))) = h.try_next() else {
            panic!("refused at once")
        };
        assert_eq!(e.kind(), crate::ErrorKind::NoRoute);
    }
}
