//! Crossing wire formats on the response path.
//!
//! Streams go through an SSE decoder, an upstream-specific decoder to OpenAI
//! chunks (the canonical shape), and a client-specific encoder. Same-format
//! OpenAI streams take a cheaper filter that forwards event text verbatim and
//! only parses the events that carry usage. JSON bodies are converted whole.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use sluice_core::request::Usage;

use crate::anthropic::{inbound, outbound, types as at};
use crate::check;
use crate::gemini::translate as gemini;
use crate::openai::types as ot;
use crate::sse::{self, Decoder};
use crate::tokens::TokenEncoder;
use crate::{BodyError, BoxBody};

pub use crate::wire::{Delivery, Wire};

/// Most bytes of upstream frames that were ready together re-encoded into
/// one frame for the client.
const MERGE_BYTES: usize = 64 << 10;

/// Largest single SSE event accepted from an upstream.
pub const MAX_EVENT: usize = 1 << 20;

/// Token usage found by a translator, read when the response settles; and
/// the chunks a token stream sent (an error after them is numbered next).
#[derive(Debug, Default)]
pub struct UsageCell {
    usage: Mutex<Option<Usage>>,
    chunks: AtomicU64,
}

impl UsageCell {
    pub fn set(&self, prompt: u64, completion: u64) {
        *self.usage.lock().expect("usage lock is never poisoned") = Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
        });
    }

    pub fn get(&self) -> Option<Usage> {
        *self.usage.lock().expect("usage lock is never poisoned")
    }

    /// Token chunks sent so far.
    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }
}

enum Decode {
    OpenAi,
    Anthropic(outbound::StreamToOpenAi),
    Gemini(gemini::StreamToOpenAi),
}

enum Encode {
    OpenAi { include_usage: bool },
    Anthropic(inbound::StreamFromOpenAi),
    Responses(Box<crate::responses::stream::StreamFromChat>),
    Completions(crate::completions::StreamFromChat),
    Tokens(TokenEncoder),
}

enum Mode {
    /// OpenAI in and out: event text passes verbatim; usage-only events are
    /// dropped unless the client asked for them.
    Filter {
        include_usage: bool,
    },
    Translate(Box<(Decode, Encode)>),
}

/// A streamed response re-encoded for the client on the way through.
pub struct StreamBody {
    inner: BoxBody,
    sse: Decoder,
    mode: Mode,
    usage: Arc<UsageCell>,
    upstream_done: bool,
    ended: bool,
    pending_error: Option<String>,
    /// The upstream body failed while a burst was being read: returned
    /// once the events before it are out.
    inner_error: Option<BodyError>,
}

