//! The Anthropic Messages wire format: as a target (`outbound`: OpenAI-shaped
//! requests in, translated there and back) and for Anthropic-SDK clients
//! (`inbound`: `/v1/messages` served by any target).

pub mod inbound;
pub mod outbound;
pub mod structured;
pub mod types;

#[cfg(test)]
mod golden;

use bytes::Bytes;
use http::Uri;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use sluice_core::GatewayError;
use sluice_core::config::ProviderConfig;

use crate::template;

/// The API version header sent unless the provider's headers set another.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// An Anthropic provider's request template, built once per snapshot.
#[derive(Debug, Clone)]
pub struct Endpoint {
    messages: Uri,
    count_tokens: Uri,
    headers: HeaderMap,
}

impl Endpoint {
    pub fn new(p: &ProviderConfig) -> Result<Self, GatewayError> {
        let auth = p
            .api_key
            .as_ref()
            .map(|k| (HeaderName::from_static("x-api-key"), k.expose().to_owned()));
        let version = [(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(DEFAULT_VERSION),
        )];
        Ok(Self {
            messages: Uri::try_from(format!("{}/messages", p.base_url))
                .map_err(|_| template::invalid(p, "base_url"))?,
            count_tokens: Uri::try_from(format!("{}/messages/count_tokens", p.base_url))
                .map_err(|_| template::invalid(p, "base_url"))?,
            headers: template::headers(p, auth, &version)?,
        })
    }

    pub fn request(
        &self,
        body: Bytes,
        request_id: Option<&HeaderValue>,
    ) -> http::Request<Full<Bytes>> {
        template::request(&self.headers, self.messages.clone(), body, request_id)
    }

    /// `POST …/messages/count_tokens` with an Anthropic request body.
    pub fn count_tokens(
        &self,
        body: Bytes,
        request_id: Option<&HeaderValue>,
    ) -> http::Request<Full<Bytes>> {
        template::request(&self.headers, self.count_tokens.clone(), body, request_id)
    }
}
