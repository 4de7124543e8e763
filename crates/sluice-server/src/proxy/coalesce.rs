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
//!
//! Gathering still polls the body once more after each frame, to find it
//! waiting. After [`GIVE_UP`] frames in a row that went out alone that way,
//! a frame goes out as soon as it comes, and only every [`PROBE`]th is
//! gathered again (a burst found that way turns gathering back on): a
//! paced stream then pays one poll of its body stack per event, not two.
//! The writers gather what is ready anyway (the HTTP/1.1 loop writes every
//! frame a turn brings in one write); what a burst loses until the next
//! probe is only that its events go as separate frames (chunks).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// The most bytes gathered into one frame.
const MAX_BATCH: usize = 16 << 10;
/// Empty turns yielded before what is gathered goes out.
const SPINS: u8 = 2;
/// Spin rounds in a row that found nothing, after which frames go out as
/// soon as none is ready; and frames in a row gathered alone, after which
/// they go out ungathered.
const GIVE_UP: u8 = 3;
/// Ungathered, every this many frames one is gathered again.
const PROBE: u8 = 16;

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
    /// Gatherings in a row that found no second frame.
    alone: u8,
    /// Frames sent ungathered since the last gathering.
    ungathered: u8,
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
            alone: 0,
            ungathered: 0,
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

    /// Whether the one frame in hand goes out without looking for more:
    /// gatherings keep finding none, and this is not a probe.
    fn goes_alone(&mut self) -> bool {
        if !self.one_frame() || self.alone < GIVE_UP || self.empty_rounds < GIVE_UP {
            return false;
        }
        self.ungathered += 1;
        if self.ungathered < PROBE {
            return true;
        }
        self.ungathered = 0;
        false
    }

    /// A gathering ended because nothing more was ready.
    fn ended_waiting(&mut self) {
        self.alone = if self.one_frame() {
            self.alone.saturating_add(1)
        } else {
            0
        };
    }

    /// Exactly one frame is in hand (a second moves both into `buf`).
    fn one_frame(&self) -> bool {
        self.buf.is_empty() && self.held.is_some()
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
                        if this.gathered() >= MAX_BATCH
                            || this.inner.is_end_stream()
                            || this.goes_alone()
                        {
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
                    this.ended_waiting();
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

    /// `n` paced frames ("e", each sent once the one before is out): the
    /// body's polls per frame.
    async fn paced(
        body: &mut Coalesce<Counted<impl Body<Data = Bytes, Error = std::io::Error> + Unpin>>,
        tx: &tokio::sync::mpsc::Sender<Item>,
        n: usize,
    ) -> Vec<usize> {
        let mut per_frame = Vec::new();
        for _ in 0..n {
            tx.send(Ok(Frame::data(Bytes::from_static(b"e"))))
                .await
                .unwrap();
            let before = body.inner.1.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(
                body.frame().await.unwrap().unwrap().into_data().unwrap(),
                "e"
            );
            per_frame.push(body.inner.1.load(std::sync::atomic::Ordering::SeqCst) - before);
        }
        per_frame
    }

    /// A coalescing body over a channel of room `n`, its polls counted.
    fn counted(
        n: usize,
    ) -> (
        tokio::sync::mpsc::Sender<Item>,
        Coalesce<Counted<impl Body<Data = Bytes, Error = std::io::Error> + Unpin>>,
    ) {
        let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(n);
        let inner = Counted(StreamBody::new(tokio_stream_from(rx)), polls);
        (tx, Coalesce::new(inner))
    }

    #[tokio::test]
    async fn a_stream_whose_turns_find_nothing_stops_spinning_then_gathering() {
        let (tx, mut body) = counted(4);
        let g = usize::from(GIVE_UP);
        let probe = usize::from(PROBE);
        let per_frame = paced(&mut body, &tx, g + probe + 1).await;
        // The frame, then a `Pending` per spin and one more; after
        // `GIVE_UP` such rounds, the frame alone, but for every `PROBE`th
        // (the frame and one `Pending`).
        let spun = 2 + usize::from(SPINS);
        let mut want = vec![spun; g];
        want.extend(vec![1; probe - 1]);
        want.extend([2, 1]);
        assert_eq!(per_frame, want);
    }

    #[tokio::test]
    async fn a_burst_after_paced_frames_is_gathered_again_and_nothing_is_lost() {
        let (tx, mut body) = counted(64);
        paced(&mut body, &tx, usize::from(GIVE_UP) + 1).await;
        let events: Vec<String> = (0..40).map(|i| format!("<{i}>")).collect();
        for e in &events {
            let e = Bytes::from(e.clone());
            tx.send(Ok(Frame::data(e))).await.unwrap();
        }
        drop(tx);
        let mut sizes = Vec::new();
        let mut got = String::new();
        while let Some(f) = body.frame().await {
            let data = f.unwrap().into_data().unwrap();
            sizes.push(data.len());
            got.push_str(std::str::from_utf8(&data).unwrap());
        }
        assert_eq!(got, events.concat());
        // Ungathered until a probe finds the rest ready, then one frame
        // (the last paced frame was the first to go ungathered).
        let ungathered = usize::from(PROBE) - 2;
        assert!(sizes[..ungathered].iter().all(|&n| n <= 4), "{sizes:?}");
        assert_eq!(sizes.len(), ungathered + 1, "{sizes:?}");
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
