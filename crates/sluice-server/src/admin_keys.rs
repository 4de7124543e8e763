//! The admin API for virtual keys: `GET /keys`, `POST /keys`,
//! `DELETE /keys/{name}` on the admin listener.
//!
//! Keys made here are checked exactly like the file's `[[keys]]` (they go
//! through the same validation), are kept only as SHA-256 hashes, and —
//! when `[auth] keys_file` is set — are written to that file (atomically)
//! and loaded again at start. A key created without a token or hash gets a
//! random token, returned once in the response and never stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use sluice_core::config::KeyConfig;
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::translate::Wire;

use crate::access::Access;
use crate::app::App;

use crate::keys_file::{KeySpec, check_clashes, save, validate};
pub use crate::keys_file::{load, open_api_allowed};

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    let e = GatewayError::new(kind, message.into());
    crate::reply::error_response(&e, Wire::OpenAi).into_response()
}

/// The guard on every admin route that reads keys or changes anything.
///
/// With `[auth] admin_sha256` the admin token is required. Without it the
/// admin listener must be on loopback, and since a browser on this machine
/// can reach loopback too, the request must also look like it came from
/// this machine and not from a web page: a loopback `Host` (a DNS-rebinding
/// page sends its own name) and no foreign `Origin` (a cross-site form or
/// fetch sends one). `json_body`: the route takes a JSON body, which must
/// say so (a cross-site form cannot send `application/json`).
pub fn admin_refusal(app: &App, headers: &HeaderMap, json_body: bool) -> Option<Response> {
    if json_body && !is_json(headers) {
        return Some(error(
            ErrorKind::UnsupportedMediaType,
            "the body must be JSON, sent with content-type: application/json",
        ));
    }
    let snap = app.snapshot.load();
    let cfg = &snap.config;
    let Some(want) = cfg.admin_sha256 else {
        if !cfg.server.admin_listen.ip().is_loopback() {
            return Some(error(
                ErrorKind::AdminTokenRequired,
                "the admin listener is not on loopback: set [auth] admin_sha256 to manage keys",
            ));
        }
        return local_only(headers)
            .err()
            .map(|why| error(ErrorKind::AdminTokenRequired, why));
    };
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::access::bearer);
    match token {
        Some(t) if sluice_core::auth::token_hash(t) == want => None,
        _ => Some(error(
            ErrorKind::AdminTokenInvalid,
            "missing or wrong admin token",
        )),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// `Ok` when `Host` names a loopback address and `Origin`, if sent, does too.
fn local_only(headers: &HeaderMap) -> Result<(), &'static str> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .ok_or("a Host header is required")?;
    if !loopback_authority(host) {
        return Err("the Host is not this machine's loopback address: refused \
                    (set [auth] admin_sha256 to manage keys from elsewhere)");
    }
    if let Some(origin) = headers.get(http::header::ORIGIN) {
        let local = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && loopback_authority(rest)
            });
        if !local {
            return Err("cross-origin requests to the admin API are refused");
        }
    }
    Ok(())
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, rest)) if rest.is_empty() || rest.starts_with(':') => h,
            _ => return false,
        },
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn view(k: &KeyConfig, source: &str) -> Value {
    json!({
        "name": &*k.name,
        "source": source,
        "models": k.models.as_ref().map(|ms| ms.iter().map(|m| &**m).collect::<Vec<_>>()),
        "expires_at": k.expires_at.map(|t| sluice_core::config::time::format_rfc3339_millis(t * 1000)),
        "metadata": k.metadata.iter().cloned().collect::<BTreeMap<_, _>>(),
        "rpm": k.rpm,
        "tpm": k.tpm,
        "max_streams": k.max_streams,
        "agent_groups": k.agent_groups.as_ref().map(|gs| gs.iter().map(|g| &**g).collect::<Vec<_>>()),
        "budget_tokens": k.budget.map(|b| b.0),
        "budget_usd": k.budget_usd.map(|b| b.0),
        "budget_period": k.budget.map(|b| b.1).or(k.budget_usd.map(|b| b.1)).map(|p| p.name()),
    })
}

