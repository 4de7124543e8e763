//! A lean HTTP/1.1 loop for the API listener's busiest requests.
//!
//! Nearly every request a gateway serves is a POST of a small JSON body to
//! a model route, on a kept-alive connection. Behind hyper's server such a
//! request cost 71,300 user-space instructions, here 65,900, and a stream
//! of 64 events 1.08–1.14 million against 1.02 million (callgrind,
//! `bench/instructions.py`, and `--stream --model frames`, whose counts
//! vary by ~5 % from run to run): no dispatcher state machine or body
//! channel between the connection and the handler, and the events that
//! are ready together go out in one write. hyper also holds two 8 KiB
//! buffers per connection however small its requests.
//!
//! The loop reads the head and body into one buffer, parses the head with
//! httparse (as hyper does), serves the request through `crate::direct`
//! and writes the answer. A body that has arrived by the time its head is
//! read (nearly every one; up to 1 MiB past the first read) is read into
//! the same buffer without waiting and handed over as a slice of it; the
//! rest of a longer or slower one is fed to the handler as it arrives, and
//! the handler applies `server.max_body_bytes` and
//! `server.body_read_timeout_ms` as it does behind hyper. (A 3.6 KB body
//! fed through the channel cost a read that would block and ~6,300 more
//! instructions: `bench/instructions.py --turns 10`.)
//!
//! It serves only what it can serve as hyper would: an HTTP/1.1 POST with
//! a `content-length` body, no `transfer-encoding`, `expect` or `upgrade`,
//! that `crate::direct` would take. At the first request that is anything
//! else — another route or method, a chunked body, HTTP/1.0, a head past
//! hyper's buffer or over `server.max_header_bytes` — the connection goes
//! to hyper with what was read put back in front ([`Prefixed`]), and hyper
//! serves it from then on. So every other rule hyper and the router apply
//! still applies, from the same code.
//!
//! `server.header_read_timeout_ms` bounds each head, and so how long an
//! idle connection stays open, as with hyper. `connection: close` (from
//! the client or the handler), a body the handler did not read to its end,
//! or the gateway draining closes the connection after the response. A
//! client that closes its side while its request is served is gone: the
//! request is dropped (its upstream call cancelled), as hyper does.

mod head;
mod prefixed;
mod write;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http::header::CONNECTION;
use http_body::Frame;
use http_body_util::channel::{Channel, Sender};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

pub use prefixed::Prefixed;

use head::{Parsed, head_end, length_of, parse};

use crate::app::App;
use crate::layers::Asks;
use crate::proxy::InboundBody;

/// Room made in the read buffer before each read.
const READ_AHEAD: usize = 2048;

/// The most of a body, past what came with its head, read into the head's
/// buffer when it has already arrived, at most [`INLINE_STEP`] more room
/// at a time (a client that stalls holds no more than that unused). A
/// connection keeps a buffer that grew past [`KEEP_BUF`] only while it is
/// in use.
const INLINE_REST: usize = 1024 * 1024;
const INLINE_STEP: usize = 16 * 1024;
const KEEP_BUF: usize = 8 * 1024;

/// How the API listener's connections are served before hyper.
pub struct Lean {
    pub app: Arc<App>,
    /// `server.header_read_timeout`.
    pub head: Duration,
    /// `server.max_header_bytes`: larger heads go to hyper, which refuses.
    pub max_head: usize,
    /// hyper's read buffer: a head not ended within it goes to hyper.
    pub max_buf: usize,
    /// Whether the listener has the layered router (CORS, compression).
    pub layered: bool,
    /// After shutdown, how long a connection waits for one more request.
    pub drain: Duration,
    /// Set while the listener drains.
    pub draining: Arc<AtomicBool>,
}

/// How a connection left the lean loop.
pub enum Ended {
    Closed,
    /// hyper serves it from here, reading these bytes first.
    ToHyper(Bytes),
}

