//! Routing + breaker bookkeeping per request: look the model up, pick a target
//! (weighted, breaker-aware), take a breaker slot, record the outcome, release.
//!
//! `cargo run --release -p sluice-micro-bench --bin route-bench`
//!
//! Prints ns per request for each strategy, single-threaded and with two
//! threads hammering the same targets, next to a baseline measured in the same
//! run: one `HashMap<String, _>` lookup of the model name.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use sluice_core::config;
use sluice_core::resilience::{Outcome, now_nanos};
use sluice_core::route::{RouteTable, TargetSet};

const N: u64 = 2_000_000;

fn table() -> RouteTable {
    let text = r#"
[[providers]]
name = "a"
kind = "mock"
[[providers]]
name = "b"
kind = "mock"
[[providers]]
name = "c"
kind = "mock"
[[models]]
name = "weighted"
targets = [{ provider = "a", weight = 3 }, { provider = "b", weight = 1 }, { provider = "c", weight = 2 }]
[[models]]
name = "least"
strategy = "least_outstanding"
targets = [{ provider = "a" }, { provider = "b" }, { provider = "c" }]
[[models]]
name = "latency"
strategy = "lowest_latency"
targets = [{ provider = "a" }, { provider = "b" }, { provider = "c" }]
"#;
    RouteTable::new(&config::parse(text, "bench", &|_| None).expect("valid bench config"))
}

fn per_request(table: &RouteTable, model: &str, n: u64) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let route = table.get(black_box(model)).expect("model exists");
        let now = now_nanos();
        let mut tried = TargetSet::default();
        let mut adm = route.admit(now, &mut tried).expect("a target is available");
        let outcome = if i % 50 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        adm.record(outcome, now);
        adm.state.observe_ttfb(1000.0);
        drop(adm);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn baseline(n: u64) -> f64 {
    let mut map = HashMap::new();
    for name in ["weighted", "least", "latency"] {
        map.insert(name.to_owned(), 1u32);
    }
    let start = Instant::now();
    let mut sum = 0u32;
    for _ in 0..n {
        sum = sum.wrapping_add(*map.get(black_box("weighted")).expect("present"));
    }
    black_box(sum);
    start.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let table = Arc::new(table());
    let base = baseline(N);
    println!("baseline (one HashMap<String,_> lookup): {base:.1} ns");
    for model in ["weighted", "least", "latency"] {
        let one = per_request(&table, model, N);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let t = table.clone();
                std::thread::spawn(move || per_request(&t, model, N / 2))
            })
            .collect();
        let two: f64 = threads
            .into_iter()
            .map(|t| t.join().expect("bench thread"))
            .fold(0.0, f64::max);
        println!(
            "{model:9} 1 thread: {one:6.1} ns/request ({:.1}x baseline)   2 threads: {two:6.1} ns/request each",
            one / base
        );
    }
}
