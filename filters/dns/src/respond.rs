//! `dns-respond`: an authoritative answerer for the services of a registry, with answers
//! ordered and filtered by a `flowgate-lb` balancer.
//!
//! Names under the zone (`svc.test` below):
//!
//! | name | answers |
//! |---|---|
//! | `svc.test` | SOA, NS (`ns.svc.test`); NODATA for other types |
//! | `api.svc.test` | A / AAAA of the service's eligible endpoints, SRV with one target per endpoint |
//! | `_http._tcp.api.svc.test` | SRV, as above |
//! | `e3.api.svc.test` | A / AAAA of the service's fourth endpoint (the SRV targets) |
//! | anything else under the zone | NXDOMAIN with the SOA |
//!
//! Order: the service's balancer picks the first answer (round robin rotates it, weighted
//! algorithms favour heavy endpoints, hashing algorithms keep a client on one endpoint),
//! the other eligible endpoints follow, and `max_answers` cuts the list. Only eligible
//! endpoints are answered: unhealthy ones (marked by the `health_check` probes of
//! flowgate-lb, or by [`ServiceRegistry::set_healthy`]) and weight 0 are left out. Geo
//! steering: a [`GeoRule`] maps a client prefix — the EDNS client subnet when the query
//! has one, else the source address — to an endpoint zone; clients in it get that zone's
//! endpoints while any is eligible.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use flowgate_dns::hickory::rr::RData;
use flowgate_dns::hickory::rr::rdata::{NS, SOA, SRV};
use flowgate_dns::types::{class, rcode, rtype};
use flowgate_dns::{NameKey, Owner, ResponseWriter, answer_code, name, rdata_wire};
use flowgate_lb::Group;
use flowgate_lb::health::HealthCheckConfig;
use flowgate_lb::{Backend, Balancer, BalancerConfig};
use flowgate_pipeline::registry::{BuildContext, ConfigError, FilterConfig};
use flowgate_pipeline::{Context, Description, Event, Filter, Transform};
use serde::{Deserialize, Serialize};

use super::{DnsQuery, Gather};

/// Configuration of [`DnsRespond`] (`dns-respond:` in YAML).
///
/// ```yaml
/// - dns-respond:
///     zone: svc.test
///     ttl: 30
///     max_answers: 2
///     balance: weighted_round_robin
///     services:
///       - name: api
///         endpoints:
///           - 10.0.0.1:8080
///           - { address: 10.0.0.2:8080, weight: 3, metadata: { zone: eu } }
///     geo:
///       - { source: 192.0.2.0/24, zone: eu }
/// ```
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRespondConfig {
    /// The zone answered authoritatively.
    pub zone: String,
    /// TTL of answers, in seconds. Default 30.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// TTL of negative answers (the SOA MINIMUM), in seconds. Default 30.
    #[serde(default = "default_ttl")]
    pub negative_ttl: u32,
    /// The most addresses or SRV records per answer; 0 means all. Default 0.
    #[serde(default)]
    pub max_answers: usize,
    /// The balancer settings of every service without its own (flowgate-lb's `balance:`: an
    /// algorithm name or a map). Default round robin.
    #[serde(default)]
    pub balance: BalancerConfig,
    /// The services.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Client prefixes steered to endpoint zones, first match wins.
    #[serde(default)]
    pub geo: Vec<GeoRule>,
    /// Answer REFUSED for names outside the zone instead of passing them on. Default false.
    #[serde(default)]
    pub refuse_outside: bool,
}

fn default_ttl() -> u32 {
    30
}

/// A service of the registry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Its label under the zone.
    pub name: String,
    /// Its endpoints.
    #[serde(default)]
    pub endpoints: Vec<Backend>,
    /// Its own balancer settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalancerConfig>,
    /// Active health checks of its endpoints (flowgate-lb's TCP or HTTP probes);
    /// endpoints that fail them are not answered. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
}

/// Steers clients of a prefix to the endpoints of a zone (`metadata.zone`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GeoRule {
    /// The client prefix, `addr/len`.
    pub source: String,
    /// The endpoint zone.
    pub zone: String,
}

