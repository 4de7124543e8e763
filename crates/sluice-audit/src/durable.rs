//! `durability = "sync"`: a response is not finished until its audit event
//! is safe.
//!
//! The event is made when the request settles (its recorder is dropped),
//! which is when its body ends — or before the body is sent at all, for an
//! error. So the response body is wrapped: once the event has been handed
//! to the writer, the body's last piece (its last frame, or its end) is
//! held back until the writer says the event is written and synced. A
//! client that has the whole response has an audited request.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::oneshot;

/// Where the recorder leaves the writer's answer for the body to wait on.
#[derive(Default)]
pub struct AckSlot(Mutex<Option<oneshot::Receiver<()>>>);

impl AckSlot {
    pub fn put(&self, rx: oneshot::Receiver<()>) {
        *self.0.lock().expect("ack slot lock is never poisoned") = Some(rx);
    }

    fn take(&self) -> Option<oneshot::Receiver<()>> {
        self.0
            .lock()
            .expect("ack slot lock is never poisoned")
            .take()
    }
}

/// A response body whose end waits for its request's audit event.
pub struct DurableBody<B> {
    inner: B,
    slot: Arc<AckSlot>,
    waiting: Option<oneshot::Receiver<()>>,
    /// The frame held back while waiting; `None` while waiting = the end.
    held: Option<Frame<Bytes>>,
    ended: bool,
}

impl<B> DurableBody<B> {
    pub fn new(inner: B, slot: Arc<AckSlot>) -> Self {
        Self {
            inner,
            slot,
            waiting: None,
            held: None,
            ended: false,
        }
    }
}

impl<B> http_body::Body for DurableBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(rx) = &mut this.waiting {
                // A writer gone (shutdown) answers too: never hang a client.
                let _ = ready!(Pin::new(rx).poll(cx));
                this.waiting = None;
                return match this.held.take() {
                    Some(f) => Poll::Ready(Some(Ok(f))),
                    None => {
                        this.ended = true;
                        Poll::Ready(None)
                    }
                };
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match this.slot.take() {
                    // The event was made with (or before) this frame: it
                    // may be the last the client needs, so hold it.
                    Some(rx) => {
                        this.waiting = Some(rx);
                        this.held = Some(frame);
                    }
                    None => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => match this.slot.take() {
                    Some(rx) => this.waiting = Some(rx),
                    None => {
                        this.ended = true;
                        return Poll::Ready(None);
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never ask the server to stop polling early: the end is ours.
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn the_last_frame_waits_for_the_ack() {
        let slot = Arc::new(AckSlot::default());
        let (ack, rx) = oneshot::channel();
        slot.put(rx); // an error response: the event came first
        let mut body = DurableBody::new(Full::new(Bytes::from_static(b"whole")), slot);
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), body.frame()).await;
        assert!(early.is_err(), "held until the event is durable");
        ack.send(()).unwrap();
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..], b"whole");
    }

    #[tokio::test]
    async fn without_an_event_frames_pass() {
        let slot = Arc::new(AckSlot::default());
        let body = DurableBody::new(Full::new(Bytes::from_static(b"x")), slot);
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"x");
    }
}
