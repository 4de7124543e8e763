//! The API and admin routers. Handlers are thin: the request path lives in
//! [`crate::proxy`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use http::header::CONTENT_TYPE;
use serde_json::json;
use sluice_core::media::Media;
use sluice_core::request::Operation;
use sluice_core::{ErrorKind, GatewayError};

use crate::app::App;
use crate::extract::wire_of;
use crate::proxy;
use crate::reply::error_response;
use sluice_providers::tokens::TokenFormat;
use sluice_providers::translate::Wire;

pub fn api(app: Arc<App>) -> Router {
    let mut router = Router::new();
    // Audio, images, moderations, rerank: one handler each, on the proxy path.
    for m in Media::ALL {
        let handler = move |State(app): State<Arc<App>>, req: Request| async move {
            proxy::handle(app, Operation::Media(m), m.route(), req).await
        };
        router = router.route(m.route(), post(handler));
    }
    // The model APIs: also served past the router (`crate::direct`).
    for (path, op) in crate::direct::PROXIED {
        let handler = move |State(app): State<Arc<App>>, req: Request| async move {
            proxy::handle(app, op, path, req).await
        };
        router = router.route(path, post(handler));
    }
    crate::mcp::routes(crate::grpc::routes(crate::predict::routes(
        crate::files::routes(router),
    )))
    .route("/api/v2/chat/completions", post(chat_v2))
    .route(
        "/v1/messages/count_tokens",
        post(crate::count_tokens::count_tokens),
    )
    .route(
        "/v1/responses/{id}",
        get(crate::responses_api::get).delete(crate::responses_api::delete),
    )
    .route("/v1/models", get(models))
    .route("/v1/models/{*id}", get(model))
    .route("/v1/agents", get(crate::hub_routes::list))
    .route("/v1/agents/connect", get(crate::hub_routes::connect))
    .route("/v1/agents/events", get(crate::hub_events::events))
    .route(
        "/v1/agents/instructions/{id}",
        get(crate::hub_routes::instruction),
    )
    .route("/v1/agents/{id}", get(crate::hub_routes::get_agent))
    .route(
        "/v1/agents/{id}/instructions",
        post(crate::hub_routes::instruct),
    )
    .route(
        "/v1/agent-groups/{group}/instructions",
        post(crate::hub_routes::broadcast),
    )
    .route("/healthz", get(healthz))
    .route("/readyz", get(readyz))
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::plugins::run::filter,
    ))
    .layer(axum::middleware::from_fn_with_state(
        app.clone(),
        crate::pressure::shed,
    ))
    .with_state(app)
}

