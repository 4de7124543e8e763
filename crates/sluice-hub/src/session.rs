//! One agent's connection: hello, then a single task that reads the agent's
//! frames, writes its queued frames, pings it, and evicts it when it goes
//! quiet. A slow agent only ever blocks its own task. The connection is a
//! WebSocket, or anything else that carries the same frames ([`Socket`]:
//! the server's gRPC `Connect` stream).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use axum::extract::ws::Utf8Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::json;
use sluice_core::resilience::now_nanos;

use super::{AgentHandle, Hub, Kick, Outbound, Status};

pub use super::frame::code;
use super::frame::{AgentFrame, Hello};

/// What an agent's connection delivered.
pub enum Incoming {
    /// One frame of the protocol (JSON text).
    Text(Utf8Bytes),
    /// Something that is not a JSON text frame.
    Binary,
    /// The agent closed the connection.
    Close,
    /// A sign of life with no frame (a pong).
    Life,
}

/// Why a read failed.
pub struct ReadError {
    /// A frame over `max_frame_bytes`.
    pub too_big: bool,
    pub message: String,
}

/// A connection that carries the agent protocol's frames.
pub trait Socket: Send {
    /// The next thing the agent sent; `None` when the connection ended.
    /// Cancel-safe: a call dropped before it returns loses nothing.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Incoming, ReadError>>> + Send;
    /// Writes one frame; `Err` when the connection is gone.
    fn send_text(&mut self, text: String) -> impl Future<Output = Result<(), ()>> + Send;
    /// A heartbeat the agent answers with a sign of life.
    fn ping(&mut self) -> impl Future<Output = Result<(), ()>> + Send;
    /// Ends the connection with a close code and reason.
    fn close(&mut self, code: u16, reason: &str) -> impl Future<Output = ()> + Send;
}

impl Socket for WebSocket {
    async fn recv(&mut self) -> Option<Result<Incoming, ReadError>> {
        let msg = WebSocket::recv(self).await?;
        Some(match msg {
            Ok(Message::Text(t)) => Ok(Incoming::Text(t)),
            Ok(Message::Binary(_)) => Ok(Incoming::Binary),
            Ok(Message::Close(_)) => Ok(Incoming::Close),
            // Pings are answered by the library; pongs only count as life.
            Ok(Message::Ping(_) | Message::Pong(_)) => Ok(Incoming::Life),
            Err(e) => {
                let message = e.to_string();
                Err(ReadError {
                    too_big: too_big(e),
                    message,
                })
            }
        })
    }

    async fn send_text(&mut self, text: String) -> Result<(), ()> {
        self.send(Message::text(text)).await.map_err(drop)
    }

    async fn ping(&mut self) -> Result<(), ()> {
        self.send(Message::Ping(bytes::Bytes::new()))
            .await
            .map_err(drop)
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.to_owned()),
        };
        let _ = self.send(Message::Close(Some(frame))).await;
    }
}

async fn close<S: Socket>(socket: &mut S, code: u16, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(code, reason)).await;
}

