//! One in-process call: a request built as a client would send it, taken
//! through the API router, and its answer read whole or event by event.

use axum::body::Body;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use serde_json::json;
use sluice_providers::sse::Decoder;
use tower::ServiceExt;

/// What a call carries besides its body.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Sent as `Authorization: Bearer …` (needed when `[[keys]]` are set);
    /// `None` uses the gateway's default key, if it has one.
    pub api_key: Option<String>,
    /// The whole call's deadline (`x-request-timeout`).
    pub timeout_ms: Option<u64>,
    /// More request headers (e.g. `x-request-id`, `traceparent`).
    pub headers: Vec<(String, String)>,
}

/// An answer: the HTTP status the request would have had, and its body
/// (the OpenAI JSON, or the error JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// An error made at the boundary, in the gateway's error shape.
    pub fn error(status: u16, code: &str, message: impl std::fmt::Display) -> Self {
        let body = json!({"error": {
            "message": message.to_string(),
            "type": code,
            "code": code,
        }});
        Self {
            status,
            body: Bytes::from(body.to_string()),
        }
    }

    /// The error's `code` (or `type`) when the body is an error object.
    pub fn error_code(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        let e = v.get("error")?;
        let code = e
            .get("code")
            .and_then(|c| c.as_str())
            .or_else(|| e.get("type").and_then(|t| t.as_str()))?;
        Some(code.to_owned())
    }

    /// The error's message when the body is an error object.
    pub fn error_message(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        let m = v.get("error")?.get("message")?.as_str()?;
        Some(m.to_owned())
    }
}

/// A POST of `body` (JSON) to `path`, as a client would send it.
pub(super) fn request(
    path: &str,
    body: Bytes,
    opts: &Options,
    default_key: Option<&str>,
) -> Result<Request<Body>, Reply> {
    let bad = |m: String| Reply::error(400, "invalid_request_error", m);
    if !path.starts_with('/') {
        return Err(bad(format!("path '{path}' must start with '/'")));
    }
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(CONTENT_TYPE, "application/json");
    if let Some(k) = opts.api_key.as_deref().or(default_key) {
        let v = HeaderValue::try_from(format!("Bearer {k}"))
            .map_err(|_| bad("the API key is not a valid header value".into()))?;
        b = b.header(AUTHORIZATION, v);
    }
    if let Some(ms) = opts.timeout_ms {
        b = b.header("x-request-timeout", ms.to_string());
    }
    for (n, v) in &opts.headers {
        let name = HeaderName::try_from(n.as_str())
            .map_err(|_| bad(format!("'{n}' is not a header name")))?;
        let value = HeaderValue::try_from(v.as_str())
            .map_err(|_| bad(format!("the value of header '{n}' is not valid")))?;
        b = b.header(name, value);
    }
    b.body(Body::from(body))
        .map_err(|e| bad(format!("cannot build the request: {e}")))
}

/// Takes a request through the router and reads the whole answer.
pub(super) async fn call(router: axum::Router, req: Request<Body>) -> Reply {
    let resp = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    match resp.into_body().collect().await {
        Ok(b) => Reply {
            status,
            body: b.to_bytes(),
        },
        Err(e) => Reply::error(502, "upstream_error", format!("the answer broke off: {e}")),
    }
}

/// The body with `"stream": true` set (a body that is not a JSON object
/// goes as it is, for the gateway to refuse with its usual error).
pub fn streaming_body(body: &[u8]) -> Bytes {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(mut m) if m.get("stream") != Some(&serde_json::Value::Bool(true)) => {
            m.insert("stream".into(), serde_json::Value::Bool(true));
            Bytes::from(serde_json::Value::Object(m).to_string())
        }
        _ => Bytes::copy_from_slice(body),
    }
}

/// The largest single event a stream may carry.
const MAX_EVENT: usize = 16 << 20;

/// A streamed answer, event by event: each item is one event's `data`
/// (for chat completions, one chunk's JSON). Dropping it cancels the
/// request, upstream included.
pub struct Events {
    body: Body,
    decoder: Decoder,
    next: usize,
    done: bool,
}

impl Events {
    /// Starts a streamed call: an answer that is not an event stream (an
    /// error, or a body that did not ask to stream) comes back whole.
    pub(super) async fn open(router: axum::Router, req: Request<Body>) -> Result<Self, Reply> {
        let resp = match router.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let is_sse = resp
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !is_sse || !resp.status().is_success() {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Reply { status, body });
        }
        Ok(Self {
            body: resp.into_body(),
            decoder: Decoder::new(MAX_EVENT),
            next: 0,
            done: false,
        })
    }

    /// The next event's data; `None` at the end (`[DONE]` or the end of
    /// the body). A stream that breaks off yields one error.
    pub async fn next(&mut self) -> Option<Result<Bytes, Reply>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(ev) = self.decoder.events().get(self.next) {
                self.next += 1;
                if ev.data == "[DONE]" {
                    self.done = true;
                    return None;
                }
                if ev.data.is_empty() {
                    continue;
                }
                return Some(Ok(Bytes::copy_from_slice(ev.data.as_bytes())));
            }
            self.decoder.clear();
            self.next = 0;
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data()
                        && let Err(e) = self.decoder.feed(&data)
                    {
                        self.done = true;
                        return Some(Err(Reply::error(502, "upstream_error", e)));
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(Reply::error(
                        502,
                        "upstream_error",
                        format!("the stream broke off: {e}"),
                    )));
                }
                None => {
                    self.decoder.finish();
                    if self.decoder.events().is_empty() {
                        self.done = true;
                    }
                }
            }
        }
    }
}
