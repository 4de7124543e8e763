//! A fast OpenAI-compatible upstream for Sluice's tests and benchmarks.
//!
//! `mock-upstream [ADDR]` (default 127.0.0.1:0) prints `listening on ADDR`;
//! as a library, [`spawn`] serves on a loopback port of the caller's runtime
//! (the providers' conformance suite uses it).
//! The request's `model` chooses the behaviour, so one server covers every case:
//!
//! - any name: a small chat completion (or SSE stream with `"stream": true`),
//!   or an embedding for `/v1/embeddings`; the reply echoes the model name.
//! - `status-NNN`: answers NNN with an OpenAI error body (and `retry-after: 7` on 429).
//! - `slow-NNN`: waits NNN ms before the response head.
//! - `drip-NNN`: streams a chunk every NNN ms, 200 chunks; a client that goes
//!   away is counted in `cancelled`.
//! - `reset`: starts a stream, then drops the connection mid-way.
//! - `tokens-N`: a streamed answer of N tokens (OpenAI and Anthropic formats).
//! - `/v1/completions`: a legacy text completion (or its stream) echoing the prompt.
//! - `/v1/messages/count_tokens`: `{"input_tokens": 1000 + messages}`.
//! - `broken-nodone`, `broken-json`, `broken-garbage`, `broken-badsse`,
//!   `broken-wrongformat`, `echo-key-400`: misbehaving answers (see `broken`).
//!
//! `GET /_stats` → `{"requests":N,"cancelled":N,"failed":N}`; `GET /_last` → the
//! last request's headers and raw body, to check what the gateway forwarded.
//!
//! `POST /_control` sets faults for every later request (fields optional):
//! `{"fail_rate":0.3,"fail_next":2,"fail_status":503,"retry_after":"1",
//!   "hang_ms":5000,"first_chunk_delay_ms":3000,"pace_us":1000}` — fail a steady
//! fraction of requests or the next N, answer after a delay, hold a stream's
//! first chunk, or pause between a stream's events (benchmarks: one event per read).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod formats;
mod media;

use formats::{anthropic, gemini};

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    last: Mutex<Value>,
    control: Mutex<Control>,
}

#[derive(Clone, Default)]
struct Control {
    fail_rate: f64,
    fail_next: u64,
    fail_status: u16,
    retry_after: Option<String>,
    hang_ms: u64,
    first_chunk_delay_ms: u64,
}

impl Control {
    fn update(&mut self, v: &Value) {
        if let Some(x) = v["fail_rate"].as_f64() {
            self.fail_rate = x;
        }
        if let Some(x) = v["fail_next"].as_u64() {
            self.fail_next = x;
        }
        if let Some(x) = v["fail_status"].as_u64() {
            self.fail_status = x as u16;
        }
        if let Some(x) = v.get("retry_after") {
            self.retry_after = x.as_str().map(str::to_owned);
        }
        if let Some(x) = v["hang_ms"].as_u64() {
            self.hang_ms = x;
        }
        if let Some(x) = v["first_chunk_delay_ms"].as_u64() {
            self.first_chunk_delay_ms = x;
        }
        if let Some(x) = v["pace_us"].as_u64() {
            PACE_US.store(x, Ordering::Relaxed);
        }
    }

    /// Whether request number `n` (0-based) fails: the next N, then a steady
    /// fraction spread evenly (deterministic, no RNG).
    fn should_fail(&mut self, n: u64) -> bool {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return true;
        }
        let r = self.fail_rate;
        r > 0.0 && ((n + 1) as f64 * r).floor() > (n as f64 * r).floor()
    }
}

/// Serves on `listener` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener) {
    let stats = Arc::new(Stats::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stats = stats.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, stats.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Starts a mock upstream on a loopback port of the current runtime.
pub async fn spawn() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(serve(listener));
    addr
}