/// Whether a read failed on a frame or message over `max_frame_bytes`.
fn too_big(e: axum::Error) -> bool {
    let e = e.into_inner();
    matches!(
        e.downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// Parses the hello; on a bad one, the close code and why.
fn parse_hello(msg: Incoming, max_groups: usize) -> Result<Hello, (u16, String)> {
    match msg {
        Incoming::Text(t) => super::frame::parse_hello(t.as_str(), max_groups),
        Incoming::Binary => Err((code::UNSUPPORTED, "frames are JSON text".into())),
        _ => Err((code::POLICY, "the first frame must be a hello".into())),
    }
}

/// A key limited to some agent groups may only join those (and at least
/// one of them).
fn allowed(h: Hello, scope: &super::Scope) -> Result<Hello, (u16, String)> {
    let Some(s) = scope else { return Ok(h) };
    if h.groups.is_empty() || h.groups.iter().any(|g| !s.iter().any(|x| **x == **g)) {
        let names: Vec<&str> = s.iter().map(|g| &**g).collect();
        return Err((
            code::POLICY,
            format!("this key may only join the groups {names:?}"),
        ));
    }
    Ok(h)
}

/// Runs one connection to its end. `auth` is the caller's Authorization
/// header, kept for the chat requests the agent makes over the socket.
pub async fn run<S: Socket>(
    hub: Arc<Hub>,
    gateway: Arc<dyn super::Gateway>,
    mut socket: S,
    auth: Option<http::HeaderValue>,
    scope: super::Scope,
) {
    if *hub.shutdown.borrow() {
        close(&mut socket, code::GOING_AWAY, &hub.going_away_reason()).await;
        return;
    }
    let first = tokio::time::timeout(hub.cfg.hello_timeout, socket.recv()).await;
    let hello = match first {
        Err(_) => {
            close(&mut socket, code::HELLO_TIMEOUT, "no hello in time").await;
            return;
        }
        Ok(None) => return,
        Ok(Some(Err(e))) => {
            // Too big a first frame gets the same 1009 close as a later one.
            if e.too_big {
                let why = format!("frame over {} bytes", hub.cfg.max_frame_bytes);
                close(&mut socket, code::TOO_BIG, &why).await;
            }
            return;
        }
        Ok(Some(Ok(msg))) => match parse_hello(msg, 32).and_then(|h| allowed(h, &scope)) {
            Ok(h) => h,
            Err((c, why)) => {
                close(&mut socket, c, &why).await;
                return;
            }
        },
    };
    hub.start_heartbeats();
    let (handle, mut rx, kick) = hub.register(
        Arc::from(hello.agent_id),
        hello.groups.into_iter().map(Arc::from).collect(),
        (hello.capabilities, hello.tools),
    );
    let welcome = json!({
        "type": "welcome",
        "agent_id": &*handle.id,
        "session": handle.session,
        "heartbeat_ms": hub.cfg.heartbeat.as_millis() as u64,
        "max_frame_bytes": hub.cfg.max_frame_bytes,
        "replica": hub.replica,
        // How widely to spread a reconnect (random 0..this), so a replica
        // going away does not bring every agent back at the same instant.
        "reconnect_jitter_ms": hub.reconnect_jitter_ms(),
    });
    let (reason, evicted) = if socket.send_text(welcome.to_string()).await.is_err() {
        ("write failed".to_owned(), false)
    } else {
        serve(&hub, &gateway, &handle, &mut socket, &mut rx, kick, auth).await
    };
    // Frames still queued were never sent: their instructions are
    // undelivered (unregister reports every unacknowledged one).
    rx.close();
    hub.unregister(&handle, &reason, evicted);
}

async fn serve<S: Socket>(
    hub: &Arc<Hub>,
    gateway: &Arc<dyn super::Gateway>,
    handle: &Arc<AgentHandle>,
    socket: &mut S,
    rx: &mut tokio::sync::mpsc::Receiver<Outbound>,
    mut kick: tokio::sync::watch::Receiver<Kick>,
    auth: Option<http::HeaderValue>,
) -> (String, bool) {
    // A frame the agent does not take for as long as it may stay silent
    // (its socket full, not reading) gets it evicted like a silent one.
    let write_limit = hub.cfg.heartbeat * hub.cfg.missed_heartbeats;
    // One wait for a kick for the whole session (not a new one, registered
    // and dropped again, at every frame): every kick ends the session.
    let kicked = async move {
        let _ = kick.changed().await;
        *kick.borrow()
    };
    tokio::pin!(kicked);
    loop {
        tokio::select! {
            biased;
            k = &mut kicked => return kicked_out(hub, socket, k).await,
            msg = socket.recv() => {
                let msg = match msg {
                    None => return ("closed by the agent".into(), false),
                    Some(Err(e)) => {
                        let why = e.message;
                        if e.too_big {
                            close(socket, code::TOO_BIG, &format!("frame over {} bytes", hub.cfg.max_frame_bytes)).await;
                            return ("frame too big".into(), false);
                        }
                        return (format!("read error: {why}"), false);
                    }
                    Some(Ok(m)) => m,
                };
                handle.last_seen.store(now_nanos(), Ordering::Relaxed);
                match msg {
                    Incoming::Text(t) => {
                        if let Err((c, why)) = on_frame(hub, gateway, handle, t.as_str(), &auth) {
                            close(socket, c, &why).await;
                            return (why, false);
                        }
                    }
                    Incoming::Binary => {
                        close(socket, code::UNSUPPORTED, "frames are JSON text").await;
                        return ("binary frame".into(), false);
                    }
                    Incoming::Close => return ("closed by the agent".into(), false),
                    Incoming::Life => {}
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { return ("queue closed".into(), false) };
                match out {
                    Outbound::Text(t) => {
                        if let Err(end) = send(socket, *t, write_limit).await {
                            return end;
                        }
                    }
                    Outbound::Instruction(i) => {
                        let (id, frame) = *i;
                        if let Err(end) = send(socket, frame, write_limit).await {
                            return end;
                        }
                        hub.set_status(&id, Status::Delivered, None);
                    }
                    Outbound::Ping => match tokio::time::timeout(write_limit, socket.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(())) => return ("write failed".into(), false),
                        Err(_) => return (format!("not reading: a ping waited {} ms", write_limit.as_millis()), true),
                    },
                }
            }
        }
    }
}

/// Closes a session told to end from outside; why it ended.
async fn kicked_out<S: Socket>(hub: &Hub, socket: &mut S, kick: Kick) -> (String, bool) {
    match kick {
        Kick::Replaced => {
            let why = "replaced by a newer connection with the same agent_id";
            close(socket, code::REPLACED, why).await;
            ("replaced".into(), false)
        }
        Kick::Silent => {
            close(socket, code::HEARTBEAT_TIMEOUT, "missed heartbeats").await;
            let why = format!("missed {} heartbeats", hub.cfg.missed_heartbeats);
            (why, true)
        }
        Kick::Shutdown | Kick::None => {
            close(socket, code::GOING_AWAY, &hub.going_away_reason()).await;
            ("server shutdown".into(), false)
        }
    }
}

/// Sends one frame, or says why the session ends: a write error, or an
/// agent that did not take the frame within `limit` (evicted).
async fn send<S: Socket>(
    socket: &mut S,
    text: String,
    limit: Duration,
) -> Result<(), (String, bool)> {
    match tokio::time::timeout(limit, socket.send_text(text)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(("write failed".into(), false)),
        Err(_) => Err((
            format!("not reading: a frame waited {} ms", limit.as_millis()),
            true,
        )),
    }
}

/// One frame from the agent. An error closes the connection with its code.
fn on_frame(
    hub: &Arc<Hub>,
    gateway: &Arc<dyn super::Gateway>,
    handle: &Arc<AgentHandle>,
    text: &str,
    auth: &Option<http::HeaderValue>,
) -> Result<(), (u16, String)> {
    match super::frame::parse(text)? {
        AgentFrame::Ack { id } => {
            hub.agent_reply(handle, &id, Status::Acked, None);
        }
        AgentFrame::Result { id, payload } => {
            hub.agent_reply(handle, &id, Status::Completed, Some(payload));
        }
        AgentFrame::Event { payload } => {
            hub.event(json!({
                "type": "agent.event",
                "agent_id": &*handle.id,
                "groups": handle.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
                "payload": payload,
            }));
        }
        AgentFrame::Ping => {
            // An application-level heartbeat, for clients that cannot see
            // protocol pings: answered with a pong frame.
            let _ = handle
                .tx
                .try_send(Outbound::text(json!({"type": "pong"}).to_string()));
        }
        AgentFrame::Chat { id, request } => {
            super::chat::start(gateway.clone(), handle.clone(), id, request, auth.clone());
        }
    }
    Ok(())
}
