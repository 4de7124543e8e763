//! `GET /v1/agents/events`: the hub's events as server-sent events, each
//! filtered by the caller's key scope.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;
use serde_json::Value;
use sluice_hub::Scope;
use sluice_hub::cluster::presence_groups;
use sluice_hub::in_scope;

use crate::app::App;
use crate::hub_routes::hub_for;

/// `GET /v1/agents/events`: every hub event as SSE, from now on. A reader
/// that falls more than `events_buffer` behind is told how many it missed.
pub async fn events(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let (hub, scope) = match hub_for(&app, &headers) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let mut rx = hub.subscribe();
    let mut shutdown = hub.shutdown.subscribe();
    let stream = async_stream(move |tx| async move {
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        keepalive.tick().await;
        if tx
            .send(Bytes::from_static(b": connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let out = tokio::select! {
                e = rx.recv() => match e {
                    // A scoped key sees the events of its groups' agents.
                    Ok(e) if !event_in_scope(&scope, &e) => continue,
                    Ok(e) => Bytes::from(format!("data: {e}\n\n")),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Bytes::from(format!("data: {{\"type\":\"events.lagged\",\"missed\":{n}}}\n\n"))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                _ = shutdown.changed() => return,
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(stream);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    r
}

fn event_in_scope(scope: &Scope, event: &str) -> bool {
    if scope.is_none() {
        return true;
    }
    let groups = serde_json::from_str::<Value>(event)
        .map(|v| presence_groups(&v))
        .unwrap_or_default();
    in_scope(scope, &groups)
}

/// A body fed by a task through a small channel (the task ends when the
/// client goes away: its sends fail).
fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(f(tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Body::from_stream(stream)
}