async fn handle(req: Request<Incoming>, stats: Arc<Stats>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let method = req.method().to_string();
    match path.as_str() {
        "/_stats" => {
            return Ok(json_resp(
                200,
                &json!({
                    "requests": stats.requests.load(Ordering::SeqCst),
                    "cancelled": stats.cancelled.load(Ordering::SeqCst),
                    "failed": stats.failed.load(Ordering::SeqCst),
                }),
            ));
        }
        "/v1/traces" => {
            // An OTLP/HTTP sink for benchmarks: accept and drop the spans (an
            // empty protobuf message is a valid ExportTraceServiceResponse).
            let _ = req.into_body().collect().await;
            let mut r = Response::new(full(Vec::new()));
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/x-protobuf"),
            );
            return Ok(r);
        }
        "/_control" => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let v: Value = body
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null);
            stats.control.lock().expect("lock").update(&v);
            return Ok(json_resp(200, &json!({"ok": true})));
        }
        "/_last" => {
            let last = stats.last.lock().expect("lock").clone();
            return Ok(json_resp(200, &last));
        }
        _ => {}
    }
    let n = stats.requests.fetch_add(1, Ordering::SeqCst);
    let (control, fail) = {
        let mut c = stats.control.lock().expect("lock");
        let fail = c.should_fail(n);
        (c.clone(), fail)
    };
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(json_resp(400, &json!({"error": "body"}))),
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    *stats.last.lock().expect("lock") = json!({
        "path": path,
        "query": query,
        "method": method,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let model = parsed["model"].as_str().unwrap_or("").to_owned();
    let stream = parsed["stream"].as_bool().unwrap_or(false);

    if control.hang_ms > 0 {
        tokio::time::sleep(Duration::from_millis(control.hang_ms)).await;
    }
    if fail {
        stats.failed.fetch_add(1, Ordering::SeqCst);
        let code = if control.fail_status == 0 {
            503
        } else {
            control.fail_status
        };
        let mut r = json_resp(
            code,
            &json!({"error": {"message": format!("injected failure {code}"), "type": "mock_error", "code": "injected"}}),
        );
        if let Some(ra) = &control.retry_after
            && let Ok(v) = hyper::header::HeaderValue::from_str(ra)
        {
            r.headers_mut().insert("retry-after", v);
        }
        return Ok(r);
    }
    let wire = if path.ends_with("/messages") {
        Wire::Anthropic
    } else if path.contains(':') {
        Wire::Gemini
    } else {
        Wire::OpenAi
    };
    let named = match wire {
        Wire::Gemini => path
            .rsplit_once("/models/")
            .map_or("", |(_, m)| m.split(':').next().unwrap_or("")),
        _ => model.as_str(),
    };
    let stream = stream || path.contains(":streamGenerateContent");
    if let Some(r) = broken(named, wire, &headers, stream) {
        return Ok(r);
    }
    if path.ends_with("/messages/count_tokens") {
        // An exact count the tests can tell from an estimate: 1000 + messages.
        let n = 1000 + parsed["messages"].as_array().map_or(0, Vec::len);
        return Ok(json_resp(200, &json!({"input_tokens": n})));
    }
    if path.ends_with("/messages") {
        return Ok(anthropic(&parsed, &headers, stream));
    }
    if let Some((_, action)) = path.rsplit_once(':') {
        let gemini_model = path
            .rsplit_once("/models/")
            .map_or("", |(_, m)| m.split(':').next().unwrap_or(""));
        return Ok(gemini(
            &parsed,
            &headers,
            gemini_model,
            action == "streamGenerateContent",
        ));
    }
    if let Some(code) = model
        .strip_prefix("status-")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let mut r = json_resp(
            code,
            &json!({"error": {"message": format!("mock upstream says {code}"), "type": "mock_error", "code": "mock"}}),
        );
        if code == 429 {
            r.headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from_static("7"));
        }
        return Ok(r);
    }
    if let Some(ms) = model
        .strip_prefix("slow-")
        .and_then(|c| c.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path.ends_with("/responses") {
        return Ok(formats::responses(&parsed, stream));
    }
    if let Some(r) = media::answer(&path, &parsed, &body) {
        return Ok(r);
    }
    if path.ends_with("/completions") && !path.ends_with("/chat/completions") {
        return Ok(formats::completion(&parsed, stream));
    }
    let wants_tool = parsed["tools"].as_array().is_some_and(|t| !t.is_empty())
        && parsed["messages"]
            .as_array()
            .and_then(|m| m.last())
            .is_some_and(|m| m["role"] == "user");
    if wants_tool {
        let tool = parsed["tools"][0]["function"]["name"]
            .as_str()
            .unwrap_or("f")
            .to_owned();
        return Ok(openai_tool_call(&model, &tool, stream));
    }
    if path.ends_with("/embeddings") {
        return Ok(json_resp(
            200,
            &json!({"object": "list", "model": model,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": 4, "total_tokens": 4}}),
        ));
    }
    if let Some(ms) = model
        .strip_prefix("drip-")
        .and_then(|c| c.parse::<u64>().ok())
    {
        return Ok(drip(model.clone(), Duration::from_millis(ms), stats));
    }
    if model == "reset" {
        return Ok(reset_stream(model));
    }
    if stream {
        let include_usage = parsed["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false);
        let mut out = String::with_capacity(1024);
        for (i, word) in words(&parsed, &["Hello", " from", " the", " mock", " upstream"])
            .iter()
            .enumerate()
        {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": word})
            } else {
                json!({"content": word})
            };
            out.push_str(&sse(&chunk(&model, delta, None)));
        }
        out.push_str(&sse(&chunk(&model, json!({}), Some("stop"))));
        if include_usage {
            out.push_str(&sse(
                &json!({"id": "chatcmpl-up", "object": "chat.completion.chunk",
                "created": 1, "model": model, "choices": [],
                "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}}),
            ));
        }
        out.push_str("data: [DONE]\n\n");
        if control.first_chunk_delay_ms > 0 {
            let delay = Duration::from_millis(control.first_chunk_delay_ms);
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from(out)))).await;
            });
            return Ok(event_stream(rx));
        }
        let mut r = Response::new(framed(&out));
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        return Ok(r);
    }
    Ok(json_resp(
        200,
        &json!({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock upstream"},
                "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
        }),
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Wire {
    OpenAi,
    Anthropic,
    Gemini,
}

/// Misbehaving answers, chosen by model name, in the request's own format:
/// `broken-nodone` (a stream that stops before its end marker),
/// `broken-json` (a JSON body to a stream request), `broken-garbage` (a 200
/// HTML page), `broken-badsse` (an event whose data is not JSON),
/// `broken-wrongformat` (OpenAI SSE to an Anthropic request) and
/// `echo-key-400` (a 400 quoting the credential it was sent).
fn broken(
    model: &str,
    wire: Wire,
    headers: &serde_json::Map<String, Value>,
    stream: bool,
) -> Option<Response<Body>> {
    let sse_resp = |text: String| {
        let mut r = Response::new(full(text.into_bytes()));
        r.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        r
    };
    let openai_chunks = || {
        sse(&chunk(
            model,
            json!({"role": "assistant", "content": "Half"}),
            None,
        )) + &sse(&chunk(model, json!({"content": " an answer"}), None))
    };
    match model {
        "broken-nodone" if stream => Some(sse_resp(match wire {
            Wire::OpenAi => openai_chunks(),
            Wire::Anthropic => concat!(
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"x\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
                "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Half an answer\"}}\n\n",
            )
            .to_owned(),
            Wire::Gemini => "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Half an answer\"}]},\"index\":0}]}\r\n\r\n".to_owned(),
        })),
        "broken-json" if stream => Some(json_resp(
            200,
            &json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "not a stream"}, "finish_reason": "stop"}]}),
        )),
        "broken-garbage" => {
            let mut r = Response::new(full(b"<html><body>502 Bad Gateway (nginx)</body></html>".to_vec()));
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/html"),
            );
            Some(r)
        }
        "broken-badsse" if stream => Some(sse_resp(
            openai_chunks() + "data: {not json\n\ndata: [DONE]\n\n",
        )),
        "broken-wrongformat" if stream && wire == Wire::Anthropic => {
            Some(sse_resp(openai_chunks() + "data: [DONE]\n\n"))
        }
        "echo-key-400" => {
            let sent = headers
                .get("authorization")
                .or_else(|| headers.get("x-api-key"))
                .or_else(|| headers.get("x-goog-api-key"))
                .and_then(Value::as_str)
                .unwrap_or("");
            Some(json_resp(
                400,
                &json!({"error": {"message": format!("invalid request made with credentials {sent}"), "type": "invalid_request_error", "code": "bad"}}),
            ))
        }
        _ => None,
    }
}

