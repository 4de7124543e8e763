//! A lean HTTP/1.1 keep-alive pool for one plain `http://` upstream (a vLLM
//! or Ollama box, a sidecar, the mock): idle sockets on a last-in-first-out
//! stack, and each request written, and its answer read, by the request's
//! own task.
//!
//! Against hyper's connection API (which this replaced) there is no task per
//! connection and no channel between the request and that task: the head
//! and body go out in one write, the answer's head is parsed where it is
//! read, and the body is decoded in its own `poll_frame` (`h1wire.rs`). A
//! connection goes back on the stack the moment its body's last byte is
//! read; a body dropped before that closes its connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::HeaderValue;
use http::uri::{Authority, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use sluice_core::{ErrorKind, GatewayError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::BodyError;
use crate::h1wire::{self, Framing, Step};

mod spare;
#[cfg(test)]
mod tests;

/// Bodies up to this size go out in the same write as the head.
const JOINED_BODY: usize = 16 * 1024;
/// Room a read of an answer's head asks for (a chat answer's head and
/// body usually fit; it is held by every request waiting for its answer).
const HEAD_ROOM: usize = 4 * 1024;
/// Room a body's read asks for at first; it doubles (up to [`MAX_READ`])
/// while reads fill it.
const READ_ROOM: usize = 8 * 1024;
/// Most room a body's read asks for (fewer reads for large answers:
/// images, embeddings).
const MAX_READ: usize = 64 * 1024;

/// How often idle connections are checked for the upstream's close and
/// for age, while there are any.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// An idle connection back in the pool for less than this is not probed
/// with a read at checkout when no readiness event came for it (see
/// [`Conn::alive`]). Upstreams close idle connections after their
/// keep-alive timeout, seconds at least (uvicorn and Node 5 s, nginx
/// 75 s); a longer idle connection is probed, in case the close came
/// while the runtime was too busy to poll for events.
const UNPROBED_IDLE: Duration = Duration::from_secs(1);

/// Idle connections of one upstream `host:port`.
pub struct H1Pool {
    authority: Authority,
    host: HeaderValue,
    idle: Mutex<Stack>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// Room the first read of an answer asks for: the size of the last
    /// sized answer (head and body), within [`HEAD_ROOM`]..=[`MAX_READ`],
    /// so an answer of a few KiB (a long completion, an embedding) takes
    /// one read, not a head-sized one and then the rest.
    answer_room: AtomicUsize,
}

struct Idle {
    conn: Conn,
    /// When it went idle, on the coarse clock (`sluice_sys::coarse_nanos`):
    /// ages here are compared with seconds, and a request both takes a
    /// connection and gives it back, two reads of ~7 ns against ~30–44.
    since: u64,
}

#[derive(Default)]
struct Stack {
    conns: VecDeque<Idle>,
    /// Whether a task sweeps this stack (it ends when the stack is empty).
    reaping: bool,
}

/// One upstream connection and the bytes read from it but not yet used.
struct Conn {
    io: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Whether an idle connection, idle for `idle`, can take a request:
    /// nothing arrived on it while idle, neither data nor the upstream's
    /// close. A connection idle for less than [`UNPROBED_IDLE`] with no
    /// readiness event since its last read drained it is taken as it is;
    /// any other is probed with a read (a system call that, on a busy
    /// pool, every request paid).
    fn alive(&self, idle: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        if idle < UNPROBED_IDLE && self.quiet() {
            return true;
        }
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// No readiness event for reading since the last read drained the
    /// socket: tokio clears the readiness on a read that blocks or that
    /// fills less than its room, and an upstream's data or close sets it
    /// again when the runtime next polls for events.
    fn quiet(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.io.poll_read_ready(&mut cx).is_pending()
    }
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
            idle: Mutex::new(Stack::default()),
            max_idle,
            idle_timeout,
            connect_timeout,
            answer_room: AtomicUsize::new(HEAD_ROOM),
        })
    }

    /// Whether requests to `uri` can go through this pool.
    pub fn serves(&self, uri: &Uri) -> bool {
        uri.scheme_str() == Some("http") && uri.authority() == Some(&self.authority)
    }

    /// Idle connections held now (for tests and metrics).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |q| q.conns.len())
    }

    /// Sends `req` (absolute URI on this pool's authority) on an idle
    /// connection, or a new one, in origin form with a `Host` header; waits
    /// for the response head. The caller bounds the wait; dropping the
    /// future closes the connection.
    pub async fn send(
        self: &Arc<Self>,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<UpstreamBody>, GatewayError> {
        let (parts, body) = req.into_parts();
        let body = whole(body);
        let mut wire = spare::take(
            512 + parts.headers.len() * 64
                + if body.len() <= JOINED_BODY {
                    body.len()
                } else {
                    0
                },
        );
        h1wire::write_head(&mut wire, &parts, &self.host, body.len());
        let joined = body.len() <= JOINED_BODY;
        if joined {
            wire.extend_from_slice(&body);
        }
        let tail = if joined { &[][..] } else { &body[..] };
        // Not held while the request waits for its answer.
        let method = parts.method.clone();
        drop(parts);
        // A reused connection the upstream closed as the request went out
        // never read it: send it again, once, on a new connection.
        let reused = match self.checkout() {
            Some(mut c) => write(&mut c.io, &wire, tail).await.ok().map(|()| c),
            None => None,
        };
        let mut conn = match reused {
            Some(c) => c,
            None => {
                let mut c = self.connect().await?;
                write(&mut c.io, &wire, tail).await.map_err(|e| {
                    unreachable_by(format!(
                        "upstream connection failed: writing the request: {e}"
                    ))
                })?;
                c
            }
        };
        spare::give(wire);
        let room = self.answer_room.load(Ordering::Relaxed);
        let (head, head_len) = read_head(&mut conn, &method, room).await?;
        if let Framing::Sized(n) = head.framing {
            let answer = usize::try_from(n).map_or(MAX_READ, |n| n.saturating_add(head_len));
            let next = answer.saturating_add(256).clamp(HEAD_ROOM, MAX_READ);
            if next != room {
                self.answer_room.store(next, Ordering::Relaxed);
            }
        }
        let (head_parts, ()) = head.response.into_parts();
        let mut body = LeanBody {
            conn: Some(conn),
            framing: head.framing,
            keep_alive: head.keep_alive,
            pool: self.clone(),
            read_size: READ_ROOM,
        };
        // No body to read (204, `content-length: 0`): the connection is
        // reusable at once.
        body.settle();
        Ok(http::Response::from_parts(
            head_parts,
            UpstreamBody(Inner::Lean(body)),
        ))
    }

    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(c) = idle.conns.pop_back() {
            let age = age(c.since, sluice_sys::coarse_nanos());
            if age < self.idle_timeout && c.conn.alive(age) {
                return Some(c.conn);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, conn: Conn) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = sluice_sys::coarse_nanos();
        while idle.conns.len() >= self.max_idle
            || idle
                .conns
                .front()
                .is_some_and(|c| age(c.since, now) >= self.idle_timeout)
        {
            if idle.conns.pop_front().is_none() {
                break;
            }
        }
        if self.max_idle == 0 {
            return;
        }
        // An idle connection holds no read buffer (what is left of the
        // last answer's room, shared with its frames until they are sent):
        // the thread keeps the last one, for a next answer to take back
        // once those frames are gone.
        spare::give_read(conn.buf);
        let conn = Conn {
            io: conn.io,
            buf: BytesMut::new(),
        };
        idle.conns.push_back(Idle { conn, since: now });
        if !idle.reaping
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            rt.spawn(reap(Arc::downgrade(self)));
        }
    }

    async fn connect(&self) -> Result<Conn, GatewayError> {
        let port = self.authority.port_u16().unwrap_or(80);
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let io = match tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
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
                return Err(unreachable_by(format!(
                    "upstream unreachable: {}: {e}",
                    self.authority
                )));
            }
            Ok(Ok(s)) => s,
        };
        let _ = io.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&io).set_tcp_keepalive(&keepalive);
        Ok(Conn {
            io,
            buf: BytesMut::new(),
        })
    }
}

