//! Requests in flight to one upstream connection: each waits for the
//! response with its id; progress notifications go to the caller that
//! asked for them, with the caller's own progress token put back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::rpc::{self, Message, RpcError};

/// What the upstream says that is not an answer to one request.
#[derive(Debug)]
pub enum Event {
    /// `notifications/{tools,resources,prompts}/list_changed`.
    ListChanged(&'static str),
    /// The connection is gone (child exited, stream closed).
    Closed(String),
}

struct Pending {
    tx: oneshot::Sender<Result<Value, RpcError>>,
    /// The caller's progress token and where its progress goes.
    progress: Option<(Value, mpsc::Sender<Value>)>,
}

pub struct Router {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    events: mpsc::UnboundedSender<Event>,
    name: String,
}

/// What the connection must answer when the server asks the gateway
/// something (it is the server's client): `None` to ignore.
pub enum Inbound {
    Answer(Value),
    None,
}

impl Router {
    pub fn new(name: &str, events: mpsc::UnboundedSender<Event>) -> Self {
        Self {
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            events,
            name: name.to_owned(),
        }
    }

    /// A fresh request id, registered; its response arrives on the receiver.
    /// When `params` carries a progress token, it is replaced by the id so
    /// progress can be told apart from other callers'.
    pub fn register(
        &self,
        params: &mut Option<Value>,
        progress: Option<mpsc::Sender<Value>>,
    ) -> (u64, oneshot::Receiver<Result<Value, RpcError>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let theirs = params
            .as_mut()
            .and_then(rpc::meta_mut)
            .and_then(|m| m.get_mut("progressToken"))
            .map(|t| std::mem::replace(t, json!(id)));
        let (tx, rx) = oneshot::channel();
        let progress = theirs.zip(progress);
        self.lock().insert(id, Pending { tx, progress });
        (id, rx)
    }

    /// Forgets a request (answered elsewhere, cancelled or timed out).
    pub fn forget(&self, id: u64) -> bool {
        self.lock().remove(&id).is_some()
    }

    /// Answers one request still waiting with an error.
    pub fn fail(&self, id: u64, e: RpcError) {
        if let Some(p) = self.lock().remove(&id) {
            let _ = p.tx.send(Err(e));
        }
    }

    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Fails every request in flight (the connection is gone).
    pub fn fail_all(&self, why: &str) {
        let all: Vec<_> = self.lock().drain().collect();
        for (_, p) in all {
            let _ = p.tx.send(Err(RpcError::new(
                rpc::UPSTREAM_UNAVAILABLE,
                format!(
                    "mcp server '{}' went away during the request: {why}",
                    self.name
                ),
            )));
        }
    }

    pub fn closed(&self, why: String) {
        self.fail_all(&why);
        let _ = self.events.send(Event::Closed(why));
    }

    /// One message from the upstream.
    pub fn dispatch(&self, v: Value) -> Inbound {
        let msg = match Message::from_value(v) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(target: "sluice::mcp", server = %self.name, error = e, "ignored a malformed message");
                return Inbound::None;
            }
        };
        match msg {
            Message::Response { id, result } => {
                let p = id.as_u64().and_then(|n| self.lock().remove(&n));
                if let Some(p) = p {
                    let _ = p.tx.send(result);
                }
                Inbound::None
            }
            Message::Notification { method, params } => {
                self.notification(&method, params);
                Inbound::None
            }
            Message::Request { id, method, .. } => Inbound::Answer(answer(&id, &method)),
        }
    }

    fn notification(&self, method: &str, params: Option<Value>) {
        match method {
            "notifications/progress" => {
                let Some(mut params) = params else { return };
                let Some(n) = params.get("progressToken").and_then(Value::as_u64) else {
                    return;
                };
                let target = self.lock().get(&n).and_then(|p| p.progress.clone());
                if let Some((theirs, tx)) = target {
                    params["progressToken"] = theirs;
                    // A slow client loses progress, never blocks the reader.
                    let _ = tx.try_send(rpc::notification(method, Some(params)));
                }
            }
            "notifications/tools/list_changed" => self.changed("tools"),
            "notifications/resources/list_changed" => self.changed("resources"),
            "notifications/prompts/list_changed" => self.changed("prompts"),
            "notifications/message" => {
                tracing::info!(target: "sluice::mcp", server = %self.name, log = %params.unwrap_or_default(), "mcp server log");
            }
            _ => {}
        }
    }

    fn changed(&self, what: &'static str) {
        let _ = self.events.send(Event::ListChanged(what));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The gateway's answer to a request from an upstream server: it is a
/// client with no roots, no sampling and no elicitation.
fn answer(id: &Value, method: &str) -> Value {
    match method {
        "ping" => rpc::response(id, Ok(json!({}))),
        "roots/list" => rpc::response(id, Ok(json!({"roots": []}))),
        _ => rpc::response(
            id,
            Err(RpcError::new(
                rpc::METHOD_NOT_FOUND,
                format!("the gateway does not offer {method} to tool servers"),
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_and_progress_find_their_caller() {
        let (etx, mut erx) = mpsc::unbounded_channel();
        let r = Router::new("s", etx);
        let (ptx, mut prx) = mpsc::channel(4);
        let mut params = Some(json!({"name":"t","_meta":{"progressToken":"theirs"}}));
        let (id, rx) = r.register(&mut params, Some(ptx));
        assert_eq!(params.unwrap()["_meta"]["progressToken"], json!(id));
        r.dispatch(json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":id,"progress":1}}));
        let p = prx.recv().await.unwrap();
        assert_eq!(p["params"]["progressToken"], "theirs");
        r.dispatch(json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}));
        assert!(matches!(
            erx.recv().await,
            Some(Event::ListChanged("tools"))
        ));
        r.dispatch(json!({"jsonrpc":"2.0","id":id,"result":{"ok":true}}));
        assert_eq!(rx.await.unwrap().unwrap()["ok"], true);
        assert_eq!(r.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_closed_connection_fails_what_is_in_flight() {
        let (etx, mut erx) = mpsc::unbounded_channel();
        let r = Router::new("s", etx);
        let (_, rx) = r.register(&mut None, None);
        r.closed("exited".into());
        let e = rx.await.unwrap().unwrap_err();
        assert_eq!(e.code, rpc::UPSTREAM_UNAVAILABLE);
        assert!(e.message.contains("'s'"), "{}", e.message);
        assert!(matches!(erx.recv().await, Some(Event::Closed(_))));
        match r.dispatch(json!({"jsonrpc":"2.0","id":"x","method":"ping"})) {
            Inbound::Answer(a) => assert_eq!(a["result"], json!({})),
            Inbound::None => panic!("a ping is answered"),
        }
    }
}
