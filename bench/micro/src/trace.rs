//! What tracing at sampling 1.0 adds per request in Sluice's own code: a
//! server span and one attempt span, with the attributes, event and
//! response metadata a chat completion records, ended and appended to the
//! export batch as OTLP protobuf. Sending is not measured: the export task
//! runs on another thread, against a closed port with a 50 ms export
//! timeout (so no retries), so batches fail at once and their buffers are
//! reused as in a real run.
//!
//! `cargo run --release -p sluice-micro-bench --bin trace-bench`
//!
//! Prints ns per request next to a baseline measured in the same run: one
//! `serde_json::from_slice::<Value>` of a ~1 KiB chat body.

use std::hint::black_box;

mod timing;
use timing::time;

use serde_json::{Value, json};
use sluice_core::config;

const N: u32 = 100_000;

fn main() {
    let text = "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                [[models]]\nname = \"bench\"\ntargets = [{ provider = \"up\" }]\n\
                [telemetry]\notlp_endpoint = \"http://127.0.0.1:9\"\notlp_protocol = \"http/protobuf\"\n\
                max_queue_spans = 10000000\nexport_timeout_ms = 50\n";
    let cfg = config::parse(text, "bench", &|_| None).expect("valid bench config");
    let provider = cfg.providers[0].clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let counts = prometheus_client::metrics::family::Family::default();
    let counts_view = counts.clone();
    let tracing = sluice_server::telemetry::Tracing::init(&cfg.telemetry, counts)
        .expect("starts")
        .expect("an endpoint is set");
    let body = serde_json::to_vec(&json!({
        "model": "bench",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise the attached meeting notes for the weekly report. ".repeat(14)},
        ],
    }))
    .expect("serializes");
    let headers = http::HeaderMap::new();
    let reasons = vec!["stop".to_owned()];
    let model: std::sync::Arc<str> = "bench".into();

    let base = time(N, |_| {
        black_box(serde_json::from_slice::<Value>(black_box(&body)).expect("valid"));
    });
    let spans = time(N, |_| {
        let mut server = tracing.server_span(black_box(&headers), "/v1/chat/completions");
        server.str("sluice.request_id", "0193b1c2-7d3e-7c4a-9f00-123456789abc");
        server.rename("chat", &model);
        server.str("gen_ai.operation.name", "chat");
        server.str("gen_ai.request.model", "bench");
        server.flag("sluice.stream", false);
        let mut attempt = tracing
            .attempt_span(&server, "chat", ("openai", &provider.name), &model, 1)
            .expect("sampled");
        black_box(attempt.context().traceparent());
        attempt.int("http.response.status_code", 200);
        server.event("gen_ai.first_token");
        server.float("gen_ai.server.time_to_first_token", 0.000_412);
        for s in [&mut server, &mut attempt] {
            s.str("gen_ai.response.model", "mock-model-2024");
            s.strs("gen_ai.response.finish_reasons", &reasons);
            s.int("gen_ai.usage.input_tokens", 11);
            s.int("gen_ai.usage.output_tokens", 5);
        }
        attempt.end();
        server.int("http.response.status_code", 200);
        server.int("sluice.attempts", 1);
        server.str("sluice.provider", "up");
        server.end();
    });
    // What a traced response adds on top: its model and finish reasons,
    // read from the tail of the body the client got.
    let response = bytes::Bytes::from(
        serde_json::to_vec(&json!({
            "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "mock-model-2024",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock upstream"},
                "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
        }))
        .expect("serializes"),
    );
    let meta = time(N, |_| {
        let mut tail = sluice_providers::openai::UsageTail::default();
        tail.observe(black_box(&response));
        black_box(tail.response_meta());
    });
    let failed = counts_view
        .get_or_create(&sluice_server::metrics::OutcomeLabels { outcome: "failed" })
        .get();
    assert!(failed > 0, "the export task ran");
    println!(
        "baseline: serde_json parse of a {} B chat body: {base:.0} ns",
        body.len()
    );
    println!(
        "server + attempt span, recorded and batched: {spans:.0} ns per request ({:.2}x the parse)",
        spans / base
    );
    println!(
        "response model and finish reasons from a {} B body: {meta:.0} ns ({:.2}x the parse)",
        response.len(),
        meta / base
    );
}
