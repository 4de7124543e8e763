//! A lean HTTP/1.1 keep-alive pool for one plain `http://` upstream (a vLLM
//! or Ollama box, a sidecar, the mock): hyper's connection API under a
//! last-in-first-out stack of idle connections.
//!
//! Against hyper-util's general client it skips, per request, the pool-key
//! hashing and cloning, the connector service, the per-request task that
//! waits for the connection to be reusable, and the idle-reaper task: a
//! connection goes back on the stack the moment its response body ends,
//! inside the body's own poll.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use sluice_core::{ErrorKind, GatewayError};
use tokio::net::TcpStream;
use tokio::time::Instant;

type Sender = SendRequest<Full<Bytes>>;

/// Idle connections of one upstream `host:port`.
pub struct H1Pool {
    authority: Authority,
    host: HeaderValue,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    tx: Sender,
    since: Instant,
}

impl H1Pool {
    pub fn new(
        authority: Authority,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Arc::new(Self {
            authority,
            host,
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
            connect_timeout,
        })
    }

    /// Whether requests to `uri` can go through this pool.
    pub fn serves(&self, uri: &Uri) -> bool {
        uri.scheme_str() == Some("http") && uri.authority() == Some(&self.authority)
    }

    /// Idle connections held now (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |q| q.len())
    }

    /// Sends `req` (absolute URI on this pool's authority) on an idle
    /// connection, or a new one; waits for the response head.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<UpstreamBody>, GatewayError> {
        let mut req = origin_form(req, &self.host);
        // A reused connection the upstream closed as the request went out
        // never saw it: send it again, once, on a new connection.
        if let Some(mut tx) = self.checkout() {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(resp, tx)),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(failed(e.error())),
                },
            }
        }
        let mut tx = self.connect().await?;
        let resp = tx.send_request(req).await.map_err(|e| failed(&e))?;
        Ok(self.wrap(resp, tx))
    }

    fn wrap(
        self: &Arc<Self>,
        resp: http::Response<Incoming>,
        tx: Sender,
    ) -> http::Response<UpstreamBody> {
        let (head, inner) = resp.into_parts();
        let mut body = UpstreamBody {
            inner,
            back: Some((self.clone(), tx)),
        };
        // No body to read (204, Content-Length: 0): reusable now.
        if body.inner.is_end_stream() {
            body.give_back();
        }
        http::Response::from_parts(head, body)
    }

    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.pop_back() {
            if c.tx.is_ready() && c.since.elapsed() < self.idle_timeout {
                return Some(c.tx);
            }
        }
        None
    }

    fn checkin(self: Arc<Self>, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        if !tx.is_ready() {
            // The connection task has not yet finished the message whose
            // body just ended (another thread): wait for it off this path.
            tokio::spawn(async move {
                let mut tx = tx;
                if tx.ready().await.is_ok() {
                    self.push(tx);
                }
            });
            return;
        }
        self.push(tx);
    }

    fn push(&self, tx: Sender) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        while idle.len() >= self.max_idle
            || idle
                .front()
                .is_some_and(|c| now.duration_since(c.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if self.max_idle > 0 {
            idle.push_back(Idle { tx, since: now });
        }
    }

    async fn connect(&self) -> Result<Sender, GatewayError> {
        let addr = (
            self.authority.host(),
            self.authority.port_u16().unwrap_or(80),
        );
        let host = addr.0.trim_start_matches('[').trim_end_matches(']');
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, addr.1)))
                .await
            {
                Err(_) => {
                    return Err(GatewayError::new(
                        ErrorKind::UpstreamTimeout,
                        format!(
                            "upstream connect timed out: {} after {} ms",
                            self.authority,
                            self.connect_timeout.as_millis()
                        ),
                    ));
                }
                Ok(Err(e)) => {
                    return Err(GatewayError::new(
                        ErrorKind::UpstreamUnreachable,
                        format!("upstream unreachable: {}: {e}", self.authority),
                    ));
                }
                Ok(Ok(s)) => s,
            };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }
}

/// Origin-form target (`/path?query`) and a `Host` header, as an HTTP/1.1
/// origin server expects from a client.
fn origin_form(req: http::Request<Full<Bytes>>, host: &HeaderValue) -> http::Request<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(pq);
    if !parts.headers.contains_key(HOST) {
        parts.headers.insert(HOST, host.clone());
    }
    http::Request::from_parts(parts, body)
}

fn failed(e: &hyper::Error) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamUnreachable,
        format!(
            "upstream connection failed: {}",
            super::transport::error_chain(e)
        ),
    )
}

/// An upstream response body. From the pool, its connection goes back to
/// the pool when the body has been read to its end, and is closed if it is
/// dropped before.
pub struct UpstreamBody {
    inner: Incoming,
    back: Option<(Arc<H1Pool>, Sender)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.back.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// A body whose connection is not this pool's (hyper-util's client).
    pub fn plain(inner: Incoming) -> Self {
        Self { inner, back: None }
    }

    fn give_back(&mut self) {
        if let Some((pool, tx)) = self.back.take() {
            pool.checkin(tx);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            // A reader may stop at `is_end_stream` without polling for the end.
            Some(Ok(_)) if this.inner.is_end_stream() => this.give_back(),
            None => this.give_back(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.back = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