/// How long a connection idle since `since` has been at `now` (both on the
/// coarse clock, in nanoseconds).
fn age(since: u64, now: u64) -> Duration {
    Duration::from_nanos(now.saturating_sub(since))
}

/// Closes idle connections the upstream closed or that outlived the idle
/// timeout, every [`REAP_EVERY`], until none is left or the pool is gone.
async fn reap(pool: std::sync::Weak<H1Pool>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let Ok(mut idle) = pool.idle.lock() else {
            return;
        };
        idle.conns.retain(|c| {
            let age = age(c.since, sluice_sys::coarse_nanos());
            age < pool.idle_timeout && c.conn.alive(age)
        });
        if idle.conns.is_empty() {
            idle.reaping = false;
            return;
        }
    }
}

/// The bytes of a whole body (a `Full` is always ready).
fn whole(mut body: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

async fn write(io: &mut TcpStream, wire: &[u8], tail: &[u8]) -> std::io::Result<()> {
    io.write_all(wire).await?;
    if !tail.is_empty() {
        io.write_all(tail).await?;
    }
    Ok(())
}

/// The answer's head and its length, its first read asking for `room`.
async fn read_head(
    conn: &mut Conn,
    method: &http::Method,
    room: usize,
) -> Result<(h1wire::Head, usize), GatewayError> {
    loop {
        // Nothing to parse before the first read (its header slots zeroed
        // for nothing, on every request).
        let had = conn.buf.len();
        let parsed = match had {
            0 => Ok(None),
            _ => h1wire::parse_head(&mut conn.buf, method),
        };
        match parsed {
            Ok(Some(head)) => return Ok((head, had - conn.buf.len())),
            Ok(None) => {}
            Err(why) => {
                return Err(GatewayError::new(
                    ErrorKind::UpstreamProtocol,
                    format!("upstream sent a bad response: {why}"),
                ));
            }
        }
        // Room is taken once the answer is there: a request waiting on a
        // slow upstream (a model thinking for seconds) holds no buffer.
        let read = if conn.buf.is_empty() {
            match conn.io.readable().await {
                Ok(()) => {
                    if conn.buf.capacity() < room {
                        conn.buf = spare::take_read(room);
                    }
                    // Through `poll_read`, which clears the readiness after
                    // a short read: the body's next read then waits for
                    // the next event instead of a read that would block.
                    conn.io.read_buf(&mut conn.buf).await
                }
                Err(e) => Err(e),
            }
        } else {
            // Part of a head is in: wait for the rest with the room it has.
            conn.buf.reserve(HEAD_ROOM);
            conn.io.read_buf(&mut conn.buf).await
        };
        match read {
            Ok(0) => {
                return Err(unreachable_by(
                    "upstream connection failed: closed before the response head".into(),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(unreachable_by(format!(
                    "upstream connection failed: reading the response: {e}"
                )));
            }
        }
    }
}

fn unreachable_by(message: String) -> GatewayError {
    GatewayError::new(ErrorKind::UpstreamUnreachable, message)
}

/// A response body read from a pooled connection.
struct LeanBody {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<H1Pool>,
    /// Room the next read of a chunked or to-close body asks for.
    read_size: usize,
}

impl LeanBody {
    /// Moves past framing already read; at the end, the connection goes
    /// back to the pool (when it may carry another request).
    fn settle(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && self.framing.settle(&mut conn.buf).is_ok()
        {
            self.release_if_ended();
        }
    }

    /// At the end (framing already settled), the connection goes back to
    /// the pool when it may carry another request.
    fn release_if_ended(&mut self) {
        if self.framing.ended()
            && let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.pool.checkin(conn);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing.decode_joined(&mut conn.buf) {
                Ok(Step::Data(data)) => {
                    // `decode_joined` settled what follows the data.
                    self.release_if_ended();
                    return Poll::Ready(Some(Ok(data)));
                }
                Ok(Step::End) => {
                    self.settle();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(why) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(format!("upstream body: {why}").into())));
                }
            }
            let want = match self.framing {
                Framing::Sized(rem) => usize::try_from(rem).map_or(MAX_READ, |r| r.min(MAX_READ)),
                _ => self.read_size,
            };
            if conn.buf.capacity() - conn.buf.len() < want.min(READ_ROOM / 4) {
                conn.buf.reserve(want);
            }
            let room = conn.buf.capacity() - conn.buf.len();
            // `poll_read` clears the socket's readiness after a read that
            // fills less than its room (the socket is drained), so the next
            // call waits for the next event. Readiness polled and then
            // `try_read`, one event at a time as a stream's events come,
            // cost a read that would block after every event.
            let read = ready!(pin!(conn.io.read_buf(&mut conn.buf)).poll(cx));
            match read {
                Ok(0) if self.framing == Framing::Close => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    let why = "upstream closed the connection before the body's end";
                    return Poll::Ready(Some(Err(why.into())));
                }
                // A read that filled its room: the next asks for more.
                Ok(n) if n == room => self.read_size = (self.read_size * 2).min(MAX_READ),
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(format!("upstream body: {e}").into())));
                }
            }
        }
    }
}

/// An upstream response body: from the lean pool (its connection goes back
/// when the body has been read to its end and is closed if it is dropped
/// before), or hyper-util's client (TLS upstreams).
pub struct UpstreamBody(Inner);

enum Inner {
    Lean(LeanBody),
    Hyper(Incoming),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &matches!(self.0, Inner::Lean(_)))
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// A body from hyper-util's client.
    pub fn plain(inner: Incoming) -> Self {
        Self(Inner::Hyper(inner))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.0 {
            Inner::Lean(body) => body.poll_frame(cx).map(|f| f.map(|r| r.map(Frame::data))),
            Inner::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BodyError))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Lean(body) => body.conn.is_none() || body.framing.ended(),
            Inner::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Lean(body) => match body.framing {
                Framing::Sized(n) => SizeHint::with_exact(n),
                _ if body.conn.is_none() => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
            Inner::Hyper(body) => body.size_hint(),
        }
    }
}
