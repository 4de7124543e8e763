//! What the security features add per request: authenticate a virtual key
//! (SHA-256 + lookup), take and settle a local rate limit (requests and
//! tokens), and redact PII from the audited fields; then the optional parts —
//! SM4-GCM encryption of an identifier field, and prompt redaction of a
//! ~1 KiB chat body. A last pair of lines seals 24 and 64 bytes with
//! SM4-GCM on the audit's table-driven SM4 (`sluice_audit::sm4_table`)
//! and on the `sm4` crate's, which it replaced.
//!
//! `cargo run --release -p sluice-micro-bench --bin security-bench`
//!
//! Prints ns per request next to a baseline measured in the same run: one
//! `serde_json::from_slice::<Value>` of the same ~1 KiB chat body.

use std::hint::black_box;
use std::sync::Arc;

mod timing;
use timing::time;

use aes_gcm::AesGcm;
use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInOut, KeyInit};
use serde_json::{Value, json};
use sluice_core::auth::{KeyTable, token_hash_hex};
use sluice_core::config;
use sluice_core::limits::Limits;
use sluice_core::pii::{Redactor, redact_request};
use sluice_server::audit::cipher::FieldCipher;

const N: u32 = 200_000;

fn main() {
    let text = format!(
        "[[providers]]\nname = \"m\"\nkind = \"mock\"\n[[models]]\nname = \"m\"\ntargets = [{{ provider = \"m\" }}]\n\
         [[keys]]\nname = \"team\"\nsha256 = \"{}\"\nrpm = 100000000\ntpm = 100000000000\n",
        token_hash_hex("sk-live-0123456789abcdef0123456789abcdef")
    );
    let cfg = config::parse(&text, "bench", &|_| None).expect("valid bench config");
    let keys = KeyTable::new(&cfg);
    let limits = Arc::new(Limits::new(Some(1_000_000_000), Some(100_000_000_000), 0.0));
    let redactor = Redactor::builtin();
    let cipher = FieldCipher::new(&[7u8; 16], None);
    let prompt = "Summarise the attached meeting notes for the weekly report. ".repeat(14);
    let body = serde_json::to_vec(&json!({
        "model": "m",
        "user": "alice@example.com",
        "metadata": {"team": "cardio", "note": "call me on +44 20 7946 0958"},
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": prompt},
        ],
    }))
    .expect("serializes");
    let audited = ["cardio", "call me on +44 20 7946 0958", "internal-batch-7"];

    let base = time(N, |_| {
        black_box(serde_json::from_slice::<Value>(black_box(&body)).expect("valid"));
    });
    let auth = time(N, |_| {
        black_box(
            keys.check(
                black_box(Some("sk-live-0123456789abcdef0123456789abcdef")),
                || 0,
            )
            .expect("known key"),
        );
    });
    let limit = time(N, |i| {
        let now = f64::from(i) * 1e-6;
        let (r, _) = limits.admit(black_box(1200.0), now).expect("admitted");
        r.settle(black_box(900.0), now);
    });
    let redact = time(N, |_| {
        for f in audited {
            black_box(redactor.redact(black_box(f)));
        }
    });
    let encrypt = time(N, |_| {
        black_box(cipher.encrypt("user", black_box(&json!("alice@example.com"))));
    });
    let prompts = time(N / 4, |_| {
        let mut v: Value = serde_json::from_slice(&body).expect("valid");
        redact_request(&mut v, &redactor);
        black_box(serde_json::to_vec(&v).expect("serializes"));
    });
    // The prompt and `user` field of bench/proxy.lua (an address near the
    // start, a build number mid-way): scanned with the built-in kinds (the
    // automaton reads only where a finding can lie, `pii/window.rs`) and
    // with one custom pattern more that never matches (no window: the
    // automaton reads all of it).
    let whole = Redactor::new(
        &sluice_core::pii::Kind::ALL,
        &[("never".to_owned(), r"\x00never\x00".to_owned())],
    )
    .expect("compiles");
    let chat = [
        "Summarise yesterday's incident for bench-user@example.com: the gateway's p99 rose after the \
         deploy of build 4812, retries doubled on the EU pool, and the on-call paged twice before the \
         rollback finished. List the three follow-ups we agreed on and who owns each one.",
        "bench-user@example.com",
    ];
    let windowed = time(N, |_| {
        for t in chat {
            black_box(redactor.redact(black_box(t)));
        }
    });
    let unwindowed = time(N, |_| {
        for t in chat {
            black_box(whole.redact(black_box(t)));
        }
    });
    let seal = seal_both();
    let total = auth + limit + redact;
    println!("body: {} bytes", body.len());
    println!("baseline (parse the body once): {base:8.0} ns");
    println!("auth (sha256 + lookup):         {auth:8.0} ns");
    println!("local rate limit (admit+settle):{limit:8.0} ns");
    println!("redact 3 audited fields:        {redact:8.0} ns");
    println!(
        "auth + limit + redaction:       {total:8.0} ns  ({:.2}x baseline; target <= 10000 ns)",
        total / base
    );
    println!("SM4-GCM encrypt one field:      {encrypt:8.0} ns");
    println!(
        "redact proxy.lua's prompt + user: {windowed:6.0} ns windowed, {unwindowed:6.0} ns whole ({:.2}x)",
        windowed / unwindowed
    );
    println!(
        "prompt redaction (parse, redact, serialize): {prompts:8.0} ns ({:.2}x baseline)",
        prompts / base
    );
    for (len, table, crate_block) in seal {
        println!(
            "SM4-GCM seal {len:3} bytes: {table:6.0} ns table-driven SM4, {crate_block:6.0} ns the sm4 crate's ({:.2}x)",
            table / crate_block
        );
    }
}

/// SM4-GCM sealing (in place, tag apart) of 24 bytes (the bench's `user`,
/// quoted) and 64, on either SM4: (length, table-driven ns, crate ns).
fn seal_both() -> Vec<(usize, f64, f64)> {
    let key = [7u8; 16].into();
    let table = AesGcm::<sluice_server::audit::sm4_table::Sm4, U12>::new(&key);
    let reference = AesGcm::<sm4::Sm4, U12>::new(&key);
    let nonce = [9u8; 12].into();
    [24, 64]
        .into_iter()
        .map(|len| {
            let mut buf = vec![b'a'; len];
            let mut seal = |aead: &dyn Fn(&mut [u8])| time(N, |_| aead(black_box(&mut buf)));
            let a = seal(&|b| {
                black_box(table.encrypt_inout_detached(&nonce, b"user", b.into()).ok());
            });
            let b = seal(&|b| {
                black_box(
                    reference
                        .encrypt_inout_detached(&nonce, b"user", b.into())
                        .ok(),
                );
            });
            (len, a, b)
        })
        .collect()
}
