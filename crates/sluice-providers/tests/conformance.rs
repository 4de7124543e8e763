//! The adapter conformance suite: the same checks run over every provider
//! adapter, for an OpenAI client and for an Anthropic client — a plain
//! answer, a stream, usage, a tool call both ways, and an upstream error
//! restated in the client's format.
//!
//! Each case goes the way the server takes it: [`Adapter::prepare`], the
//! pooled transport to a real HTTP upstream (the workspace's mock upstream
//! speaks OpenAI, Anthropic and Gemini), then the delivery the wire format
//! decides (passthrough, stream re-encoding, or whole-body conversion).
//! A new adapter is added to [`KINDS`] and must pass everything here.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_core::config::{self, ProviderConfig};
use sluice_core::request::{self, Operation};
use sluice_providers::BoxBody;
use sluice_providers::adapter::{Adapter, Outgoing, Prepared};
use sluice_providers::translate::{self, Delivery, StreamBody, UsageCell, Wire};
use sluice_providers::transport;

/// Every provider kind, with the extra settings its entry needs.
const KINDS: &[(&str, &str)] = &[
    ("openai", "base_url = \"http://{addr}/v1\""),
    (
        "azure",
        "base_url = \"http://{addr}/openai/deployments/d\"\napi_version = \"2024-10-21\"",
    ),
    ("vllm", "base_url = \"http://{addr}/v1\""),
    ("anthropic", "base_url = \"http://{addr}/v1\""),
    ("gemini", "base_url = \"http://{addr}/v1beta\""),
    ("mock", "tokens_per_response = 5"),
];

const CLIENTS: [Wire; 2] = [Wire::OpenAi, Wire::Anthropic];

fn provider(kind: &str, extra: &str, addr: std::net::SocketAddr) -> ProviderConfig {
    let key = if kind == "mock" {
        ""
    } else {
        "api_key = \"sk-test\"\n"
    };
    let text = format!(
        "[[providers]]\nname = \"p\"\nkind = \"{kind}\"\n{key}{}\n\
         [[models]]\nname = \"m\"\ntargets = [{{ provider = \"p\" }}]\n",
        extra.replace("{addr}", &addr.to_string())
    );
    let mut cfg = config::parse(&text, "conformance.toml", &|_| None)
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    cfg.providers.remove(0)
}

