//! Google Gemini (`generateContent` / `streamGenerateContent?alt=sse`) as a
//! target: OpenAI-shaped requests translated there, answers translated back.

pub mod translate;

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

/// A Gemini provider's request template. The model is part of the path, so
/// the URI is assembled per request from the base.
#[derive(Debug, Clone)]
pub struct Endpoint {
    base: String,
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
        let mut headers = HeaderMap::with_capacity(4 + p.headers.len());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(USER_AGENT, HeaderValue::from_static(crate::openai::UA));
        if let Some(key) = &p.api_key {
            let mut v =
                HeaderValue::try_from(key.expose()).map_err(|_| invalid("api_key".into()))?;
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-goog-api-key"), v);
        }
        for (name, value) in &p.headers {
            let n = HeaderName::try_from(name.as_str())
                .map_err(|_| invalid(format!("header name '{name}'")))?;
            let mut v = HeaderValue::try_from(value.expose())
                .map_err(|_| invalid(format!("value of header '{name}'")))?;
            v.set_sensitive(true);
            headers.insert(n, v);
        }
        Uri::try_from(format!("{}/models/x:generateContent", p.base_url))
            .map_err(|_| invalid("base_url".into()))?;
        Ok(Self {
            base: p.base_url.clone(),
            headers,
        })
    }

    pub fn request(
        &self,
        model: &str,
        stream: bool,
        body: Bytes,
        request_id: Option<&HeaderValue>,
    ) -> Result<http::Request<Full<Bytes>>, GatewayError> {
        let action = if stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        let uri =
            Uri::try_from(format!("{}/models/{model}:{action}", self.base)).map_err(|_| {
                GatewayError::new(
                    ErrorKind::Internal,
                    format!("model name '{model}' does not fit in a Gemini URL"),
                )
            })?;
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
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }
}
