//! `Connect`: the agent hub over a bidirectional gRPC stream. Each message
//! is an `AgentFrame` carrying one frame of the WebSocket protocol; the
//! hub's session runs on it unchanged ([`sluice_hub::session::Socket`]).
//!
//! What differs from the WebSocket: the hub's heartbeats are answered by the
//! transport (while the call's response is open the agent counts as alive;
//! an agent whose connection ends is gone at once), and a close is a last
//! frame `{"type":"close","code":…,"reason":…}` followed by a status.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use sluice_grpc::codec::{Codec, Frames};
use sluice_grpc::pb;
use sluice_grpc::status::{Code, Status};
use sluice_hub::session::{Incoming, ReadError, Socket, Utf8Bytes, code};
use tokio::sync::mpsc;

use super::{head, status_only};
use crate::app::App;

/// Frames written ahead of the agent reading them; beyond, the session
/// waits (and evicts an agent that does not read within its limit).
const OUT_QUEUE: usize = 8;

pub(super) async fn connect(
    app: Arc<App>,
    codec: Codec,
    headers: &HeaderMap,
    body: Body,
) -> Response<Body> {
    let (hub, scope) = match crate::hub_routes::hub_for(&app, headers) {
        Ok(h) => h,
        Err(r) => {
            let (parts, b) = r.into_parts();
            let bytes = b.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let s = Status::of_http(parts.status.as_u16(), &bytes);
            return status_only(codec, &s, HeaderMap::new());
        }
    };
    let auth = crate::hub_routes::agent_auth(headers);
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let socket = GrpcSocket {
        frames: Frames::new(hub.cfg.max_frame_bytes),
        body,
        codec,
        tx,
        life: false,
    };
    let gateway = crate::hub_routes::gateway(app);
    tokio::spawn(sluice_hub::session::run(hub, gateway, socket, auth, scope));
    head(codec, &HeaderMap::new()).map(|()| Body::new(Outgoing { rx, done: false }))
}

struct GrpcSocket {
    body: Body,
    frames: Frames,
    codec: Codec,
    tx: mpsc::Sender<Frame<Bytes>>,
    /// A heartbeat was sent while the call was open: the next read reports
    /// life.
    life: bool,
}

impl Socket for GrpcSocket {
    async fn recv(&mut self) -> Option<Result<Incoming, ReadError>> {
        if std::mem::take(&mut self.life) {
            return Some(Ok(Incoming::Life));
        }
        loop {
            match self.frames.next_message() {
                Ok(Some(msg)) => {
                    let frame = self.codec.decode::<pb::AgentFrame>(&msg);
                    return Some(Ok(match frame {
                        Ok(f) => Incoming::Text(Utf8Bytes::from(f.json)),
                        Err(_) => Incoming::Binary,
                    }));
                }
                Ok(None) => {}
                Err(s) => {
                    return Some(Err(ReadError {
                        too_big: s.code == Code::ResourceExhausted,
                        message: s.message,
                    }));
                }
            }
            match self.body.frame().await {
                None => return None,
                Some(Err(e)) => {
                    return Some(Err(ReadError {
                        too_big: false,
                        message: e.to_string(),
                    }));
                }
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.frames.feed(&d);
                    }
                }
            }
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), ()> {
        let frame = self.codec.frame(&pb::AgentFrame { json: text });
        self.tx.send(Frame::data(frame)).await.map_err(drop)
    }

    async fn ping(&mut self) -> Result<(), ()> {
        if self.tx.is_closed() {
            return Err(());
        }
        self.life = true;
        Ok(())
    }

    async fn close(&mut self, close_code: u16, reason: &str) {
        let json = serde_json::json!({"type": "close", "code": close_code, "reason": reason});
        let _ = self.send_text(json.to_string()).await;
        let status = Status::new(status_of_close(close_code), reason);
        let _ = self.tx.send(Frame::trailers(status.trailers())).await;
    }
}

/// The gRPC status of a close code of the agent protocol.
fn status_of_close(c: u16) -> Code {
    match c {
        code::GOING_AWAY | code::HEARTBEAT_TIMEOUT => Code::Unavailable,
        code::UNSUPPORTED | code::INVALID_PAYLOAD => Code::InvalidArgument,
        code::POLICY => Code::PermissionDenied,
        code::TOO_BIG => Code::ResourceExhausted,
        code::REPLACED => Code::Aborted,
        code::HELLO_TIMEOUT => Code::DeadlineExceeded,
        _ => Code::Unknown,
    }
}

/// The response: the session's frames, then its status (OK when it ended
/// without a close).
struct Outgoing {
    rx: mpsc::Receiver<Frame<Bytes>>,
    done: bool,
}

impl http_body::Body for Outgoing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(f)) => {
                self.done = f.is_trailers();
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(None) => {
                self.done = true;
                let ok = Status::new(Code::Ok, "");
                Poll::Ready(Some(Ok(Frame::trailers(ok.trailers()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
