//! `/mcp`: the MCP gateway's endpoint (Streamable HTTP). One governed
//! place where agents list and call every upstream server's tools, read
//! their resources and get their prompts, under `{server}__{name}`.
//!
//! Both protocol eras are served: the handshake revisions (2025-06-18,
//! 2025-11-25; `initialize`, then a session in `Mcp-Session-Id`) and the
//! stateless 2026-07-28 (`server/discover`, the revision in each
//! request's `_meta`). The upstream side is `sluice-mcp`.

mod agents;
mod call;
mod methods;
mod reply;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use sluice_core::config::KeyConfig;
use sluice_mcp::Federation;
use sluice_mcp::rpc::{self, Message, RpcError};

use crate::app::App;
pub use session::{Session, Sessions, ToolLimits};

/// Revisions reached by the `initialize` handshake, oldest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// Stateless revisions (the version in every request's `_meta`).
pub const MODERN_VERSIONS: [&str; 1] = ["2026-07-28"];
const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

pub fn routes(r: Router<Arc<App>>) -> Router<Arc<App>> {
    r.route("/mcp", post(post_mcp).get(get_mcp).delete(delete_mcp))
        .route("/v1/mcp/servers", axum::routing::get(servers))
}

/// Who is asking, in which revision.
pub struct Ctx {
    pub app: Arc<App>,
    pub fed: Arc<Federation>,
    pub key: Option<KeyConfig>,
    pub session: Option<Arc<Session>>,
    pub modern: bool,
    pub headers: HeaderMap,
}

impl Ctx {
    pub fn allows_tool(&self, name: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.allows_tool(name))
    }
}

/// Tells MCP clients the tool list changed when an agent connects or goes
/// (agents' tools are part of it). Watches the hub's membership, not its
/// event stream: a subscriber there makes every instruction's status change
/// build an event (~10,000 instructions per push) only to be ignored here.
pub fn watch_agents(app: &Arc<App>) {
    let Some(hub) = &app.hub else { return };
    let mut members = hub.membership();
    let app = Arc::downgrade(app);
    tokio::spawn(async move {
        while members.changed().await.is_ok() {
            let Some(app) = app.upgrade() else { return };
            app.mcp.load().notify_changed("tools");
        }
    });
}

/// `GET /v1/mcp/servers` (admin): each upstream's state, tool count and
/// last error.
pub async fn servers(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = crate::admin_keys::admin_refusal(&app, &headers, false) {
        return r;
    }
    let data = app.mcp.load().status();
    axum::Json(json!({"object": "list", "data": data, "servers": data})).into_response()
}

/// Refuses a browser page from another site (DNS rebinding): an `Origin`
/// must be a loopback one or one of `[mcp] allowed_origins`.
fn origin_refusal(app: &App, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(http::header::ORIGIN)?;
    let o = origin
        .to_str()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_ascii_lowercase();
    let host = o
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or_else(|| o.split_once("://").map_or("", |(_, r)| r), |(h, _)| h);
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]")
        && (o.starts_with("http://") || o.starts_with("https://"));
    let snap = app.snapshot.load();
    let allowed = &snap.config.mcp.allowed_origins;
    if loopback || allowed.iter().any(|a| a == "*" || *a == o) {
        return None;
    }
    Some(reply::http_error(
        StatusCode::FORBIDDEN,
        RpcError::new(
            rpc::INVALID_REQUEST,
            format!("origin '{o}' is not allowed on /mcp"),
        ),
    ))
}

/// The key, or the 401 to answer.
fn key_of(app: &App, headers: &HeaderMap) -> Result<Option<KeyConfig>, Box<Response>> {
    let access = app.access.load();
    crate::access::authenticate(&access, headers)
        .map(|k| k.cloned())
        .map_err(|e| {
            let mut r = reply::http_error(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                RpcError::new(-32001, e.to_string()),
            );
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Box::new(r)
        })
}

/// The session the request names (`None` when it names none), or the 404
/// that says it is gone.
async fn session_of(
    app: &App,
    headers: &HeaderMap,
    key: Option<&KeyConfig>,
) -> Result<Option<Arc<Session>>, Box<Response>> {
    let Some(id) = headers.get("mcp-session-id") else {
        return Ok(None);
    };
    let ttl = app.snapshot.load().config.mcp.session_ttl;
    let s = match id.to_str() {
        Ok(id) => app.mcp_sessions.get(id, ttl).await,
        Err(_) => None,
    };
    match s {
        Some(s) if s.key.as_deref() == key.map(|k| &*k.name) => Ok(Some(s)),
        _ => Err(Box::new(reply::http_error(
            StatusCode::NOT_FOUND,
            RpcError::new(rpc::INVALID_REQUEST, "session not found: initialize again"),
        ))),
    }
}

