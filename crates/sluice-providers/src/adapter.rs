//! The provider adapter boundary: everything format-specific about sending a
//! request to one provider kind lives behind [`Adapter`], so the server
//! never looks at a wire format.
//!
//! Adding a provider is one module (its endpoint template and translators)
//! plus one line in [`Adapter::new`]; the conformance suite
//! (`tests/conformance.rs`) runs the same checks over every adapter.

use std::ops::Range;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;
use sluice_core::config::{ProviderConfig, ProviderKind};
use sluice_core::request::{self, Operation, RequestPeek, Usage};
use sluice_core::{ErrorKind, GatewayError};

use crate::anthropic::outbound;
use crate::openai::types::ChatRequest;
use crate::translate::Wire;
use crate::{BoxBody, anthropic, gemini, mock, openai};

/// One client request, as every attempt sees it.
pub struct Outgoing<'a> {
    /// The operation in OpenAI terms (`Chat` for Anthropic clients too).
    pub op: Operation,
    /// The request in the OpenAI shape (for Anthropic clients: translated).
    pub body: &'a Bytes,
    pub peek: &'a RequestPeek<'a>,
    /// An Anthropic client's own body and its `model` span, sent as-is
    /// (model rewritten) to Anthropic targets.
    pub native: Option<Native<'a>>,
    pub request_id: &'a HeaderValue,
    /// The client's content type, for a form upload (its boundary is in it).
    pub content_type: Option<&'a HeaderValue>,
    /// Why the request cannot be translated for targets that do not take
    /// the client's own format (e.g. a Responses request continuing a
    /// response stored at OpenAI): such targets refuse with it.
    pub untranslatable: Option<&'a GatewayError>,
}

/// A client's own body in its own format: sent as it is (model rewritten)
/// to a target that speaks that format.
#[derive(Clone)]
pub struct Native<'a> {
    pub wire: Wire,
    pub body: &'a Bytes,
    /// The byte range of its `model` value.
    pub model_span: Range<usize>,
}

impl Native<'_> {
    fn with_model(&self, model: &str) -> Bytes {
        Bytes::from(request::rewrite_model(
            self.body,
            self.model_span.clone(),
            model,
        ))
    }
}

/// What an adapter made of a request for one target.
pub enum Prepared {
    /// Send this upstream; the answer comes in the adapter's [`Adapter::wire`].
    Http(http::Request<Full<Bytes>>),
    /// Answered in process, in the OpenAI format, with its usage known.
    Local(http::Response<BoxBody>, Usage),
}

/// How requests to one provider are built, per provider kind.
#[derive(Debug)]
pub enum Adapter {
    /// OpenAI and every OpenAI-compatible server (Azure included: its
    /// differences are in the endpoint template).
    OpenAi(Box<openai::Endpoint>),
    Anthropic(anthropic::Endpoint),
    Gemini(gemini::Endpoint),
    /// The built-in mock, answered in process.
    Mock,
}

impl Adapter {
    /// The registration point: one line per provider kind.
    pub fn new(p: &ProviderConfig) -> Result<Self, GatewayError> {
        Ok(match p.kind {
            ProviderKind::OpenAi | ProviderKind::Azure => {
                Self::OpenAi(Box::new(openai::Endpoint::new(p)?))
            }
            ProviderKind::Anthropic => Self::Anthropic(anthropic::Endpoint::new(p)?),
            ProviderKind::Gemini => Self::Gemini(gemini::Endpoint::new(p)?),
            ProviderKind::Mock => Self::Mock,
        })
    }

    /// The format the upstream answers `op` in.
    pub fn wire(&self, op: Operation) -> Wire {
        match self {
            Self::OpenAi(_) if op == Operation::Completions => Wire::Completions,
            Self::OpenAi(e) if op == Operation::Responses && e.has_responses_api() => {
                Wire::Responses
            }
            Self::OpenAi(_) | Self::Mock => Wire::OpenAi,
            Self::Anthropic(_) => Wire::Anthropic,
            Self::Gemini(_) => Wire::Gemini,
        }
    }

    /// The request that counts an Anthropic request's input tokens exactly,
    /// for providers that can (`None`: the gateway estimates).
    pub fn count_tokens(
        &self,
        body: Bytes,
        request_id: &HeaderValue,
    ) -> Option<http::Request<Full<Bytes>>> {
        match self {
            Self::Anthropic(e) => Some(e.count_tokens(body, Some(request_id))),
            Self::OpenAi(_) | Self::Gemini(_) | Self::Mock => None,
        }
    }

