//! TLS termination on the API listener: rustls with the certificate and key
//! from PEM files, reloaded when either file changes — new connections get
//! the new certificate, open ones keep theirs, and a broken pair on disk
//! keeps the old one serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sluice_core::config::TlsConfig;
use tokio_rustls::TlsAcceptor;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, checked to belong together.
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("{}: no PEM certificate in it", cert.display());
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| anyhow::anyhow!("{} and {}: {e}", cert.display(), key.display()))
}

#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The acceptor for `cfg`, and a task that reloads its files on change.
pub fn acceptor(cfg: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    let resolver = Arc::new(Resolver(ArcSwap::from_pointee(load(
        &cfg.cert_file,
        &cfg.key_file,
    )?)));
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(reload(
        resolver,
        cfg.cert_file.clone(),
        cfg.key_file.clone(),
        cfg.reload,
    ));
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn stamp(p: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

async fn reload(resolver: Arc<Resolver>, cert: PathBuf, key: PathBuf, every: Duration) {
    let mut seen = (stamp(&cert), stamp(&key));
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = (stamp(&cert), stamp(&key));
        if now == seen {
            continue;
        }
        match load(&cert, &key) {
            Ok(k) => {
                resolver.0.store(Arc::new(k));
                seen = now;
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
            }
            // Half-written (cert renewed, key not yet): try again next tick.
            Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded; the old one stays"),
        }
    }
}
