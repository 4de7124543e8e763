//! The hub's HTTP side, on the API listener and authenticated like the rest
//! of the API: the WebSocket upgrade, instructions, presence, events.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Request, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::translate::Wire;

use crate::app::App;
use crate::extract::{ApiPath, ApiQuery, JsonBody};
use sluice_hub::cluster::presence_groups;
use sluice_hub::{Hub, Scope, SendError, Status, in_scope};

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    let e = GatewayError::new(kind, message.into());
    crate::reply::error_response(&e, Wire::OpenAi).into_response()
}

/// The request path, as the hub runs agents' chats through it.
struct AppGateway(Arc<App>);

/// The gateway the hub runs agents' chats through: `app`'s request path.
pub fn gateway(app: Arc<App>) -> Arc<dyn sluice_hub::Gateway> {
    Arc::new(AppGateway(app))
}

impl sluice_hub::Gateway for AppGateway {
    fn chat(
        &self,
        body: Bytes,
        auth: Option<http::HeaderValue>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(a) = auth {
            headers.insert(http::header::AUTHORIZATION, a);
        }
        let inbound = crate::proxy::Inbound {
            op: sluice_core::request::Operation::Chat,
            route: sluice_hub::chat::ROUTE,
            headers,
            body: crate::proxy::InboundBody::Read(body),
            client: None,
        };
        Box::pin(crate::proxy::serve(self.0.clone(), inbound))
    }
}

fn forbidden(what: String) -> Response {
    error(ErrorKind::AgentNotAllowed, what)
}

/// The hub and the caller's scope, after the caller's key is checked.
pub(crate) fn hub_for(app: &App, headers: &HeaderMap) -> Result<(Arc<Hub>, Scope), Box<Response>> {
    let Some(hub) = app.hub.clone() else {
        return Err(Box::new(error(
            ErrorKind::RouteNotFound,
            "the agent hub is disabled ([agents] enabled = false)",
        )));
    };
    let access = app.access.load();
    match crate::access::authenticate(&access, headers) {
        Ok(key) => Ok((hub, key.and_then(|k| k.agent_groups.clone()))),
        Err(e) => Err(Box::new(crate::reply::error_response(
            &e,
            sluice_providers::translate::Wire::OpenAi,
        ))),
    }
}

/// The credential of chats made on an agent's behalf: its own, however it
/// came (`Authorization` or `x-api-key`).
pub(crate) fn agent_auth(headers: &HeaderMap) -> Option<http::HeaderValue> {
    crate::access::api_token(headers)
        .and_then(|t| http::HeaderValue::try_from(format!("Bearer {t}")).ok())
        .map(|mut v| {
            v.set_sensitive(true);
            v
        })
}

pub async fn connect(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let (hub, scope) = match hub_for(&app, &headers) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    if let Err(wait) = hub.admit_connect() {
        return paced(&hub, wait);
    }
    let auth = agent_auth(&headers);
    let cfg = &hub.cfg;
    ws.read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(cfg.max_frame_bytes)
        .max_frame_size(cfg.max_frame_bytes)
        .on_upgrade(move |socket| sluice_hub::session::run(hub, gateway(app), socket, auth, scope))
}

