//! `EtcdSource` against a real etcd (Debian's `etcd-server`) on loopback: manifests put
//! under a prefix become the state; a change, a broken key (rejected at its key and line,
//! the last good state kept), its repair and a deletion each come through the watch; keys
//! outside the prefix are ignored; etcd going away is reported once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use flowgate_lb::discovery::EtcdClient;
use flowgate_mesh::{EtcdSource, Source, Update};
use flowgate_pipeline::testing::{Etcd, require_programs};

async fn next(source: &mut EtcdSource) -> Update {
    tokio::time::timeout(Duration::from_secs(5), source.next())
        .await
        .expect("an update within 5 s")
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: { name: shop }\n";

fn service(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{ name: web, namespace: shop }}\nspec:\n  selector: {{ app: web }}\n  ports: [{{ name: http, port: {port} }}]\n"
    )
}

#[tokio::test]
async fn manifests_in_etcd_follow_the_watch() {
    if !require_programs(&["etcd"]) {
        return;
    }
    let etcd = Etcd::start("mesh");
    let client = EtcdClient::new(etcd.client, Duration::from_secs(2));
    client.put(b"/mesh/ns.yaml", NS.as_bytes()).await.unwrap();
    client
        .put(b"/mesh/web.yaml", service(80).as_bytes())
        .await
        .unwrap();
    client
        .put(b"/other/junk.yaml", b"not: [yaml")
        .await
        .unwrap();

    let mut source = EtcdSource::new(client.clone(), "/mesh/");
    let Update::State(first) = next(&mut source).await else {
        panic!("the first state")
    };
    assert_eq!(first.services.len(), 1);

    // A change through the watch.
    let changed = Instant::now();
    client
        .put(b"/mesh/web.yaml", service(8080).as_bytes())
        .await
        .unwrap();
    let Update::State(second) = next(&mut source).await else {
        panic!("the changed state")
    };
    assert_ne!(second.version, first.version);
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed.elapsed()
    );
    let svc = second.services.values().next().unwrap();
    assert_eq!(svc.value.spec.ports[0].port, 8080);

    // A broken key: rejected at the key and line.
    client
        .put(
            b"/mesh/bad.yaml",
            b"# broken\napiVersion: v1\nkind: Nonsense\nmetadata: { name: x }\n",
        )
        .await
        .unwrap();
    let Update::Rejected(errors) = next(&mut source).await else {
        panic!("the broken key is rejected")
    };
    assert_eq!(
        errors[0].file.to_str(),
        Some("/mesh/bad.yaml"),
        "{errors:?}"
    );
    assert_eq!((errors[0].line, errors[0].column), (3, 7), "{errors:?}");

    // Removing it brings the last good state back; deleting a key changes the state.
    client.delete(b"/mesh/bad.yaml").await.unwrap();
    let Update::State(again) = next(&mut source).await else {
        panic!("repaired")
    };
    assert_eq!(again.version, second.version);
    client.delete(b"/mesh/web.yaml").await.unwrap();
    let Update::State(fewer) = next(&mut source).await else {
        panic!("after the delete")
    };
    assert!(fewer.services.is_empty());

    // etcd gone: said once, as a rejection naming the store.
    drop(etcd);
    let Update::Rejected(errors) = next(&mut source).await else {
        panic!("the store's failure is reported")
    };
    assert!(
        errors[0].message.contains("cannot read the store"),
        "{errors:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), source.next())
            .await
            .is_err(),
        "reported only once"
    );
}
