//! Answers on `/mcp`: one JSON body, or an SSE stream when the client
//! accepts one and asked for progress (progress events, then the answer).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use sluice_mcp::rpc::{self, RpcError};
use tokio::sync::mpsc;

use super::Ctx;
use super::session::Session;
use crate::app::App;

/// Progress events waiting for a slow client at most (more are dropped).
const PROGRESS_QUEUE: usize = 64;
/// A comment on an idle stream this often keeps proxies from closing it.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A JSON-RPC error (no request id) with an HTTP status.
pub fn http_error(status: StatusCode, e: RpcError) -> Response {
    let body = rpc::response(&Value::Null, Err(e));
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A 2026-07-28 result carries `resultType`, cache hints where it is
/// cacheable, and the server's identity in `_meta`.
fn decorate(method: &str, result: &mut Value) {
    let Some(o) = result.as_object_mut() else {
        return;
    };
    o.entry("resultType").or_insert_with(|| json!("complete"));
    let cacheable = matches!(
        method,
        "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
            | "server/discover"
    );
    if cacheable {
        o.entry("ttlMs").or_insert_with(|| json!(0));
        o.entry("cacheScope").or_insert_with(|| json!("private"));
    }
    let meta = o.entry("_meta").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.insert(
            "io.modelcontextprotocol/serverInfo".into(),
            super::methods::server_info(),
        );
    }
}

/// The HTTP status a 2026-07-28 error is sent with (handshake revisions
/// send every answer with 200).
fn status_of(ctx: &Ctx, result: &Result<Value, RpcError>) -> StatusCode {
    match result {
        Err(e) if ctx.modern => match e.code {
            rpc::PARSE_ERROR
            | rpc::INVALID_REQUEST
            | rpc::INVALID_PARAMS
            | rpc::UNSUPPORTED_PROTOCOL_VERSION => StatusCode::BAD_REQUEST,
            rpc::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
            _ => StatusCode::OK,
        },
        _ => StatusCode::OK,
    }
}

