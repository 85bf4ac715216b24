//! What several of these tests share: the controller's TLS port on loopback.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use flowgate_mesh::ca::Ca;
use flowgate_mesh::xds::auth::{Authenticator, ServerConfig};
use flowgate_mesh::xds::certify::{CertService, SharedCa};
use flowgate_mesh::xds::{AdsServer, serve_tls};

/// Serves `ads` and the certificate service (signing with `ca` for callers `auth` proves)
/// over TLS with `config` on a loopback port, keeping `keep` alive as long; its address, and
/// the sender that stops it.
pub async fn serve_on_loopback(
    ca: Arc<Ca>,
    auth: Arc<Authenticator>,
    config: Arc<ServerConfig>,
    ads: AdsServer,
    keep: impl Send + 'static,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (configs_tx, configs) = tokio::sync::watch::channel(config);
    let shared: SharedCa = Arc::new(std::sync::RwLock::new(Some(ca)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _keep = (keep, configs_tx);
        serve_tls(
            listener,
            configs,
            ads,
            Some(CertService::new(shared, auth)),
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    (addr, stop)
}