    /// The OpenAI endpoint template, for requests passed through as they
    /// came (`/v1/files`, `/v1/batches`); `None` for other formats.
    pub fn openai_endpoint(&self) -> Option<&openai::Endpoint> {
        match self {
            Self::OpenAi(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// Whether requests go over the network (and need a connection pool).
    pub fn over_network(&self) -> bool {
        !matches!(self, Self::Mock)
    }

    /// The request for `model` at provider `p`, or the in-process answer.
    /// An `Err` is the client's request that this provider cannot take.
    pub async fn prepare(
        &self,
        out: &Outgoing<'_>,
        p: &ProviderConfig,
        model: &str,
    ) -> Result<Prepared, GatewayError> {
        let id = Some(out.request_id);
        if let Some(e) = out.untranslatable
            && self.wire(out.op) != Wire::Responses
        {
            return Err(e.clone());
        }
        match self {
            // A Responses client's own body, to a provider with the API.
            Self::OpenAi(e) if self.wire(out.op) == Wire::Responses => {
                let native = out.native.as_ref().filter(|n| n.wire == Wire::Responses);
                let Some(native) = native else {
                    return Err(GatewayError::new(
                        ErrorKind::Internal,
                        "a Responses request without its own body",
                    ));
                };
                Ok(Prepared::Http(e.request(
                    out.op,
                    native.with_model(model),
                    id,
                )))
            }
            // Completions go as they came, to the completions endpoint.
            Self::OpenAi(e) if out.op == Operation::Completions => {
                let native = out.native.as_ref().filter(|n| n.wire == Wire::Completions);
                let Some(native) = native else {
                    return Err(GatewayError::new(
                        ErrorKind::Internal,
                        "a completions request without its own body",
                    ));
                };
                let mut body = native.with_model(model);
                if out.peek.stream && !out.peek.include_usage {
                    body = request::force_include_usage(&body);
                }
                Ok(Prepared::Http(e.request(out.op, body, id)))
            }
            Self::OpenAi(e) if matches!(out.op, Operation::Media(_)) => {
                Ok(Prepared::Http(media_request(e, out, model)))
            }
            Self::OpenAi(e) => {
                let mut body = if model == out.peek.model {
                    out.body.clone()
                } else {
                    Bytes::from(request::rewrite_model(
                        out.body,
                        out.peek.model_span.clone(),
                        model,
                    ))
                };
                if out.peek.stream && !out.peek.include_usage {
                    // Usage is always wanted for accounting; the client sees
                    // it only if it asked (the response filter drops it).
                    body = request::force_include_usage(&body);
                }
                Ok(Prepared::Http(e.request(out.op, body, id)))
            }
            Self::Anthropic(e) => {
                unsupported(out.op, p)?;
                let native = out.native.as_ref().filter(|n| n.wire == Wire::Anthropic);
                let body = match native {
                    Some(native) => native.with_model(model),
                    None => json_bytes(&outbound::request(
                        canonical(out.body)?,
                        model,
                        p.default_max_tokens,
                    )?),
                };
                Ok(Prepared::Http(e.request(body, id)))
            }
            Self::Gemini(e) => {
                unsupported(out.op, p)?;
                let body = json_bytes(&gemini::translate::request(canonical(out.body)?)?);
                Ok(Prepared::Http(e.request(
                    model,
                    out.peek.stream,
                    body,
                    id,
                )?))
            }
            Self::Mock => mock_answer(out, p, model).await,
        }
    }
}

/// `gen_ai.provider.name` (OpenTelemetry semantic conventions) of a provider.
pub fn genai_provider(p: &ProviderConfig) -> &'static str {
    match p.kind {
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gcp.gemini",
        ProviderKind::Azure => "azure.ai.openai",
        ProviderKind::Mock => "sluice.mock",
        ProviderKind::OpenAi => match p.preset {
            "groq" => "groq",
            "mistral" => "mistral_ai",
            other => other,
        },
    }
}

async fn mock_answer(
    out: &Outgoing<'_>,
    p: &ProviderConfig,
    model: &str,
) -> Result<Prepared, GatewayError> {
    let cfg = &p.mock;
    let (resp, usage) = match out.op {
        Operation::Chat | Operation::Messages | Operation::Responses | Operation::Completions => {
            let reply = mock::chat_reply(cfg, out.body)?;
            let usage = reply.usage;
            // Always with the usage chunk: the client's filter decides.
            let r = if out.peek.stream {
                mock::chat_stream(cfg, model, reply, true)
            } else {
                mock::chat_response(cfg, model, reply).await
            };
            (r, usage)
        }
        Operation::Embeddings => mock::embeddings_response(cfg, model, out.body)?,
        Operation::Media(m) => crate::mock_media::answer(m, model, out.body, out.content_type)?,
    };
    Ok(Prepared::Local(resp, usage))
}

/// The request in the typed OpenAI shape, for translation to another format.
fn canonical(body: &[u8]) -> Result<ChatRequest, GatewayError> {
    serde_json::from_slice(body)
        .map_err(|e| GatewayError::new(ErrorKind::InvalidRequest, format!("invalid request: {e}")))
}

fn json_bytes(v: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("serializing to a Vec cannot fail"))
}

/// A media request as the client sent it, `model` rewritten when the route
/// names another, in the client's content type (a form keeps its boundary).
fn media_request(
    e: &openai::Endpoint,
    out: &Outgoing<'_>,
    model: &str,
) -> http::Request<Full<Bytes>> {
    let form = out.content_type.is_some();
    let body = if model == out.peek.model {
        out.body.clone()
    } else if form {
        Bytes::from(sluice_core::media::rewrite_form_model(
            out.body,
            out.peek.model_span.clone(),
            model,
        ))
    } else {
        Bytes::from(request::rewrite_model(
            out.body,
            out.peek.model_span.clone(),
            model,
        ))
    };
    let mut req = e.request(out.op, body, Some(out.request_id));
    let h = req.headers_mut();
    if let Some(ct) = out.content_type {
        h.insert(http::header::CONTENT_TYPE, ct.clone());
    }
    // Audio and transcripts in text formats come back as they are.
    h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    req
}

/// Refuses what only OpenAI-format providers serve (embeddings, media).
fn unsupported(op: Operation, p: &ProviderConfig) -> Result<(), GatewayError> {
    let what = match op {
        Operation::Embeddings => "embeddings",
        Operation::Media(m) => m.route(),
        _ => return Ok(()),
    };
    Err(GatewayError::new(
        ErrorKind::UnsupportedOperation,
        format!(
            "provider '{}' ({}) has no {} endpoint behind this gateway; route this model \
             to an OpenAI-compatible provider",
            p.name, p.preset, what
        ),
    ))
}
