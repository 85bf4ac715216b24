//! Health-driven VIPs: a VIP is announced while a probe of the local service passes and
//! withdrawn as soon as one probe fails, so a router stops sending traffic to this node
//! within one probe interval (the probe timeout is capped below the interval).
//!
//! ```
//! use flowgate_bgp::vip::VipConfig;
//!
//! let vip = VipConfig::tcp("192.0.2.10/32".parse()?, "127.0.0.1:8080".parse()?);
//! assert_eq!(vip.interval_ms, 1000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, interval, timeout};

use crate::packet::Prefix;
use crate::speaker::{RouteAttributes, Speaker};

/// One VIP and the probe that guards it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// The VIP, usually a /32 or /128.
    pub prefix: Prefix,
    /// Attributes to announce it with (default: ORIGIN IGP, nothing else).
    #[serde(default)]
    pub attributes: RouteAttributes,
    /// How to check the local service.
    pub probe: ProbeConfig,
    /// Time between probes in milliseconds (default 1000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Probe timeout in milliseconds (default: half the interval; capped at the interval).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Consecutive passes needed before (re-)announcing (default 1).
    #[serde(default = "default_rise")]
    pub rise: u32,
}

fn default_interval() -> u64 {
    1000
}

fn default_rise() -> u32 {
    1
}

impl VipConfig {
    /// A VIP guarded by a TCP connect probe, with the defaults above.
    pub fn tcp(prefix: Prefix, address: SocketAddr) -> Self {
        Self {
            prefix,
            attributes: RouteAttributes::default(),
            probe: ProbeConfig::Tcp { address },
            interval_ms: default_interval(),
            timeout_ms: None,
            rise: default_rise(),
        }
    }

    fn timeout(&self) -> Duration {
        let t = self
            .timeout_ms
            .unwrap_or(self.interval_ms / 2)
            .min(self.interval_ms);
        Duration::from_millis(t.max(1))
    }
}

/// A health probe of the local service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProbeConfig {
    /// Passes when a TCP connection is accepted.
    Tcp {
        /// The service address.
        address: SocketAddr,
    },
    /// Passes when `GET path` answers with a status in `expect` (default 200–399).
    Http {
        /// The service address.
        address: SocketAddr,
        /// The request path (default `/`).
        #[serde(default = "default_path")]
        path: String,
        /// Accepted status codes (default: any 2xx or 3xx).
        #[serde(default)]
        expect: Vec<u16>,
    },
}

fn default_path() -> String {
    "/".to_owned()
}

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// No answer within the timeout.
    #[error("probe timed out")]
    Timeout,
    /// The connection failed.
    #[error("connection failed: {0}")]
    Io(std::io::ErrorKind),
    /// The HTTP answer had an unexpected status (0: not HTTP).
    #[error("unexpected HTTP status {0}")]
    Status(u16),
}

impl ProbeConfig {
    /// Runs the probe once.
    pub async fn check(&self, limit: Duration) -> Result<(), ProbeError> {
        timeout(limit, self.check_inner())
            .await
            .map_err(|_| ProbeError::Timeout)?
    }

    async fn check_inner(&self) -> Result<(), ProbeError> {
        let io = |e: std::io::Error| ProbeError::Io(e.kind());
        match self {
            ProbeConfig::Tcp { address } => TcpStream::connect(address).await.map(drop).map_err(io),
            ProbeConfig::Http {
                address,
                path,
                expect,
            } => {
                let mut s = TcpStream::connect(address).await.map_err(io)?;
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: flowgate-bgp\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.map_err(io)?;
                let mut head = Vec::with_capacity(256);
                while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 1024 {
                    if s.read_buf(&mut head).await.map_err(io)? == 0 {
                        break;
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let status: u16 = line
                    .strip_prefix("HTTP/1.")
                    .and_then(|r| r.get(2..5))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                let ok = if expect.is_empty() {
                    (200..400).contains(&status)
                } else {
                    expect.contains(&status)
                };
                if ok {
                    Ok(())
                } else {
                    Err(ProbeError::Status(status))
                }
            }
        }
    }
}

/// The state of one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipStatus {
    /// The VIP.
    pub prefix: Prefix,
    /// True while announced.
    pub announced: bool,
    /// The last probe failure, if the last probe failed.
    pub last_error: Option<ProbeError>,
}

/// Running VIP probes; dropping it (or [`stop`](Self::stop)) stops probing, and withdraws
/// nothing by itself: the speaker's shutdown withdraws everything.
#[derive(Debug)]
pub struct HealthDrivenVips {
    status: Arc<Mutex<Vec<VipStatus>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl HealthDrivenVips {
    /// Starts one probe task per VIP, announcing and withdrawing through `speaker`.
    pub fn spawn(speaker: &Speaker, vips: Vec<VipConfig>) -> Self {
        let status = Arc::new(Mutex::new(
            vips.iter()
                .map(|v| VipStatus {
                    prefix: v.prefix,
                    announced: false,
                    last_error: None,
                })
                .collect(),
        ));
        let tasks = vips
            .into_iter()
            .enumerate()
            .map(|(i, vip)| tokio::spawn(probe_loop(speaker.clone(), vip, status.clone(), i)))
            .collect();
        Self { status, tasks }
    }

    /// The state of every VIP.
    pub fn status(&self) -> Vec<VipStatus> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops probing and withdraws the VIPs this set announced.
    pub fn stop(self, speaker: &Speaker) {
        for t in &self.tasks {
            t.abort();
        }
        for s in self.status() {
            if s.announced {
                speaker.withdraw(s.prefix);
            }
        }
    }
}

impl Drop for HealthDrivenVips {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn probe_loop(
    speaker: Speaker,
    vip: VipConfig,
    status: Arc<Mutex<Vec<VipStatus>>>,
    i: usize,
) {
    let mut tick = interval(Duration::from_millis(vip.interval_ms.max(1)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let limit = vip.timeout();
    let mut passes = 0u32;
    let mut announced = false;
    loop {
        tick.tick().await;
        let result = vip.probe.check(limit).await;
        match &result {
            Ok(()) => {
                passes = passes.saturating_add(1);
                if !announced && passes >= vip.rise {
                    tracing::info!(vip = %vip.prefix, "probe passes: announcing");
                    speaker.announce(vip.prefix, vip.attributes.clone());
                    announced = true;
                }
            }
            Err(e) => {
                passes = 0;
                if announced {
                    tracing::warn!(vip = %vip.prefix, error = %e, "probe failed: withdrawing");
                    speaker.withdraw(vip.prefix);
                    announced = false;
                }
            }
        }
        if let Ok(mut s) = status.lock()
            && let Some(s) = s.get_mut(i)
        {
            s.announced = announced;
            s.last_error = result.err();
        }
    }
}