async fn post_mcp(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    if let Some(r) = origin_refusal(&app, &headers) {
        return r;
    }
    let key = match key_of(&app, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if crate::extract::not_a_form(&headers).is_err() {
        return reply::http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RpcError::new(
                rpc::INVALID_REQUEST,
                "send JSON-RPC with content-type: application/json",
            ),
        );
    }
    let (max, timeout) = {
        let snap = app.snapshot.load();
        (
            snap.config.server.max_body_bytes,
            snap.config.server.body_read_timeout,
        )
    };
    let bytes = match crate::extract::read_body(&headers, body, max, timeout).await {
        Ok(b) => b,
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return reply::http_error(status, RpcError::new(rpc::INVALID_REQUEST, e.to_string()));
        }
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return reply::http_error(
                StatusCode::BAD_REQUEST,
                RpcError::new(rpc::PARSE_ERROR, format!("the body is not JSON: {e}")),
            );
        }
    };
    if v.is_array() {
        return reply::http_error(
            StatusCode::BAD_REQUEST,
            RpcError::new(
                rpc::INVALID_REQUEST,
                "JSON-RPC batches are not supported: send one message per request",
            ),
        );
    }
    let msg = match Message::from_value(v) {
        Ok(m) => m,
        Err(why) => {
            return reply::http_error(
                StatusCode::BAD_REQUEST,
                RpcError::new(rpc::INVALID_REQUEST, why),
            );
        }
    };
    let session = match session_of(&app, &headers, key.as_ref()).await {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match msg {
        Message::Response { .. } => StatusCode::ACCEPTED.into_response(),
        Message::Notification { method, params } => {
            if method == "notifications/cancelled"
                && let (Some(s), Some(id)) =
                    (&session, params.as_ref().and_then(|p| p.get("requestId")))
            {
                s.cancel(id);
            }
            StatusCode::ACCEPTED.into_response()
        }
        Message::Request { id, method, params } => {
            let fed = app.mcp.load_full();
            let ctx = Ctx {
                app,
                fed,
                key,
                session,
                modern: false,
                headers,
            };
            request(ctx, id, method, params).await
        }
    }
}

/// The revision a session-less request asks for: its `_meta` first, then
/// the `MCP-Protocol-Version` header.
fn requested_version<'a>(headers: &'a HeaderMap, params: Option<&'a Value>) -> Option<&'a str> {
    params
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(VERSION_META))
        .and_then(Value::as_str)
        .or_else(|| {
            headers
                .get("mcp-protocol-version")
                .and_then(|v| v.to_str().ok())
        })
}

async fn request(mut ctx: Ctx, id: Value, method: String, params: Option<Value>) -> Response {
    if method == "initialize" {
        return initialize(&ctx, &id, params.as_ref());
    }
    if ctx.session.is_none() {
        let asked = requested_version(&ctx.headers, params.as_ref());
        ctx.modern =
            method == "server/discover" || asked.is_some_and(|v| MODERN_VERSIONS.contains(&v));
        let modern_meta = params
            .as_ref()
            .and_then(|p| p.get("_meta"))
            .is_some_and(|m| m.get(VERSION_META).is_some());
        if let Some(v) = asked
            && modern_meta
            && !MODERN_VERSIONS.contains(&v)
        {
            let supported: Vec<&str> = MODERN_VERSIONS
                .iter()
                .chain(&HANDSHAKE_VERSIONS)
                .copied()
                .collect();
            let e = RpcError::new(
                rpc::UNSUPPORTED_PROTOCOL_VERSION,
                format!("protocol version {v} is not supported"),
            )
            .with_data(json!({"supported": supported, "requested": v}));
            return reply::json(&ctx, &id, Err(e), None);
        }
    }
    reply::answer(ctx, id, method, params).await
}

/// The handshake: a session in the newest revision both speak.
fn initialize(ctx: &Ctx, id: &Value, params: Option<&Value>) -> Response {
    let asked = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str)
        .unwrap_or(HANDSHAKE_VERSIONS[3]);
    let version = if HANDSHAKE_VERSIONS.contains(&asked) {
        asked
    } else {
        HANDSHAKE_VERSIONS[3]
    };
    let cfg = &ctx.app.snapshot.load().config.mcp;
    let s = ctx.app.mcp_sessions.open(
        version,
        ctx.key.as_ref().map(|k| k.name.clone()),
        cfg.session_ttl,
        cfg.max_sessions,
    );
    let result = json!({
        "protocolVersion": version,
        "capabilities": methods::capabilities(),
        "serverInfo": methods::server_info(),
        "instructions": methods::INSTRUCTIONS,
    });
    let mut r = reply::json(ctx, id, Ok(result), None);
    if let Ok(v) = http::HeaderValue::from_str(&s.id) {
        r.headers_mut().insert("mcp-session-id", v);
    }
    r
}

/// `GET /mcp`: a session's stream of list changes (handshake revisions).
async fn get_mcp(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = origin_refusal(&app, &headers) {
        return r;
    }
    let key = match key_of(&app, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match session_of(&app, &headers, key.as_ref()).await {
        Ok(Some(s)) => reply::changes(app, s),
        Ok(None) => (
            StatusCode::METHOD_NOT_ALLOWED,
            [(http::header::ALLOW, "POST")],
        )
            .into_response(),
        Err(r) => *r,
    }
}

/// `DELETE /mcp`: the client ends its session.
async fn delete_mcp(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let key = match key_of(&app, &headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match session_of(&app, &headers, key.as_ref()).await {
        Ok(Some(s)) => {
            app.mcp_sessions.close(&s.id);
            StatusCode::OK.into_response()
        }
        Ok(None) => reply::http_error(
            StatusCode::BAD_REQUEST,
            RpcError::new(
                rpc::INVALID_REQUEST,
                "name the session to end in Mcp-Session-Id",
            ),
        ),
        Err(r) => *r,
    }
}