/// A client request in its own format.
fn client_body(client: Wire, model: &str, stream: bool, tools: bool) -> Value {
    let mut v = match client {
        Wire::Anthropic => json!({
            "model": model, "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        }),
        _ => json!({
            "model": model, "stream": stream,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        }),
    };
    if stream && client == Wire::OpenAi {
        v["stream_options"] = json!({"include_usage": true});
    }
    if tools {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        v["tools"] = match client {
            Wire::Anthropic => {
                json!([{"name": "get_weather", "description": "weather", "input_schema": schema}])
            }
            _ => json!([{"type": "function", "function":
                {"name": "get_weather", "description": "weather", "parameters": schema}}]),
        };
    }
    v
}

/// What a client understood of an answer, whatever its format.
#[derive(Debug, Default)]
struct Answer {
    status: u16,
    text: String,
    tool: Option<(String, String)>,
    usage: Option<(u64, u64)>,
    /// The format's end marker arrived (streams), or the body was whole.
    finished: bool,
    error: Option<String>,
}

/// One request through `adapter`, delivered to a `client` the way the
/// server delivers it.
async fn exchange(
    adapter: &Adapter,
    p: &ProviderConfig,
    client: Wire,
    model: &str,
    body: &Value,
) -> Answer {
    let raw = Bytes::from(serde_json::to_vec(body).expect("json"));
    let native_peek = request::peek(&raw, Operation::Chat).expect("peek");
    let (canonical, native) = match client {
        Wire::Anthropic => (
            sluice_providers::anthropic::inbound::canonical(&raw).expect("an Anthropic request"),
            Some(sluice_providers::adapter::Native {
                wire: Wire::Anthropic,
                body: &raw,
                model_span: native_peek.model_span.clone(),
            }),
        ),
        _ => (raw.clone(), None),
    };
    let peek = request::peek(&canonical, Operation::Chat).expect("peek");
    let id = HeaderValue::from_static("req-1");
    let out = Outgoing {
        op: Operation::Chat,
        body: &canonical,
        peek: &peek,
        native,
        request_id: &id,
        content_type: None,
        untranslatable: None,
    };
    let (status, upstream_body): (u16, BoxBody) =
        match adapter.prepare(&out, p, model).await.expect("prepared") {
            Prepared::Local(resp, _) => (resp.status().as_u16(), resp.into_body()),
            Prepared::Http(req) => {
                let resp = transport::send(&transport::client_for(p), req)
                    .await
                    .expect("the upstream answers");
                let status = resp.status().as_u16();
                let body = resp.into_body().boxed_unsync();
                (status, body)
            }
        };
    let wire = adapter.wire(Operation::Chat);
    let stream = peek.stream;
    let success = (200..300).contains(&status);
    let delivered = match wire.delivery(client, stream, success, true) {
        Delivery::Passthrough => collect(upstream_body).await,
        Delivery::Stream => {
            let cell = Arc::new(UsageCell::default());
            let s = StreamBody::new(upstream_body, wire, client, model, true, 1, cell, None);
            collect(s.boxed_unsync()).await
        }
        Delivery::Whole => {
            let bytes = collect(upstream_body).await;
            if !success {
                translate::error_body(wire, client, status, &bytes).map_or(bytes, Bytes::from)
            } else if wire == client {
                bytes
            } else {
                let (converted, _) = translate::json_response(wire, client, &bytes, model, 1, None)
                    .expect("a convertible answer");
                Bytes::from(converted)
            }
        }
    };
    let mut a = if stream && success {
        read_stream(client, &delivered)
    } else {
        read_whole(client, &delivered)
    };
    a.status = status;
    a
}

async fn collect(body: BoxBody) -> Bytes {
    body.collect().await.expect("a whole body").to_bytes()
}

fn read_whole(client: Wire, body: &[u8]) -> Answer {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(body));
    });
    let mut a = Answer {
        finished: true,
        ..Answer::default()
    };
    if let Some(m) = v["error"]["message"].as_str() {
        a.error = Some(m.to_owned());
        return a;
    }
    match client {
        Wire::Anthropic => {
            assert_eq!(v["type"], "message", "{v}");
            for block in v["content"].as_array().expect("content blocks") {
                match block["type"].as_str() {
                    Some("text") => a.text += block["text"].as_str().unwrap_or(""),
                    Some("tool_use") => {
                        a.tool = Some((
                            block["name"].as_str().unwrap_or("").to_owned(),
                            block["input"].to_string(),
                        ))
                    }
                    other => panic!("unexpected block {other:?}"),
                }
            }
            a.usage = Some((
                v["usage"]["input_tokens"].as_u64().unwrap_or(0),
                v["usage"]["output_tokens"].as_u64().unwrap_or(0),
            ));
        }
        _ => {
            let msg = &v["choices"][0]["message"];
            a.text = msg["content"].as_str().unwrap_or("").to_owned();
            if let Some(call) = msg["tool_calls"].get(0) {
                a.tool = Some((
                    call["function"]["name"].as_str().unwrap_or("").to_owned(),
                    call["function"]["arguments"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                ));
            }
            a.usage = Some((
                v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
            ));
        }
    }
    a
}

fn read_stream(client: Wire, body: &[u8]) -> Answer {
    let text = std::str::from_utf8(body).expect("UTF-8 events");
    let mut a = Answer::default();
    let (mut prompt, mut completion) = (0, 0);
    let mut tool_name = None;
    let mut args = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            assert_eq!(client, Wire::OpenAi, "[DONE] is OpenAI's end marker");
            a.finished = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
        assert!(!a.finished, "an event after the end: {data}");
        if let Some(m) = v["error"]["message"].as_str() {
            a.error = Some(m.to_owned());
        }
        match client {
            Wire::Anthropic => match v["type"].as_str() {
                Some("message_start") => {
                    prompt = v["message"]["usage"]["input_tokens"].as_u64().unwrap_or(0)
                }
                Some("content_block_start") if v["content_block"]["type"] == "tool_use" => {
                    tool_name = v["content_block"]["name"].as_str().map(str::to_owned)
                }
                Some("content_block_delta") => {
                    a.text += v["delta"]["text"].as_str().unwrap_or("");
                    args += v["delta"]["partial_json"].as_str().unwrap_or("");
                }
                Some("message_delta") => {
                    completion = v["usage"]["output_tokens"].as_u64().unwrap_or(0);
                    prompt = v["usage"]["input_tokens"].as_u64().unwrap_or(prompt);
                }
                Some("message_stop") => a.finished = true,
                _ => {}
            },
            _ => {
                if let Some(u) = v["usage"].as_object() {
                    prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
                    completion = u["completion_tokens"].as_u64().unwrap_or(0);
                }
                let delta = &v["choices"][0]["delta"];
                a.text += delta["content"].as_str().unwrap_or("");
                if let Some(call) = delta["tool_calls"].get(0) {
                    if let Some(n) = call["function"]["name"].as_str() {
                        tool_name = Some(n.to_owned());
                    }
                    args += call["function"]["arguments"].as_str().unwrap_or("");
                }
            }
        }
    }
    a.tool = tool_name.map(|n| (n, args));
    a.usage = Some((prompt, completion));
    a
}

