//! Intake: what the request path reads from a request before admission —
//! its id, its own deadline, its body within the limits, and its prompt
//! with PII redacted.

use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use sluice_core::media;
use sluice_core::request::{self, Operation};
use sluice_core::{ErrorKind, GatewayError};

pub use crate::extract::read_body;

pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The client's own deadline for the whole request, in seconds (e.g. `2.5`).
/// It can only narrow the route's timeout.
static REQUEST_TIMEOUT: HeaderName = HeaderName::from_static("x-request-timeout");

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
pub(crate) fn request_id(h: &HeaderMap) -> HeaderValue {
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

/// What [`redact_prompt`] did.
pub(super) enum Redacted {
    /// Prompt redaction is off: the body was not read.
    Off,
    /// A form: its prompt fields redacted (`None`: nothing found).
    Form(Option<Bytes>),
    /// A JSON body: what the redaction pass read of it.
    Read(sluice_core::pii::Pass),
}

/// The body with PII redacted from its prompt text, when prompt redaction
/// is on. The top-level members `keep` names are handed over (to `kept`)
/// as the same pass reads them.
pub(super) fn redact_prompt<'a>(
    snap: &'a crate::app::Snapshot,
    body: &'a Bytes,
    op: Operation,
    form: Option<&HeaderValue>,
    keep: impl Fn(&str) -> bool,
    kept: &mut sluice_core::pii::Members<'a>,
) -> Result<Redacted, GatewayError> {
    let r = &snap.config.redaction;
    let Some(redactor) = r.redactor.as_ref().filter(|_| r.prompts) else {
        return Ok(Redacted::Off);
    };
    if let Some(ct) = form {
        let boundary = ct.to_str().ok().and_then(media::boundary);
        // A malformed form gets its precise error from the peek after this.
        let redacted =
            media::redact_form(body, boundary.unwrap_or_default(), |t| redactor.redact(t));
        return Ok(Redacted::Form(redacted.ok().flatten().map(Bytes::from)));
    }
    // The request is peeked after this (whatever was redacted, its shape
    // and model stay); a body that is not a JSON object gets the peek's
    // precise error here.
    sluice_core::pii::redact_request_json_keeping(body, redactor, keep, kept)
        .map(Redacted::Read)
        .map_err(|e| match request::peek(body, op) {
            Err(precise) => precise,
            Ok(_) => GatewayError::new(ErrorKind::InvalidJson, format!("invalid JSON: {e}")),
        })
}

/// The peek of `body` (as it goes on) from the members of `original` the
/// redaction pass read, when they settle it (else `peek` of the body will
/// say what is wrong). Its model name is its own: the body it was read
/// from moves on.
pub(super) fn peek_from_pass(
    body: &[u8],
    original: &[u8],
    kept: &[(std::borrow::Cow<'_, str>, &str)],
    pass: &sluice_core::pii::Pass,
    op: Operation,
) -> Option<request::RequestPeek<'static>> {
    let moved = |at| pass.redacted.as_ref().map_or(at, |d| d.moved(at));
    let kept = kept.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
    request::peek_members(body, original, kept, pass.messages, moved, op)
        .map(request::RequestPeek::into_owned)
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