/// `503` + `Retry-After` for a connection past `max_connects_per_sec`;
/// the body suggests a jittered wait (`retry_after_ms`) so refused agents
/// do not all come back at the same instant.
fn paced(hub: &Hub, wait: Duration) -> Response {
    let jitter = hub.reconnect_jitter_ms();
    let retry_ms = wait.as_millis() as u64 + rand::random::<u64>() % jitter.max(1);
    let e = sluice_core::GatewayError::new(
        ErrorKind::AgentConnectsPaced,
        format!(
            "agent connections are paced at {} per second: retry after a random 0-{jitter} ms",
            hub.cfg.max_connects_per_sec
        ),
    );
    let mut r = crate::reply::error_response(&e, sluice_providers::translate::Wire::OpenAi);
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    r.headers_mut()
        .insert("x-sluice-retry-after-ms", http::HeaderValue::from(retry_ms));
    r
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstructionBody {
    /// Kept as the client wrote it (checked JSON): it goes out in the
    /// agent's frame without being built into a tree and written again.
    payload: Box<RawValue>,
    /// Wait for the agent's ack (milliseconds).
    wait_ack_ms: Option<u64>,
    /// Wait for the agent's result (milliseconds).
    wait_result_ms: Option<u64>,
}

impl InstructionBody {
    /// What the caller waits for, and how long (capped), if it waits.
    fn wanted(&self, hub: &Hub) -> Option<(Status, Duration)> {
        let (want, ms) = match (self.wait_result_ms, self.wait_ack_ms) {
            (Some(ms), _) => (Status::Completed, ms),
            (None, Some(ms)) => (Status::Acked, ms),
            (None, None) => return None,
        };
        Some((want, Duration::from_millis(ms).min(hub.cfg.max_wait)))
    }
}

/// The hub and the instruction body, after the key and the body are checked.
fn checked(
    app: &App,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Arc<Hub>, Scope, InstructionBody), Box<Response>> {
    let (hub, scope) = hub_for(app, headers)?;
    Ok((hub, scope, parse_body(body)?))
}

fn parse_body(body: &Bytes) -> Result<InstructionBody, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(ErrorKind::InvalidRequest, format!("invalid instruction: {e} (expected {{\"payload\":…, \"wait_ack_ms\"?, \"wait_result_ms\"?}})")))
    })
}

/// Queues one instruction for `agent_id`, here or (with Redis) on the
/// replica it is connected to.
/// `payload` is a `Value`, or the client's own JSON text (`RawValue`).
pub(crate) async fn queue<P: serde::Serialize + Sync + ?Sized>(
    hub: &Arc<Hub>,
    scope: &Scope,
    agent_id: &str,
    payload: &P,
) -> Result<Arc<str>, SendError> {
    let id = hub.new_instruction_id();
    place(hub, scope, agent_id, id.clone(), payload).await?;
    Ok(id)
}

/// Where an instruction went: `None` here, else the replica's name.
type Placed = Option<String>;

/// Queues instruction `id` for `agent_id` here or where it is connected
/// (the same id again starts its record over: the agent moved).
async fn place<P: serde::Serialize + Sync + ?Sized>(
    hub: &Arc<Hub>,
    scope: &Scope,
    agent_id: &str,
    id: Arc<str>,
    payload: &P,
) -> Result<Placed, SendError> {
    if let Some(agent) = hub.get(agent_id) {
        if !in_scope(scope, &agent.groups) {
            return Err(SendError::NotAllowed);
        }
        hub.send_local(&agent, id, payload)?;
        return Ok(None);
    }
    let Some(c) = hub.cluster.get() else {
        return Err(SendError::NotConnected);
    };
    // A scoped key's groups are checked by the same round trip that sends.
    c.route(hub, agent_id, id, payload, scope).await.map(Some)
}

/// [`place`], but an agent that is not connected anywhere yet (between
/// replicas, reconnecting) is waited for while the caller waits for its
/// ack or result (`wait_ack_ms` / `wait_result_ms`), instead of a 404.
async fn queue_in_transit(
    hub: &Arc<Hub>,
    scope: &Scope,
    agent_id: &str,
    b: &InstructionBody,
) -> Result<(Arc<str>, Placed), SendError> {
    let id = hub.new_instruction_id();
    let deadline = b
        .wanted(hub)
        .map(|(_, wait)| tokio::time::Instant::now() + wait);
    // Subscribed only once the agent is found missing: the common case
    // (it is connected) costs no subscription. A connect in between is
    // caught by the 50 ms poll.
    let mut events = None;
    loop {
        match place(hub, scope, agent_id, id.clone(), &*b.payload).await {
            Err(SendError::NotConnected) => {}
            other => return other.map(|p| (id, p)),
        }
        let Some(deadline) = deadline.filter(|d| tokio::time::Instant::now() < *d) else {
            return Err(SendError::NotConnected);
        };
        // Woken when an agent connects here; polled for one on another
        // replica (its presence appears in Redis).
        let events = events.get_or_insert_with(|| hub.subscribe());
        let poll = tokio::time::Instant::now() + Duration::from_millis(50);
        let _ = tokio::time::timeout_at(poll.min(deadline), async {
            while let Ok(e) = events.recv().await {
                if e.contains("\"agent.connected\"") && e.contains(agent_id) {
                    return;
                }
            }
        })
        .await;
    }
}

