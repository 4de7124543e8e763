//! The request path in process: the API router (no sockets) or
//! `proxy::serve` directly, over a real configuration, with the workspace's
//! mock upstream as the only thing outside. Admission (keys, model scopes,
//! rate limits, stream permits), attempts (retries past a dead target),
//! delivery (format conversion both ways, streams with usage), accounting
//! (metrics) and the agent hub's chats and instructions.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_server::app::App;
use tower::ServiceExt;

/// An App over `toml` (with `{up}` replaced by the mock upstream's address).
async fn app(toml: &str) -> Arc<App> {
    let up = mock_upstream::spawn().await;
    let text = toml.replace("{up}", &up.to_string());
    let config = sluice_core::config::parse_whole(&text, "test.toml", &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let keys = sluice_server::admin_keys::load(&config).expect("keys");
    let source = sluice_server::reload::Source {
        path: None,
        listen: None,
        admin_listen: None,
        moves: tokio::sync::mpsc::unbounded_channel().0,
    };
    App::new(config, sluice_server::LogControl::fixed(), keys, source).expect("an app")
}

const MODELS: &str = r#"
[routing]
max_attempts = 3
backoff_base_ms = 1
backoff_max_ms = 2

[[providers]]
name = "up"
kind = "openai"
base_url = "http://{up}/v1"
api_key = "sk-up"

[[providers]]
name = "dead"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
connect_timeout_ms = 200

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "http://{up}/v1"
api_key = "sk-ant"

[[models]]
name = "gpt"
targets = [{ provider = "up", model = "gpt-4o-mini" }]

[[models]]
name = "flaky"
targets = [{ provider = "dead", model = "x" }]
fallbacks = ["gpt"]

[[models]]
name = "claude"
targets = [{ provider = "claude", model = "claude-x" }]
"#;

async fn call(
    app: &Arc<App>,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut req = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body.to_string())).expect("a request");
    let resp = sluice_server::routes::api(app.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("a whole body").to_bytes();
    (parts.status, parts.headers, bytes)
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello"}]})
}

