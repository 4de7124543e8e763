//! What reading a request's few fields costs (`sluice_core::request::peek`:
//! `model`, `stream`, the budget, `messages` present and not empty, the
//! body checked to be JSON), on the chat request `bench/proxy.py` sends
//! (~1 KB) and on a long-context one (a 64 KiB prompt, as agents send).
//!
//! `cargo run --release -p sluice-micro-bench --bin peek-bench`
//!
//! Prints ns per request next to two baselines measured in the same run:
//! the peek read with serde only (`request::peek_serde`, what it was before
//! the quick pass), and one `serde_json::from_str::<IgnoredAny>` of the
//! same body, the least serde does to read it. The baseline checks the
//! body is UTF-8 first, as the peek did (the quick pass checks it as it
//! goes).

use std::hint::black_box;

mod timing;
use timing::time;

use serde::de::IgnoredAny;
use sluice_core::request::{Operation, peek, peek_serde};

fn body(prompt: &str) -> String {
    serde_json::json!({
        "model": "bench",
        "messages": [
            {"role": "system", "content": "You are a careful assistant for the benchmark team. Answer briefly and cite the runbook. ".repeat(6)},
            {"role": "user", "content": prompt},
        ],
        "temperature": 0.2, "max_tokens": 256, "user": "bench-user@example.com",
        "metadata": {"team": "bench"},
    })
    .to_string()
}

/// An agent's 10-turn conversation (as `bench/instructions.py --turns 10`
/// sends): many strings of a few hundred bytes, the shape agents resend.
fn conversation() -> String {
    let turns = [
        (
            "Ticket 88213: the EU pool answered 502 from 09:14 to 09:31 UTC. Who was paged?",
            "The on-call, Ana (ana.silva@example.com), was paged at 09:16 and acked at 09:18.",
        ),
        (
            "Pull the retry counts for build 4812 and compare them with build 4799.",
            "Build 4812 retried 2.1 times per failed call on average, build 4799 1.0 times; \
             the difference is the new jitter of 250 ms.",
        ),
    ];
    let mut messages =
        vec![serde_json::json!({"role": "system", "content": "You help the on-call team."})];
    for i in 0..10 {
        let (q, a) = turns[i % turns.len()];
        messages.push(serde_json::json!({"role": "user", "content": format!("{q} (turn {i})")}));
        messages.push(serde_json::json!({"role": "assistant", "content": a}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "Summarise the incident."}));
    serde_json::json!({"model": "bench", "messages": messages, "max_tokens": 256}).to_string()
}

fn main() {
    let user = "Summarise yesterday's incident for bench-user@example.com: the gateway's p99 rose \
                after the deploy of build 4812, retries doubled on the EU pool.";
    // Prose with the escapes and non-ASCII a real long prompt holds.
    let long = "Log line 17: \"retry\" on pool EU — café\n\tthen the next attempt went through. "
        .repeat(64 * 1024 / 80);
    println!(
        "| request | bytes | serde IgnoredAny, ns | peek_serde (baseline), ns | peek, ns | x baseline |"
    );
    println!("|---|---|---|---|---|---|");
    // The same length of plain prose (ASCII, no escapes).
    let plain = "Then the next attempt went through and the pool recovered quietly. "
        .repeat(64 * 1024 / 68);
    for (name, b, n) in [
        ("chat", body(user), 200_000),
        ("conversation", conversation(), 50_000),
        ("long", body(&long), 2_000),
        ("long-plain", body(&plain), 2_000),
    ] {
        let serde = time(n, |_| {
            black_box(serde_json::from_str::<IgnoredAny>(black_box(&b)).is_ok());
        });
        let base = time(n, |_| {
            let text = std::str::from_utf8(black_box(b.as_bytes()));
            black_box(text.is_ok_and(|t| peek_serde(t, Operation::Chat).is_ok()));
        });
        let quick = time(n, |_| {
            black_box(peek(black_box(b.as_bytes()), Operation::Chat).is_ok());
        });
        println!(
            "| {name} | {} | {serde:.0} | {base:.0} | {quick:.0} | {:.2} |",
            b.len(),
            quick / base
        );
    }
}
