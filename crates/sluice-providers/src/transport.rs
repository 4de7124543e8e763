//! The pooled upstream HTTP client, shared by every adapter.
//!
//! One client per provider: it keeps connections alive, negotiates HTTP/2 by
//! ALPN where the upstream offers it (rustls, no OpenSSL), and carries the
//! provider's own connect timeout. Plain `http://` upstreams (vLLM, Ollama on
//! the next box) use HTTP/1.1 keep-alive.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sluice_core::config::ProviderConfig;
use sluice_core::{ErrorKind, GatewayError};

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

pub use crate::pool::UpstreamBody;

/// A provider's connections: the lean HTTP/1.1 pool for its own plain
/// `http://` host, hyper-util's client (TLS, HTTP/2 by ALPN) otherwise.
#[derive(Clone)]
pub struct ProviderClient {
    plain: Option<Arc<crate::pool::H1Pool>>,
    client: UpstreamClient,
}

impl ProviderClient {
    /// Idle connections in the plain pool (0 for TLS upstreams).
    pub fn idle_connections(&self) -> usize {
        self.plain.as_ref().map_or(0, |p| p.idle_count())
    }
}
/// A provider's client for request bodies streamed from the client (large
/// uploads), made when the first one comes.
pub type UploadClient = Client<HttpsConnector<HttpConnector>, crate::BoxBody>;

/// A pooled HTTP/1.1 + HTTP/2 client with the system's CA roots, for the
/// gateway's own calls (OTLP export).
pub fn https_client(connect_timeout: Duration) -> UpstreamClient {
    builder().build(connector(connect_timeout, None))
}

pub fn client_for(p: &ProviderConfig) -> ProviderClient {
    ProviderClient {
        plain: plain_pool(&p.base_url, p.max_idle_connections, p.connect_timeout),
        client: legacy_client_for(p),
    }
}

/// A client for one base URL that is not a provider's (the MCP gateway's
/// HTTP servers): the lean pool for its plain `http://` host, hyper-util's
/// client (system CA roots) otherwise.
pub fn client_for_url(
    base_url: &str,
    max_idle: usize,
    connect_timeout: Duration,
) -> ProviderClient {
    ProviderClient {
        plain: plain_pool(base_url, max_idle, connect_timeout),
        client: builder()
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_idle)
            .build(connector(connect_timeout, None)),
    }
}

fn plain_pool(
    base_url: &str,
    max_idle: usize,
    connect_timeout: Duration,
) -> Option<Arc<crate::pool::H1Pool>> {
    base_url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("http"))
        .and_then(|u| u.authority().cloned())
        .map(|a| crate::pool::H1Pool::new(a, max_idle, Duration::from_secs(90), connect_timeout))
}

fn legacy_client_for(p: &ProviderConfig) -> UpstreamClient {
    builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(p.max_idle_connections)
        // Big providers cap concurrent streams per HTTP/2 connection; keep
        // the connection alive through quiet periods between streams.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_while_idle(true)
        .build(connector(p.connect_timeout, p.ca_file.as_deref()))
}

pub fn upload_client_for(p: &ProviderConfig) -> UploadClient {
    builder()
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector(p.connect_timeout, p.ca_file.as_deref()))
}

pub(crate) fn builder() -> hyper_util::client::legacy::Builder {
    let mut b = Client::builder(TokioExecutor::new());
    b.timer(TokioTimer::new()).pool_timer(TokioTimer::new());
    b
}

/// TCP with the connect timeout, then TLS (ALPN h2 and http/1.1) trusting
/// the system roots, plus `ca` when given; plain `http://` passes through.
fn connector(
    connect_timeout: Duration,
    ca: Option<&std::path::Path>,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    with_tls(http, ca)
}

/// TLS (ALPN h2 and http/1.1) over a TCP connector, trusting the system
/// roots (the bundled web PKI ones when there are none), plus `ca` when
/// given; plain `http://` passes through.
pub(crate) fn with_tls<R>(
    http: HttpConnector<R>,
    ca: Option<&std::path::Path>,
) -> HttpsConnector<HttpConnector<R>> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca {
        Some(ca) => builder.with_tls_config(tls_with_ca(ca)),
        None => match system_tls() {
            Some(tls) => builder.with_tls_config(tls.clone()),
            None => {
                tracing::warn!("no system CA certificates; using the bundled web PKI roots");
                builder.with_webpki_roots()
            }
        },
    };
    builder
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http)
}

/// The system's CA roots, read once per process and shared by every
/// client: reading and parsing the bundle took ~18M instructions, a few
/// milliseconds of start-up and its own copy of the store, per client.
fn system_roots() -> &'static Arc<rustls::RootCertStore> {
    static ROOTS: std::sync::LazyLock<Arc<rustls::RootCertStore>> =
        std::sync::LazyLock::new(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            Arc::new(roots)
        });
    &ROOTS
}

/// The client TLS configuration trusting [`system_roots`]; `None` when the
/// system has none.
fn system_tls() -> Option<&'static rustls::ClientConfig> {
    static TLS: std::sync::LazyLock<Option<rustls::ClientConfig>> =
        std::sync::LazyLock::new(|| {
            let roots = system_roots();
            (!roots.is_empty()).then(|| tls_trusting(roots.clone()))
        });
    TLS.as_ref()
}

/// A client TLS configuration (ring, the safe default versions) trusting
/// `roots`.
fn tls_trusting(roots: impl Into<Arc<rustls::RootCertStore>>) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A client TLS configuration trusting the system roots plus the
/// certificates in `ca` (PEM), for upstreams behind a private CA.
fn tls_with_ca(ca: &std::path::Path) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::clone(system_roots());
    let added = std::fs::read(ca)
        .ok()
        .map(|pem| {
            CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .filter(|c| roots.add(c.clone()).is_ok())
                .count()
        })
        .unwrap_or(0);
    if added == 0 {
        tracing::warn!(ca = %ca.display(), "ca_file holds no usable certificate");
    }
    tls_trusting(roots)
}

/// Sends `req` and waits for the response head; the caller bounds the wait.
pub async fn send(
    client: &ProviderClient,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<UpstreamBody>, GatewayError> {
    if let Some(pool) = &client.plain
        && pool.serves(req.uri())
    {
        return pool.send(req).await;
    }
    match client.client.request(req).await {
        Ok(resp) => Ok(resp.map(UpstreamBody::plain)),
        Err(e) => Err(classify(&e)),
    }
}

/// [`send`] for a streamed request body.
pub async fn send_upload(
    client: &UploadClient,
    req: http::Request<crate::BoxBody>,
) -> Result<http::Response<UpstreamBody>, GatewayError> {
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(UpstreamBody::plain)),
        Err(e) => Err(classify(&e)),
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> GatewayError {
    // The connector's timeout surfaces as a connect error whose source is an
    // I/O time-out ("deadline has elapsed").
    let text = error_chain(e);
    if e.is_connect() && timed_out(e) {
        GatewayError::new(
            ErrorKind::UpstreamTimeout,
            format!("upstream connect timed out: {text}"),
        )
    } else if e.is_connect() {
        GatewayError::new(
            ErrorKind::UpstreamUnreachable,
            format!("upstream unreachable: {text}"),
        )
    } else {
        GatewayError::new(
            ErrorKind::UpstreamUnreachable,
            format!("upstream connection failed: {text}"),
        )
    }
}

fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}
