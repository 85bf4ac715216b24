//! # flowgate-filters-mqtt
//!
//! Flowgate's MQTT filters, on the `flowgate-mqtt` codec: [`MqttProxy`] (`proxy-mqtt`), an MQTT-aware proxy that
//! spreads client connections over brokers, and [`DecodeMqtt`] / [`EncodeMqtt`]
//! (`decode-mqtt`, `encode-mqtt`), which turn MQTT bytes into message events and back.
//!
//! ```
//! use flowgate_filters_mqtt::{MqttProxy, MqttProxyConfig};
//! // Two brokers; a client id always lands on the same one (Maglev over flowgate-lb).
//! let proxy = MqttProxy::new(MqttProxyConfig::new(["10.0.0.1:1883", "10.0.0.2:1883"]))?;
//! assert_eq!(proxy.metrics().active, 0);
//! # Ok::<(), flowgate_pipeline::registry::ConfigError>(())
//! ```
//!
//! ```text
//!  client ──TCP/TLS──▶ accept-tls? ─▶ proxy-mqtt ──TCP──▶ broker (picked by client id)
//!                                      │ CONNECT: auth, will ACL, prefix, pick, connect
//!                                      │ client → broker: ACL, rate, in-flight, prefix
//!                                      │ broker → client: prefix stripped, SUBACK merged
//! ```
//!
//! One session per client connection, polled inline by the connection's own task: it
//! reads the client's stream of bytes, decodes it with [`flowgate_mqtt::Decoder`], and
//! talks to its broker over its own socket. What it does, in order:
//!
//! 1. waits up to `connect_wait` for CONNECT (anything else first closes the connection);
//! 2. authenticates (users file, or the TLS client-certificate identity) and answers a
//!    refusal itself with the right CONNACK code (3.1.1: 4 or 5; MQTT 5: 0x86 or 0x87);
//! 3. picks a broker with [`flowgate_lb`] keyed on the client id (Maglev by default), so
//!    one client id always lands on the same broker and its session stays there; a broker
//!    that refuses the connection is ejected and the next one is tried; when none answers
//!    the client gets "server unavailable" (3 / 0x88);
//! 4. relays packets both ways, re-encoded: a PUBLISH's payload is streamed in pieces,
//!    never buffered whole. Client PUBLISHes pass the topic ACL, the per-client rate limit
//!    and the in-flight limit (both by back-pressure: the client is not read until it may
//!    go on); SUBSCRIBE filters the ACL refuses get a failure code in SUBACK; topics get
//!    the tenant prefix on the way in and lose it on the way out.
//!
//! A malformed packet closes that client's connection (MQTT 5: with a DISCONNECT carrying
//! the reason code) and nothing else. So does a packet larger than `max_packet_size`, which
//! counts the whole packet, a PUBLISH's payload included (as MQTT 5 and mosquitto count
//! it): it is refused from its fixed header, so none of it reaches the broker (MQTT 5:
//! DISCONNECT 0x95 Packet too large, the limit having been said in CONNACK). The broker sees an abrupt close, so it publishes the
//! client's will, as it would for any network failure.
//!
//! ```yaml
//! listeners:
//!   - listen: 0.0.0.0:1883
//!     pipeline: mqtt            # a listener names its pipeline
//! pipelines:
//!   mqtt:
//!     - proxy-mqtt:
//!         endpoints: [10.0.0.1:1883, 10.0.0.2:1883]
//!         auth: { users_file: /etc/flowgate/mqtt-users }
//!         acl:
//!           default: deny
//!           rules: [{ action: allow, topic: "devices/%c/#" }]
//!         limits: { publish_rate: 100, max_inflight: 20 }
//!         max_packet_size: 2MiB   # the whole packet, PUBLISH payload included
//!         prefix: "tenants/%u/"
//! ```
//!
//! (`tests/configs.rs` loads every YAML example of these docs with the real configuration
//! loader.)

pub mod acl;
pub mod auth;
mod codec;
mod relay;
mod session;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig, Registry};
use flowgate_pipeline::renamed::{self, Renamed};
use flowgate_pipeline::{
    Context, Description, ErrorKind, Events, Filter, Side, StreamError, error_stream,
};
use serde::{Deserialize, Serialize};