/// Runs `check` for every adapter and client format.
async fn each(check: impl AsyncFn(&str, Wire, &Adapter, &ProviderConfig)) {
    let addr = mock_upstream::spawn().await;
    for (kind, extra) in KINDS {
        let p = provider(kind, extra, addr);
        let adapter = Adapter::new(&p).expect("an adapter");
        for client in CLIENTS {
            check(kind, client, &adapter, &p).await;
        }
    }
}

/// A plain answer and a stream: text, usage, and (streams) the format's
/// end marker with no error event.
#[tokio::test]
async fn answers_and_streams_with_usage() {
    each(async |kind, client, adapter, p| {
        for stream in [false, true] {
            let body = client_body(client, "m-1", stream, false);
            let a = exchange(adapter, p, client, "m-1", &body).await;
            let case = format!("{kind} → {client:?} client, stream={stream}");
            assert_eq!(a.status, 200, "{case}: {a:?}");
            assert!(a.finished, "{case}: no end marker: {a:?}");
            assert!(a.error.is_none(), "{case}: {a:?}");
            assert!(!a.text.trim().is_empty(), "{case}: no text: {a:?}");
            assert!(a.tool.is_none(), "{case}: {a:?}");
            let (prompt, completion) = a.usage.expect("usage");
            assert!(
                prompt > 0 && completion > 0,
                "{case}: usage {prompt}/{completion}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn tool_calls_both_ways() {
    each(async |kind, client, adapter, p| {
        if kind == "mock" {
            return; // the built-in mock answers in text only
        }
        for stream in [false, true] {
            let body = client_body(client, "m-1", stream, true);
            let a = exchange(adapter, p, client, "m-1", &body).await;
            let case = format!("{kind} → {client:?} client, stream={stream}");
            let (name, args) = a
                .tool
                .clone()
                .unwrap_or_else(|| panic!("{case}: no tool call: {a:?}"));
            assert_eq!(name, "get_weather", "{case}");
            let args: Value = serde_json::from_str(&args)
                .unwrap_or_else(|e| panic!("{case}: arguments are not JSON ({e}): {args}"));
            assert_eq!(args["city"], "Paris", "{case}");
        }
    })
    .await;
}

#[tokio::test]
async fn upstream_errors_in_the_clients_format() {
    each(async |kind, client, adapter, p| {
        if kind == "mock" {
            return; // answers every well-formed request
        }
        let a = exchange(
            adapter,
            p,
            client,
            "status-400",
            &client_body(client, "status-400", false, false),
        )
        .await;
        let case = format!("{kind} → {client:?} client");
        assert_eq!(a.status, 400, "{case}: {a:?}");
        let message = a
            .error
            .unwrap_or_else(|| panic!("{case}: no error message"));
        assert!(message.contains("400"), "{case}: {message}");
    })
    .await;
}

#[tokio::test]
async fn embeddings_only_where_the_format_has_them() {
    let addr = mock_upstream::spawn().await;
    for (kind, extra) in KINDS {
        let p = provider(kind, extra, addr);
        let adapter = Adapter::new(&p).expect("an adapter");
        let body = Bytes::from_static(br#"{"model":"m-1","input":"hello"}"#);
        let peek = request::peek(&body, Operation::Embeddings).expect("peek");
        let id = HeaderValue::from_static("req-1");
        let out = Outgoing {
            op: Operation::Embeddings,
            body: &body,
            peek: &peek,
            native: None,
            request_id: &id,
            content_type: None,
            untranslatable: None,
        };
        let r = adapter.prepare(&out, &p, "m-1").await;
        match adapter.wire(Operation::Embeddings) {
            Wire::OpenAi => assert!(r.is_ok(), "{kind}"),
            _ => {
                let e = r.err().expect("refused");
                assert_eq!(e.status(), 400, "{kind}: {}", e.message);
            }
        }
    }
}

/// Media requests (a JSON one and a form upload) go to OpenAI-format
/// targets as they came, model rewritten, the form's boundary kept; the
/// mock answers them itself; other formats refuse them with a 400.
#[tokio::test]
async fn media_only_where_the_format_has_them() {
    use sluice_core::media::{self, Media};
    let addr = mock_upstream::spawn().await;
    let form = Bytes::from_static(
        b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF..\r\n\
          --b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nalias\r\n--b0--\r\n",
    );
    let ct = HeaderValue::from_static("multipart/form-data; boundary=b0");
    let json = Bytes::from_static(br#"{"model":"alias","input":"hello"}"#);
    let cases = [
        (
            Media::Transcription,
            &form,
            Some(&ct),
            "/audio/transcriptions",
        ),
        (Media::Moderation, &json, None, "/moderations"),
    ];
    for (kind, extra) in KINDS {
        let p = provider(kind, extra, addr);
        let adapter = Adapter::new(&p).expect("an adapter");
        for (m, body, content_type, path) in &cases {
            let peek = match content_type {
                Some(_) => media::peek_form(body, "b0", *m).expect("peek"),
                None => request::peek(body, Operation::Media(*m)).expect("peek"),
            };
            let id = HeaderValue::from_static("req-1");
            let out = Outgoing {
                op: Operation::Media(*m),
                body,
                peek: &peek,
                native: None,
                request_id: &id,
                content_type: *content_type,
                untranslatable: None,
            };
            let case = format!("{kind} {m:?}");
            match adapter.prepare(&out, &p, "real-model").await {
                Ok(Prepared::Local(resp, _)) => {
                    assert_eq!(resp.status(), 200, "{case}");
                    assert_eq!(*kind, "mock", "{case}");
                }
                Ok(Prepared::Http(req)) => {
                    assert_eq!(adapter.wire(Operation::Media(*m)), Wire::OpenAi, "{case}");
                    let resp = transport::send(&transport::client_for(&p), req)
                        .await
                        .expect("the upstream answers");
                    assert_eq!(resp.status(), 200, "{case}");
                    let last = last_request(addr).await;
                    let sent_path = last["path"].as_str().expect("a path");
                    assert!(sent_path.contains(path), "{case}: {sent_path}");
                    let sent = last["body"].as_str().expect("a body");
                    assert!(
                        sent.contains("real-model") && !sent.contains("alias"),
                        "{case}: {sent}"
                    );
                    let sent_ct = last["headers"]["content-type"].as_str().unwrap_or_default();
                    let want = content_type.map_or("application/json", |c| c.to_str().unwrap());
                    assert_eq!(sent_ct, want, "{case}");
                }
                Err(e) => {
                    assert!(
                        matches!(*kind, "anthropic" | "gemini"),
                        "{case}: {}",
                        e.message
                    );
                    assert_eq!(e.status(), 400, "{case}");
                    assert!(e.message.contains(m.route()), "{case}: {}", e.message);
                }
            }
        }
    }
}

#[tokio::test]
async fn an_anthropic_clients_own_body_goes_to_anthropic_targets() {
    let addr = mock_upstream::spawn().await;
    let p = provider("anthropic", KINDS[3].1, addr);
    assert_eq!(p.kind, sluice_core::config::ProviderKind::Anthropic);
    let adapter = Adapter::new(&p).expect("an adapter");
    // `top_k` has no OpenAI counterpart: only the client's own body keeps it.
    let mut body = client_body(Wire::Anthropic, "alias", false, false);
    body["top_k"] = json!(7);
    let a = exchange(&adapter, &p, Wire::Anthropic, "claude-x", &body).await;
    assert_eq!(a.status, 200, "{a:?}");
    let last: Value = last_request(addr).await;
    let sent: Value = serde_json::from_str(last["body"].as_str().expect("a body")).expect("json");
    assert_eq!(sent["top_k"], 7, "{sent}");
    assert_eq!(sent["model"], "claude-x", "the target's model name: {sent}");
}

/// The mock upstream's record of the last request it was sent.
async fn last_request(addr: std::net::SocketAddr) -> Value {
    let p = provider("openai", KINDS[0].1, addr);
    let req = http::Request::get(format!("http://{addr}/_last"))
        .body(http_body_util::Full::new(Bytes::new()))
        .expect("a request");
    let resp = transport::send(&transport::client_for(&p), req)
        .await
        .expect("the mock answers");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("json")
}