pub async fn list(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(r) = admin_refusal(&app, &headers, false) {
        return r;
    }
    let snap = app.snapshot.load();
    let access = app.access.load();
    let mut data: Vec<Value> = snap.config.keys.iter().map(|k| view(k, "config")).collect();
    data.extend(access.api_keys.iter().map(|k| view(k, "api")));
    Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn create(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    crate::extract::ApiBody(body): crate::extract::ApiBody,
) -> Response {
    if let Some(r) = admin_refusal(&app, &headers, true) {
        return r;
    }
    let mut spec: KeySpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(ErrorKind::InvalidRequest, format!("invalid key: {e}")),
    };
    let mut generated = None;
    match (spec.token.take(), &spec.sha256) {
        (Some(_), Some(_)) => {
            return error(
                ErrorKind::InvalidRequest,
                "give a token or its sha256, not both",
            );
        }
        (Some(t), None) => spec.sha256 = Some(sluice_core::auth::token_hash_hex(&t)),
        (None, Some(_)) => {}
        (None, None) => {
            let t = new_token();
            spec.sha256 = Some(sluice_core::auth::token_hash_hex(&t));
            generated = Some(t);
        }
    }
    let mut specs = app.key_specs.lock().await;
    let snap = app.snapshot.load();
    let access = app.access.load();
    let key = match validate(std::slice::from_ref(&spec), &snap.config) {
        Ok(mut k) => k.remove(0),
        Err(e) => return error(ErrorKind::InvalidRequest, e),
    };
    if let Err(e) = check_clashes(std::slice::from_ref(&key), &snap.config.keys) {
        return error(ErrorKind::KeyConflict, e);
    }
    if access
        .api_keys
        .iter()
        .any(|k| k.name == key.name || k.sha256 == key.sha256)
    {
        return error(
            ErrorKind::KeyConflict,
            format!("a key named '{}' or with that hash exists", key.name),
        );
    }
    specs.push(spec);
    if let Some(path) = &snap.config.keys_file
        && let Err(e) = save(path, &specs)
    {
        specs.pop();
        return error(ErrorKind::Internal, format!("cannot write keys_file: {e}"));
    }
    let mut api_keys = access.api_keys.clone();
    api_keys.push(key.clone());
    app.access.store(Arc::new(Access::build(
        &snap.config,
        api_keys,
        Some(&access),
    )));
    tracing::info!(key = %key.name, "key added through the admin API");
    let mut out = view(&key, "api");
    if let Some(t) = generated {
        out["token"] = Value::String(t);
    }
    (StatusCode::CREATED, Json(out)).into_response()
}

pub async fn delete(
    State(app): State<Arc<App>>,
    crate::extract::ApiPath(name): crate::extract::ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = admin_refusal(&app, &headers, false) {
        return r;
    }
    let mut specs = app.key_specs.lock().await;
    let snap = app.snapshot.load();
    let access = app.access.load();
    if snap.config.keys.iter().any(|k| *k.name == *name) {
        return error(
            ErrorKind::KeyConflict,
            format!("key '{name}' is defined in the configuration file; remove it there"),
        );
    }
    if !access.api_keys.iter().any(|k| *k.name == *name) {
        return error(ErrorKind::KeyNotFound, format!("no key named '{name}'"));
    }
    // "No open API off loopback" holds at every change, as at start.
    let last = snap.config.keys.is_empty() && access.api_keys.len() == 1;
    if last && !open_api_allowed(&snap.config) {
        return error(
            ErrorKind::KeyConflict,
            format!(
                "key '{name}' is the last key and the API listens on {}: without keys it would \
                 be open to anyone who can reach it. Add another key first, or set [auth] \
                 allow_open_non_loopback = true",
                snap.config.server.listen
            ),
        );
    }
    let before = specs.clone();
    specs.retain(|s| s.name != name);
    if let Some(path) = &snap.config.keys_file
        && let Err(e) = save(path, &specs)
    {
        *specs = before;
        return error(ErrorKind::Internal, format!("cannot write keys_file: {e}"));
    }
    let api_keys = access
        .api_keys
        .iter()
        .filter(|k| *k.name != *name)
        .cloned()
        .collect();
    app.access.store(Arc::new(Access::build(
        &snap.config,
        api_keys,
        Some(&access),
    )));
    tracing::info!(key = %name, "key removed through the admin API");
    StatusCode::NO_CONTENT.into_response()
}

/// `sk-sluice-` and 32 random hex digits (128 bits from the thread's
/// cryptographic generator, seeded by the OS).
fn new_token() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sk-sluice-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn only_loopback_hosts_and_origins_pass() {
        for h in [
            "127.0.0.1:9090",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9090",
            "127.8.9.10",
        ] {
            assert!(local_only(&headers(&[("host", h)])).is_ok(), "{h}");
        }
        for h in [
            "evil.example:9090",
            "10.0.0.1",
            "[::2]:1",
            "localhost.evil.example",
            "[::1",
        ] {
            assert!(local_only(&headers(&[("host", h)])).is_err(), "{h}");
        }
        assert!(local_only(&headers(&[])).is_err(), "no Host");
        let ok = headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://localhost:3000"),
        ]);
        assert!(local_only(&ok).is_ok());
        for o in ["https://evil.example", "null", "file://"] {
            let h = headers(&[("host", "127.0.0.1:9090"), ("origin", o)]);
            assert!(local_only(&h).is_err(), "{o}");
        }
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(&headers(&[("content-type", "application/json")])));
        assert!(is_json(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json(&headers(&[])));
    }
}
