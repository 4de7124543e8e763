//! A response body passed on from a provider, observed on the way: it
//! carries the request's [`Recorder`] to the body's end, reads usage from
//! the tail, checks a passed-through stream is whole, and turns a broken or
//! silent upstream into an error the client can see.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use sluice_core::resilience::{Outcome, now_nanos};
use sluice_core::route::Admitted;
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::check::StreamCheck;
use sluice_providers::openai::UsageTail;
use sluice_providers::translate::{UsageCell, Wire};
use sluice_providers::{BodyError, BoxBody};
use tokio::time::{Instant, Sleep};

use super::record::Recorder;
use crate::app::App;

/// How a passed-through body is watched.
pub struct Watch {
    /// Read usage from the bytes (providers over the wire).
    pub usage_tail: bool,
    /// Longest silence allowed between frames.
    pub idle: Option<Duration>,
    /// The request's overall deadline.
    pub deadline: Option<Instant>,
    /// Failures become an SSE error event rather than a cut connection.
    pub sse: bool,
    /// A passed-through stream is checked to be whole OpenAI chat events
    /// ending in `[DONE]` (not media event streams, which end otherwise).
    pub check_events: bool,
    /// The client's wire format, for that error event.
    pub wire: Wire,
    /// Where a translating body leaves the usage it read.
    pub usage_cell: Option<Arc<UsageCell>>,
    /// A frame already read (peeked) from `inner`, to send first.
    pub first: Option<Frame<Bytes>>,
    /// The target serving it: released when the body ends; told of failures.
    pub target: Option<Admitted>,
}

/// A response body passed through from a provider, observed on the way.
pub struct ObservedBody {
    inner: BoxBody,
    rec: Option<Recorder>,
    tail: Option<UsageTail>,
    timer: Option<Pin<Box<Sleep>>>,
    idle: Option<Duration>,
    /// When the last frame came: the idle timer is moved only when it
    /// fires (not reset per frame, a timer-wheel update each). Before the
    /// first frame, when the body first waited: set then, not when the
    /// body was made, as most bodies never wait (a clock read saved).
    last_frame: Option<Instant>,
    deadline: Option<Instant>,
    sse: bool,
    wire: Wire,
    usage_cell: Option<Arc<UsageCell>>,
    first: Option<Frame<Bytes>>,
    target: Option<Admitted>,
    /// Counted in the active-streams gauge until settled or dropped.
    stream_counted: Option<Arc<App>>,
    done: bool,
    /// The tail of what the client got, kept only while a trace records
    /// it: for `gen_ai.response.model` and `gen_ai.response.finish_reasons`.
    meta_tail: Option<UsageTail>,
    /// An OpenAI stream passed through as bytes: checked to be whole JSON
    /// events ending in `[DONE]` (translated streams check themselves).
    check: Option<StreamCheck>,
    /// The passed-through stream ended badly after a good last frame.
    end_error: Option<GatewayError>,
}

impl ObservedBody {
    pub fn new(inner: BoxBody, rec: Recorder, w: Watch) -> Self {
        let tail = w.usage_tail.then(UsageTail::default);
        let recording = rec.span.as_ref().is_some_and(|s| s.is_recording());
        let meta_tail = (recording && tail.is_none()).then(UsageTail::default);
        let check = (w.usage_tail && w.sse && w.check_events).then(StreamCheck::default);
        let stream_counted = w.sse.then(|| {
            rec.app().metrics.active_streams.inc();
            rec.app().clone()
        });
        Self {
            inner,
            rec: Some(rec),
            tail,
            timer: None,
            idle: w.idle,
            last_frame: None,
            deadline: w.deadline,
            sse: w.sse,
            wire: w.wire,
            usage_cell: w.usage_cell,
            first: w.first,
            target: w.target,
            stream_counted,
            done: false,
            meta_tail,
            check,
            end_error: None,
        }
    }

