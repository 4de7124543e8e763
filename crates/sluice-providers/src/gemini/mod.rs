//! Google Gemini (`generateContent` / `streamGenerateContent?alt=sse`) as a
//! target: OpenAI-shaped requests translated there, answers translated back.

pub mod translate;

#[cfg(test)]
mod golden;

use bytes::Bytes;
use http::Uri;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use sluice_core::config::ProviderConfig;
use sluice_core::{ErrorKind, GatewayError};

use crate::template;

/// A Gemini provider's request template. The model is part of the path, so
/// the URI is assembled per request from the base.
#[derive(Debug, Clone)]
pub struct Endpoint {
    base: String,
    headers: HeaderMap,
}

impl Endpoint {
    pub fn new(p: &ProviderConfig) -> Result<Self, GatewayError> {
        let auth = p.api_key.as_ref().map(|k| {
            (
                HeaderName::from_static("x-goog-api-key"),
                k.expose().to_owned(),
            )
        });
        Uri::try_from(format!("{}/models/x:generateContent", p.base_url))
            .map_err(|_| template::invalid(p, "base_url"))?;
        Ok(Self {
            base: p.base_url.clone(),
            headers: template::headers(p, auth, &[])?,
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
        Ok(template::request(&self.headers, uri, body, request_id))
    }
}