fn parse_prefix(s: &str) -> Option<(IpAddr, u8)> {
    let (a, l) = s.split_once('/')?;
    let a: IpAddr = a.trim().parse().ok()?;
    let l: u8 = l.trim().parse().ok()?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    (l <= max).then_some((a, l))
}

fn in_prefix(ip: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

impl FilterConfig for DnsRespondConfig {
    fn build(self: Box<Self>, _cx: &BuildContext) -> Result<Arc<dyn Filter>, ConfigError> {
        Ok(Arc::new(DnsRespond::new(*self)?))
    }
}

// === ServiceRegistry ===

struct Endpoint {
    backend: Backend,
    /// `e<i>.<service>.<zone>`.
    target: NameKey,
    srv: Vec<u8>,
}

struct Service {
    /// The service's balancer, with its health checks.
    group: Group,
    by_zone: HashMap<String, Balancer>,
    /// The zone balancers the group's health rounds copy their verdicts to (the same as
    /// `by_zone`'s; shared with a kept group's hook).
    zone_mirror: Arc<Mutex<Vec<Balancer>>>,
    endpoints: Vec<Endpoint>,
}

/// The services `dns-respond` answers for. Shared: update endpoints and health while the
/// server runs.
pub struct ServiceRegistry {
    zone: NameKey,
    zone_text: String,
    ttl: u32,
    negative_ttl: u32,
    max_answers: usize,
    default_balance: BalancerConfig,
    /// Health checks by service label (from the configuration).
    health: HashMap<Vec<u8>, HealthCheckConfig>,
    soa: Vec<u8>,
    ns: Vec<u8>,
    geo: Vec<((IpAddr, u8), String)>,
    services: RwLock<HashMap<Vec<u8>, Arc<Service>>>,
    rotation: AtomicUsize,
}

impl std::fmt::Debug for ServiceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRegistry")
            .field("zone", &self.zone_text)
            .finish_non_exhaustive()
    }
}

fn bad(field: &str, e: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(field, e)
}

impl ServiceRegistry {
    fn new(config: &DnsRespondConfig) -> Result<Self, ConfigError> {
        let zone = NameKey::from_dotted(&config.zone)
            .filter(|_| !config.zone.is_empty())
            .ok_or_else(|| bad("zone", "not a domain name"))?;
        let zone_text = zone.to_string();
        let n = |s: String| name(&s).map_err(|e| bad("zone", e));
        let soa = RData::SOA(SOA::new(
            n(format!("ns.{zone_text}"))?,
            n(format!("hostmaster.{zone_text}"))?,
            1,
            3600,
            600,
            86_400,
            config.negative_ttl,
        ));
        let soa = rdata_wire(&soa).map_err(|e| bad("zone", e))?;
        let ns = rdata_wire(&RData::NS(NS(n(format!("ns.{zone_text}"))?)))
            .map_err(|e| bad("zone", e))?;
        let mut geo = Vec::new();
        for (i, g) in config.geo.iter().enumerate() {
            let p = parse_prefix(&g.source)
                .ok_or_else(|| bad(&format!("geo[{i}].source"), "not a prefix like 10.0.0.0/8"))?;
            geo.push((p, g.zone.clone()));
        }
        config.balance.validate().map_err(|e| bad("balance", e))?;
        let health = config
            .services
            .iter()
            .filter_map(|s| {
                let hc = s.health_check.clone()?;
                Some((s.name.to_ascii_lowercase().into_bytes(), hc))
            })
            .collect();
        Ok(ServiceRegistry {
            zone,
            zone_text,
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
            max_answers: config.max_answers,
            default_balance: config.balance.clone(),
            health,
            soa,
            ns,
            geo,
            services: RwLock::new(HashMap::new()),
            rotation: AtomicUsize::new(0),
        })
    }

    /// The zone, as text with a trailing dot.
    pub fn zone(&self) -> &str {
        &self.zone_text
    }

