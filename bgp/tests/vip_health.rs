//! Health-driven VIPs against real local services on loopback (real time: probes do I/O).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowgate_bgp::packet::Prefix;
use flowgate_bgp::speaker::{Speaker, SpeakerConfig};
use flowgate_bgp::vip::{HealthDrivenVips, ProbeConfig, ProbeError, VipConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const INTERVAL_MS: u64 = 500;
/// Scheduling slack on a shared 2-core machine.
const SLACK_MS: u64 = 250;

async fn announced_within(
    speaker: &Speaker,
    prefix: Prefix,
    want: bool,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if speaker.announced().iter().any(|(p, _)| *p == prefix) == want {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probe_announces_and_withdraws_within_one_interval() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let speaker = Speaker::start(SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 1)))
        .await
        .unwrap();
    let prefix: Prefix = "192.0.2.10/32".parse().unwrap();
    let mut vip = VipConfig::tcp(prefix, addr);
    vip.interval_ms = INTERVAL_MS;
    let vips = HealthDrivenVips::spawn(&speaker, vec![vip]);
    assert!(
        announced_within(&speaker, prefix, true, Duration::from_secs(2))
            .await
            .is_some(),
        "never announced"
    );

    drop(listener); // the service dies
    let took = announced_within(&speaker, prefix, false, Duration::from_secs(2))
        .await
        .expect("never withdrawn");
    // One probe interval, plus scheduling slack.
    assert!(
        took < Duration::from_millis(INTERVAL_MS + SLACK_MS),
        "withdrawn after {took:?}"
    );
    let st = vips.status();
    assert!(!st[0].announced);
    assert_eq!(
        st[0].last_error,
        Some(ProbeError::Io(std::io::ErrorKind::ConnectionRefused))
    );
    speaker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_follows_the_status_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut req = vec![0u8; 1024];
            let n = s.read(&mut req).await.unwrap_or(0);
            assert!(req[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
            let status = if h.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = s
                .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                .await;
        }
    });
    let speaker = Speaker::start(SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 1)))
        .await
        .unwrap();
    let prefix: Prefix = "2001:db8::10/128".parse().unwrap();
    let vip = VipConfig {
        prefix,
        attributes: Default::default(),
        probe: ProbeConfig::Http {
            address: addr,
            path: "/healthz".into(),
            expect: vec![],
        },
        interval_ms: INTERVAL_MS,
        timeout_ms: None,
        rise: 2,
    };
    let vips = HealthDrivenVips::spawn(&speaker, vec![vip]);
    assert!(
        announced_within(&speaker, prefix, true, Duration::from_secs(2))
            .await
            .is_some()
    );
    healthy.store(false, Ordering::SeqCst);
    let took = announced_within(&speaker, prefix, false, Duration::from_secs(2))
        .await
        .expect("never withdrawn");
    assert!(
        took < Duration::from_millis(INTERVAL_MS + SLACK_MS),
        "withdrawn after {took:?}"
    );
    assert_eq!(vips.status()[0].last_error, Some(ProbeError::Status(503)));
    healthy.store(true, Ordering::SeqCst);
    // rise = 2: back after two passing probes.
    let back = announced_within(&speaker, prefix, true, Duration::from_secs(2))
        .await
        .expect("never re-announced");
    assert!(
        back >= Duration::from_millis(INTERVAL_MS),
        "re-announced after one pass: {back:?}"
    );
    vips.stop(&speaker);
    assert!(speaker.announced().is_empty());
    speaker.shutdown().await;
}