impl Lean {
    /// Serves requests on `io` until it closes or a request needs hyper.
    pub async fn serve<I>(&self, io: &mut I, shutdown: &mut watch::Receiver<bool>) -> Ended
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        if *shutdown.borrow() {
            return Ended::ToHyper(Bytes::new());
        }
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut drain_by: Option<Instant> = None;
        // One head timer for the connection, moved on for each head: a
        // timer made and dropped per request registers in the wheel and
        // leaves it each time, a later deadline only moves it.
        let mut timer = pin!(tokio::time::sleep_until(Instant::now() + self.head));
        // Room for the next request's first read: the size of the last
        // one (an agent resends a conversation that only grows), so that
        // a request of a few KiB takes one read, within `KEEP_BUF`.
        let mut ahead = READ_AHEAD;
        loop {
            let read = self.read_head(io, &mut buf, ahead, shutdown, &mut drain_by, timer.as_mut());
            let Some(head_len) = read.await else {
                return Ended::Closed;
            };
            let head = buf.split_to(head_len).freeze();
            let Some((parsed, to, compress)) = self.accept(&head) else {
                return to_hyper(head, buf);
            };
            drop(head);
            let rest = parsed.length.saturating_sub(buf.len());
            if rest > 0 && rest <= INLINE_REST {
                read_arrived(io, &mut buf, parsed.length).await;
            }
            let (body, mut feed) = Feed::body(&mut buf, parsed.length);
            let served = crate::direct::serve(&self.app, to, parsed.req.map(|()| body), compress);
            let Some(mut res) = until_done(io, &mut buf, served, &mut feed).await else {
                return Ended::Closed;
            };
            // A body the handler did not read to its end leaves the
            // connection out of step: it closes after the answer.
            let unread = feed.is_some_and(|f| f.left > 0);
            let close = parsed.close
                || unread
                || drain_by.is_some()
                || self.draining.load(Ordering::Relaxed)
                || res
                    .headers()
                    .get(CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            if close {
                res.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            let framing = write::head(&mut res, &mut out);
            let written = write::body(io, &mut out, framing, res.into_body(), &mut buf).await;
            if out.capacity() > 64 * 1024 {
                out = Vec::new();
            }
            if parsed.length > KEEP_BUF && buf.is_empty() {
                buf = BytesMut::new();
            }
            ahead = (head_len + parsed.length + 256).clamp(READ_AHEAD, KEEP_BUF);
            if written.is_err() {
                return Ended::Closed;
            }
            if close {
                let _ = io.shutdown().await;
                return Ended::Closed;
            }
        }
    }

    /// Reads until `buf` holds a whole head; its length, or `None` when the
    /// connection should close (the client left, was silent past the head
    /// timeout, or the drain after shutdown ended with nothing sent). A
    /// head that does not end within hyper's buffer is returned whole for
    /// hyper to refuse.
    async fn read_head<I: AsyncRead + Unpin>(
        &self,
        io: &mut I,
        buf: &mut BytesMut,
        ahead: usize,
        shutdown: &mut watch::Receiver<bool>,
        drain_by: &mut Option<Instant>,
        mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Option<usize> {
        let deadline = Instant::now() + self.head;
        // Each search starts where the last one could not have matched: a
        // head sent a byte at a time is not searched from its start again.
        let mut searched = 0;
        loop {
            if let Some(end) = head_end(buf, searched) {
                return Some(end);
            }
            searched = buf.len().saturating_sub(3);
            if buf.len() >= self.max_buf {
                return Some(buf.len());
            }
            let until = match drain_by {
                Some(d) if buf.is_empty() => deadline.min(*d),
                _ => deadline,
            };
            buf.reserve(ahead);
            if timer.deadline() != until {
                timer.as_mut().reset(until);
            }
            tokio::select! {
                r = io.read_buf(buf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return None,
                },
                () = timer.as_mut() => return None,
                _ = shutdown.changed(), if drain_by.is_none() => {
                    *drain_by = Some(Instant::now() + self.drain);
                }
            }
        }
    }

    /// The request in `head`, if this loop serves it: where it goes and
    /// whether its answer may be compressed.
    fn accept(&self, head: &Bytes) -> Option<(Parsed, crate::direct::Direct, bool)> {
        let mut parsed = parse(head)?;
        crate::listener::trim_trailing_slash(&mut parsed.req);
        if crate::listener::line_size(&parsed.req) + parsed.fields > self.max_head {
            return None;
        }
        let asks = match self.layered {
            true => crate::layers::asks(parsed.req.headers()),
            false => Asks::Nothing,
        };
        if asks == Asks::More {
            return None;
        }
        let to = crate::direct::route(&self.app, &parsed.req)?;
        Some((parsed, to, asks == Asks::Compression))
    }
}

/// Reads into `buf` what has already arrived of a request whose head and
/// body take `length` bytes of it, without waiting for more: a body sent
/// with its head but longer than the first read is then handed over whole
/// (no channel, no copy when the handler reads it). The read asks for more
/// than the body, so a short read tells the runtime the socket is drained
/// and watching for the client leaving costs no read that would block.
async fn read_arrived<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut, length: usize) {
    while buf.len() < length {
        let need = (length - buf.len()).min(INLINE_STEP) + READ_AHEAD;
        make_room(buf, need, length + READ_AHEAD);
        let read = poll_fn(|cx| Poll::Ready(pin!(io.read_buf(&mut *buf)).poll(cx))).await;
        match read {
            Poll::Ready(Ok(n)) if n > 0 => {}
            // Not arrived yet, or the client left: the body is fed (or
            // its end found) as it would be without this read.
            _ => return,
        }
    }
}

/// Room for `need` more bytes in `buf`, grown as `BytesMut` grows
/// (doubling: a body read in many steps is copied about once in all) but
/// never past `limit` bytes: the buffer of a body read in steps ends the
/// body's size, where doubling alone left up to twice it allocated for
/// the whole request.
fn make_room(buf: &mut BytesMut, need: usize, limit: usize) {
    if buf.capacity() - buf.len() >= need {
        return;
    }
    let least = buf.len() + need;
    let cap = (buf.capacity() * 2).clamp(least, limit.max(least));
    let mut bigger = BytesMut::with_capacity(cap);
    bigger.extend_from_slice(buf);
    *buf = bigger;
}

/// Hands the connection to hyper with the unserved request put back.
fn to_hyper(head: Bytes, rest: BytesMut) -> Ended {
    let mut all = BytesMut::with_capacity(head.len() + rest.len());
    all.extend_from_slice(&head);
    all.extend_from_slice(&rest);
    Ended::ToHyper(all.freeze())
}

/// The rest of a request body still arriving, fed to the handler as it
/// comes (the handler applies the body's size limit and timeout).
struct Feed {
    tx: Option<Sender<Bytes, std::io::Error>>,
    /// Bytes of the body not read from the connection yet.
    left: usize,
    /// The handler dropped the body (refused it): stop reading.
    refused: bool,
}

impl Feed {
    /// The request body: the bytes in `buf` when it is all there (nearly
    /// always: the handler takes them as they are, with no copy and no
    /// reading), else a channel the loop feeds from the connection.
    fn body(buf: &mut BytesMut, length: usize) -> (InboundBody, Option<Feed>) {
        if buf.len() >= length {
            return (InboundBody::Read(buf.split_to(length).freeze()), None);
        }
        let (mut tx, rx) = Channel::new(4);
        let first = buf.split().freeze();
        let left = length - first.len();
        if !first.is_empty() {
            // A new channel has room.
            let _ = tx.try_send(Frame::data(first));
        }
        let feed = Feed {
            tx: Some(tx),
            left,
            refused: false,
        };
        (InboundBody::Http(Body::new(rx)), Some(feed))
    }

