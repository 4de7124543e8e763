//! Accept loops: every connection bounded from its first byte to its last.
//!
//! hyper serves HTTP/1.1 and HTTP/2, but leaves three holes a hostile or
//! broken client can use to hold a descriptor forever: telling the protocol
//! apart (its auto builder waits for the first bytes with no timer), an
//! HTTP/2 connection that opens no stream, and a peer that vanished under an
//! HTTP/2 stream. So the protocol is decided here under the head timeout
//! (the first bytes, or TLS's ALPN), HTTP/2 connections send keep-alive
//! pings and are closed once no stream has been open for that timeout (as
//! hyper does for idle HTTP/1.1 connections), and every connection holds a
//! place under the listener's cap and its address's cap.
//!
//! On the API listener, HTTP/1.1 connections are served by the lean loop
//! (`crate::h1`) until a request it does not serve; hyper takes the
//! connection from there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sluice_core::config::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::conn::{Activity, ConnMetrics, Limits, TrackedBody, Waiting};
use crate::proxy::InboundBody;

/// How long a full listener waits for a place before evicting a silent
/// connection.
const EVICT_AFTER: Duration = Duration::from_millis(20);

/// After shutdown, how long an HTTP/1.1 connection stays open for its
/// client's next request, which is answered with `connection: close`. A
/// busy keep-alive client so learns to reconnect from a response, instead
/// of racing a close with its next request; an idle one is closed after it.
const H1_DRAIN: Duration = Duration::from_secs(2);

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A listener the configuration moved, bound by a reload.
pub struct Moved {
    /// `api` or `admin`.
    pub name: &'static str,
    pub listener: std::net::TcpListener,
}

/// What one listener serves and how it bounds its connections (kept to
/// serve the same on a listener bound anew).
#[derive(Clone)]
pub struct Spec {
    /// `api` or `admin`: the metrics label.
    pub name: &'static str,
    pub router: Router,
    /// The same routes with the HTTP niceties (CORS, compression); only
    /// requests that ask for one of them take it (see `crate::layers`).
    pub layered: Option<Router>,
    /// The API's gateway: its model routes are served past the router when
    /// nothing around it applies (see `crate::direct`).
    pub direct: Option<Arc<crate::app::App>>,
    pub cfg: ServerConfig,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Connections at once on this listener.
    pub max_connections: usize,
    pub metrics: ConnMetrics,
}

#[derive(Clone)]
struct Conn {
    name: &'static str,
    router: Router,
    layered: Option<Router>,
    direct: Option<Arc<crate::app::App>>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// The head timeout: also how long a connection may sit with no request.
    head: Duration,
    max_head_bytes: usize,
    metrics: ConnMetrics,
    /// Connections yet to send their first bytes, for eviction when full.
    waiting: Waiting,
    /// Set once the listener stops accepting: HTTP/1.1 responses then say
    /// `connection: close`.
    draining: Arc<AtomicBool>,
    /// The API listener's lean HTTP/1.1 loop (`crate::h1`).
    lean: Option<Arc<crate::h1::Lean>>,
}

