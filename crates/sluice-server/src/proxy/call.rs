//! One client request as every stage after admission sees it.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use sluice_core::request::{Operation, RequestPeek};
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::translate::Wire;
use tokio::time::Instant;

use crate::app::Snapshot;

/// Everything about one client request that every attempt needs.
pub struct Call<'a> {
    pub snap: &'a Snapshot,
    /// The operation in OpenAI terms (`Chat` for Anthropic clients too).
    pub op: Operation,
    /// The client's wire format.
    pub client: Wire,
    /// The request in the OpenAI shape (for Anthropic clients: translated).
    pub body: &'a Bytes,
    pub peek: &'a RequestPeek<'a>,
    /// An Anthropic client's own body and its `model` span, sent as-is (model
    /// rewritten) to Anthropic targets.
    pub native: Option<sluice_providers::adapter::Native<'a>>,
    /// A Responses client's request echo (and where its finished turn goes).
    pub responses: Option<std::sync::Arc<sluice_providers::responses::Echo>>,
    /// The model name as the client sent it.
    pub client_model: &'a str,
    /// Whether the client asked for the streamed usage chunk (OpenAI clients).
    pub include_usage: bool,
    pub request_id: &'a HeaderValue,
    /// A form upload's content type (with its boundary).
    pub content_type: Option<&'a HeaderValue>,
    /// Why the request cannot be translated (only targets that take the
    /// client's own format may serve it).
    pub untranslatable: Option<&'a GatewayError>,
    /// A large form upload whose rest is still arriving (`body` is its
    /// first bytes): sent to one target only.
    pub upload: Option<&'a super::upload::StreamedUpload>,
    pub deadline: Instant,
    pub budget: Duration,
}

/// The error of a request that ran out of its deadline.
pub(crate) fn deadline_error(budget: Duration) -> GatewayError {
    GatewayError::new(
        ErrorKind::UpstreamTimeout,
        format!("request deadline of {} ms exceeded", budget.as_millis()),
    )
}

/// `gen_ai.operation.name` for an endpoint.
pub fn operation_name(op: Operation) -> &'static str {
    match op {
        Operation::Chat | Operation::Messages | Operation::Responses => "chat",
        Operation::Completions => "text_completion",
        Operation::Embeddings => "embeddings",
        Operation::Media(m) => m.operation_name(),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from model APIs and
/// is treated as absent), or OpenAI's `retry-after-ms`.
pub(crate) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        h.get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v < 86_400_000.0)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| num("retry-after").map(Duration::from_secs_f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
