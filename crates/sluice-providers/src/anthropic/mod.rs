//! The Anthropic Messages wire format: as a target (`outbound`: OpenAI-shaped
//! requests in, translated there and back) and for Anthropic-SDK clients
//! (`inbound`: `/v1/messages` served by any target).

pub mod inbound;
pub mod outbound;
pub mod types;

#[cfg(test)]
mod golden;

use bytes::Bytes;
use http::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT,
};
use http::{Method, Uri};
use http_body_util::Full;
use sluice_core::config::ProviderConfig;
use sluice_core::{ErrorKind, GatewayError};

/// The API version header sent unless the provider's headers set another.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// An Anthropic provider's request template, built once per snapshot.
#[derive(Debug, Clone)]
pub struct Endpoint {
    messages: Uri,
    headers: HeaderMap,
}

impl Endpoint {
    pub fn new(p: &ProviderConfig) -> Result<Self, GatewayError> {
        let invalid = |what: String| {
            GatewayError::new(
                ErrorKind::Internal,
                format!("provider '{}': {what} is not valid", p.name),
            )
        };
        let mut headers = HeaderMap::with_capacity(5 + p.headers.len());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(USER_AGENT, HeaderValue::from_static(crate::openai::UA));
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(DEFAULT_VERSION),
        );
        if let Some(key) = &p.api_key {
            let mut v =
                HeaderValue::try_from(key.expose()).map_err(|_| invalid("api_key".into()))?;
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), v);
        }
        for (name, value) in &p.headers {
            let n = HeaderName::try_from(name.as_str())
                .map_err(|_| invalid(format!("header name '{name}'")))?;
            let mut v = HeaderValue::try_from(value.expose())
                .map_err(|_| invalid(format!("value of header '{name}'")))?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        Ok(Self {
            messages: Uri::try_from(format!("{}/messages", p.base_url))
                .map_err(|_| invalid("base_url".into()))?,
            headers,
        })
    }

    pub fn request(
        &self,
        body: Bytes,
        request_id: Option<&HeaderValue>,
    ) -> http::Request<Full<Bytes>> {
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 2);
        for (k, v) in &self.headers {
            headers.insert(k.clone(), v.clone());
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if let Some(id) = request_id {
            headers.insert(HeaderName::from_static("x-request-id"), id.clone());
        }
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.messages.clone();
        *req.headers_mut() = headers;
        req
    }
}
