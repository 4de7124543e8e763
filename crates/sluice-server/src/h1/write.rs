//! Writing a response on an HTTP/1.1 connection: the head, then the body
//! with a `content-length` when its size is known and chunked otherwise.
//! Frames that are ready together go out in one write (a burst of stream
//! events, or the head with a whole body).

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::client_left;

/// Written at once when a body's frames pile up past it.
const BATCH: usize = 64 * 1024;

/// How the body is framed on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framing {
    /// No body at all (1xx, 204, 304).
    None,
    /// `content-length` bytes, as the response's header says.
    Length(u64),
    /// The body's exact size, for a `content-length` written with the head.
    Sized(u64),
    Chunked,
}

/// Writes the response's head into `out`, choosing its framing: a
/// `content-length` the handler set, or the body's exact size, or chunked.
pub fn head(res: &mut Response<Body>, out: &mut Vec<u8>) -> Framing {
    let status = res.status();
    let framing = if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else {
        res.headers_mut().remove(TRANSFER_ENCODING);
        let set = res
            .headers()
            .get(CONTENT_LENGTH)
            .map(|v| super::length_of(v.as_bytes()));
        let set = match set {
            Some(None) => {
                // Not a length: framed as if it were absent.
                res.headers_mut().remove(CONTENT_LENGTH);
                None
            }
            Some(Some(n)) => Some(n as u64),
            None => None,
        };
        match (set, res.body().size_hint().exact()) {
            (Some(n), _) => Framing::Length(n),
            (None, Some(n)) => Framing::Sized(n),
            (None, None) => Framing::Chunked,
        }
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in res.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !res.headers().contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Sized(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Appends today's HTTP date (RFC 9110 §5.6.7), formatted once a second.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    // The coarse clock: a `Date` counts seconds, and a fine read of the
    // wall clock costs ~30-44 ns here, on every answer.
    let secs = sluice_sys::coarse_unix_secs();
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            if text.len() == 29 {
                c.1.copy_from_slice(text.as_bytes());
                c.0 = secs;
            } else {
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&c.1);
    });
}

/// Why a response could not be written whole.
#[derive(Debug, PartialEq)]
pub enum Cut {
    /// The client went away or a write failed.
    Client,
    /// The body failed, or gave a length other than its `content-length`.
    Body,
}

/// A frame at least this large is written from its own buffer, not
/// copied into the batch.
const LARGE: usize = 16 * 1024;

/// Writes `out` (the head) and the body; `pending` collects what the
/// client sends meanwhile (a pipelined request), and an end of the
/// client's side cuts the response short.
pub async fn body<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    framing: Framing,
    mut body: Body,
    pending: &mut BytesMut,
) -> Result<(), Cut>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let left = match framing {
        Framing::None => {
            return send(io, out).await;
        }
        Framing::Length(n) | Framing::Sized(n) => Some(n),
        Framing::Chunked => None,
    };
    let mut w = Framed {
        out,
        left,
        large: None,
    };
    let mut watching = pending.is_empty();
    loop {
        let ended =
            poll_fn(|cx| batch(cx, &mut body, &mut w, &mut *io, pending, &mut watching)).await?;
        send(io, w.out).await?;
        if let Some(large) = w.large.take() {
            io.write_all(&large).await.map_err(|_| Cut::Client)?;
            if w.left.is_none() {
                w.out.extend_from_slice(b"\r\n");
            }
        }
        if ended {
            return Ok(());
        }
    }
}

/// The batch being written and the body's framing.
struct Framed<'a> {
    out: &'a mut Vec<u8>,
    /// Bytes still due under a `content-length`; `None` when chunked.
    left: Option<u64>,
    /// A large frame to write after `out`.
    large: Option<Bytes>,
}

impl Framed<'_> {
    /// Appends one data frame in the body's framing (a large one's chunk
    /// head only, the frame kept in `large`); whether to write now.
    fn put(&mut self, data: Bytes) -> Result<bool, Cut> {
        if data.is_empty() {
            return Ok(false);
        }
        if let Some(n) = self.left.as_mut() {
            let len = data.len() as u64;
            if len > *n {
                return Err(Cut::Body);
            }
            *n -= len;
        } else {
            let mut hex = [0u8; 16];
            self.out.extend_from_slice(hex_len(data.len(), &mut hex));
            self.out.extend_from_slice(b"\r\n");
        }
        if data.len() >= LARGE {
            self.large = Some(data);
            return Ok(true);
        }
        self.out.extend_from_slice(&data);
        if self.left.is_none() {
            self.out.extend_from_slice(b"\r\n");
        }
        Ok(self.out.len() >= BATCH)
    }
}

/// Writes and flushes `out`, waiting on the client's socket as it needs
/// ([`write_now`] until it has all gone); `out` is empty after.
async fn send<I: AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>) -> Result<(), Cut> {
    let sent = poll_fn(|cx| match write_now(cx, io, out) {
        Ok(true) => Poll::Ready(Ok(())),
        // Its write or flush waits: the socket wakes the task.
        Ok(false) => Poll::Pending,
        Err(cut) => Poll::Ready(Err(cut)),
    })
    .await;
    out.clear();
    sent
}