impl StreamBody {
    /// `client_model` names the model in Anthropic events; `include_usage`
    /// whether an OpenAI client asked for the usage chunk; `responses` is
    /// what a Responses client's events repeat of its request.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inner: BoxBody,
        upstream: Wire,
        client: Wire,
        client_model: &str,
        include_usage: bool,
        created: u64,
        usage: Arc<UsageCell>,
        responses: Option<Arc<crate::responses::Echo>>,
    ) -> Self {
        let mode = match (upstream, client) {
            (Wire::OpenAi, Wire::OpenAi) | (Wire::Completions, Wire::Completions) => {
                Mode::Filter { include_usage }
            }
            (up, cl) => Mode::Translate(Box::new((
                match up {
                    // No adapter answers in the Responses format (yet).
                    Wire::OpenAi | Wire::Responses | Wire::Completions | Wire::Tokens(_) => {
                        Decode::OpenAi
                    }
                    Wire::Anthropic => Decode::Anthropic(outbound::StreamToOpenAi::new(created)),
                    Wire::Gemini => {
                        Decode::Gemini(gemini::StreamToOpenAi::new(client_model, created))
                    }
                },
                match (cl, responses) {
                    (Wire::Responses, Some(echo)) => Encode::Responses(Box::new(
                        crate::responses::stream::StreamFromChat::new(echo),
                    )),
                    (Wire::Completions, _) => Encode::Completions(
                        crate::completions::StreamFromChat::new(client_model, include_usage),
                    ),
                    (Wire::OpenAi | Wire::Gemini | Wire::Responses, _) => {
                        Encode::OpenAi { include_usage }
                    }
                    (Wire::Anthropic, _) => {
                        Encode::Anthropic(inbound::StreamFromOpenAi::new(client_model))
                    }
                    (Wire::Tokens(f), _) => Encode::Tokens(TokenEncoder::new(f)),
                },
            ))),
        };
        Self {
            inner,
            sse: Decoder::new(MAX_EVENT),
            mode,
            usage,
            upstream_done: false,
            ended: false,
            pending_error: None,
            inner_error: None,
        }
    }

    /// Feeds whatever else the upstream has ready now (frames that arrived
    /// together: a burst of events), up to [`MERGE_BYTES`], so that they
    /// go out as one frame. A failure after some of them is kept for after
    /// their output; `Err` is a feed that failed.
    fn take_ready(&mut self, cx: &mut Context<'_>, mut fed: usize) -> Result<(), BodyError> {
        while fed < MERGE_BYTES && self.inner_error.is_none() {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        fed += data.len();
                        self.sse.feed(&data).map_err(|e| Box::new(e) as BodyError)?;
                    }
                }
                Poll::Ready(Some(Err(e))) => self.inner_error = Some(e),
                Poll::Ready(None) => {
                    self.sse.finish();
                    self.ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Handles decoded events; `Err` is an upstream error reported in-stream.
    fn handle(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let mut chunks = Vec::new();
        let decoded = self.decode(&mut chunks, out);
        // What was decoded before a failure still goes out, before the error.
        self.encode(&chunks, out);
        decoded
    }

    /// Decodes the events read, into `chunks` (or straight into `out` on
    /// the fast paths); `Err` is an upstream error reported in-stream.
    fn decode(&mut self, chunks: &mut Vec<ot::Chunk>, out: &mut Vec<u8>) -> Result<(), String> {
        for ev in self.sse.events() {
            if self.upstream_done {
                break;
            }
            match &mut self.mode {
                Mode::Filter { include_usage } => {
                    if ev.data.is_empty() {
                        continue; // a named event without data, or a keep-alive
                    }
                    if ev.data == "[DONE]" {
                        self.upstream_done = true;
                        out.extend_from_slice(b"data: [DONE]\n\n");
                        continue;
                    }
                    let usage = if ev.data.contains("\"usage\"") {
                        serde_json::from_str::<UsageOnly>(&ev.data).ok()
                    } else {
                        None
                    };
                    if let Some(c) = usage {
                        if let Some(u) = c.usage {
                            self.usage.set(u.prompt_tokens, u.completion_tokens);
                            if c.choices.is_empty() && !*include_usage {
                                continue;
                            }
                        }
                    } else if ev.data.starts_with("{\"error\"") {
                        return Err(upstream_error_message(&ev.data));
                    } else {
                        check::json_data(&ev.data)?;
                    }
                    if ev.data.contains(['\n', '\r']) {
                        // Data spread over lines (or with a bare CR): valid
                        // JSON, re-written on one line so it stays one event.
                        let v: serde_json::Value = serde_json::from_str(&ev.data).map_err(|e| {
                            format!("the upstream sent an SSE event that is not JSON ({e})")
                        })?;
                        sse::push_data(out, &v);
                        continue;
                    }
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(ev.data.as_bytes());
                    out.extend_from_slice(b"\n\n");
                }
                Mode::Translate(pair) => {
                    match &mut pair.0 {
                        Decode::OpenAi => {
                            if ev.data == "[DONE]" {
                                self.upstream_done = true;
                                continue;
                            }
                            if let (Encode::Tokens(enc), true) = (&mut pair.1, chunks.is_empty()) {
                                // Token streams read the event in place.
                                match enc.openai_event(&ev.data, out) {
                                    Ok(Some((p, c))) => self.usage.set(p, c),
                                    Ok(None) => {}
                                    Err(_) if ev.data.contains("\"error\"") => {
                                        return Err(upstream_error_message(&ev.data));
                                    }
                                    Err(_) => check::json_data(&ev.data)?,
                                }
                                self.usage.chunks.store(enc.next_id(), Ordering::Relaxed);
                                continue;
                            }
                            match serde_json::from_str::<ot::Chunk>(&ev.data) {
                                Ok(c) => {
                                    if let Some(u) = c.usage {
                                        self.usage.set(u.prompt_tokens, u.completion_tokens);
                                    }
                                    chunks.push(c);
                                }
                                Err(_) if ev.data.contains("\"error\"") => {
                                    return Err(upstream_error_message(&ev.data));
                                }
                                // JSON but not a chunk: a vendor extra, skipped.
                                Err(_) => check::json_data(&ev.data)?,
                            }
                        }
                        Decode::Gemini(t) => {
                            if let Ok(resp) =
                                serde_json::from_str::<gemini::GenerateResponse>(&ev.data)
                            {
                                t.event(resp, chunks);
                                if let Some((p, c)) = t.usage() {
                                    self.usage.set(p, c);
                                }
                            } else if ev.data.contains("\"error\"") {
                                return Err(upstream_error_message(&ev.data));
                            } else {
                                check::json_data(&ev.data)?;
                            }
                        }
                        Decode::Anthropic(t) => {
                            // Text deltas, the bulk of a stream, skip the
                            // chunk values when the client's format allows.
                            if chunks.is_empty() {
                                match &mut pair.1 {
                                    Encode::OpenAi { .. } if t.text_delta_fast(&ev.data, out) => {
                                        continue;
                                    }
                                    Encode::Tokens(enc) => {
                                        if let Some(text) = t.text_delta(&ev.data) {
                                            enc.text(&text, 0.0, out);
                                            self.usage
                                                .chunks
                                                .store(enc.next_id(), Ordering::Relaxed);
                                            continue;
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            let Ok(event) = serde_json::from_str::<at::StreamEvent>(&ev.data)
                            else {
                                anthropic_extra(&ev.data)?;
                                continue;
                            };
                            let stop = matches!(event, at::StreamEvent::MessageStop);
                            t.event(event, chunks)?;
                            let (p, c) = t.usage();
                            self.usage.set(p, c);
                            if stop {
                                self.upstream_done = true;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn encode(&mut self, chunks: &[ot::Chunk], out: &mut Vec<u8>) {
        if let Mode::Translate(pair) = &mut self.mode {
            for c in chunks {
                match &mut pair.1 {
                    Encode::OpenAi { include_usage } => {
                        if c.choices.is_empty() && c.usage.is_some() && !*include_usage {
                            continue;
                        }
                        sse::push_data(out, c);
                    }
                    Encode::Anthropic(enc) => enc.chunk(c, out),
                    Encode::Responses(enc) => enc.chunk(c, out),
                    Encode::Completions(enc) => enc.chunk(c, out),
                    Encode::Tokens(enc) => enc.chunk(c, out),
                }
            }
            if let Encode::Tokens(enc) = &pair.1 {
                self.usage.chunks.store(enc.next_id(), Ordering::Relaxed);
            }
        }
    }

    /// At the upstream's end: the client's closing events when the upstream
    /// ended its stream properly, else what was missing (the client then
    /// gets an error event, never a made-up ending).
    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let mut chunks = Vec::new();
        match &mut self.mode {
            Mode::Filter { .. } | Mode::Translate(_) if self.upstream_done => {}
            Mode::Filter { .. } => {
                return Err("the upstream stream ended before its closing [DONE]".into());
            }
            Mode::Translate(pair) => match &mut pair.0 {
                // Gemini has no end marker: a finish reason ends the message.
                Decode::Gemini(t) if t.has_finished() => t.finish(&mut chunks),
                Decode::Gemini(_) => {
                    return Err("the upstream stream ended before a finish reason".into());
                }
                Decode::OpenAi => {
                    return Err("the upstream stream ended before its closing [DONE]".into());
                }
                Decode::Anthropic(_) => {
                    return Err("the upstream stream ended before its message_stop event".into());
                }
            },
        }
        self.encode(&chunks, out);
        if let Mode::Translate(pair) = &mut self.mode {
            match &mut pair.1 {
                Encode::OpenAi { .. } => out.extend_from_slice(b"data: [DONE]\n\n"),
                Encode::Anthropic(enc) => enc.finish(out),
                Encode::Responses(enc) => enc.finish(out),
                Encode::Completions(enc) => enc.finish(out),
                Encode::Tokens(enc) => {
                    let usage = self.usage.get();
                    enc.finish(usage.map(|u| (u.prompt_tokens, u.completion_tokens)), out);
                    self.usage.chunks.store(enc.next_id(), Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }
}

/// An Anthropic stream event we have no type for: skipped when it is a typed
/// JSON object (a newer event kind), refused when it is not an Anthropic
/// event at all (garbage, or another format's chunk).
fn anthropic_extra(data: &str) -> Result<(), String> {
    if data.is_empty() {
        return Ok(());
    }
    check::json_data(data)?;
    match serde_json::from_str::<serde_json::Value>(data) {
        Ok(v) if v.get("type").is_some_and(serde_json::Value::is_string) => Ok(()),
        _ => Err(format!(
            "the upstream sent an event that is not an Anthropic stream event: {}",
            data.chars().take(64).collect::<String>()
        )),
    }
}

/// The two fields the passthrough filter reads of a chunk.
#[derive(serde::Deserialize)]
struct UsageOnly {
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
    usage: Option<ot::UsageOut>,
}

fn upstream_error_message(data: &str) -> String {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .map_or_else(
            || "upstream reported an error".to_owned(),
            |m| format!("upstream error: {m}"),
        )
}

#[derive(Debug)]
struct StreamError(String);

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamError {}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            if let Some(msg) = this.pending_error.take() {
                return Poll::Ready(Some(Err(Box::new(StreamError(msg)))));
            }
            if let Some(e) = this.inner_error.take() {
                this.ended = true;
                return Poll::Ready(Some(Err(e)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            // Room for a typical re-encoded event without regrowing.
            let mut out = Vec::with_capacity(512);
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if let Err(e) = this.sse.feed(&data) {
                        this.ended = true;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    if let Err(e) = this.take_ready(cx, data.len()) {
                        this.ended = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Poll::Ready(None) => {
                    this.sse.finish();
                    this.ended = true;
                }
            }
            let mut handled = this.handle(&mut out);
            this.sse.clear();
            if this.ended && handled.is_ok() {
                handled = this.finish(&mut out);
            }
            if let Err(msg) = handled {
                this.ended = true;
                if out.is_empty() {
                    return Poll::Ready(Some(Err(Box::new(StreamError(msg)))));
                }
                // Deliver what came before the error; the error follows.
                this.pending_error = Some(msg);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pending_error.is_none()
    }
}

/// Converts a complete JSON response from `upstream`'s format to `client`'s.
/// Returns the body and the usage it states.
pub fn json_response(
    upstream: Wire,
    client: Wire,
    body: &[u8],
    client_model: &str,
    created: u64,
    responses: Option<&crate::responses::Echo>,
) -> Result<(Vec<u8>, Option<Usage>), String> {
    let canonical: ot::ChatResponse = match upstream {
        Wire::OpenAi | Wire::Responses | Wire::Completions | Wire::Tokens(_) => {
            serde_json::from_slice(body).map_err(|e| e.to_string())?
        }
        Wire::Gemini => {
            let r: gemini::GenerateResponse =
                serde_json::from_slice(body).map_err(|e| e.to_string())?;
            gemini::response(r, client_model, created)
        }
        Wire::Anthropic => {
            let r: at::MessagesResponse =
                serde_json::from_slice(body).map_err(|e| e.to_string())?;
            outbound::response(r, created)
        }
    };
    let usage = canonical.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    });
    let out = match (client, responses) {
        (Wire::Responses, Some(echo)) => {
            serde_json::to_vec(&crate::responses::output::response(&canonical, echo))
        }
        (Wire::Completions, _) => {
            serde_json::to_vec(&crate::completions::response(&canonical, client_model))
        }
        (Wire::OpenAi | Wire::Gemini | Wire::Responses | Wire::Tokens(_), _) => {
            serde_json::to_vec(&canonical)
        }
        (Wire::Anthropic, _) => serde_json::to_vec(&inbound::response(canonical, client_model)),
    }
    .expect("serializing to a Vec cannot fail");
    Ok((out, usage))
}

/// The human message of an upstream error body, whatever its format.
pub fn error_message(wire: Wire, body: &[u8]) -> String {
    match wire {
        // Gemini's error body has the same `error.message`.
        Wire::OpenAi | Wire::Gemini | Wire::Responses | Wire::Completions | Wire::Tokens(_) => {
            serde_json::from_slice::<ot::ErrorBody>(body)
                .map(|e| e.error.message)
                .ok()
        }
        Wire::Anthropic => serde_json::from_slice::<at::ErrorBody>(body)
            .map(|e| e.error.message)
            .ok(),
    }
    .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned())
}

/// An upstream error body re-stated in the client's format (status kept).
pub fn error_body(upstream: Wire, client: Wire, status: u16, body: &[u8]) -> Option<Vec<u8>> {
    // The same error shape: relayed as it is.
    let openai_error = |w| {
        matches!(
            w,
            Wire::OpenAi | Wire::Responses | Wire::Completions | Wire::Tokens(_)
        )
    };
    if upstream == client || (openai_error(upstream) && openai_error(client)) {
        return None;
    }
    let message = error_message(upstream, body);
    Some(
        match client {
            Wire::Anthropic => serde_json::to_vec(&inbound::error_body(status, message)),
            Wire::OpenAi | Wire::Gemini | Wire::Responses | Wire::Completions | Wire::Tokens(_) => {
                serde_json::to_vec(&serde_json::json!({
                    "error": {"message": message, "type": "upstream_error", "param": null,
                              "code": format!("upstream_{status}")}
                }))
            }
        }
        .expect("serializing to a Vec cannot fail"),
    )
}