pub use acl::{AclConfig, OnDeny};
pub use auth::{AuthConfig, Authenticator};
pub use codec::{
    DecodeMqtt, DecodeMqttConfig, EncodeMqtt, EncodeMqttConfig, MqttHead, MqttMessage, Role,
};
use flowgate_pipeline::Size;

/// Registers the `mqtt` filters.
pub fn register(r: &mut Registry) {
    r.register::<MqttProxyConfig>("proxy-mqtt");
    r.register::<DecodeMqttConfig>("decode-mqtt");
    r.register::<EncodeMqttConfig>("encode-mqtt");
}

/// Per-client limits (`limits:` of `proxy-mqtt`). Both work by back-pressure: a client at
/// its limit is not read until it may go on, so nothing is dropped.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// PUBLISH packets per second per client; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_rate: Option<f64>,
    /// How many PUBLISHes may come at once above the rate (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_burst: Option<u32>,
    /// QoS 1/2 PUBLISHes a client may have unacknowledged by its broker; none by default.
    /// MQTT 5 clients are also told through CONNACK's Receive Maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<u16>,
}

/// Configuration of [`MqttProxy`] (`proxy-mqtt:` in YAML).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttProxyConfig {
    /// The brokers, `IP:port`.
    pub endpoints: Vec<String>,
    #[doc(hidden)]
    #[serde(default, rename = "brokers", skip_serializing)]
    pub renamed_brokers: Renamed<renamed::Brokers>,
    /// How brokers are picked; the key is the client id (or the client's IP when the
    /// client id is empty). Default: Maglev, with a broker that refuses a connection
    /// ejected at once (for 10 s, growing) so its clients go to the others meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<flowgate_lb::BalancerConfig>,
    /// Active health checks of the brokers (flowgate-lb's TCP probe, or HTTP against a
    /// broker's HTTP port), started with the first client: brokers that fail them are not
    /// picked. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<flowgate_lb::health::HealthCheckConfig>,
    /// How long connecting to a broker may take. Default 5 s.
    #[serde(
        default = "d_connect_timeout",
        with = "flowgate_pipeline::serde_duration"
    )]
    pub connect_timeout: Duration,
    /// How long a new client has to send CONNECT. Default 10 s.
    #[serde(default = "d_connect_wait", with = "flowgate_pipeline::serde_duration")]
    pub connect_wait: Duration,
    /// The largest packet a client may send, whole: fixed header, variable header and
    /// payload, a PUBLISH's payload included — MQTT 5's Maximum Packet Size (§3.1.2.11.4),
    /// counted as mosquitto's `max_packet_size` counts it. A larger packet is refused from
    /// its fixed header, before any of it reaches the broker: an MQTT 5 client gets
    /// DISCONNECT 0x95 (Packet too large), a 3.1.1 client is disconnected. MQTT 5 clients
    /// are told the limit in CONNACK. Packets other than PUBLISH are held whole while they
    /// arrive, so this also bounds the memory a client's packet takes. At most 256 MiB
    /// (what MQTT can carry). Default 1 MiB.
    #[serde(default = "d_max_packet")]
    pub max_packet_size: Size,
    /// A tighter bound for PUBLISH payloads (they are streamed, never held whole); it may
    /// not be larger than `max_packet_size`, which bounds the whole PUBLISH anyway. Default:
    /// none beyond `max_packet_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_payload_size: Option<Size>,
    /// Authentication; by default every client is accepted.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Topic access control; everything is allowed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<AclConfig>,
    /// Per-client limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// A topic prefix for multi-tenancy, e.g. `tenants/%u/` (`%u` = user name, `%c` =
    /// client id): added to every topic and filter the client sends, removed from every
    /// topic it receives. A client whose name would not make a single topic level (empty,
    /// or with `/`, `+`, `#`) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Log each connect and disconnect at info level. Default true.
    #[serde(default = "flowgate_pipeline::registry::default_true")]
    pub log: bool,
}

fn d_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn d_connect_wait() -> Duration {
    Duration::from_secs(10)
}
fn d_max_packet() -> Size {
    Size(1 << 20)
}