/// Appends the body's frames that are ready to `w`; `Ready(Ok(true))`
/// once the body has ended (its end written), `Ready(Ok(false))` when
/// the batch should go out first (the rest of it, when a body that waits
/// found the client's socket full: see [`write_now`]).
fn batch<I: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    body: &mut Body,
    w: &mut Framed<'_>,
    io: &mut I,
    pending: &mut BytesMut,
    watching: &mut bool,
) -> Poll<Result<bool, Cut>> {
    loop {
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data()
                    && w.put(data)?
                {
                    return Poll::Ready(Ok(false));
                }
            }
            Poll::Ready(Some(Err(_))) => return Poll::Ready(Err(Cut::Body)),
            Poll::Ready(None) => {
                return Poll::Ready(match w.left {
                    None => {
                        w.out.extend_from_slice(b"0\r\n\r\n");
                        Ok(true)
                    }
                    Some(0) => Ok(true),
                    Some(_) => Err(Cut::Body),
                });
            }
            // The body waits with a batch in hand: it goes out in this
            // turn, and the body is then waited on without polling it
            // again (its waker is set, and nothing it waits on can have
            // changed in between: readiness and timers move only when the
            // runtime turns, and a wake meanwhile polls the task again).
            // A stream paced an event per read saves one poll of its whole
            // body stack per event. A full socket leaves the rest to `send`.
            Poll::Pending if !w.out.is_empty() => {
                return match write_now(cx, io, w.out) {
                    Ok(true) => watch_client(cx, io, pending, watching),
                    Ok(false) => Poll::Ready(Ok(false)),
                    Err(cut) => Poll::Ready(Err(cut)),
                };
            }
            Poll::Pending => return watch_client(cx, io, pending, watching),
        }
    }
}

/// Waiting on the body: a client that closes its side meanwhile cuts the
/// response (what it sends is kept in `pending`).
fn watch_client<I: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut I,
    pending: &mut BytesMut,
    watching: &mut bool,
) -> Poll<Result<bool, Cut>> {
    if *watching {
        match client_left(cx, io, pending) {
            Poll::Ready(true) => return Poll::Ready(Err(Cut::Client)),
            Poll::Ready(false) => *watching = false,
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// Writes and flushes `out` without waiting: `Ok(true)` when all of it
/// went (`out` is emptied), `Ok(false)` when the client's socket is full
/// (what went is taken off `out`, the rest is for [`send`]).
fn write_now<I: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    io: &mut I,
    out: &mut Vec<u8>,
) -> Result<bool, Cut> {
    let mut done = 0;
    while done < out.len() {
        match Pin::new(&mut *io).poll_write(cx, &out[done..]) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(Cut::Client),
            Poll::Ready(Ok(n)) => done += n,
            Poll::Pending => {
                out.drain(..done);
                return Ok(false);
            }
        }
    }
    out.clear();
    match Pin::new(io).poll_flush(cx) {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(_)) => Err(Cut::Client),
        Poll::Pending => Ok(false),
    }
}

fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn written(mut res: Response<Body>) -> (String, Framing) {
        let mut out = Vec::new();
        let framing = head(&mut res, &mut out);
        (String::from_utf8(out).unwrap(), framing)
    }

    #[test]
    fn heads_say_how_the_body_is_framed() {
        let (text, f) = written(Response::new(Body::from("hello")));
        assert_eq!(f, Framing::Sized(5));
        assert!(text.starts_with("HTTP/1.1 200 OK\r\ndate: "));
        assert!(
            text.ends_with(" GMT\r\ncontent-length: 5\r\n\r\n"),
            "{text}"
        );

        let stream = Body::from_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(
            Bytes::from_static(b"x"),
        )]));
        let (text, f) = written(Response::new(stream));
        assert_eq!(f, Framing::Chunked);
        assert!(text.contains("\r\ntransfer-encoding: chunked\r\n\r\n"));

        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NO_CONTENT;
        let (text, f) = written(res);
        assert_eq!(f, Framing::None);
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!text.contains("content-length") && !text.contains("transfer-encoding"));

        let mut res = Response::new(Body::from_stream(futures_util::stream::empty::<
            Result<Bytes, std::io::Error>,
        >()));
        res.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("12"));
        res.headers_mut().insert(
            DATE,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        let (text, f) = written(res);
        assert_eq!(f, Framing::Length(12));
        assert_eq!(text.matches("date: ").count(), 1);

        let mut res = Response::new(Body::from("abc"));
        res.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("+3"));
        let (text, f) = written(res);
        assert_eq!(f, Framing::Sized(3));
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        assert!(text.contains("content-length: 3\r\n"), "{text}");
    }

    #[test]
    fn the_date_is_an_http_date_of_now() {
        let mut out = Vec::new();
        date(&mut out);
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&out).unwrap()).unwrap();
        let age = std::time::SystemTime::now().duration_since(parsed).unwrap();
        assert!(age.as_secs() < 2, "{age:?}");
    }

    #[test]
    fn chunks_carry_their_length_in_hex() {
        let mut out = Vec::new();
        let mut w = Framed {
            out: &mut out,
            left: None,
            large: None,
        };
        assert_eq!(w.put(Bytes::from(vec![b'a'; 300])), Ok(false));
        assert!(w.out.starts_with(b"12c\r\naaa"));
        assert!(w.out.ends_with(b"aa\r\n"));
        // A large frame: its chunk head in the batch, the frame apart.
        assert_eq!(w.put(Bytes::from(vec![b'b'; LARGE])), Ok(true));
        assert!(w.out.ends_with(b"aa\r\n4000\r\n"));
        assert_eq!(w.large.as_ref().map(Bytes::len), Some(LARGE));
        let mut hex = [0u8; 16];
        assert_eq!(hex_len(0, &mut hex), b"0");
        assert_eq!(hex_len(usize::MAX, &mut hex), b"ffffffffffffffff");

        let mut out = Vec::new();
        let mut w = Framed {
            out: &mut out,
            left: Some(4),
            large: None,
        };
        assert_eq!(w.put(Bytes::from_static(b"abc")), Ok(false));
        assert_eq!((w.out.as_slice(), w.left), (&b"abc"[..], Some(1)));
        assert_eq!(w.put(Bytes::from_static(b"de")), Err(Cut::Body));
    }

    #[tokio::test]
    async fn bodies_go_out_framed_small_and_large_frames_alike() {
        use tokio::io::AsyncReadExt;
        let frames = [&b"ab"[..], &[b'L'; LARGE + 1][..], b"", b"cd"];
        let frames: Vec<Result<Bytes, std::io::Error>> = frames
            .iter()
            .map(|f| Ok(Bytes::copy_from_slice(f)))
            .collect();
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let mut out = b"HEAD".to_vec();
        let stream = Body::from_stream(futures_util::stream::iter(frames));
        body(
            &mut a,
            &mut out,
            Framing::Chunked,
            stream,
            &mut BytesMut::new(),
        )
        .await
        .unwrap();
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        let large = format!("{:x}\r\n{}\r\n", LARGE + 1, "L".repeat(LARGE + 1));
        let want = format!("HEAD2\r\nab\r\n{large}2\r\ncd\r\n0\r\n\r\n");
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }

    /// A body whose frames come one at a time, counting its polls.
    struct Paced {
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        polls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl http_body::Body for Paced {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            self.polls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.rx
                .poll_recv(cx)
                .map(|f| f.map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn a_paced_body_is_polled_once_for_its_frame_and_once_to_wait() {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::AsyncReadExt;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let paced = Body::new(Paced {
            rx,
            polls: polls.clone(),
        });
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            let (mut out, mut pending) = (Vec::new(), BytesMut::new());
            let sent = body(&mut a, &mut out, Framing::Chunked, paced, &mut pending);
            sent.await.is_ok()
        });
        for event in ["data: one\n\n", "data: two\n\n", "data: three\n\n"] {
            let before = polls.load(Relaxed);
            tx.send(Bytes::from_static(event.as_bytes())).await.unwrap();
            let want = format!("{:x}\r\n{event}\r\n", event.len());
            let mut got = vec![0; want.len()];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(String::from_utf8(got).unwrap(), want);
            // The writer's turn wrote the event and went back to waiting
            // before the reader could run: one poll took the frame, one
            // found the body waiting (not a third after the write).
            assert_eq!(polls.load(Relaxed) - before, 2, "polls for {event:?}");
        }
        drop(tx);
        assert!(writer.await.unwrap());
        let mut end = Vec::new();
        b.read_to_end(&mut end).await.unwrap();
        assert_eq!(end, b"0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_batch_a_full_socket_takes_in_part_goes_out_whole() {
        use tokio::io::AsyncReadExt;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let paced = Body::new(Paced { rx, polls });
        // Room for 7 bytes: every batch below is written in parts.
        let (mut a, mut b) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            let (mut out, mut pending) = (b"HEAD".to_vec(), BytesMut::new());
            let sent = body(&mut a, &mut out, Framing::Chunked, paced, &mut pending);
            sent.await.is_ok()
        });
        let events = ["data: first event\n\n", "data: the second one\n\n"];
        let mut want = String::from("HEAD");
        for event in events {
            tx.send(Bytes::from_static(event.as_bytes())).await.unwrap();
            want += &format!("{:x}\r\n{event}\r\n", event.len());
        }
        drop(tx);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert!(writer.await.unwrap());
        assert_eq!(String::from_utf8(got).unwrap(), want + "0\r\n\r\n");
    }
}