    /// Adds or replaces a service with its endpoints, using `balance` (or the registry's
    /// default). A replaced service keeps its balancer's state when its balancer
    /// settings stay the same.
    pub fn set_service(
        &self,
        service: &str,
        endpoints: Vec<Backend>,
        balance: Option<BalancerConfig>,
    ) -> Result<(), ConfigError> {
        let label = service.to_ascii_lowercase().into_bytes();
        let svc_name = NameKey::from_dotted(&format!("{service}.{}", self.zone_text))
            .filter(|_| !service.is_empty() && !service.contains('.'))
            .ok_or_else(|| bad("services.name", format!("`{service}` is not one label")))?;
        let balance = balance.unwrap_or_else(|| self.default_balance.clone());
        let old = self.lookup(&label);
        let health = self.health.get(&label);
        let keep = old
            .as_ref()
            .filter(|o| *o.group.config() == balance && o.group.health_config() == health);
        let mk = || Balancer::new(balance.clone());
        let (group, zone_mirror) = match keep {
            Some(o) => (o.group.clone(), o.zone_mirror.clone()),
            None => {
                let mirror: Arc<Mutex<Vec<Balancer>>> = Arc::default();
                let mut g = Group::new(balance.clone(), Vec::new())?;
                if let Some(hc) = health {
                    let copy_to = mirror.clone();
                    g = g
                        .health_check(hc.clone())?
                        .after_health_round(move |b: &Balancer| {
                            let zones = copy_to.lock().unwrap_or_else(|p| p.into_inner());
                            for st in b.status() {
                                for zb in zones.iter() {
                                    zb.set_healthy(st.backend.addr, st.healthy);
                                }
                            }
                        });
                }
                (g, mirror)
            }
        };
        group.balancer().set_backends(endpoints.clone());
        let mut by_zone: HashMap<String, Vec<Backend>> = HashMap::new();
        for b in &endpoints {
            if let Some(z) = &b.metadata.zone {
                by_zone.entry(z.clone()).or_default().push(b.clone());
            }
        }
        let mut zones = HashMap::new();
        for (z, bs) in by_zone {
            let b = match keep.and_then(|o| o.by_zone.get(&z)) {
                Some(b) => b.clone(),
                None => mk().map_err(|e| bad("balance", e))?,
            };
            b.set_backends(bs);
            zones.insert(z, b);
        }
        let mut eps = Vec::with_capacity(endpoints.len());
        for (i, b) in endpoints.into_iter().enumerate() {
            let target = svc_name
                .prepend(format!("e{i}").as_bytes())
                .ok_or_else(|| bad("services.name", "name too long"))?;
            let srv = RData::SRV(SRV::new(
                0,
                b.weight.min(65_535) as u16,
                b.addr.port(),
                name(&target.to_string()).map_err(|e| bad("services.name", e))?,
            ));
            let srv = rdata_wire(&srv).map_err(|e| bad("services.name", e))?;
            eps.push(Endpoint {
                backend: b,
                target,
                srv,
            });
        }
        *zone_mirror.lock().unwrap_or_else(|p| p.into_inner()) = zones.values().cloned().collect();
        let svc = Arc::new(Service {
            group,
            by_zone: zones,
            zone_mirror,
            endpoints: eps,
        });
        let mut map = self.services.write().unwrap_or_else(|p| p.into_inner());
        map.insert(label, svc);
        Ok(())
    }

    /// Removes a service; its names answer NXDOMAIN from then on.
    pub fn remove_service(&self, service: &str) -> bool {
        let mut map = self.services.write().unwrap_or_else(|p| p.into_inner());
        map.remove(service.to_ascii_lowercase().as_bytes())
            .is_some()
    }

    /// Marks an endpoint of a service healthy or not. Unhealthy endpoints are not
    /// answered. Returns whether anything changed.
    pub fn set_healthy(&self, service: &str, addr: SocketAddr, healthy: bool) -> bool {
        let Some(s) = self.lookup(service.to_ascii_lowercase().as_bytes()) else {
            return false;
        };
        let mut changed = s.group.balancer().set_healthy(addr, healthy);
        for b in s.by_zone.values() {
            changed |= b.set_healthy(addr, healthy);
        }
        changed
    }

    fn lookup(&self, label: &[u8]) -> Option<Arc<Service>> {
        let map = self.services.read().unwrap_or_else(|p| p.into_inner());
        map.get(label).cloned()
    }

