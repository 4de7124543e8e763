//! Intake: what the request path reads from a request before admission —
//! its id, its own deadline, its body within the limits, and its prompt
//! with PII redacted.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderName};
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Limited};
use sluice_core::request::{self, Operation};
use sluice_core::{ErrorKind, GatewayError};

pub(super) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The client's own deadline for the whole request, in seconds (e.g. `2.5`).
/// It can only narrow the route's timeout.
static REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");

/// Reads the whole request body, refusing more than `max` bytes (or
/// `timeout` to send it).
pub(crate) async fn read_body(
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
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            format!("could not read the request body: {e}"),
        )),
    }
}

/// A body already in hand, held to the same limit.
pub(super) fn within(body: Bytes, max: usize) -> Result<Bytes, GatewayError> {
    if body.len() > max {
        return Err(GatewayError::new(
            ErrorKind::PayloadTooLarge,
            format!("request body exceeds the limit of {max} bytes"),
        ));
    }
    Ok(body)
}

/// Reads and discards a refused body for a short while, so that a client
/// still sending it gets to read our 413 instead of a reset connection.
async fn drain(body: Body, max: usize) {
    let cap = max.saturating_mul(2).max(1 << 20);
    let _ = tokio::time::timeout(Duration::from_secs(2), Limited::new(body, cap).collect()).await;
}

pub(super) fn client_timeout(h: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let Some(v) = h.get(&REQUEST_TIMEOUT) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(|s| Some(Duration::from_secs_f64(s)))
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::InvalidRequest,
                "x-request-timeout must be a number of seconds between 0 and 86400",
            )
        })
}

/// The client's `x-request-id` when it is sane, else a fresh one.
pub(super) fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&REQUEST_ID)
        && !v.is_empty()
        && v.len() <= 128
    {
        return v.clone();
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    // "req-" and 20 hex digits: 12 from the process seed, 8 from a counter.
    let id = (u128::from(seed & 0xffff_ffff_ffff) << 32)
        | u128::from(NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
    let mut buf = *b"req-00000000000000000000";
    for (i, b) in buf[4..].iter_mut().rev().enumerate() {
        *b = b"0123456789abcdef"[((id >> (4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

/// The body with PII redacted from its prompt text, when prompt redaction
/// is on and there was something to redact.
pub(super) fn redact_prompt(
    snap: &crate::app::Snapshot,
    body: &Bytes,
    op: Operation,
) -> Result<Option<Bytes>, GatewayError> {
    let r = &snap.config.redaction;
    let Some(redactor) = r.redactor.as_ref().filter(|_| r.prompts) else {
        return Ok(None);
    };
    request::peek(body, op)?;
    let mut v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::new(ErrorKind::InvalidJson, format!("invalid JSON: {e}")))?;
    if !sluice_core::pii::redact_request(&mut v, redactor) {
        return Ok(None);
    }
    Ok(Some(Bytes::from(
        serde_json::to_vec(&v).expect("serializing to a Vec cannot fail"),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_unique_hex() {
        let h = HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_ne!(a, b);
        let s = a.to_str().unwrap();
        assert_eq!(s.len(), 24);
        assert!(s.starts_with("req-"));
        assert!(s[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn client_request_id_is_kept_when_sane() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        assert_eq!(request_id(&h), "abc");
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"x".repeat(200)).unwrap(),
        );
        assert_ne!(request_id(&h), "x".repeat(200).as_str());
    }

    #[test]
    fn client_timeout_header() {
        let mut h = HeaderMap::new();
        assert_eq!(client_timeout(&h).unwrap(), None);
        h.insert("x-request-timeout", HeaderValue::from_static("2.5"));
        assert_eq!(
            client_timeout(&h).unwrap(),
            Some(Duration::from_millis(2500))
        );
        for bad in ["0", "-1", "soon", "NaN", "1e9"] {
            h.insert("x-request-timeout", HeaderValue::from_static(bad));
            assert!(client_timeout(&h).is_err(), "{bad}");
        }
    }
}
