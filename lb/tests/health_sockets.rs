//! Real sockets on loopback: active checks eject a killed backend within
//! interval × threshold and restore it when it returns; outlier detection ejects a
//! backend that answers 503.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flowgate_lb::health::{HealthCheckConfig, HealthChecker, Probe};
use flowgate_lb::{Algorithm, Backend, Balancer, BalancerConfig, Outcome, OutlierConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Serves `HTTP/1.1 <status>` to every connection on `listener`.
fn serve(listener: TcpListener, status: u16) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    })
}

async fn bind(addr: &str) -> TcpListener {
    TcpListener::bind(addr).await.unwrap()
}

/// Waits (bounded) until `cond` holds; returns how long it took.
async fn within(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[tokio::test]
async fn http_checks_eject_killed_backend_and_restore_it() {
    let a = bind("127.0.0.1:0").await;
    let b = bind("127.0.0.1:0").await;
    let (addr_a, addr_b): (SocketAddr, SocketAddr) =
        (a.local_addr().unwrap(), b.local_addr().unwrap());
    let _serve_a = serve(a, 200);
    let serve_b = serve(b, 200);

    let lb = Balancer::new(BalancerConfig::new(Algorithm::RoundRobin)).unwrap();
    lb.set_backends(vec![Backend::new(addr_a), Backend::new(addr_b)]);
    let interval = Duration::from_millis(100);
    let cfg = HealthCheckConfig {
        probe: Probe::Http {
            path: "/healthz".into(),
            host: None,
            expected: vec![200],
        },
        interval,
        timeout: Duration::from_millis(200),
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        ..HealthCheckConfig::default()
    };
    let checker = tokio::spawn(HealthChecker::new(lb.clone(), cfg).unwrap().run());
    // A fixed wait on purpose: two intervals of passing checks must not mark a live
    // backend down (something that does not happen cannot be polled for).
    tokio::time::sleep(interval * 2).await;
    assert_eq!(lb.eligible().len(), 2);

    // Kill b: the listener closes, connects are refused.
    serve_b.abort();
    let _ = serve_b.await;
    let took = within(Duration::from_secs(3), || !lb.eligible().contains(&addr_b)).await;
    let took = took.expect("killed backend never ejected");
    // Three failed rounds: at most interval × threshold, plus one interval of phase.
    assert!(took <= interval * 4, "ejected after {took:?}");
    for _ in 0..20 {
        assert_eq!(lb.pick(0).unwrap().addr(), addr_a);
    }

    // Bring b back on the same port.
    let b = bind(&addr_b.to_string()).await;
    let _serve_b = serve(b, 200);
    let took = within(Duration::from_secs(3), || lb.eligible().contains(&addr_b)).await;
    let took = took.expect("returned backend never restored");
    assert!(took <= interval * 3, "restored after {took:?}");
    checker.abort();
}

#[tokio::test]
async fn tcp_checks_mark_refused_port_down() {
    let dead = bind("127.0.0.1:0").await;
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let live = bind("127.0.0.1:0").await;
    let live_addr = live.local_addr().unwrap();
    let _serve = serve(live, 200);
    let lb = Balancer::new(BalancerConfig::new(Algorithm::RoundRobin)).unwrap();
    lb.set_backends(vec![Backend::new(live_addr), Backend::new(dead_addr)]);
    let cfg = HealthCheckConfig {
        interval: Duration::from_millis(50),
        unhealthy_threshold: 2,
        ..HealthCheckConfig::default()
    };
    let checker = tokio::spawn(HealthChecker::new(lb.clone(), cfg).unwrap().run());
    let ok = within(Duration::from_secs(2), || lb.eligible() == vec![live_addr]).await;
    assert!(ok.is_some(), "{:?}", lb.status());
    checker.abort();
}

/// Sends one GET and returns the status code.
async fn get_status(addr: SocketAddr) -> Result<u16, std::io::Error> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let line = String::from_utf8_lossy(&buf);
    Ok(line.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0))
}

#[tokio::test]
async fn outlier_detection_ejects_backend_answering_503() {
    let good = bind("127.0.0.1:0").await;
    let bad = bind("127.0.0.1:0").await;
    let (good_addr, bad_addr) = (good.local_addr().unwrap(), bad.local_addr().unwrap());
    let _g = serve(good, 200);
    let _b = serve(bad, 503);
    let mut cfg = BalancerConfig::new(Algorithm::RoundRobin);
    cfg.outlier = Some(OutlierConfig {
        consecutive_5xx: 3,
        max_ejection_percent: 50,
        ..OutlierConfig::default()
    });
    let lb = Balancer::new(cfg).unwrap();
    lb.set_backends(vec![Backend::new(good_addr), Backend::new(bad_addr)]);

    let mut statuses = Vec::new();
    for _ in 0..20 {
        let mut lease = lb.pick(0).unwrap();
        let outcome = match get_status(lease.addr()).await {
            Ok(code) => Outcome::Status(code),
            Err(_) => Outcome::ConnectFailure,
        };
        statuses.push((lease.addr(), outcome));
        lease.record(outcome);
    }
    let bad_seen = statuses.iter().filter(|(a, _)| *a == bad_addr).count();
    assert_eq!(
        bad_seen, 3,
        "exactly three 503s before ejection: {statuses:?}"
    );
    assert!(statuses.iter().any(|(_, o)| *o == Outcome::Status(503)));
    assert_eq!(lb.eligible(), vec![good_addr]);
    assert!(
        lb.status()
            .iter()
            .any(|s| s.backend.addr == bad_addr && s.ejected)
    );
}