/// How long an instruction sent to another replica may go unacknowledged
/// before the gateway looks whether its agent is still there.
const RECHECK: Duration = Duration::from_millis(500);

/// Waits (until `deadline`) for an instruction to reach `want`. One sent
/// to another replica and not acknowledged within [`RECHECK`] is sent
/// again, with the same id, if its agent is now connected somewhere else —
/// its replica died, or it moved — so an instruction in flight when a
/// replica goes away is not lost. Delivery is at least once: an agent may
/// see an id twice (the first copy reached it, its ack did not come back).
async fn follow(
    hub: &Arc<Hub>,
    scope: &Scope,
    agent_id: &str,
    payload: &RawValue,
    (id, mut placed): (&Arc<str>, Placed),
    want: Status,
    deadline: tokio::time::Instant,
) -> Option<Status> {
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let step = if placed.is_some() {
            left.min(RECHECK)
        } else {
            left
        };
        let status = hub.wait(id, want, step).await?;
        if status >= want || status.is_final() || left == step {
            return Some(status);
        }
        if status >= Status::Acked {
            placed = None; // it reached the agent: only its result is awaited
            continue;
        }
        let Some(c) = hub.cluster.get() else {
            continue;
        };
        let now: Placed = match hub.get(agent_id) {
            Some(_) => None,
            None => match c.replica_of(agent_id).await {
                Some(r) => Some(r),
                None => continue, // in transit: wait for it to show up
            },
        };
        if now != placed {
            tracing::debug!(agent_id, id = &**id, from = ?placed, to = ?now, "agent hub: agent moved; instruction sent again");
            if let Ok(p) = place(hub, scope, agent_id, id.clone(), payload).await {
                placed = p;
            }
        }
    }
}

