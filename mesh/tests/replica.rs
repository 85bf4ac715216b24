//! `SharedStore` against a real etcd (Debian's `etcd-server`) on loopback: two replicas
//! racing to create the CA and the token key end with one of each; two replicas renewing one
//! leaf at once end with one leaf; a watch brings each replica the other's writes; a replica
//! with another key file cannot read the records, and the values in etcd are not plain text.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, SystemTime};

use flowgate_lb::discovery::EtcdClient;
use flowgate_mesh::ca::{Ca, SpiffeId};
use flowgate_mesh::replica::{Change, LeafRecord, ReplicaError, SealKey, SharedStore};
use flowgate_mesh::xds::compile::Leaves;
use flowgate_pipeline::testing::{Etcd, require_programs};

const PREFIX: &str = "/flowgate/controller/";
const DAY: Duration = Duration::from_secs(24 * 3600);

fn store(etcd: &Etcd, secret: u8) -> SharedStore {
    SharedStore::new(
        EtcdClient::new(etcd.client, Duration::from_secs(2)),
        PREFIX,
        SealKey::from_secret(&[secret; 32]).unwrap(),
    )
}

#[tokio::test]
async fn replicas_agree_on_one_ca_one_token_key_and_one_leaf_per_account() {
    if !require_programs(&["etcd"]) {
        return;
    }
    let etcd = Etcd::start("mesh-replica");
    let (a, b) = (store(&etcd, 1), store(&etcd, 1));

    // Both create at once: one CA wins, and both hold it.
    let (ca_a, ca_b) = tokio::join!(
        a.ca_or_create(|| Ok(Ca::generate("cluster.local", DAY)?.export())),
        b.ca_or_create(|| Ok(Ca::generate("cluster.local", DAY)?.export())),
    );
    let (ca_a, ca_b) = (ca_a.unwrap(), ca_b.unwrap());
    assert_eq!(ca_a, ca_b);
    let ca = Ca::import(&ca_a.value, DAY).unwrap();
    let (ka, kb) = tokio::join!(
        a.token_key_or_create(|| [1; 32]),
        b.token_key_or_create(|| [2; 32])
    );
    assert_eq!(ka.unwrap(), kb.unwrap());

    // The values in etcd are sealed: no key material in the clear.
    let raw = EtcdClient::new(etcd.client, Duration::from_secs(2));
    let (_, kvs) = raw.range_prefix_kv(PREFIX.as_bytes()).await.unwrap();
    assert_eq!(kvs.len(), 2);
    for kv in &kvs {
        let text = String::from_utf8_lossy(&kv.value);
        assert!(
            !text.contains("PRIVATE") && !text.contains("BEGIN"),
            "{text}"
        );
    }
    // Another key file reads nothing.
    let stranger = store(&etcd, 9);
    let err = stranger
        .ca_or_create(|| panic!("must not create over an existing CA"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicaError::Record { ref why, .. } if why.contains("does not open")),
        "{err}"
    );

    // Each replica follows the other's writes.
    let (rev, listed) = a.list().await.unwrap();
    assert!(matches!(listed.as_slice(), [Change::Ca(c)] if c == &ca_a));
    let mut watch = a.watch(rev + 1).await.unwrap();

    // Two replicas issue a leaf for one account at once: one write wins; the loser is
    // handed the winner's leaf.
    let id = SpiffeId::new("cluster.local", "shop", "web").unwrap();
    let (mut la, mut lb) = (Leaves::default(), Leaves::default());
    la.get(&ca, &id).unwrap();
    lb.get(&ca, &id).unwrap();
    let rec_a = LeafRecord::of(la.leaf(&id).unwrap()).unwrap();
    let rec_b = LeafRecord::of(lb.leaf(&id).unwrap()).unwrap();
    assert_ne!(rec_a, rec_b);
    let won = a.put_leaf(&id, &rec_a, 0).await.unwrap().unwrap();
    let lost = b
        .put_leaf(&id, &rec_b, 0)
        .await
        .unwrap()
        .unwrap_err()
        .unwrap();
    assert_eq!((&lost.value, lost.mod_revision), (&rec_a, won));
    lb.adopt(id.clone(), lost.value.leaf().unwrap());
    assert_eq!(
        lb.get(&ca, &id).unwrap().cert_pem,
        la.get(&ca, &id).unwrap().cert_pem,
        "the loser serves the winner's leaf, and issues nothing more"
    );
    assert_eq!(lb.issued_count(), 1);
    assert!(
        SystemTime::now() < lost.value.leaf().unwrap().renew_at,
        "adopted with its renewal time"
    );

    // A renewal by the other replica reaches the first through its watch.
    let mut renewed = rec_b.clone();
    renewed.renew_at += 1;
    let rev2 = b.put_leaf(&id, &renewed, won).await.unwrap().unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            for change in watch.next().await.unwrap().unwrap() {
                // (It saw the first write too, earlier.)
                match change {
                    Change::Leaf(who, stored) if stored.mod_revision == rev2 => {
                        return (who, stored);
                    }
                    Change::Leaf(_, stored) => assert_eq!(stored.mod_revision, won),
                    other => panic!("{other:?}"),
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(seen.0, id);
    assert_eq!((seen.1.value, seen.1.mod_revision), (renewed, rev2));

    // The account leaves the mesh: its leaf is deleted, unless it changed meanwhile.
    assert!(
        !b.delete_leaf(&id, won).await.unwrap(),
        "a stale revision deletes nothing"
    );
    assert!(b.delete_leaf(&id, rev2).await.unwrap());
    let (_, listed) = a.list().await.unwrap();
    assert!(
        !listed.iter().any(|c| matches!(c, Change::Leaf(..))),
        "{listed:?}"
    );

    // A CA change at a stale revision loses to the newer one.
    let mut next = ca.clone();
    next.stage_root().unwrap();
    let rev3 = a
        .put_ca(&next.export(), ca_a.mod_revision)
        .await
        .unwrap()
        .unwrap();
    let theirs = b
        .put_ca(&ca.export(), ca_a.mod_revision)
        .await
        .unwrap()
        .unwrap_err()
        .unwrap();
    assert_eq!((theirs.value, theirs.mod_revision), (next.export(), rev3));
}
