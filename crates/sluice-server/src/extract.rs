//! Extractors whose refusals are the gateway's error body.
//!
//! axum's own `Path`, `Query` and `Bytes` answer a bad request with plain
//! text (a path id that is not UTF-8, a query that does not parse, a body
//! over axum's default limit). These wrap them so every refusal is the
//! OpenAI error body (the Anthropic one under `/v1/messages`) with a
//! truthful status, and bodies obey `server.max_body_bytes` and
//! `server.body_read_timeout_ms` like the proxy's.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::response::Response;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::translate::Wire;

use crate::app::App;
use crate::reply::error_response;

/// The error body format a path answers in.
pub fn wire_of(path: &str) -> Wire {
    Wire::of_path(path)
}

/// An axum refusal (status and text) as the gateway's error body.
pub fn refused(status: StatusCode, text: &str, path: &str) -> Response {
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
        StatusCode::REQUEST_TIMEOUT => ErrorKind::RequestTimeout,
        _ => ErrorKind::InvalidRequest,
    };
    error_response(&GatewayError::new(kind, text.to_owned()), wire_of(path))
}

/// `Path<T>` answering a bad path (not UTF-8, not the type) in JSON.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(r) => Err(refused(r.status(), &r.body_text(), parts.uri.path())),
        }
    }
}

/// `Query<T>` answering a bad query string in JSON.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(r) => Err(refused(r.status(), &r.body_text(), parts.uri.path())),
        }
    }
}

/// Refuses the content types a web page may send cross-site without a CORS
/// preflight (`text/plain`, forms): a JSON API on loopback must not be
/// something any page in the user's browser can post to. A missing type,
/// or any other (`application/json` above all), passes.
pub fn not_a_form(headers: &http::HeaderMap) -> Result<(), GatewayError> {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    // Compared as bytes: `str` splitting and Unicode trimming cost ~250
    // instructions on every request (callgrind). A value that is not visible ASCII
    // passes, as before.
    let Ok(text) = ct.to_str() else {
        return Ok(());
    };
    let essence = text.as_bytes().split(|&b| b == b';').next().unwrap_or(b"");
    let essence = essence.trim_ascii();
    let simple: [&[u8]; 3] = [
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data",
    ];
    if simple.iter().any(|s| essence.eq_ignore_ascii_case(s)) {
        let essence = String::from_utf8_lossy(essence);
        return Err(GatewayError::new(
            ErrorKind::UnsupportedMediaType,
            format!("the body is JSON: send content-type: application/json (not {essence})"),
        ));
    }
    Ok(())
}

/// A JSON request body ([`ApiBody`], refusing form and text content types
/// as [`not_a_form`] says).
pub struct JsonBody(pub Bytes);

impl FromRequest<Arc<App>> for JsonBody {
    type Rejection = Response;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Response> {
        let wire = wire_of(req.uri().path());
        let (parts, body) = req.into_parts();
        json_body(app, &parts.headers, body, wire).await.map(Self)
    }
}

/// A JSON request body as [`JsonBody`] takes it, for a handler called
/// without the router (`crate::direct`); a refusal in `wire`'s error body.
pub async fn json_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    wire: Wire,
) -> Result<Bytes, Response> {
    not_a_form(headers).map_err(|e| error_response(&e, wire))?;
    let (max, timeout) = body_limits(app);
    read_body(headers, body, max, timeout)
        .await
        .map_err(|e| error_response(&e, wire))
}

/// `server.max_body_bytes` and `server.body_read_timeout_ms`.
fn body_limits(app: &App) -> (usize, Duration) {
    let snap = app.snapshot.load();
    let s = &snap.config.server;
    (s.max_body_bytes, s.body_read_timeout)
}

/// The whole request body, within `server.max_body_bytes` (413) and
/// `server.body_read_timeout_ms` (408).
pub struct ApiBody(pub Bytes);

impl FromRequest<Arc<App>> for ApiBody {
    type Rejection = Response;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Response> {
        let wire = wire_of(req.uri().path());
        let (max, timeout) = body_limits(app);
        let (parts, body) = req.into_parts();
        read_body(&parts.headers, body, max, timeout)
            .await
            .map(Self)
            .map_err(|e| error_response(&e, wire))
    }
}

/// Reads the whole request body, refusing more than `max` bytes (or
/// `timeout` to send it).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, GatewayError> {
    let too_large = || {
        GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds the limit of {max} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        drain(body, max).await;
        return Err(too_large());
    }
    let Ok(read) = tokio::time::timeout(timeout, Limited::new(body, max).collect()).await else {
        return Err(GatewayError::new(
            ErrorKind::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms",
                timeout.as_millis()
            ),
        ));
    };
    match read {
        Ok(c) => Ok(own(c)),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            format!("could not read the request body: {e}"),
        )),
    }
}

/// The body as one buffer. A body that arrived in one read is a slice of
/// the connection's read buffer (8 KiB or more): kept for the whole request
/// (retries, fallbacks), it would pin that buffer and make the connection
/// allocate another for its next read, so a small one is copied out and
/// the buffer is reused in place. A body read in several chunks is joined
/// into a fresh buffer once, not copied again.
fn own(body: http_body_util::Collected<Bytes>) -> Bytes {
    use bytes::Buf;
    const COPY_UP_TO: usize = 16 * 1024;
    let mut buf = body.aggregate();
    let n = buf.remaining();
    let one_chunk = buf.chunk().len() == n;
    let bytes = buf.copy_to_bytes(n);
    if one_chunk && n <= COPY_UP_TO {
        Bytes::copy_from_slice(&bytes)
    } else {
        bytes
    }
}

/// Reads and discards a refused body for a short while, so that a client
/// still sending it gets to read our 413 instead of a reset connection.
async fn drain(body: Body, max: usize) {
    let cap = max.saturating_mul(2).max(1 << 20);
    let _ = tokio::time::timeout(Duration::from_secs(2), Limited::new(body, cap).collect()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_text_are_refused_whatever_their_case_and_parameters() {
        let judged = |ct: &[u8]| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_bytes(ct).expect("test value"),
            );
            not_a_form(&h)
        };
        for form in [
            &b"text/plain"[..],
            b"Text/Plain; charset=utf-8",
            b" multipart/form-data ; boundary=x",
            b"\tapplication/x-www-form-urlencoded",
        ] {
            let e = judged(form).expect_err("a form");
            assert_eq!(e.kind, ErrorKind::UnsupportedMediaType);
            let essence = String::from_utf8_lossy(form);
            let essence = essence.split(';').next().unwrap_or("").trim();
            assert!(
                e.message.ends_with(&format!("(not {essence})")),
                "{}",
                e.message
            );
        }
        for fine in [
            &b"application/json"[..],
            b"application/json; charset=utf-8",
            b"text/plainx",
            b"text/plain\xff",
            b"",
        ] {
            assert!(judged(fine).is_ok(), "{:?}", String::from_utf8_lossy(fine));
        }
        assert!(not_a_form(&http::HeaderMap::new()).is_ok());
    }
}