fn send_error(agent_id: &str, e: SendError) -> Response {
    match e {
        SendError::NotConnected => error(
            ErrorKind::AgentNotFound,
            format!("no agent '{agent_id}' is connected"),
        ),
        SendError::NotAllowed => forbidden(format!(
            "this key may not instruct agent '{agent_id}' (not in its agent_groups)"
        )),
        SendError::QueueFull { depth } => {
            let mut r = error(
                ErrorKind::AgentQueueFull,
                format!(
                    "agent '{agent_id}' has {depth} frames waiting (its limit): it is not keeping up"
                ),
            );
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

pub async fn instruct(
    State(app): State<Arc<App>>,
    ApiPath(agent_id): ApiPath<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Response {
    instructed(&app, agent_id, &headers, &body).await
}

/// `POST /v1/agents/{id}/instructions` past the router (`crate::direct`).
pub async fn instruct_directly(app: Arc<App>, agent_id: String, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    match crate::extract::json_body(&app, &parts.headers, body, Wire::OpenAi).await {
        Ok(body) => instructed(&app, agent_id, &parts.headers, &body).await,
        Err(refused) => refused,
    }
}

async fn instructed(app: &App, agent_id: String, headers: &HeaderMap, body: &Bytes) -> Response {
    let (hub, scope, b) = match checked(app, headers, body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let started = tokio::time::Instant::now();
    let (id, placed) = match queue_in_transit(&hub, &scope, &agent_id, &b).await {
        Ok(x) => x,
        Err(e) => return send_error(&agent_id, e),
    };
    let Some((want, wait)) = b.wanted(&hub) else {
        return (
            StatusCode::ACCEPTED,
            Json(json!({"id": &*id, "agent_id": agent_id, "status": "queued"})),
        )
            .into_response();
    };
    let deadline = started + wait;
    let sent = (&id, placed);
    let status = follow(&hub, &scope, &agent_id, &b.payload, sent, want, deadline).await;
    let code = match status {
        Some(Status::Undelivered) => StatusCode::SERVICE_UNAVAILABLE,
        Some(s) if s >= want => StatusCode::OK,
        _ => StatusCode::GATEWAY_TIMEOUT,
    };
    match hub.record_json(&id) {
        Some(view) => json_text(code, view),
        None => (code, Json(json!({"id": &*id, "status": "unknown"}))).into_response(),
    }
}

/// A JSON answer already written as text.
fn json_text(code: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

pub async fn broadcast(
    State(app): State<Arc<App>>,
    ApiPath(group): ApiPath<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Response {
    let (hub, scope, b) = match checked(&app, &headers, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if scope
        .as_ref()
        .is_some_and(|s| !s.iter().any(|g| **g == *group))
    {
        return forbidden(format!(
            "this key may not instruct group '{group}' (not in its agent_groups)"
        ));
    }
    let mut members: Vec<String> = hub
        .list(Some(&group))
        .iter()
        .map(|a| a.id.to_string())
        .collect();
    if let Some(c) = hub.cluster.get() {
        for m in c.group_members(&group).await {
            if !members.contains(&m) {
                members.push(m);
            }
        }
    }
    let mut sent = Vec::with_capacity(members.len());
    for agent_id in &members {
        let (id, status) = match queue(&hub, &scope, agent_id, &*b.payload).await {
            Ok(id) => (Some(id), "queued"),
            Err(SendError::QueueFull { .. }) => (None, "queue_full"),
            Err(SendError::NotConnected) => (None, "not_connected"),
            Err(SendError::NotAllowed) => (None, "not_allowed"),
        };
        sent.push((agent_id.clone(), id, status));
    }
    if let Some((want, wait)) = b.wanted(&hub) {
        let waits = sent.iter().filter_map(|(_, id, _)| id.clone()).map(|id| {
            let hub = hub.clone();
            async move { hub.wait(&id, want, wait).await }
        });
        futures_util::future::join_all(waits).await;
    }
    let instructions: Vec<Value> = sent
        .iter()
        .map(|(agent_id, id, status)| match id {
            Some(id) => hub
                .record_view(id)
                .unwrap_or_else(|| json!({"id": &**id, "agent_id": agent_id, "status": status})),
            None => json!({"agent_id": agent_id, "status": status}),
        })
        .collect();
    Json(json!({"group": group, "instructions": instructions})).into_response()
}

pub async fn instruction(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    let (hub, scope) = match hub_for(&app, &headers) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let visible = scope.is_none() || hub.record_groups(&id).is_some_and(|g| in_scope(&scope, &g));
    match hub.record_json(&id).filter(|_| visible) {
        Some(v) => json_text(StatusCode::OK, v),
        None => error(
            ErrorKind::InstructionNotFound,
            format!(
                "no instruction '{id}' (unknown, or dropped from the {} kept)",
                hub.cfg.max_instructions
            ),
        ),
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    group: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

pub async fn list(
    State(app): State<Arc<App>>,
    ApiQuery(q): ApiQuery<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let (hub, scope) = match hub_for(&app, &headers) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let mut all = hub.list(q.group.as_deref());
    all.retain(|a| in_scope(&scope, &a.groups));
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let data: Vec<Value> = all
        .iter()
        .skip(q.offset.unwrap_or(0))
        .take(limit)
        .map(|a| a.presence(&hub.replica))
        .collect();
    Json(json!({"object": "list", "total": all.len(), "data": data})).into_response()
}

pub async fn get_agent(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    let (hub, scope) = match hub_for(&app, &headers) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    // An agent outside the key's groups is not found, not forbidden: its
    // existence is not the key's business.
    if let Some(a) = hub.get(&id).filter(|a| in_scope(&scope, &a.groups)) {
        return Json(a.presence(&hub.replica)).into_response();
    }
    if let Some(c) = hub.cluster.get()
        && let Some(p) = c.presence(&id).await
        && in_scope(&scope, &presence_groups(&p))
    {
        return Json(p).into_response();
    }
    error(
        ErrorKind::AgentNotFound,
        format!("no agent '{id}' is connected"),
    )
}