    fn next_wake(&mut self) -> Option<Instant> {
        let idle = self
            .idle
            .map(|d| *self.last_frame.get_or_insert_with(Instant::now) + d);
        match (idle, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn settle(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            let found = self.tail.as_ref().and_then(UsageTail::usage);
            if let Some(u) = found.or_else(|| self.usage_cell.as_ref().and_then(|c| c.get())) {
                rec.set_usage(u);
            }
            if rec.span.as_ref().is_some_and(|s| s.is_recording())
                && let Some(t) = self.tail.as_ref().or(self.meta_tail.as_ref())
            {
                let (model, reasons) = t.response_meta();
                rec.set_response_meta(model, reasons);
            }
            rec.finish();
        }
        self.target = None; // releases the in-flight slot
        if let Some(app) = self.stream_counted.take() {
            app.metrics.active_streams.dec();
        }
    }

    fn fail(&mut self, mut e: GatewayError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        if let Some(rec) = &mut self.rec {
            // The message may quote the upstream (its in-stream error).
            if let std::borrow::Cow::Owned(m) = rec.app().snapshot.load().scrubber.scrub(&e.message)
            {
                e.message = m.into();
            }
            rec.stream_failed(&e);
            rec.app()
                .metrics
                .record_upstream_error(&rec.provider, e.kind.code());
        }
        if let Some(t) = &mut self.target {
            t.record(Outcome::Failure, now_nanos());
        }
        self.settle();
        if self.sse && self.wire.errors_in_band() {
            let sent = self.usage_cell.as_ref().map_or(0, |c| c.chunks());
            let event = self.wire.error_event_at(&e, sent);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
        } else {
            Poll::Ready(Some(Err(Box::new(e))))
        }
    }

    /// Checks a passed-through stream's next frame (`Err`: it is not to be
    /// passed on), and its end when this frame was its last (a bad end is
    /// kept in `end_error`: the frame goes out, then the error).
    fn check_frame(&mut self, frame: &Frame<Bytes>) -> Result<(), GatewayError> {
        let Some(check) = &mut self.check else {
            return Ok(());
        };
        let protocol = |m| GatewayError::new(ErrorKind::UpstreamProtocol, m);
        frame
            .data_ref()
            .map_or(Ok(()), |d| check.feed(d))
            .map_err(protocol)?;
        if self.inner.is_end_stream() {
            self.end_error = check.finish().err().map(protocol);
        }
        Ok(())
    }

    /// Passes `frame` on, observed; the end settles the request.
    fn pass(&mut self, frame: Frame<Bytes>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Err(e) = self.check_frame(&frame) {
            return self.fail(e);
        }
        if self.end_error.is_some() {
            self.observe(&frame); // the error follows on the next poll
        } else {
            self.on_frame(&frame);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn on_frame(&mut self, frame: &Frame<Bytes>) {
        self.observe(frame);
        if self.inner.is_end_stream() {
            // A sized body may not be polled again once its last byte is out.
            self.done = true;
            self.settle();
        } else if self.idle.is_some() {
            self.last_frame = Some(Instant::now());
        }
    }

    fn observe(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            if let Some(rec) = &mut self.rec {
                rec.mark_first_byte();
            }
            if let Some(t) = &mut self.tail {
                t.observe(data);
            }
            if let Some(t) = &mut self.meta_tail {
                t.observe(data);
            }
        }
    }
}

impl ObservedBody {
    /// Whether the idle or deadline timer has run out; a timer that fired
    /// early (frames came since it was set) is moved to the next wake. The
    /// timer is made the first time the upstream keeps the body waiting:
    /// an answer that is all there when it is sent never needs one.
    fn timer_fired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let Some(wake) = self.next_wake() else {
                return false;
            };
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if wake > timer.deadline() {
                timer.as_mut().reset(wake);
            } else {
                return true;
            }
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Fully sent but never polled to its end: still a completed response.
        if self.rec.is_some()
            && self.first.is_none()
            && self.end_error.is_none()
            && self.inner.is_end_stream()
        {
            self.settle();
        }
        if let Some(app) = self.stream_counted.take() {
            app.metrics.active_streams.dec();
        }
    }
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(e) = this.end_error.take() {
            return this.fail(e);
        }
        if let Some(frame) = this.first.take() {
            return this.pass(frame);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => this.pass(frame),
            Poll::Ready(Some(Err(e))) => this.fail(GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("upstream stream broke: {e}"),
            )),
            Poll::Ready(None) => {
                if let Some(Err(m)) = this.check.as_mut().map(StreamCheck::finish) {
                    return this.fail(GatewayError::new(ErrorKind::UpstreamProtocol, m));
                }
                this.done = true;
                this.settle();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.timer_fired(cx) {
                    let now = Instant::now();
                    let msg = match (this.deadline, this.idle) {
                        (Some(d), _) if now >= d => "request deadline exceeded".to_owned(),
                        (_, Some(idle)) => {
                            format!("upstream sent nothing for {} ms", idle.as_millis())
                        }
                        _ => "request deadline exceeded".to_owned(),
                    };
                    return this.fail(GatewayError::new(ErrorKind::UpstreamTimeout, msg));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        if self.done {
            return SizeHint::with_exact(0);
        }
        if self.sse {
            // A stream may end in an error event of our own: never promise
            // the upstream's length.
            return SizeHint::default();
        }
        let mut hint = self.inner.size_hint();
        if let Some(n) = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map(Bytes::len)
        {
            let n = n as u64;
            // Raise the upper bound first: set_lower refuses to pass it.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
            hint.set_lower(hint.lower() + n);
        }
        hint
    }
}