#[tokio::test]
async fn admission_keys_scopes_rate_limits_and_stream_permits() {
    let hash = |t: &str| sluice_core::auth::token_hash_hex(t);
    let keys = format!(
        "[[keys]]\nname = \"a\"\nsha256 = \"{}\"\nmodels = [\"gpt\"]\nrpm = 2\n\
         [[keys]]\nname = \"s\"\nsha256 = \"{}\"\nmax_streams = 1\n",
        hash("sk-a"),
        hash("sk-s")
    );
    let app = app(&format!("{MODELS}{keys}")).await;
    let a = [("authorization", "Bearer sk-a")];

    let (status, _, body) = call(&app, "/v1/chat/completions", &[], chat("gpt", false)).await;
    assert_eq!(status, 401);
    assert_eq!(json_of(&body)["error"]["code"], "invalid_api_key");

    let (status, _, body) = call(&app, "/v1/chat/completions", &a, chat("claude", false)).await;
    assert_eq!(status, 403, "the key may use gpt only");
    assert_eq!(json_of(&body)["error"]["code"], "model_not_allowed");

    let (status, _, _) = call(&app, "/v1/chat/completions", &a, chat("gpt", false)).await;
    assert_eq!(status, 200);
    let (status, _, _) = call(&app, "/v1/chat/completions", &a, chat("gpt", false)).await;
    assert_eq!(
        status, 200,
        "the refused request took nothing: the second of rpm = 2"
    );
    let (status, headers, body) = call(&app, "/v1/chat/completions", &a, chat("gpt", false)).await;
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert!(headers.contains_key("retry-after"));

    // One stream open at a time for key "s": the second waits for none.
    let s = [("authorization", "Bearer sk-s")];
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-s")
        .body(Body::from(chat("gpt", true).to_string()))
        .expect("a request");
    let open = sluice_server::routes::api(app.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    assert_eq!(open.status(), 200);
    let (status, _, body) = call(&app, "/v1/chat/completions", &s, chat("gpt", true)).await;
    assert_eq!(status, 429);
    assert_eq!(
        json_of(&body)["error"]["code"],
        "concurrency_limit_exceeded"
    );
    drop(open); // the client went away: the permit is released
    let (status, _, _) = call(&app, "/v1/chat/completions", &s, chat("gpt", true)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn attempts_retry_past_a_dead_target() {
    let app = app(MODELS).await;
    let (status, headers, body) =
        call(&app, "/v1/chat/completions", &[], chat("flaky", false)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["x-sluice-attempts"], "2");
    let metrics = app.metrics.encode();
    for series in [
        "sluice_upstream_errors_total{provider=\"dead\",code=\"upstream_unreachable\"} 1",
        "sluice_upstream_attempts_total{model=\"flaky\",provider=\"dead\",outcome=\"failure\"} 1",
        "sluice_upstream_attempts_total{model=\"gpt\",provider=\"up\",outcome=\"success\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

#[tokio::test]
async fn delivery_converts_both_ways_and_streams_with_usage() {
    let app = app(MODELS).await;
    // An Anthropic client on an OpenAI target.
    let req =
        json!({"model": "gpt", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, body) = call(&app, "/v1/messages", &[], req).await;
    assert_eq!(status, 200);
    let v = json_of(&body);
    assert_eq!(v["type"], "message");
    assert!(
        v["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    assert!(
        v["usage"]["output_tokens"].as_u64().is_some_and(|n| n > 0),
        "{v}"
    );

    // An OpenAI client on an Anthropic target, streamed.
    let mut req = chat("claude", true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, _, body) = call(&app, "/v1/chat/completions", &[], req).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let usage = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find_map(|v| v["usage"]["completion_tokens"].as_u64());
    assert!(usage.is_some_and(|n| n > 0), "{text}");

    // The upstream's refusal, restated for an Anthropic client.
    let req =
        json!({"model": "gpt", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let app2 = self::app(&MODELS.replace("gpt-4o-mini", "status-400")).await;
    let (status, _, body) = call(&app2, "/v1/messages", &[], req).await;
    assert_eq!(status, 400);
    assert_eq!(json_of(&body)["type"], "error", "Anthropic's error shape");

    // Settled: the tokens were counted for the model and provider.
    let metrics = app.metrics.encode();
    assert!(metrics.contains("model=\"claude\""), "{metrics}");
}

#[tokio::test]
async fn the_hub_runs_chats_through_the_request_path_and_routes_instructions() {
    let app = app(&format!("{MODELS}\n[agents]\n")).await;
    let hub = app.hub.clone().expect("the hub is on");
    let (agent, mut rx, _kick) = hub.register("a-1".into(), vec!["g".into()], (vec![], vec![]));

    sluice_hub::chat::start(
        sluice_server::hub_gateway(app.clone()),
        agent.clone(),
        "c1".into(),
        chat("gpt", false),
        None,
    );
    let mut kinds = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        let sluice_hub::Outbound::Text(t) = frame else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).expect("a JSON frame");
        assert_eq!(v["id"], "c1");
        kinds.push(v["type"].as_str().unwrap_or("").to_owned());
        if v["type"] != "chat.chunk" {
            break;
        }
    }
    assert!(
        kinds.len() > 1 && kinds[..kinds.len() - 1].iter().all(|k| k == "chat.chunk"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("chat.done"),
        "{kinds:?}"
    );
    assert!(
        app.metrics
            .encode()
            .contains("route=\"/v1/agents/connect#chat\""),
        "chats are counted like any request"
    );

    // An instruction reaches the agent; its result completes the record.
    let id = hub.new_instruction_id();
    hub.send_local(&agent, id.clone(), &json!({"do": "x"}))
        .expect("queued");
    let frame = rx.recv().await.expect("the instruction");
    assert!(matches!(frame, sluice_hub::Outbound::Instruction(_)));
    hub.agent_reply(
        &agent,
        &id,
        sluice_hub::Status::Completed,
        Some(json!({"ok": true})),
    );
    let status = hub
        .wait(&id, sluice_hub::Status::Completed, Duration::from_secs(1))
        .await;
    assert_eq!(status, Some(sluice_hub::Status::Completed));
    assert_eq!(
        hub.record_view(&id).expect("a record")["result"],
        json!({"ok": true})
    );
}
