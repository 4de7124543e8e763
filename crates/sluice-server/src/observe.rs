//! Settling a request's accounting, whatever way it ends.
//!
//! A [`Recorder`] is created when a request arrives and settles on drop: a
//! handler that returns, a stream that ends, and a client that goes away in
//! the middle are all counted, the last as a cancel (status 499). The
//! [`ObservedBody`] carries the recorder through a streamed response, reads
//! usage from its tail, and turns a broken or silent upstream into an error
//! the client can see.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use sluice_core::request::Usage;
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::openai::UsageTail;
use sluice_providers::{BodyError, BoxBody};
use tokio::time::{Instant, Sleep};

use crate::app::App;

/// nginx's convention for "the client closed the request".
pub const STATUS_CLIENT_CLOSED: u16 = 499;

pub struct Recorder {
    app: Arc<App>,
    route: &'static str,
    pub model: Arc<str>,
    pub provider: Arc<str>,
    status: u16,
    start: Instant,
    first_byte_seen: bool,
    usage: Option<Usage>,
    finished: bool,
}

impl Recorder {
    pub fn start(app: &Arc<App>, route: &'static str) -> Self {
        app.metrics.active_requests.inc();
        Self {
            app: app.clone(),
            route,
            model: app.none_label.clone(),
            provider: app.none_label.clone(),
            status: STATUS_CLIENT_CLOSED,
            start: Instant::now(),
            first_byte_seen: false,
            usage: None,
            finished: false,
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    pub fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    fn mark_first_byte(&mut self) {
        if !self.first_byte_seen {
            self.first_byte_seen = true;
            if !self.provider.is_empty() {
                self.app.metrics.record_first_byte(
                    &self.model,
                    &self.provider,
                    self.start.elapsed(),
                );
            }
        }
    }

    /// Counts the request as answered with its current status.
    pub fn finish(mut self) {
        self.finished = true;
        // Drop settles.
    }

    /// Counts `e` as the answer and renders it as the OpenAI error body.
    pub fn reply_error(mut self, e: &GatewayError) -> Response<Body> {
        self.status = e.status();
        if e.kind.source() == sluice_core::error::Source::Upstream {
            self.app
                .metrics
                .record_upstream_error(&self.provider, e.kind.code());
        }
        self.finish();
        error_response(e)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let m = &self.app.metrics;
        m.active_requests.dec();
        if !self.finished {
            self.status = STATUS_CLIENT_CLOSED;
            m.record_cancel(&self.model, &self.provider);
        }
        if let Some(u) = self.usage {
            m.record_usage(&self.model, &self.provider, u);
        }
        let labels = crate::metrics::RequestLabels {
            route: self.route,
            model: self.model.clone(),
            provider: self.provider.clone(),
            status: self.status,
        };
        m.record_request(&labels, self.start.elapsed());
    }
}

pub fn error_response(e: &GatewayError) -> Response<Body> {
    let mut r = Response::new(Body::from(e.to_openai_json()));
    *r.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A response body passed through from a provider, observed on the way.
pub struct ObservedBody {
    inner: BoxBody,
    rec: Option<Recorder>,
    tail: Option<UsageTail>,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    sse: bool,
    done: bool,
}

impl ObservedBody {
    /// `tail`: read usage from the bytes (providers over the wire); `idle`:
    /// the longest silence allowed between frames; `sse`: failures become an
    /// error event instead of a cut connection.
    pub fn new(
        inner: BoxBody,
        rec: Recorder,
        tail: bool,
        idle: Option<Duration>,
        sse: bool,
    ) -> Self {
        Self {
            inner,
            rec: Some(rec),
            tail: tail.then(UsageTail::default),
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            sse,
            done: false,
        }
    }

    fn settle(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            if let Some(u) = self.tail.as_ref().and_then(UsageTail::usage) {
                rec.set_usage(u);
            }
            rec.finish();
        }
    }

    fn fail(&mut self, e: GatewayError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        if let Some(rec) = &self.rec {
            rec.app
                .metrics
                .record_upstream_error(&rec.provider, e.kind.code());
        }
        self.settle();
        if self.sse {
            let mut event = Vec::with_capacity(160);
            event.extend_from_slice(b"data: ");
            event.extend_from_slice(&e.to_openai_json());
            event.extend_from_slice(b"\n\n");
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
        } else {
            Poll::Ready(Some(Err(Box::new(e))))
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // Fully sent but never polled to its end: still a completed response.
        if self.rec.is_some() && self.inner.is_end_stream() {
            self.settle();
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(rec) = &mut this.rec {
                        rec.mark_first_byte();
                    }
                    if let Some(t) = &mut this.tail {
                        t.observe(data);
                    }
                }
                if this.inner.is_end_stream() {
                    // A sized body may not be polled again once its last byte is out.
                    this.done = true;
                    this.settle();
                } else if let Some((d, sleep)) = &mut this.idle {
                    sleep.as_mut().reset(Instant::now() + *d);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(GatewayError::new(
                ErrorKind::UpstreamProtocol,
                format!("upstream stream broke: {e}"),
            )),
            Poll::Ready(None) => {
                this.done = true;
                this.settle();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some((d, sleep)) = &mut this.idle
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    let ms = d.as_millis();
                    return this.fail(GatewayError::new(
                        ErrorKind::UpstreamTimeout,
                        format!("upstream sent nothing for {ms} ms"),
                    ));
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
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