pub fn admin(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/log-level", get(log_level).put(set_log_level))
        .route("/config/reload", post(reload_config))
        .route("/v1/mcp/servers", get(crate::mcp::servers))
        .route(
            "/keys",
            get(crate::admin_keys::list).post(crate::admin_keys::create),
        )
        .route(
            "/keys/{name}",
            axum::routing::delete(crate::admin_keys::delete),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// Chat with a binary answer: with `Accept: application/x-flatbuffers`, a
/// stream of size-prefixed FlatBuffers token chunks; otherwise as
/// `/v1/chat/completions`.
async fn chat_v2(State(app): State<Arc<App>>, req: Request) -> Response {
    let flat = req
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/x-flatbuffers"));
    let route = "/api/v2/chat/completions";
    if !flat {
        return proxy::handle(app, Operation::Chat, route, req).await;
    }
    let (parts, body) = req.into_parts();
    let inbound = proxy::Inbound {
        op: Operation::Chat,
        route,
        headers: parts.headers,
        body: proxy::InboundBody::Http(body),
        client: Some(Wire::Tokens(TokenFormat::FlatBuffers)),
    };
    proxy::serve(app, inbound).await
}

/// A model in OpenAI's shape, or Anthropic's for Anthropic clients (they
/// send `anthropic-version`).
fn model_json(app: &App, name: &str, owner: &str, anthropic: bool) -> serde_json::Value {
    if anthropic {
        let created = sluice_core::config::time::format_rfc3339_millis(app.started_unix * 1000);
        return json!({"type": "model", "id": name, "display_name": name, "created_at": created});
    }
    json!({"id": name, "object": "model", "created": app.started_unix, "owned_by": owner})
}

fn anthropic_client(headers: &http::HeaderMap) -> bool {
    headers.contains_key("anthropic-version")
}

async fn models(State(app): State<Arc<App>>, headers: http::HeaderMap) -> Response {
    let snap = app.snapshot.load();
    let access = app.access.load();
    let key = match crate::access::authenticate(&access, &headers) {
        Ok(k) => k,
        Err(e) => return error_response(&e, Wire::OpenAi),
    };
    // A key sees the models it may use.
    let anthropic = anthropic_client(&headers);
    let data: Vec<_> = snap
        .routes
        .names
        .iter()
        .filter(|name| key.is_none_or(|k| k.allows(name)))
        .map(|name| model_json(&app, name, owner(&snap, name), anthropic))
        .collect();
    if anthropic {
        let first = data.first().map(|m| m["id"].clone());
        let last = data.last().map(|m| m["id"].clone());
        return axum::Json(
            json!({"data": data, "has_more": false, "first_id": first, "last_id": last}),
        )
        .into_response();
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn model(
    State(app): State<Arc<App>>,
    crate::extract::ApiPath(id): crate::extract::ApiPath<String>,
    headers: http::HeaderMap,
) -> Response {
    let snap = app.snapshot.load();
    let access = app.access.load();
    let key = match crate::access::authenticate(&access, &headers) {
        Ok(k) => k,
        Err(e) => return error_response(&e, Wire::OpenAi),
    };
    if snap.routes.get(&id).is_some() && key.is_none_or(|k| k.allows(&id)) {
        let anthropic = anthropic_client(&headers);
        axum::Json(model_json(&app, &id, owner(&snap, &id), anthropic)).into_response()
    } else {
        error_response(
            &GatewayError::new(
                ErrorKind::ModelNotFound,
                format!("The model '{id}' does not exist or is not served by this gateway"),
            )
            .with_param("model"),
            Wire::OpenAi,
        )
    }
}

/// The provider behind a model's first target, shown as `owned_by`.
fn owner<'a>(snap: &'a crate::app::Snapshot, model: &str) -> &'a str {
    snap.routes
        .get(model)
        .and_then(|r| r.targets.first())
        .map_or("sluice", |t| &snap.config.providers[t.provider].name)
}

async fn log_level(State(app): State<Arc<App>>) -> Response {
    axum::Json(json!({"level": app.log_control.current()})).into_response()
}

/// `PUT /log-level` with a filter directive as the body (`debug`,
/// `info,sluice::access=warn`, …).
async fn set_log_level(
    State(app): State<Arc<App>>,
    headers: http::HeaderMap,
    crate::extract::ApiBody(body): crate::extract::ApiBody,
) -> Response {
    if let Some(r) = crate::admin_keys::admin_refusal(&app, &headers, false) {
        return r;
    }
    // Plain text (`debug`), or JSON: `{"level":"debug"}`.
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let level = if json {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("level")?.as_str().map(str::to_owned))
    } else {
        std::str::from_utf8(&body).ok().map(str::to_owned)
    };
    let Some(level) = level else {
        return error_response(
            &GatewayError::new(
                ErrorKind::InvalidRequest,
                "send the level as text (`debug`) or JSON ({\"level\":\"debug\"})",
            ),
            Wire::OpenAi,
        );
    };
    match app.log_control.set(level.trim()) {
        Ok(()) => axum::Json(json!({"level": app.log_control.current()})).into_response(),
        Err(e) => error_response(
            &GatewayError::new(ErrorKind::InvalidRequest, format!("invalid log level: {e}")),
            Wire::OpenAi,
        ),
    }
}

/// `POST /config/reload`: rereads the configuration file (as `SIGHUP`
/// does); 200 with the loaded file's hash, or 400 with every problem.
async fn reload_config(State(app): State<Arc<App>>, headers: http::HeaderMap) -> Response {
    if let Some(r) = crate::admin_keys::admin_refusal(&app, &headers, false) {
        return r;
    }
    match crate::reload::reload(&app).await {
        Ok(r) => axum::Json(json!({"status": "reloaded", "sha256": r.sha256, "models": r.models}))
            .into_response(),
        Err(e) => error_response(&e, Wire::OpenAi),
    }
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.metrics.cgroup.is_shedding() {
        tracing::warn!(target: "sluice::access", route = "/readyz", status = 503, "memory pressure");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "memory_pressure"})),
        )
            .into_response();
    }
    if app.ready.load(Ordering::Acquire) {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        // Health probes are logged only when they fail.
        tracing::warn!(target: "sluice::access", route = "/readyz", status = 503, "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "starting"})),
        )
            .into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let snap = app.snapshot.load();
    app.metrics
        .refresh_targets(&snap.routes, &snap.config.providers);
    app.metrics.refresh_process();
    app.metrics
        .redaction
        .refresh(snap.config.redaction.redactor.as_ref());
    for (name, p) in &app.predictors.load().by_name {
        let labels = crate::metrics::predict::ModelLabels {
            model: name.clone(),
        };
        app.metrics
            .predict
            .pending
            .get_or_create(&labels)
            .set(p.pending() as i64);
    }
    app.metrics.mcp.refresh(&app.mcp.load());
    app.metrics.mcp.sessions.set(app.mcp_sessions.len() as i64);
    if let Some(h) = &app.hub {
        app.metrics
            .agent_queue_depth
            .set(h.total_queue_depth() as i64);
    }
    let mut r = Response::new(Body::from(app.metrics.encode()));
    r.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    r
}

async fn not_found(req: Request) -> Response {
    error_response(
        &GatewayError::new(
            ErrorKind::RouteNotFound,
            format!("no route for {} {}", req.method(), req.uri().path()),
        ),
        wire_of(req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    error_response(
        &GatewayError::new(
            ErrorKind::MethodNotAllowed,
            format!(
                "method {} is not allowed on {}",
                req.method(),
                req.uri().path()
            ),
        ),
        wire_of(req.uri().path()),
    )
}
