//! Streamed responses written in as few writes as the upstream allows.
//!
//! An upstream that sends each SSE event as its own chunk hands them over
//! one at a time through its connection task: passed on as they come, every
//! event is one `writev` to the client, even when a single read brought
//! dozens (a model answering faster than the client reads). Here, once a
//! frame is in hand and the next is not, the task yields up to [`SPINS`]
//! scheduler turns so the connection task can hand over what it has already
//! read (it takes two: one to decode the next chunk, one to pass it), and
//! frames gathered that way go out as one. A paced stream (an event per read)
//! pays those extra polls per event and no wait: the turns find nothing and
//! the frame goes at once. After [`GIVE_UP`] such rounds in a row, a stream
//! stops spinning: its body is read in the request's own task (the lean
//! upstream pool decodes every chunk a read brought before it says
//! `Pending`), or its upstream is paced, and turns cannot find more.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// The most bytes gathered into one frame.
const MAX_BATCH: usize = 16 << 10;
/// Empty turns yielded before what is gathered goes out.
const SPINS: u8 = 2;
/// Spin rounds in a row that found nothing, after which frames go out as
/// soon as none is ready.
const GIVE_UP: u8 = 3;

pub struct Coalesce<B: Body> {
    inner: B,
    buf: BytesMut,
    /// The frame in hand when gathering began (moved into `buf` only when a
    /// second one joins it: a lone frame goes out without a copy).
    held: Option<Bytes>,
    /// Turns yielded since the last frame came.
    spins: u8,
    /// Spin rounds in a row that ended with nothing new.
    empty_rounds: u8,
    /// What ended the gathering (a trailer, an error, the end), sent next.
    after: Option<Option<Result<Frame<Bytes>, B::Error>>>,
}

impl<B: Body<Data = Bytes>> Coalesce<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            held: None,
            spins: 0,
            empty_rounds: 0,
            after: None,
        }
    }

    fn add(&mut self, data: Bytes) {
        if self.spins > 0 {
            self.empty_rounds = 0;
        }
        match self.held.take() {
            None if self.buf.is_empty() => self.held = Some(data),
            first => {
                if let Some(f) = first {
                    self.buf.reserve(f.len() + data.len());
                    self.buf.extend_from_slice(&f);
                }
                self.buf.extend_from_slice(&data);
            }
        }
        self.spins = 0;
    }

    fn gathered(&self) -> usize {
        self.held.as_ref().map_or(0, Bytes::len) + self.buf.len()
    }

    fn take(&mut self) -> Option<Frame<Bytes>> {
        self.spins = 0;
        match self.held.take() {
            Some(b) => Some(Frame::data(b)),
            None if !self.buf.is_empty() => Some(Frame::data(self.buf.split().freeze())),
            None => None,
        }
    }
}

impl<B> Body for Coalesce<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(next) = this.after.take() {
            return Poll::Ready(next);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.add(data);
                        if this.gathered() >= MAX_BATCH || this.inner.is_end_stream() {
                            return Poll::Ready(this.take().map(Ok));
                        }
                    }
                    Err(other) => return this.flush_then(Some(Ok(other))),
                },
                Poll::Ready(end) => return this.flush_then(end),
                Poll::Pending if this.gathered() == 0 => return Poll::Pending,
                Poll::Pending if this.spins < SPINS && this.empty_rounds < GIVE_UP => {
                    // A turn for the upstream connection to hand over what
                    // it already holds.
                    this.spins += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => {
                    if this.spins == SPINS {
                        this.empty_rounds += 1;
                    }
                    return Poll::Ready(this.take().map(Ok));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.after.is_none() && self.gathered() == 0 && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let n = self.gathered() as u64;
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + n);
        }
        hint.set_lower(hint.lower() + n);
        hint
    }
}

impl<B: Body<Data = Bytes>> Coalesce<B> {
    /// Sends what was gathered, then `next`; or `next` now.
    fn flush_then(
        &mut self,
        next: Option<Result<Frame<Bytes>, B::Error>>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.take() {
            Some(frame) => {
                self.after = Some(next);
                Poll::Ready(Some(Ok(frame)))
            }
            None => Poll::Ready(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Item = Result<Frame<Bytes>, std::io::Error>;

    fn frames(parts: &[&'static str]) -> Vec<Item> {
        parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect()
    }

    #[tokio::test]
    async fn ready_frames_go_as_one_and_nothing_is_lost() {
        let inner = StreamBody::new(futures_util::stream::iter(frames(&["a", "b", "c"])));
        let mut body = Coalesce::new(inner);
        let mut got = Vec::new();
        while let Some(f) = body.frame().await {
            got.push(f.unwrap().into_data().unwrap());
        }
        assert_eq!(got, vec![Bytes::from_static(b"abc")]);
    }

    #[tokio::test]
    async fn an_error_follows_the_gathered_bytes() {
        let mut items = frames(&["x", "y"]);
        items.push(Err(std::io::Error::other("cut")));
        let inner = StreamBody::new(futures_util::stream::iter(items));
        let mut body = Coalesce::new(inner);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, Bytes::from_static(b"xy"));
        assert_eq!(body.frame().await.unwrap().unwrap_err().to_string(), "cut");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_paced_frame_is_not_held_back() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let inner = StreamBody::new(tokio_stream_from(rx));
        let mut body = Coalesce::new(inner);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one"))))
            .await
            .unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(1), body.frame())
            .await
            .expect("a lone frame goes out without waiting for the next");
        assert_eq!(got.unwrap().unwrap().into_data().unwrap(), "one");
        drop(tx);
        assert!(body.frame().await.is_none());
    }

    /// Counts the polls of the body it wraps.
    struct Counted<B>(B, std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<B: Body + Unpin> Body for Counted<B> {
        type Data = B::Data;
        type Error = B::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Pin::new(&mut self.0).poll_frame(cx)
        }
    }

    #[tokio::test]
    async fn a_stream_whose_turns_find_nothing_stops_spinning() {
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let inner = Counted(StreamBody::new(tokio_stream_from(rx)), polls.clone());
        let mut body = Coalesce::new(inner);
        let mut per_frame = Vec::new();
        for _ in 0..6 {
            tx.send(Ok(Frame::data(Bytes::from_static(b"e"))))
                .await
                .unwrap();
            let before = polls.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(
                body.frame().await.unwrap().unwrap().into_data().unwrap(),
                "e"
            );
            per_frame.push(polls.load(std::sync::atomic::Ordering::SeqCst) - before);
        }
        // The frame, then a `Pending` per spin and one more; after
        // `GIVE_UP` empty rounds, the frame and one `Pending`.
        let spun = 2 + usize::from(SPINS);
        let g = usize::from(GIVE_UP);
        assert_eq!(per_frame[..g], vec![spun; g], "{per_frame:?}");
        assert_eq!(per_frame[g..], vec![2; 6 - g], "{per_frame:?}");
    }

    #[tokio::test]
    async fn batches_stop_at_the_cap() {
        let big: &'static str = Box::leak("z".repeat(MAX_BATCH).into_boxed_str());
        let inner = StreamBody::new(futures_util::stream::iter(frames(&[big, "tail"])));
        let mut body = Coalesce::new(inner);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), MAX_BATCH);
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(second, "tail");
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Item>,
    ) -> impl futures_util::Stream<Item = Item> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