    fn client_ip(q: &DnsQuery) -> Option<IpAddr> {
        q.info
            .opt
            .and_then(|o| o.client_subnet)
            .map(|e| e.addr)
            .or(q.peer.map(|p| p.ip()))
    }

    /// The addresses to answer, in order.
    fn pick(&self, svc: &Service, q: &DnsQuery, v6: bool) -> Vec<SocketAddr> {
        let ip = Self::client_ip(q);
        let key = flowgate_lb::peer_key(ip.map(|ip| SocketAddr::new(ip, 0)));
        svc.group.maintain();
        let zone_balancer = ip.and_then(|ip| {
            self.geo
                .iter()
                .find(|(p, _)| in_prefix(ip, *p))
                .and_then(|(_, z)| svc.by_zone.get(z))
        });
        let candidates = zone_balancer
            .into_iter()
            .chain(std::iter::once(svc.group.balancer()));
        for b in candidates {
            let mut el: Vec<SocketAddr> = b
                .eligible()
                .into_iter()
                .filter(|a| a.is_ipv6() == v6)
                .collect();
            if el.is_empty() {
                continue;
            }
            let first = b.pick(key).map(|l| l.addr());
            let start = first
                .and_then(|f| el.iter().position(|a| *a == f))
                .unwrap_or_else(|| self.rotation.fetch_add(1, Ordering::Relaxed) % el.len());
            el.rotate_left(start);
            if self.max_answers > 0 {
                el.truncate(self.max_answers);
            }
            return el;
        }
        Vec::new()
    }

