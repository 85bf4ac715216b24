//! A real etcd (Debian's `etcd-server`) on loopback: register endpoints under a prefix,
//! change them, and see the balancer follow within 1 s.
//!
//! Needs the `etcd` binary on PATH (`apt-get install -y etcd-server`); without it the test
//! skips or fails by the shared policy (`flowgate_pipeline::testing::require_peer`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use flowgate_lb::discovery::{EtcdClient, EtcdDiscovery, follow};
use flowgate_lb::{Algorithm, Balancer, BalancerConfig};
use flowgate_pipeline::testing::{Etcd, require_programs};

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn addrs(lb: &Balancer) -> Vec<String> {
    let mut v: Vec<String> = lb.eligible().iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn balancer_follows_etcd_prefix() {
    if !require_programs(&["etcd"]) {
        return;
    }
    let etcd = Etcd::start("lb");
    let client = EtcdClient::new(etcd.client, Duration::from_secs(2));
    client.put(b"/svc/web/a", b"127.0.0.1:9001").await.unwrap();
    client
        .put(b"/svc/web/b", br#"{"address":"127.0.0.1:9002","weight":3}"#)
        .await
        .unwrap();
    client
        .put(b"/svc/other/x", b"127.0.0.1:9999")
        .await
        .unwrap();

    let lb = Balancer::new(BalancerConfig::new(Algorithm::WeightedRoundRobin)).unwrap();
    let source = EtcdDiscovery::new(client.clone(), "/svc/web/");
    let task = tokio::spawn(follow(source, lb.clone(), Duration::from_millis(100)));

    let second = Duration::from_secs(1);
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let t = wait_until(second, || {
        addrs(&lb) == want(&["127.0.0.1:9001", "127.0.0.1:9002"])
    })
    .await;
    assert!(t.is_some(), "initial set not seen: {:?}", addrs(&lb));
    assert_eq!(lb.backends().iter().map(|b| b.weight).sum::<u32>(), 4);

    // Add one.
    client.put(b"/svc/web/c", b"127.0.0.1:9003").await.unwrap();
    let t = wait_until(second, || addrs(&lb).len() == 3).await;
    assert!(
        t.is_some(),
        "added endpoint not seen within 1 s: {:?}",
        addrs(&lb)
    );

    // Remove one.
    client.delete(b"/svc/web/a").await.unwrap();
    let t = wait_until(second, || {
        addrs(&lb) == want(&["127.0.0.1:9002", "127.0.0.1:9003"])
    })
    .await;
    assert!(
        t.is_some(),
        "deleted endpoint still there after 1 s: {:?}",
        addrs(&lb)
    );

    // Change one's weight and address.
    client
        .put(b"/svc/web/b", br#"{"address":"127.0.0.1:9012","weight":5}"#)
        .await
        .unwrap();
    let t = wait_until(second, || {
        addrs(&lb) == want(&["127.0.0.1:9003", "127.0.0.1:9012"])
    })
    .await;
    assert!(
        t.is_some(),
        "changed endpoint not seen within 1 s: {:?}",
        addrs(&lb)
    );
    assert!(lb.backends().iter().any(|b| b.weight == 5));

    // Keys outside the prefix never showed up.
    assert!(!addrs(&lb).contains(&"127.0.0.1:9999".to_string()));
    task.abort();
}

/// `put_if` is a compare-and-swap on a key's revision: two writers racing on one revision
/// get one `Done` and one `Lost` that carries the winner's value.
#[tokio::test]
async fn put_if_lets_one_of_two_writers_win() {
    use flowgate_lb::discovery::Swap;
    if !require_programs(&["etcd"]) {
        return;
    }
    let etcd = Etcd::start("lb-txn");
    let client = EtcdClient::new(etcd.client, Duration::from_secs(2));
    assert_eq!(client.get(b"/rec").await.unwrap(), None);
    // Create-if-absent: the first wins, the second learns what it wrote.
    let Swap::Done { mod_revision: rev } = client.put_if(b"/rec", b"a", 0).await.unwrap() else {
        panic!("the first create lost");
    };
    match client.put_if(b"/rec", b"b", 0).await.unwrap() {
        Swap::Lost { current: Some(kv) } => {
            assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"a"[..], rev));
        }
        other => panic!("{other:?}"),
    }
    // Replacing at the revision read wins once.
    let Swap::Done { mod_revision: rev2 } = client.put_if(b"/rec", b"c", rev).await.unwrap() else {
        panic!("the replace lost");
    };
    assert!(rev2 > rev);
    assert!(matches!(
        client.put_if(b"/rec", b"d", rev).await.unwrap(),
        Swap::Lost { current: Some(kv) } if kv.value == b"c"
    ));
    let kv = client.get(b"/rec").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"c"[..], rev2));
    let (_, kvs) = client.range_prefix_kv(b"/re").await.unwrap();
    assert_eq!(kvs, vec![kv]);
    // A delete at a stale revision does nothing; at the current one it deletes.
    assert!(!client.delete_if(b"/rec", rev).await.unwrap());
    assert!(client.get(b"/rec").await.unwrap().is_some());
    assert!(client.delete_if(b"/rec", rev2).await.unwrap());
    assert_eq!(client.get(b"/rec").await.unwrap(), None);
    // Gone: a replace at the old revision loses with nothing there.
    assert_eq!(
        client.put_if(b"/rec", b"e", rev2).await.unwrap(),
        Swap::Lost { current: None }
    );
}
