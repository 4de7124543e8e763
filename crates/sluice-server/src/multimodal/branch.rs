//! One part's conversion: by a local processor (OCR; voice activity
//! before a transcription) or by a routed model, called through the
//! gateway's own request path (so the client's key, its limits, retries,
//! breakers, metrics and audit apply to it as to any request).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use sluice_core::config::Converter;
use sluice_core::media::Media as MediaOp;
use sluice_core::request::Operation;
use sluice_core::{ErrorKind, GatewayError};
use sluice_inference::vad::VadError;
use sluice_providers::fetch::FetchError;
use sluice_providers::multimodal::{self as mm, Part, Source};
use tokio::time::Instant;

use super::processors::{Converters, Engine};
use crate::app::App;
use crate::proxy::{Inbound, InboundBody};

/// Marks the gateway's own conversion requests: their parts are not
/// converted again (no loops between converter models).
pub(super) static INTERNAL: HeaderName = HeaderName::from_static("x-sluice-conversion");

/// Answers of a converter model read at most this far.
const MAX_ANSWER: usize = 4 << 20;

/// Why a part was not converted.
pub(super) enum Failure {
    /// The request's own fault (a malformed part, a URL the gateway may not
    /// fetch): always a 400, whatever `on_failure` says.
    Input(GatewayError),
    Failed(String),
    Timeout,
}

pub(super) struct Ctx<'a> {
    pub app: &'a Arc<App>,
    pub converters: &'a Converters,
    /// The client's request headers (its credentials go with the calls).
    pub headers: &'a HeaderMap,
    pub request_id: &'a str,
}

/// The text a part becomes.
pub(super) async fn convert(
    ctx: &Ctx<'_>,
    part: &Part,
    conv: &Converter,
    deadline: Instant,
    traceparent: Option<HeaderValue>,
) -> Result<String, Failure> {
    let call = Call {
        ctx,
        deadline,
        traceparent,
        suffix: format!("{}-{}", part.modality.as_str(), part.ordinal),
    };
    match &part.source {
        Source::ImageUrl(url) => match (&conv.processor, &conv.model) {
            (Some(p), _) => ocr(ctx, p, url).await,
            (None, Some(model)) => {
                let body = mm::vision_request(model, &conv.prompt, url);
                let answer = call.run(Operation::Chat, "application/json", body).await?;
                mm::chat_text(&answer)
                    .ok_or_else(|| Failure::Failed("the model's answer has no text".into()))
            }
            (None, None) => Err(Failure::Failed("no converter".into())),
        },
        Source::Audio { data, format } => {
            let mut audio = mm::audio_bytes(data).map_err(|e| input(part, e))?;
            if let Some(p) = &conv.processor {
                match trim(ctx, p, audio, format).await? {
                    Some(trimmed) => audio = trimmed,
                    None => return Ok("(no speech)".into()),
                }
            }
            let Some(model) = &conv.model else {
                return Err(Failure::Failed("no transcription model".into()));
            };
            let (ct, body) = mm::transcription_form(&audio, format, model);
            let answer = call
                .run(Operation::Media(MediaOp::Transcription), &ct, body)
                .await?;
            mm::transcription_text(&answer)
                .ok_or_else(|| Failure::Failed("the transcription has no text".into()))
        }
    }
}

fn input(part: &Part, message: impl std::fmt::Display) -> Failure {
    Failure::Input(
        GatewayError::new(
            ErrorKind::InvalidRequest,
            format!("{}: {message}", part.name()),
        )
        .with_param("messages"),
    )
}