pub fn json(
    ctx: &Ctx,
    id: &Value,
    mut result: Result<Value, RpcError>,
    method: Option<&str>,
) -> Response {
    if let (true, Ok(r), Some(m)) = (ctx.modern, &mut result, method) {
        decorate(m, r);
    }
    let status = status_of(ctx, &result);
    let body = rpc::response(id, result);
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn accepts_sse(ctx: &Ctx) -> bool {
    ctx.headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn accepts_json(ctx: &Ctx) -> bool {
    let mut accept = ctx
        .headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    accept.peek().is_none() || accept.any(|v| v.contains("application/json") || v.contains("*/*"))
}

fn event(msg: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {msg}\n\n"))
}

/// Runs one request and answers it: as an SSE stream when the client
/// accepts one and wants progress (or accepts nothing else), else JSON.
/// A cancelled request (`notifications/cancelled`, or the client gone)
/// is cancelled upstream.
pub async fn answer(ctx: Ctx, id: Value, method: String, params: Option<Value>) -> Response {
    if method == "subscriptions/listen" {
        return listen(&ctx, id, params.as_ref());
    }
    let wants_progress = rpc::progress_token(params.as_ref()).is_some();
    let sse = accepts_sse(&ctx) && (wants_progress || !accepts_json(&ctx));
    if !sse {
        let result = run(&ctx, &id, &method, params, None).await;
        return json(&ctx, &id, result, Some(&method));
    }
    let (tx, mut rx) = mpsc::channel::<Value>(PROGRESS_QUEUE);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let progress = wants_progress.then(|| tx.clone());
    let modern = ctx.modern;
    // The request runs as its own task so the stream can interleave its
    // progress; the task is aborted when the client goes away.
    let task = tokio::spawn(async move {
        let mut result = run(&ctx, &id, &method, params, progress).await;
        if let (true, Ok(r)) = (modern, &mut result) {
            decorate(&method, r);
        }
        let _ = done_tx.send(rpc::response(&id, result));
    });
    drop(tx);
    let abort = AbortOnDrop(task);
    let stream = async_stream(move |out| async move {
        let _abort = abort;
        let mut done = std::pin::pin!(done_rx);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            tokio::select! {
                biased;
                Some(p) = rx.recv() => { if out.send(event(&p)).await.is_err() { return } }
                r = &mut done => {
                    // Progress sent before the answer goes first.
                    while let Ok(p) = rx.try_recv() {
                        if out.send(event(&p)).await.is_err() { return }
                    }
                    if let Ok(r) = r { let _ = out.send(event(&r)).await; }
                    return;
                }
                _ = tick.tick() => { if out.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() { return } }
            }
        }
    });
    sse_response(stream)
}

async fn run(
    ctx: &Ctx,
    id: &Value,
    method: &str,
    params: Option<Value>,
    progress: Option<mpsc::Sender<Value>>,
) -> Result<Value, RpcError> {
    let work = super::methods::dispatch(ctx, method, params, progress);
    let Some(session) = &ctx.session else {
        return work.await;
    };
    let (_inflight, cancelled) = session.start(id);
    tokio::select! {
        r = work => r,
        _ = cancelled => Err(RpcError::new(rpc::INTERNAL_ERROR, "cancelled by the client")),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A body fed by `f` through a small channel; `f` ends when the client
/// goes away (its sends fail).
fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = Bytes> + Send + 'static
where
    F: FnOnce(mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let task = AbortOnDrop(tokio::spawn(f(tx)));
    futures_util::stream::unfold((rx, task), |(mut rx, task)| async move {
        let b = rx.recv().await?;
        Some((b, (rx, task)))
    })
}

fn sse_response(stream: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Response {
    let body = Body::from_stream(stream.map(Ok::<_, std::convert::Infallible>));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// `subscriptions/listen` (2026-07-28): the acknowledgment with the
/// honored filter, then the list changes it asked for, on one stream.
fn listen(ctx: &Ctx, id: Value, params: Option<&Value>) -> Response {
    let want = params.and_then(|p| p.get("notifications"));
    let honored: serde_json::Map<String, Value> = [
        "toolsListChanged",
        "promptsListChanged",
        "resourcesListChanged",
    ]
    .into_iter()
    .filter(|k| want.and_then(|w| w.get(*k)).and_then(Value::as_bool) == Some(true))
    .map(|k| (k.to_owned(), json!(true)))
    .collect();
    let meta = json!({"io.modelcontextprotocol/subscriptionId": id});
    let ack = rpc::notification(
        "notifications/subscriptions/acknowledged",
        Some(json!({"_meta": meta, "notifications": honored})),
    );
    let mut changed = ctx.fed.subscribe();
    let stream = async_stream(move |out| async move {
        if out.send(event(&ack)).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            let what = tokio::select! {
                c = changed.recv() => match c {
                    Ok(what) => what,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
                _ = tick.tick() => {
                    if out.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() { return }
                    continue;
                }
            };
            if !honored.contains_key(&format!("{what}ListChanged")) {
                continue;
            }
            let n = rpc::notification(
                &format!("notifications/{what}/list_changed"),
                Some(json!({"_meta": meta})),
            );
            if out.send(event(&n)).await.is_err() {
                return;
            }
        }
    });
    sse_response(stream)
}

/// A session's `GET /mcp` stream: `notifications/*/list_changed` when an
/// upstream's lists change (or a server comes or goes), until the session
/// ends.
pub fn changes(app: Arc<App>, session: Arc<Session>) -> Response {
    let mut changed = app.mcp.load().subscribe();
    let stream = async_stream(move |out| async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            let msg = tokio::select! {
                c = changed.recv() => match c {
                    Ok(what) => rpc::notification(&format!("notifications/{what}/list_changed"), None),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
                _ = tick.tick() => {
                    let ttl = app.snapshot.load().config.mcp.session_ttl;
                    if app.mcp_sessions.get(&session.id, ttl).await.is_none() {
                        return;
                    }
                    if out.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() { return }
                    continue;
                }
            };
            if out.send(event(&msg)).await.is_err() {
                return;
            }
        }
    });
    sse_response(stream)
}