impl MqttProxyConfig {
    /// A configuration with every option at its default.
    pub fn new(brokers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        MqttProxyConfig {
            endpoints: brokers.into_iter().map(Into::into).collect(),
            renamed_brokers: Renamed::default(),
            balance: None,
            health_check: None,
            connect_timeout: d_connect_timeout(),
            connect_wait: d_connect_wait(),
            max_packet_size: d_max_packet(),
            max_payload_size: None,
            auth: AuthConfig::default(),
            acl: None,
            limits: LimitsConfig::default(),
            prefix: None,
            log: true,
        }
    }
}

impl FilterConfig for MqttProxyConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        Ok(Arc::new(MqttProxy::new(*self)?))
    }
}

/// Counters of a [`MqttProxy`], shared by all its connections.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicU64,
    active: AtomicU64,
    refused: AtomicU64,
    broker_failures: AtomicU64,
    malformed: AtomicU64,
    denied: AtomicU64,
    publishes_in: AtomicU64,
    publishes_out: AtomicU64,
}

/// A snapshot of [`Metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Client connections accepted so far.
    pub connections: u64,
    /// Client connections open now.
    pub active: u64,
    /// CONNECTs refused (authentication, names unusable for the prefix, will ACL).
    pub refused: u64,
    /// Failed connection attempts to brokers.
    pub broker_failures: u64,
    /// Clients closed for a malformed packet or a protocol error.
    pub malformed: u64,
    /// PUBLISHes and subscriptions the ACL refused.
    pub denied: u64,
    /// PUBLISHes from clients passed to brokers.
    pub publishes_in: u64,
    /// PUBLISHes from brokers passed to clients.
    pub publishes_out: u64,
}

impl Metrics {
    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            connections: g(&self.connections),
            active: g(&self.active),
            refused: g(&self.refused),
            broker_failures: g(&self.broker_failures),
            malformed: g(&self.malformed),
            denied: g(&self.denied),
            publishes_in: g(&self.publishes_in),
            publishes_out: g(&self.publishes_out),
        }
    }
}

/// What every session of one [`MqttProxy`] shares.
pub(crate) struct Shared {
    pub(crate) cfg: MqttProxyConfig,
    pub(crate) auth: Authenticator,
    pub(crate) group: flowgate_lb::Group,
    pub(crate) metrics: Metrics,
}

/// The MQTT proxy filter: see the [module documentation](self).
///
/// ```
/// use flowgate_filters_mqtt::{MqttProxy, MqttProxyConfig};
/// let mut cfg = MqttProxyConfig::new(["127.0.0.1:1883", "127.0.0.1:1884"]);
/// cfg.prefix = Some("tenants/%u/".into());
/// let proxy = MqttProxy::new(cfg)?;
/// assert_eq!(proxy.metrics().connections, 0);
/// # Ok::<(), flowgate_pipeline::registry::ConfigError>(())
/// ```
pub struct MqttProxy {
    shared: Arc<Shared>,
}

impl MqttProxy {
    /// Checks `cfg` and builds the proxy.
    pub fn new(cfg: MqttProxyConfig) -> Result<Self, ConfigError> {
        if cfg.endpoints.is_empty() {
            return Err(ConfigError::new("endpoints", "give at least one IP:port"));
        }
        let mut backends = Vec::with_capacity(cfg.endpoints.len());
        for (i, b) in cfg.endpoints.iter().enumerate() {
            let addr: std::net::SocketAddr = b
                .parse()
                .map_err(|_| ConfigError::new(format!("endpoints[{i}]"), "expected IP:port"))?;
            backends.push(flowgate_lb::Backend::new(addr));
        }
        if cfg.connect_timeout.is_zero() || cfg.connect_wait.is_zero() {
            return Err(ConfigError::new(
                "connect_timeout",
                "connect_timeout and connect_wait must be more than zero",
            ));
        }
        check_packet_limits(cfg.max_packet_size, cfg.max_payload_size)?;
        if let Some(r) = cfg.limits.publish_rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err(ConfigError::new(
                "limits.publish_rate",
                "a positive number of PUBLISHes per second",
            ));
        }
        if cfg.limits.max_inflight == Some(0) {
            return Err(ConfigError::new("limits.max_inflight", "at least 1"));
        }
        if let Some(acl) = &cfg.acl {
            acl.validate().map_err(|e| ConfigError::new("acl", e))?;
        }
        if let Some(p) = &cfg.prefix {
            let probe = format!("{}t", p.replace("%u", "u").replace("%c", "c"));
            flowgate_mqtt::validate_topic_name(&probe, 65_535)
                .map_err(|e| ConfigError::new("prefix", format!("{p:?}: {e}")))?;
            if p.starts_with('$') {
                return Err(ConfigError::new("prefix", "must not start with `$`"));
            }
        }
        let auth = Authenticator::new(&cfg.auth).map_err(|e| ConfigError::new("auth", e))?;
        let balance = cfg.balance.clone().unwrap_or_else(default_balance);
        let mut group = flowgate_lb::Group::new(balance, backends)?;
        if let Some(hc) = &cfg.health_check {
            group = group.health_check(hc.clone())?;
        }
        Ok(MqttProxy {
            shared: Arc::new(Shared {
                cfg,
                auth,
                group,
                metrics: Metrics::default(),
            }),
        })
    }

    /// The counters, now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The broker balancer (for status pages, health checks or discovery updates).
    pub fn balancer(&self) -> &flowgate_lb::Balancer {
        self.shared.group.balancer()
    }
}

