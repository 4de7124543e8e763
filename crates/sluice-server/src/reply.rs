//! Error answers in the client's wire format.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode};
use sluice_core::GatewayError;
use sluice_providers::translate::Wire;

/// `e` as an HTTP response in `wire`'s error shape, with its status.
pub fn error_response(e: &GatewayError, wire: Wire) -> Response<Body> {
    let mut r = Response::new(Body::from(wire.error_json(e)));
    *r.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
