//! What checking a passed-through OpenAI stream costs per event: every
//! event's data must be JSON and the stream must reach `[DONE]`
//! (`sluice_providers::check`).
//!
//! `cargo run --release -p sluice-micro-bench --bin stream-check-bench`
//!
//! Prints ns per event next to a baseline measured in the same run: one
//! `serde_json::from_str::<IgnoredAny>` of the same event's data, which is
//! what the check used to run for every event. The stream is the one
//! `bench/proxy.py` serves: 64 token chunks, a usage chunk and `[DONE]`.

use std::hint::black_box;

mod timing;
use timing::time;

use serde::de::IgnoredAny;
use sluice_providers::check::{StreamCheck, json_data};

const N: u32 = 20_000;

fn events() -> Vec<String> {
    let chunk = |delta: &str, finish: &str| {
        format!(
            r#"{{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,"model":"bench-model","system_fingerprint":"fp_bench","choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
        )
    };
    let mut out = vec![chunk(r#"{"role":"assistant","content":""}"#, "null")];
    for i in 1..64 {
        let finish = if i == 63 { r#""stop""# } else { "null" };
        out.push(chunk(&format!(r#"{{"content":" tok{i}"}}"#), finish));
    }
    out.push(r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1767225600,"model":"bench-model","system_fingerprint":"fp_bench","choices":[],"usage":{"prompt_tokens":212,"completion_tokens":64,"total_tokens":276}}"#.to_owned());
    out
}

fn main() {
    let data = events();
    let per_event = |ns: f64| ns / data.len() as f64;
    let serde = per_event(time(N, |_| {
        for d in &data {
            black_box(serde_json::from_str::<IgnoredAny>(black_box(d)).is_ok());
        }
    }));
    let quick = per_event(time(N, |_| {
        for d in &data {
            black_box(json_data(black_box(d)).is_ok());
        }
    }));
    // The whole check as a stream goes through: one frame per event.
    let frames: Vec<Vec<u8>> = data
        .iter()
        .map(|d| format!("data: {d}\n\n").into_bytes())
        .chain([b"data: [DONE]\n\n".to_vec()])
        .collect();
    let stream = per_event(time(N, |_| {
        let mut check = StreamCheck::default();
        for f in &frames {
            black_box(check.feed(black_box(f)).is_ok());
        }
        black_box(check.finish().is_ok());
    }));
    let bytes: usize = data.iter().map(String::len).sum();
    println!(
        "{} events, {} bytes of data each on average",
        data.len(),
        bytes / data.len()
    );
    println!("| per event | ns | x baseline |\n|---|---|---|");
    println!("| serde_json IgnoredAny (baseline) | {serde:.0} | 1.00 |");
    println!("| check::json_data | {quick:.0} | {:.2} |", quick / serde);
    println!(
        "| StreamCheck::feed (SSE decode + check) | {stream:.0} | {:.2} |",
        stream / serde
    );
}
