//! `GET` and `DELETE /v1/responses/{id}`: stored Responses, for the key that
//! made them (`POST /v1/responses` is the proxy path).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde_json::json;
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::translate::Wire;

use crate::app::App;
use crate::extract::ApiPath;
use crate::reply::error_response;

/// The caller's key name, or the refusal.
fn caller(app: &App, headers: &HeaderMap) -> Result<Option<Arc<str>>, GatewayError> {
    let access = app.access.load();
    crate::access::authenticate(&access, headers).map(|k| k.map(|k| k.name.clone()))
}

fn not_found(id: &str) -> Response {
    let e = GatewayError::new(
        ErrorKind::ResponseNotFound,
        format!("no stored response '{id}' (unknown, expired, or made with another key)"),
    );
    error_response(&e, Wire::Responses)
}

pub async fn get(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    let key = match caller(&app, &headers) {
        Ok(k) => k,
        Err(e) => return error_response(&e, Wire::Responses),
    };
    app.responses.load(&id).await;
    match app.responses.response(&id, key.as_deref()) {
        Some(r) => Json(r).into_response(),
        None => not_found(&id),
    }
}

pub async fn delete(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    let key = match caller(&app, &headers) {
        Ok(k) => k,
        Err(e) => return error_response(&e, Wire::Responses),
    };
    if app.responses.remove(&id, key.as_deref()).await {
        Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        not_found(&id)
    }
}