/// Checks `max_packet_size` and `max_payload_size` (of `proxy-mqtt` and `decode-mqtt`).
pub(crate) fn check_packet_limits(packet: Size, payload: Option<Size>) -> Result<(), ConfigError> {
    if packet.0 < 64 {
        return Err(ConfigError::new("max_packet_size", "at least 64 bytes"));
    }
    if let Some(p) = payload
        && p.0 > packet.0
    {
        return Err(ConfigError::new(
            "max_payload_size",
            format!(
                "{} bytes is more than max_packet_size ({} bytes), which bounds the whole \
                 packet, payload included: raise max_packet_size, or leave max_payload_size \
                 out (it may only be tighter)",
                p.0, packet.0
            ),
        ));
    }
    Ok(())
}

/// The decoder limits for `max_packet_size` and `max_payload_size` (checked already).
pub(crate) fn packet_limits(packet: Size, payload: Option<Size>) -> flowgate_mqtt::Limits {
    let clamp = |s: Size| {
        usize::try_from(s.0).map_or(flowgate_mqtt::MAX_PACKET_SIZE, |n| {
            n.min(flowgate_mqtt::MAX_PACKET_SIZE)
        })
    };
    let max_packet_size = clamp(packet);
    flowgate_mqtt::Limits {
        max_packet_size,
        max_publish_payload: payload.map_or(max_packet_size, clamp),
        ..flowgate_mqtt::Limits::default()
    }
}

fn default_balance() -> flowgate_lb::BalancerConfig {
    let mut b =
        flowgate_lb::BalancerConfig::new(flowgate_lb::Algorithm::Maglev { table_size: 65_537 });
    b.outlier = Some(flowgate_lb::OutlierConfig {
        consecutive_connect_failures: 1,
        max_ejection_percent: 100,
        ..flowgate_lb::OutlierConfig::default()
    });
    b
}

impl Filter for MqttProxy {
    fn describe(&self) -> Description {
        Description::filter("proxy-mqtt").options(&self.shared.cfg)
    }

    fn attach(&self, input: Events, cx: &Context) -> Events {
        if tokio::runtime::Handle::try_current().is_err() {
            return error_stream(StreamError::new(ErrorKind::Internal, Side::Internal));
        }
        let (tx, rx) = flowgate_pipeline::feed::feed();
        let session = session::run(self.shared.clone(), input, cx.clone(), tx);
        Box::pin(Output {
            session: Some(Box::pin(session)),
            rx,
        })
    }
}

/// The client's side of a session: polls the session inline (in the connection's own
/// task, no second task and no cross-task wake-ups) and yields what it queued.
struct Output {
    session: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    rx: flowgate_pipeline::feed::FeedReceiver,
}

impl futures_core::Stream for Output {
    type Item = flowgate_pipeline::Event;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if let Poll::Ready(ev) = std::pin::Pin::new(&mut this.rx).poll_next(cx) {
                return Poll::Ready(ev);
            }
            let Some(session) = this.session.as_mut() else {
                return Poll::Pending;
            };
            match session.as_mut().poll(cx) {
                // Finished: what it queued last (at least its end) is in `rx`.
                Poll::Ready(()) => this.session = None,
                Poll::Pending => return std::pin::Pin::new(&mut this.rx).poll_next(cx),
            }
        }
    }
}
