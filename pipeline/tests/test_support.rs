//! The helpers integration tests across the workspace share (`flowgate_pipeline::testing`):
//! reserved ports are distinct, bindable, outside the kernel's ephemeral range and claimed
//! against other processes; `wait_until` returns as soon as its condition holds and gives
//! up at its deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flowgate_pipeline::testing::{reserve_port, wait_until, wait_until_async};

#[test]
fn reserved_ports_are_distinct_bindable_and_claimed_against_other_processes() {
    // From several threads at once, as parallel tests ask.
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..5).map(|_| reserve_port()).collect::<Vec<_>>()))
        .collect();
    let ports: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let distinct: BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ports.len(),
        "a port handed out twice: {ports:?}"
    );

    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let eph: Vec<u16> = range
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    for &port in &ports {
        assert!(
            !(eph[0]..=eph[1]).contains(&port),
            "{port} is in the ephemeral range {eph:?}"
        );
        // Free for the peer to bind, TCP and UDP.
        drop(std::net::TcpListener::bind(("127.0.0.1", port)).unwrap());
        drop(std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap());
        // Claimed: another open file description (as another process would have) cannot
        // take the port's lock.
        let lock =
            std::fs::File::open(flowgate_pipeline::testing::port_lock_dir().join(port.to_string()))
                .unwrap();
        assert!(
            matches!(lock.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            "port {port} is not locked"
        );
    }
}

#[test]
fn wait_until_returns_when_the_condition_holds_and_gives_up_at_the_deadline() {
    let started = Instant::now();
    let mut calls = 0;
    assert!(wait_until(Duration::from_secs(10), || {
        calls += 1;
        calls == 3
    }));
    assert_eq!(calls, 3);
    assert!(started.elapsed() < Duration::from_secs(5));

    let started = Instant::now();
    assert!(!wait_until(Duration::from_millis(200), || false));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn wait_until_async_follows_the_paused_clock() {
    let started = tokio::time::Instant::now();
    assert!(!wait_until_async(Duration::from_secs(30), || false).await);
    assert!(started.elapsed() >= Duration::from_secs(30));
    let mut calls = 0;
    assert!(
        wait_until_async(Duration::from_secs(30), || {
            calls += 1;
            calls == 2
        })
        .await
    );
}