    /// Reads what arrived of the body and passes it on; `Ready(false)`
    /// when the client left, `Pending` when nothing more can be done now.
    fn poll<I: AsyncRead + Unpin>(&mut self, cx: &mut Context<'_>, io: &mut I) -> Poll<bool> {
        let Some(tx) = self.tx.as_mut() else {
            return Poll::Pending;
        };
        if tx.capacity() == 0 {
            // The handler has frames waiting; it runs in this task and is
            // polled again when what it waits on wakes it.
            return Poll::Pending;
        }
        let mut room = BytesMut::zeroed(self.left.min(16 * 1024));
        let mut rb = ReadBuf::new(&mut room);
        match std::pin::Pin::new(io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                let got = rb.filled().len();
                room.truncate(got);
                self.left -= got;
                if tx.try_send(Frame::data(room.freeze())).is_err() {
                    self.refused = true;
                }
                if self.left == 0 {
                    self.tx = None; // the body ends
                }
                Poll::Ready(true)
            }
            Poll::Ready(_) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `fut` to its end, feeding it the rest of its body if `feed`; `None`
/// when the client closes its side first (what it sends past the body
/// meanwhile is kept in `pending`).
async fn until_done<I, F>(
    io: &mut I,
    pending: &mut BytesMut,
    fut: F,
    feed: &mut Option<Feed>,
) -> Option<F::Output>
where
    I: AsyncRead + Unpin,
    F: Future,
{
    let mut fut = pin!(fut);
    let mut watching = pending.is_empty();
    poll_fn(|cx| {
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            if let Some(f) = feed.as_mut().filter(|f| f.left > 0 && !f.refused) {
                match f.poll(cx, io) {
                    // More of the body went to the handler: let it read.
                    Poll::Ready(true) => continue,
                    Poll::Ready(false) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if watching && feed.as_ref().is_none_or(|f| f.left == 0) {
                match client_left(cx, io, pending) {
                    Poll::Ready(true) => return Poll::Ready(None),
                    Poll::Ready(false) => watching = false,
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    })
    .await
}

/// Whether the client closed its side (`Ready(true)`) or sent more
/// (`Ready(false)`, the bytes appended to `pending`), as hyper watches a
/// connection while its request is served.
fn client_left<I: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut I,
    pending: &mut BytesMut,
) -> Poll<bool> {
    let mut room = [0u8; 256];
    let mut rb = ReadBuf::new(&mut room);
    match std::pin::Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(true),
        Poll::Ready(Ok(())) => {
            pending.extend_from_slice(rb.filled());
            Poll::Ready(false)
        }
        Poll::Ready(Err(_)) => Poll::Ready(true),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_still_arriving_is_fed_to_the_handler_as_it_comes() {
        use http_body_util::BodyExt;
        let (mut a, mut b) = tokio::io::duplex(8);
        let mut buf = BytesMut::from(&b"abc"[..]);
        let (body, mut feed) = Feed::body(&mut buf, 40);
        assert!(feed.is_some() && buf.is_empty());
        let rest: Vec<u8> = (0..37u8).map(|i| b'd' + i % 20).collect();
        let sent = rest.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(5) {
                b.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            b
        });
        let read = async { body.into_body().collect().await.unwrap().to_bytes() };
        let got = until_done(&mut a, &mut buf, read, &mut feed).await.unwrap();
        assert_eq!(&got[..3], b"abc");
        assert_eq!(&got[3..], &rest[..]);
        assert_eq!(feed.unwrap().left, 0);
        drop(writer.await.unwrap());

        // A whole body is the buffer's bytes, and what follows stays.
        let mut buf = BytesMut::from(&b"0123456789NEXT"[..]);
        let (body, feed) = Feed::body(&mut buf, 10);
        assert!(feed.is_none());
        assert!(matches!(&body, InboundBody::Read(b) if &b[..] == b"0123456789"));
        assert_eq!(&buf[..], b"NEXT");
    }

    #[tokio::test]
    async fn a_body_that_has_arrived_is_read_whole_and_one_still_coming_is_not_waited_for() {
        // Arrived, with the next request's first bytes behind it.
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let body: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut buf = BytesMut::from(&body[..100]);
        b.write_all(&body[100..]).await.unwrap();
        b.write_all(b"POST /next").await.unwrap();
        read_arrived(&mut a, &mut buf, body.len()).await;
        let (got, feed) = Feed::body(&mut buf, body.len());
        assert!(feed.is_none());
        assert!(matches!(&got, InboundBody::Read(g) if g[..] == body[..]));
        assert_eq!(&buf[..], b"POST /next");

        // Half there: what came is read, and the rest is fed as it comes.
        let mut buf = BytesMut::from(&body[..100]);
        b.write_all(&body[100..2000]).await.unwrap();
        let read = read_arrived(&mut a, &mut buf, body.len());
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap();
        assert_eq!(&buf[..], &body[..2000]);
        let (got, mut feed) = Feed::body(&mut buf, body.len());
        assert_eq!(feed.as_ref().unwrap().left, 3000);
        let rest = body[2000..].to_vec();
        let writer = tokio::spawn(async move { b.write_all(&rest).await.map(|()| b) });
        let read = async {
            use http_body_util::BodyExt;
            got.into_body().collect().await.unwrap().to_bytes()
        };
        let got = until_done(&mut a, &mut buf, read, &mut feed).await.unwrap();
        assert_eq!(&got[..], &body[..]);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_body_read_in_steps_ends_in_a_buffer_of_its_size() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        b.write_all(&body[100..]).await.unwrap();
        let mut buf = BytesMut::from(&body[..100]);
        read_arrived(&mut a, &mut buf, body.len()).await;
        assert_eq!(&buf[..], &body[..]);
        let most = body.len() + READ_AHEAD;
        assert!(buf.capacity() <= most, "{} > {most}", buf.capacity());
    }

    #[tokio::test]
    async fn a_client_that_leaves_cancels_its_request() {
        let (mut a, b) = tokio::io::duplex(64);
        drop(b);
        let mut pending = BytesMut::new();
        let never = std::future::pending::<()>();
        assert!(
            until_done(&mut a, &mut pending, never, &mut None)
                .await
                .is_none()
        );

        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(b"POST").await.unwrap();
        let mut pending = BytesMut::new();
        let soon = tokio::time::sleep(Duration::from_millis(20));
        assert!(
            until_done(&mut a, &mut pending, soon, &mut None)
                .await
                .is_some()
        );
        assert_eq!(&pending[..], b"POST");
    }
}
