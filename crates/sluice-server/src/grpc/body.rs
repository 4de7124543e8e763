//! A call's response body: the messages, then the trailers with the status.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use sluice_core::GatewayError;
use sluice_grpc::status::{Code, Status};

/// Passes `inner`'s frames (gRPC messages), then ends with `grpc-status`
/// trailers: OK when `inner` ended, the error's status when it failed.
pub struct Tail {
    inner: Body,
    done: bool,
}

impl Tail {
    pub fn new(inner: Body) -> Self {
        Self { inner, done: false }
    }
}

/// The status of a body that failed: the gateway's error keeps its code and
/// message; anything else is the upstream's stream breaking.
fn status_of(e: &axum::Error) -> Status {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(g) = err.downcast_ref::<GatewayError>() {
            return Status::new(Code::of_http(g.status()), g.message.to_string());
        }
        source = err.source();
    }
    Status::new(Code::Unavailable, format!("the stream broke: {e}"))
}

impl http_body::Body for Tail {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let status = loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(f))) if f.is_data() => return Poll::Ready(Some(Ok(f))),
                // Trailers of the inner body are not the call's.
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => break status_of(&e),
                Poll::Ready(None) => break Status::new(Code::Ok, ""),
            }
        };
        self.done = true;
        Poll::Ready(Some(Ok(Frame::trailers(status.trailers()))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