/// Accepts on `listener` until `shutdown` (or `stop`, when the listener
/// moved) flips; then gives in-flight connections `cfg.shutdown_grace`
/// after `shutdown` to finish.
pub async fn serve(
    listener: TcpListener,
    l: Spec,
    mut stop: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cfg = &l.cfg;
    // hyper's read buffer; the lean loop hands it a head that does not fit.
    let max_buf = cfg.max_header_bytes.saturating_mul(2).max(8192);
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        // hyper refuses buffers under 8 KiB, and answers a head that does
        // not fit with a bare 431. Room for twice the limit lets the service
        // answer heads over `max_header_bytes` itself, with a JSON body. The
        // header count stays at hyper's default (100): a larger cap moves
        // hyper's per-request header arrays from the stack to the heap.
        .max_buf_size(max_buf);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(cfg.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        )
        .max_concurrent_streams(1024)
        // Pings find a peer that vanished under a quiet stream (an upstream
        // still thinking); an unanswered ping closes the connection.
        .keep_alive_interval(cfg.http2_keepalive_interval)
        .keep_alive_timeout(cfg.header_read_timeout);
    let draining = Arc::new(AtomicBool::new(false));
    let lean = l.direct.clone().map(|app| {
        Arc::new(crate::h1::Lean {
            app,
            head: cfg.header_read_timeout,
            max_head: cfg.max_header_bytes,
            max_buf,
            layered: l.layered.is_some(),
            drain: cfg.header_read_timeout.min(H1_DRAIN),
            draining: draining.clone(),
        })
    });
    let conn = Conn {
        name: l.name,
        router: l.router,
        layered: l.layered,
        direct: l.direct,
        h1,
        h2,
        head: cfg.header_read_timeout,
        max_head_bytes: cfg.max_header_bytes,
        metrics: l.metrics.clone(),
        waiting: Waiting::default(),
        draining,
        lean,
    };
    let limits = Limits::new(l.max_connections, cfg.max_connections_per_ip);
    // Each connection task holds a sender; all gone = all connections done.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut accept_errors = 0u32;

    'accept: loop {
        // Full: after a moment, make room by closing the connection that
        // has waited longest without sending anything, one at a time.
        let mut evictable = true;
        let permit = loop {
            tokio::select! {
                p = limits.reserve() => break p,
                _ = tokio::time::sleep(EVICT_AFTER), if evictable => {
                    evictable = conn.waiting.evict_oldest();
                }
                _ = shutdown.changed() => break 'accept,
                _ = stop.changed() => break 'accept,
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
            _ = stop.changed() => break,
        };
        if l.name == "api" {
            crate::pressure::look();
            if crate::pressure::shedding() {
                // No task, no buffers: a fixed 503 and close (the admin
                // listener keeps answering probes and scrapes).
                if let Ok((stream, _)) = &accepted {
                    crate::pressure::refuse(stream, l.tls.is_some());
                }
                l.metrics.closed(l.name, "memory_pressure");
                continue;
            }
        }
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_errors = 0;
                a
            }
            Err(e) => {
                // Out of descriptors and the like: back off (up to a second),
                // don't spin; say so once per streak.
                if accept_errors == 0 {
                    tracing::warn!(listener = l.name, error = %e, "accept failed; backing off");
                }
                let pause = Duration::from_millis(10 << accept_errors.min(6));
                accept_errors += 1;
                tokio::time::sleep(pause.min(Duration::from_secs(1))).await;
                continue;
            }
        };
        let Some(slot) = limits.admit(permit, peer.ip()) else {
            l.metrics.closed(l.name, "per_ip_limit");
            tracing::debug!(listener = l.name, %peer, "too many connections from this address");
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let conn = conn.clone();
        let tls = l.tls.clone();
        let shutdown = shutdown.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let gauge = conn
                .metrics
                .open
                .get_or_create(&crate::conn::ListenerLabels {
                    listener: conn.name,
                })
                .clone();
            gauge.inc();
            conn.run(stream, peer, tls, shutdown).await;
            gauge.dec();
            drop((slot, done));
        });
    }
    drop(listener);
    drop(done_tx);
    if !*shutdown.borrow() {
        // Moved: what this listener accepted runs on until it ends, or
        // until the shutdown.
        tokio::select! {
            _ = done_rx.recv() => return,
            _ = shutdown.changed() => {}
        }
    }
    conn.draining.store(true, Ordering::Relaxed);
    if tokio::time::timeout(l.cfg.shutdown_grace, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period ended with connections still open");
    }
}

enum Proto {
    Http1,
    Http2,
}

impl Conn {
    async fn run(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: watch::Receiver<bool>,
    ) {
        let deadline = Instant::now() + self.head;
        let mut evicted = self.waiting.enter();
        let Some(acceptor) = tls else {
            let proto = tokio::select! {
                p = detect(&stream, deadline) => p,
                Ok(()) = &mut evicted => {
                    self.metrics.closed(self.name, "evicted");
                    return;
                }
            };
            drop(evicted);
            match proto {
                Some(proto) => self.serve(stream, proto, shutdown).await,
                None => self.metrics.closed(self.name, "no_request"),
            }
            return;
        };
        // Boxed: inline, the handshake's and the TLS stream's state (~5 KB)
        // would size every plaintext connection's task too.
        Box::pin(self.run_tls(stream, peer, acceptor, evicted, deadline, shutdown)).await;
    }

