//! One client request as every stage after admission sees it.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
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