/// The text an OCR processor reads in the image (a data URI, or a URL
/// the gateway may fetch).
async fn ocr(ctx: &Ctx<'_>, processor: &str, url: &str) -> Result<String, Failure> {
    let bad = |m: String| {
        Failure::Input(GatewayError::new(ErrorKind::InvalidRequest, m).with_param("messages"))
    };
    let bytes = match mm::data_uri(url) {
        Some(Ok((_, b))) => Bytes::from(b),
        Some(Err(e)) => return Err(bad(e)),
        None => ctx
            .converters
            .fetcher
            .fetch(url)
            .await
            .map_err(|e| match e {
                FetchError::Refused(m) => bad(m),
                FetchError::Failed(m) => Failure::Failed(m),
                FetchError::TimedOut => Failure::Timeout,
            })?,
    };
    let p = loaded(ctx, processor)?;
    let read = p
        .run(move |engine, cancelled| match engine {
            Engine::Ocr(o) => o.read(&bytes, cancelled),
            Engine::Vad(_) => Err(sluice_inference::ocr::OcrError::Engine(
                "not an OCR processor".into(),
            )),
        })
        .await
        .map_err(Failure::Failed)?;
    match read {
        Ok(t) if t.trim().is_empty() => Ok("(no text found)".into()),
        Ok(t) => Ok(t),
        Err(e @ sluice_inference::ocr::OcrError::Image(_)) => Err(bad(e.to_string())),
        Err(e) => Err(Failure::Failed(e.to_string())),
    }
}

/// The recording with its silence cut (WAV; other formats go as they
/// are); `None` when it holds no speech.
async fn trim(
    ctx: &Ctx<'_>,
    processor: &str,
    audio: Vec<u8>,
    format: &str,
) -> Result<Option<Vec<u8>>, Failure> {
    if format != "wav" {
        return Ok(Some(audio));
    }
    let p = loaded(ctx, processor)?;
    let trimmed = p
        .run(move |engine, cancelled| match engine {
            Engine::Vad(v) => v.trim_wav(&audio, cancelled).map(|t| t.map(|t| t.wav)),
            Engine::Ocr(_) => Err(VadError::Engine("not a voice-activity processor".into())),
        })
        .await
        .map_err(Failure::Failed)?;
    trimmed.map_err(|e| match e {
        VadError::Audio(m) => Failure::Input(
            GatewayError::new(ErrorKind::InvalidRequest, format!("input_audio: {m}"))
                .with_param("messages"),
        ),
        other => Failure::Failed(other.to_string()),
    })
}

fn loaded<'a>(ctx: &'a Ctx<'_>, name: &str) -> Result<&'a super::processors::Processor, Failure> {
    ctx.converters
        .processors
        .get(name)
        .map(|p| &**p)
        .ok_or_else(|| Failure::Failed(format!("processor '{name}' is not loaded")))
}

/// A request to a converter model through the gateway's request path.
struct Call<'a> {
    ctx: &'a Ctx<'a>,
    deadline: Instant,
    traceparent: Option<HeaderValue>,
    suffix: String,
}

type Served = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The request path, boxed: it is also what called the conversion.
fn serve(app: Arc<App>, inbound: Inbound) -> Served {
    Box::pin(crate::proxy::serve(app, inbound))
}

impl Call<'_> {
    async fn run(&self, op: Operation, content_type: &str, body: Bytes) -> Result<Bytes, Failure> {
        let mut h = HeaderMap::new();
        for name in [
            http::header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ] {
            if let Some(v) = self.ctx.headers.get(&name) {
                h.insert(name, v.clone());
            }
        }
        let ct = HeaderValue::from_str(content_type)
            .map_err(|_| Failure::Failed("a bad content type".into()))?;
        h.insert(http::header::CONTENT_TYPE, ct);
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        let secs = HeaderValue::from_str(&format!("{:.3}", left.as_secs_f64().max(0.001)))
            .expect("a number is a valid header value");
        h.insert("x-request-timeout", secs);
        if let Ok(id) = HeaderValue::from_str(&format!("{}-{}", self.ctx.request_id, self.suffix)) {
            h.insert("x-request-id", id);
        }
        if let Some(tp) = &self.traceparent {
            h.insert("traceparent", tp.clone());
        }
        h.insert(INTERNAL.clone(), HeaderValue::from_static("1"));
        let route = match op {
            Operation::Media(m) => m.route(),
            _ => "/v1/chat/completions",
        };
        let inbound = Inbound {
            op,
            route,
            headers: h,
            body: InboundBody::Read(body),
            client: None,
        };
        let resp = serve(self.ctx.app.clone(), inbound).await;
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), MAX_ANSWER)
            .await
            .map_err(|e| Failure::Failed(format!("the converter's answer broke off: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        if status == http::StatusCode::GATEWAY_TIMEOUT {
            return Err(Failure::Timeout);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Err(Failure::Failed(format!("{status}: {message}")))
    }
}