    async fn run_tls(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        acceptor: tokio_rustls::TlsAcceptor,
        mut evicted: tokio::sync::oneshot::Receiver<()>,
        deadline: Instant,
        shutdown: watch::Receiver<bool>,
    ) {
        // The handshake is bounded like a request head: a slow handshake is
        // a slowloris. ALPN says which protocol follows.
        let handshake = tokio::time::timeout_at(deadline, acceptor.accept(stream));
        let stream = tokio::select! {
            h = handshake => match h {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    self.metrics.closed(self.name, "no_request");
                    return;
                }
            },
            Ok(()) = &mut evicted => {
                self.metrics.closed(self.name, "evicted");
                return;
            }
        };
        drop(evicted);
        let proto = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Proto::Http2,
            _ => Proto::Http1,
        };
        self.serve(stream, proto, shutdown).await;
    }

    async fn serve<I>(&self, mut io: I, proto: Proto, mut shutdown: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The lean loop serves what it can; hyper takes the rest. hyper's
        // connection is boxed: inline, its state would size every
        // connection's task, lean or not.
        let mut read = bytes::Bytes::new();
        if let (Proto::Http1, Some(lean)) = (&proto, &self.lean) {
            match lean.serve(&mut io, &mut shutdown).await {
                crate::h1::Ended::Closed => return,
                crate::h1::Ended::ToHyper(rest) => read = rest,
            }
        }
        let io = crate::h1::Prefixed::new(read, io);
        Box::pin(self.hyper(io, proto, shutdown)).await;
    }

    async fn hyper<I>(
        &self,
        io: crate::h1::Prefixed<I>,
        proto: Proto,
        shutdown: watch::Receiver<bool>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let router = TowerToHyperService::new(self.router.clone());
        let layered = self.layered.clone().map(TowerToHyperService::new);
        let max_head = self.max_head_bytes;
        let direct = self.direct.clone();
        let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            use futures_util::future::{Either, FutureExt};
            trim_trailing_slash(&mut req);
            if head_size(&req) > max_head {
                let refused = head_too_large(req.uri().path(), max_head);
                return Either::Left(Either::Left(std::future::ready(Ok(refused))));
            }
            use crate::layers::Asks;
            let asks = match layered {
                Some(_) => crate::layers::asks(req.headers()),
                None => Asks::Nothing,
            };
            if asks != Asks::More
                && let Some(app) = &direct
                && let Some(to) = crate::direct::route(app, &req)
            {
                let req = req.map(|b| InboundBody::Http(axum::body::Body::new(b)));
                let served = crate::direct::serve(app, to, req, asks == Asks::Compression);
                return Either::Left(Either::Right(served.map(Ok)));
            }
            let target = match (&layered, asks) {
                (Some(l), Asks::Compression | Asks::More) => l,
                _ => &router,
            };
            Either::Right(hyper::service::Service::call(target, req))
        });
        let result = match proto {
            Proto::Http1 => {
                // Only while draining does a response get `connection: close`:
                // every other request goes straight through, with nothing
                // cloned or wrapped for it.
                let draining = self.draining.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    use futures_util::future::{Either, FutureExt};
                    let response = hyper::service::Service::call(&svc, req);
                    if !draining.load(Ordering::Relaxed) {
                        return Either::Left(response);
                    }
                    Either::Right(response.map(|r| {
                        r.map(|mut r| {
                            if r.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                                r.headers_mut().insert(
                                    http::header::CONNECTION,
                                    http::HeaderValue::from_static("close"),
                                );
                            }
                            r
                        })
                    }))
                });
                let conn = self
                    .h1
                    .serve_connection(TokioIo::new(io), svc)
                    .with_upgrades();
                let drain = self.head.min(H1_DRAIN);
                drive(conn, shutdown, None, self.head, drain).await
            }
            Proto::Http2 => {
                let activity = Arc::new(Activity::default());
                let counted = activity.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let open = counted.open();
                    let response = hyper::service::Service::call(&svc, req);
                    async move {
                        let r = response.await?;
                        Ok::<_, std::convert::Infallible>(r.map(|b| TrackedBody::new(b, open)))
                    }
                });
                let conn = self.h2.serve_connection(TokioIo::new(io), svc);
                let closed =
                    drive(conn, shutdown, Some(&activity), self.head, Duration::ZERO).await;
                if closed == Ended::Idle {
                    self.metrics.closed(self.name, "idle");
                }
                closed
            }
        };
        if let Ended::Error(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// `/v1/chat/completions/` is `/v1/chat/completions`: clients that join a
/// base URL ending in `/` with a path are served, not sent a 404.
pub(crate) fn trim_trailing_slash<B>(req: &mut http::Request<B>) {
    let path = req.uri().path();
    if path.len() < 2 || !path.ends_with('/') {
        return;
    }
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let pq = match req.uri().query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(p) = http::uri::PathAndQuery::try_from(pq) {
        parts.path_and_query = Some(p);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The size of a request head as sent in HTTP/1.1: the request line and
/// each header line.
pub(crate) fn head_size<B>(req: &http::Request<B>) -> usize {
    req.headers().iter().fold(line_size(req), |n, (k, v)| {
        n + k.as_str().len() + v.len() + 4
    })
}

/// The request line's part of [`head_size`].
pub(crate) fn line_size<B>(req: &http::Request<B>) -> usize {
    req.method().as_str().len() + req.uri().path_and_query().map_or(1, |p| p.as_str().len()) + 12
}

fn head_too_large(path: &str, max: usize) -> axum::response::Response {
    use sluice_core::{ErrorKind, GatewayError};
    let e = GatewayError::new(
        ErrorKind::HeadersTooLarge,
        format!("the request head exceeds the limit of {max} bytes (server.max_header_bytes)"),
    );
    crate::reply::error_response(&e, sluice_providers::translate::Wire::of_path(path))
}

/// Waits (until `deadline`) for the first bytes to tell HTTP/2's preface
/// from HTTP/1.1; `None` when the client sent nothing in time or left.
async fn detect(stream: &TcpStream, deadline: Instant) -> Option<Proto> {
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != PREFACE[..n] {
            return Some(Proto::Http1);
        }
        if n == PREFACE.len() {
            return Some(Proto::Http2);
        }
        // Part of the preface: peek returns at once while those bytes sit
        // there, so wait a little for the rest rather than spin.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// hyper's connections that can be asked to finish gracefully.
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    Self: std::future::Future<Output = Result<(), hyper::Error>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<BoxError>,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<BoxError>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for http2::Connection<I, S, E>
where
    Self: std::future::Future<Output = Result<(), hyper::Error>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<BoxError>,
    S::ResBody: 'static,
    <S::ResBody as http_body::Body>::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

#[derive(Debug, PartialEq)]
enum Ended {
    Done,
    Idle,
    Error(String),
}

/// Runs a connection to its end; `drain` after shutdown, or (HTTP/2) once
/// no stream has been open for `idle_after`, asks it to finish what it has
/// and close.
async fn drive<C: Graceful>(
    conn: C,
    mut shutdown: watch::Receiver<bool>,
    activity: Option<&Activity>,
    idle_after: Duration,
    drain: Duration,
) -> Ended {
    tokio::pin!(conn);
    // Started after shutdown (a connection the lean loop hands over while
    // draining): the same drain as the connections already open.
    let late = *shutdown.borrow();
    let mut closing = late && drain.is_zero();
    if closing {
        conn.as_mut().graceful();
    }
    let mut draining = late && !closing;
    let drained = tokio::time::sleep(match draining {
        true => drain,
        false => Duration::MAX,
    });
    tokio::pin!(drained);
    let mut idle_closed = false;
    let idle = async {
        match activity {
            Some(a) => a.idle(idle_after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle);
    // An idle HTTP/2 peer is sent GOAWAY and a PING; one that never answers
    // (a client that sends nothing at all) is dropped after another period.
    let cut = tokio::time::sleep(Duration::MAX);
    tokio::pin!(cut);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                return match r {
                    Err(e) if !e.is_incomplete_message() => Ended::Error(e.to_string()),
                    _ if idle_closed => Ended::Idle,
                    _ => Ended::Done,
                };
            }
            _ = shutdown.changed(), if !closing && !draining => {
                if drain.is_zero() {
                    closing = true;
                    conn.as_mut().graceful();
                } else {
                    draining = true;
                    drained.as_mut().reset(Instant::now() + drain);
                }
            }
            _ = &mut drained, if draining && !closing => {
                closing = true;
                conn.as_mut().graceful();
            }
            _ = &mut idle, if !closing => {
                closing = true;
                idle_closed = true;
                conn.as_mut().graceful();
                cut.as_mut().reset(tokio::time::Instant::now() + idle_after);
            }
            _ = &mut cut, if idle_closed => return Ended::Idle,
        }
    }
}