/// A tool call in the OpenAI format, streamed in pieces or whole.
fn openai_tool_call(model: &str, tool: &str, stream: bool) -> Response<Body> {
    let call_id = "call_mock_1";
    if !stream {
        return json_resp(
            200,
            &json!({"id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": tool, "arguments": "{\"city\":\"Paris\"}"}}]},
                    "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}),
        );
    }
    let mut out = String::new();
    out.push_str(&sse(&chunk(model, json!({"role": "assistant", "content": null,
        "tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": tool, "arguments": ""}}]}), None)));
    for piece in ["{\"city\":", "\"Paris\"}"] {
        out.push_str(&sse(&chunk(
            model,
            json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
            None,
        )));
    }
    out.push_str(&sse(&chunk(model, json!({}), Some("tool_calls"))));
    out.push_str(&sse(&json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}})));
    out.push_str("data: [DONE]\n\n");
    let mut r = Response::new(full(out.into_bytes()));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// The words of a streamed answer: the defaults, or N copies of " tok" for a
/// model named `tokens-N` (benchmarks ask for a given length that way, since
/// the model name survives every translation).
fn words(req: &Value, default: &[&'static str]) -> Vec<&'static str> {
    match req["model"]
        .as_str()
        .and_then(|m| m.strip_prefix("tokens-"))
        .and_then(|n| n.parse::<usize>().ok())
    {
        Some(n) if n > 0 => vec![" tok"; n.min(4096)],
        _ => default.to_vec(),
    }
}

fn chunk(model: &str, delta: Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The pause between the events of a stream (`/_control` `pace_us`; 0:
/// none, events go out as fast as the connection takes them).
static PACE_US: AtomicU64 = AtomicU64::new(0);

/// An SSE text sent one event per body frame, as model APIs stream; paced
/// when `pace_us` is set, so that each event is its own write.
fn framed(text: &str) -> Body {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = text
        .split_inclusive("\n\n")
        .map(|ev| Ok(Frame::data(Bytes::copy_from_slice(ev.as_bytes()))))
        .collect();
    let pace = PACE_US.load(Ordering::Relaxed);
    if pace == 0 {
        return StreamBody::new(futures_util::stream::iter(frames)).boxed();
    }
    let pace = Duration::from_micros(pace);
    let paced = futures_util::stream::unfold(
        (frames.into_iter(), true),
        move |(mut it, first)| async move {
            let next = it.next()?;
            if !first {
                tokio::time::sleep(pace).await;
            }
            Some((next, (it, false)))
        },
    );
    StreamBody::new(paced).boxed()
}

fn full(b: Vec<u8>) -> Body {
    Full::new(Bytes::from(b)).map_err(|n| match n {}).boxed()
}

fn json_resp(status: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string().into_bytes()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn event_stream(rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>) -> Response<Body> {
    let stream = futures_stream(rx);
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// Streams 200 chunks at `every`; counts a cancel when the receiver is gone.
fn drip(model: String, every: Duration, stats: Arc<Stats>) -> Response<Body> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..200 {
            let ev = sse(&chunk(&model, json!({"content": format!(" t{i}")}), None));
            if tx.send(Ok(Frame::data(Bytes::from(ev)))).await.is_err() {
                stats.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            tokio::time::sleep(every).await;
        }
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
            .await;
    });
    event_stream(rx)
}

/// Sends two chunks, then fails the body so hyper cuts the connection.
fn reset_stream(model: String) -> Response<Body> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for i in 0..2 {
            let ev = sse(&chunk(&model, json!({"content": format!(" r{i}")}), None));
            let _ = tx.send(Ok(Frame::data(Bytes::from(ev)))).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tx.send(Err(std::io::Error::other("injected reset"))).await;
    });
    event_stream(rx)
}

fn futures_stream(
    mut rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
