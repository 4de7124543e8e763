//! Provider wire formats and the pooled upstream transport.
//!
//! One module per wire format. Translation and observation are plain functions
//! over bytes and types; only [`transport`] does I/O.

pub mod adapter;
pub mod anthropic;
pub mod check;
pub mod completions;
pub mod fetch;
pub mod fields;
pub mod gemini;
mod h1wire;
pub use h1wire::{content_length, tokens};
pub mod header_names;
use sluice_core::json_quick;
pub mod mock;
mod mock_media;
mod mock_shape;
mod mock_text;
pub mod multimodal;
pub mod openai;
mod pool;
pub mod responses;
pub mod sse;
pub mod template;
pub mod tokens;
pub mod translate;
pub mod transport;
pub mod wire;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;

/// Every response body the gateway hands to the server layer.
pub type BoxBody = UnsyncBoxBody<Bytes, BodyError>;

/// An error inside a response body stream (the upstream reset, went silent, …).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Headers a gateway may add to an upstream's answer before relaying it
/// (request id, content type, four `x-ratelimit-*`, `Retry-After`,
/// `x-sluice-attempts`): the HTTP/1.1 pool makes an answer's header map
/// with this much room, so they go in without the map being rebuilt.
pub const ADDED_HEADERS: usize = 8;
