//! Access logs for `demux-http`: one line per request, in the common log format or as JSON,
//! through `tracing` (target `flowgate::access`, level info).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// `127.0.0.1 - - [22/Nov/2026:06:43:35 +0000] "GET / HTTP/1.1" 200 12 0.000321`
    /// (the common log format plus the duration in seconds).
    Common,
    /// `{"peer":…,"method":…,"path":…,"version":…,"status":…,"bytes":…,"duration_ms":…}`.
    Json,
}

struct Pending {
    method: String,
    target: String,
    version: &'static str,
    time: SystemTime,
    start: Instant,
    status: u16,
    bytes: u64,
}

/// The requests of one connection waiting for their responses (in order, as replies are).
#[derive(Clone)]
pub(crate) struct AccessLog {
    format: AccessLogFormat,
    peer: Option<SocketAddr>,
    pending: Arc<Mutex<VecDeque<Pending>>>,
}

fn version(v: http::Version) -> &'static str {
    if v == http::Version::HTTP_10 {
        "HTTP/1.0"
    } else if v == http::Version::HTTP_2 {
        "HTTP/2.0"
    } else {
        "HTTP/1.1"
    }
}

impl AccessLog {
    pub(crate) fn new(format: AccessLogFormat, peer: Option<SocketAddr>) -> Self {
        AccessLog {
            format,
            peer,
            pending: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request head was decoded.
    pub(crate) fn request(&self, head: &http::request::Parts) {
        let target = head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        self.lock().push_back(Pending {
            method: head.method.to_string(),
            target,
            version: version(head.version),
            time: SystemTime::now(),
            start: Instant::now(),
            status: 0,
            bytes: 0,
        });
    }

    /// The response to the oldest request started.
    pub(crate) fn status(&self, status: u16) {
        if let Some(p) = self.lock().front_mut() {
            p.status = status;
        }
    }

    /// Body bytes of the current response.
    pub(crate) fn bytes(&self, n: usize) {
        if let Some(p) = self.lock().front_mut() {
            p.bytes += n as u64;
        }
    }

    /// The response to the oldest request ended: log it.
    pub(crate) fn done(&self) {
        let Some(p) = self.lock().pop_front() else {
            return;
        };
        let peer = self
            .peer
            .map_or_else(|| "-".to_string(), |a| a.ip().to_string());
        let secs = p.start.elapsed().as_secs_f64();
        match self.format {
            AccessLogFormat::Common => tracing::info!(
                target: "flowgate::access",
                "{peer} - - [{}] \"{} {} {}\" {} {} {secs:.6}",
                clf_time(p.time), p.method, p.target, p.version, p.status, p.bytes
            ),
            AccessLogFormat::Json => tracing::info!(
                target: "flowgate::access",
                "{}",
                serde_json::json!({
                    "peer": peer, "method": p.method, "path": p.target, "version": p.version,
                    "status": p.status, "bytes": p.bytes, "duration_ms": secs * 1e3,
                })
            ),
        }
    }
}

/// `22/Nov/2026:06:43:35 +0000` for a UTC time.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS.get((month - 1) as usize).copied().unwrap_or("Jan");
    format!(
        "{day:02}/{name}/{year}:{:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn common_log_time() {
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        // 2026-11-22T06:43:35Z
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(1_795_329_815)),
            "22/Nov/2026:06:43:35 +0000"
        );
        // 2024-02-29T23:59:59Z (a leap day)
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
            "29/Feb/2024:23:59:59 +0000"
        );
    }
}