    fn address_rdata(addr: &SocketAddr) -> Vec<u8> {
        match addr.ip() {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// The answer to `q`, or `None` when its name is outside the zone.
    pub fn answer(&self, q: &DnsQuery) -> Option<Vec<u8>> {
        let question = q.info.question.as_ref()?;
        let prefix = question.name.strip_zone(&self.zone)?;
        if question.qclass != class::IN && question.qclass != 255 {
            return Some(answer_code(&q.wire, &q.info, rcode::REFUSED, false));
        }
        let mut labels: Vec<&[u8]> = Vec::with_capacity(3);
        let mut i = 0;
        while i < prefix.len() {
            let l = usize::from(prefix[i]);
            labels.push(prefix.get(i + 1..i + 1 + l)?);
            i += 1 + l;
        }
        let qt = question.qtype;
        let mut w = ResponseWriter::new(&q.wire, &q.info, rcode::NOERROR, true);
        if let Some(ecs) = q.info.opt.and_then(|o| o.client_subnet) {
            let scope = if self.geo.is_empty() {
                0
            } else {
                ecs.source_prefix
            };
            w.client_subnet_scope(ecs, scope);
        }
        let found = match labels.as_slice() {
            [] => {
                if qt == rtype::SOA || qt == rtype::ANY {
                    w.answer(Owner::Question, rtype::SOA, self.ttl, &self.soa);
                }
                if qt == rtype::NS || qt == rtype::ANY {
                    w.answer(Owner::Question, rtype::NS, self.ttl, &self.ns);
                }
                true
            }
            [svc] => match self.lookup(svc) {
                Some(s) => {
                    self.service_answer(&mut w, &s, q, qt);
                    true
                }
                None => false,
            },
            [ep, svc] if ep.first() == Some(&b'e') => {
                let idx = std::str::from_utf8(&ep[1..])
                    .ok()
                    .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|d| d.parse::<usize>().ok());
                match (self.lookup(svc), idx) {
                    (Some(s), Some(i)) if i < s.endpoints.len() => {
                        let a = s.endpoints[i].backend.addr;
                        if (qt == rtype::A && a.is_ipv4()) || (qt == rtype::AAAA && a.is_ipv6()) {
                            w.answer(Owner::Question, qt, self.ttl, &Self::address_rdata(&a));
                        }
                        true
                    }
                    _ => false,
                }
            }
            [a, b, svc] if a.first() == Some(&b'_') && b.first() == Some(&b'_') => {
                match self.lookup(svc) {
                    Some(s) => {
                        if qt == rtype::SRV {
                            self.service_answer(&mut w, &s, q, qt);
                        }
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if !found {
            let mut w = ResponseWriter::new(&q.wire, &q.info, rcode::NXDOMAIN, true);
            w.authority(
                Owner::Wire(self.zone.as_bytes()),
                rtype::SOA,
                self.negative_ttl,
                &self.soa,
            );
            return Some(w.finish(None));
        }
        if w.counts()[0] == 0 {
            w.authority(
                Owner::Wire(self.zone.as_bytes()),
                rtype::SOA,
                self.negative_ttl,
                &self.soa,
            );
        }
        Some(w.finish(None))
    }

    fn service_answer(&self, w: &mut ResponseWriter, s: &Service, q: &DnsQuery, qt: u16) {
        match qt {
            rtype::A | rtype::AAAA => {
                for a in self.pick(s, q, qt == rtype::AAAA) {
                    w.answer(Owner::Question, qt, self.ttl, &Self::address_rdata(&a));
                }
            }
            rtype::SRV => {
                let mut chosen = self.pick(s, q, false);
                chosen.extend(self.pick(s, q, true));
                let eps: Vec<&Endpoint> = chosen
                    .iter()
                    .filter_map(|a| s.endpoints.iter().find(|e| e.backend.addr == *a))
                    .collect();
                for e in &eps {
                    w.answer(Owner::Question, rtype::SRV, self.ttl, &e.srv);
                }
                for e in &eps {
                    let a = e.backend.addr;
                    let t = if a.is_ipv4() { rtype::A } else { rtype::AAAA };
                    w.additional(
                        Owner::Wire(e.target.as_bytes()),
                        t,
                        self.ttl,
                        &Self::address_rdata(&a),
                    );
                }
            }
            _ => {}
        }
    }
}

// === DnsRespond ===

/// Answers queries for names of its zone from a [`ServiceRegistry`]; passes other queries
/// on (or refuses them with `refuse_outside`).
#[derive(Clone, Debug)]
pub struct DnsRespond {
    config: Arc<DnsRespondConfig>,
    registry: Arc<ServiceRegistry>,
    health_started: Arc<AtomicBool>,
}

impl DnsRespond {
    /// Builds the filter and its registry from `config`.
    pub fn new(config: DnsRespondConfig) -> Result<Self, ConfigError> {
        let registry = ServiceRegistry::new(&config)?;
        for (i, s) in config.services.iter().enumerate() {
            registry
                .set_service(&s.name, s.endpoints.clone(), s.balance.clone())
                .map_err(|e| ConfigError::new(format!("services[{i}].{}", e.field), e.problem))?;
        }
        Ok(DnsRespond {
            config: Arc::new(config),
            registry: Arc::new(registry),
            health_started: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The registry, to change services, endpoints and health at run time.
    pub fn registry(&self) -> &Arc<ServiceRegistry> {
        &self.registry
    }

    /// Starts the health checks of the services that have one, on the current runtime,
    /// once (each service's [`Group`] would start its own on its first query; this starts
    /// them all with the first stream). A service's checks stop when it is replaced with
    /// other settings or removed, and when the registry is dropped (after a reload).
    fn start_health_checks(&self) {
        if self.health_started.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
            || self.health_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let services: Vec<Arc<Service>> = {
            let map = self
                .registry
                .services
                .read()
                .unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        for svc in services {
            svc.group.start();
        }
    }
}

impl Filter for DnsRespond {
    fn describe(&self) -> Description {
        Description::filter("dns-respond").options(&*self.config)
    }

    fn transform(&self, _cx: &Context) -> Option<Box<dyn Transform>> {
        self.start_health_checks();
        let reg = self.registry.clone();
        let refuse = self.config.refuse_outside;
        let mut gather = Gather::default();
        Some(Box::new(move |ev: Event, out: &mut dyn FnMut(Event)| {
            gather.on_event(ev, out, &mut |m, out| {
                if m.answered {
                    return m.pass(out);
                }
                match reg.answer(&m.query) {
                    Some(resp) => m.answer(Bytes::from(resp), out),
                    None if refuse => {
                        let r = answer_code(&m.query.wire, &m.query.info, rcode::REFUSED, false);
                        m.answer(Bytes::from(r), out);
                    }
                    None => m.pass(out),
                }
            });
        }))
    }
}
