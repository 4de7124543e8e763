//! Allocations per proxied request, counted by a counting global allocator:
//! the path `bench/proxy.py` measures (a keep-alive HTTP/1.1 client, the
//! gateway's own listener, its HTTP/1.1 upstream pool) against a static
//! upstream, all in this process. The client and the upstream are plain
//! threads that reuse their buffers and allocate nothing per request, so
//! what is counted is the gateway's. A budget a little over today's count
//! catches a change that adds allocations to every request; raise it only
//! with a reason.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// The body the upstream answers every request with.
const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1767225600,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;

/// Allocations a proxied chat request may make (measured in the test
/// profile CI builds, 2026-12-05: 18.0 at `a18a3e3`, 16.0 once the pool
/// took its read buffers back, 15.0 once the upstream request's header map
/// stopped regrowing and the body's timer was made only when needed).
const BUDGET: f64 = 17.0;

/// Where `needle` starts in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of one HTTP/1.1 message at the start of `buf` (head and a
/// `content-length` body), once all of it is there.
fn message_len(buf: &[u8]) -> Option<usize> {
    let head = find(buf, b"\r\n\r\n")? + 4;
    let at = find(&buf[..head], b"content-length: ")? + 16;
    let digits = buf[at..head].iter().take_while(|b| b.is_ascii_digit());
    let body = digits.fold(0, |n, d| n * 10 + usize::from(d - b'0'));
    (buf.len() >= head + body).then_some(head + body)
}

/// Reads one message into `buf` (fixed size, reused) and drops it.
fn read_message(s: &mut TcpStream, buf: &mut [u8], have: &mut usize) -> bool {
    loop {
        if let Some(n) = message_len(&buf[..*have]) {
            buf.copy_within(n..*have, 0);
            *have -= n;
            return true;
        }
        match s.read(&mut buf[*have..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => *have += n,
        }
    }
}

/// A static upstream; also how many connections it has taken (the gateway
/// should keep one: a connection per request would count the upstream's
/// own allocations).
fn static_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = l.local_addr().expect("an address");
    let answer: Arc<[u8]> = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
        ANSWER.len()
    )
    .into_bytes()
    .into();
    let conns = Arc::new(AtomicUsize::new(0));
    let taken = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            taken.fetch_add(1, Ordering::Relaxed);
            let answer = answer.clone();
            std::thread::spawn(move || {
                let (mut s, mut buf, mut have) = (s, vec![0u8; 64 * 1024], 0);
                while read_message(&mut s, &mut buf, &mut have) {
                    if s.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// Per request over `n` requests of the harness: (allocations, bytes,
/// reallocations).
struct Counted {
    per: f64,
    bytes: f64,
    re: f64,
}

/// Serves `config` (whose model `m` goes to a static upstream, given as
/// `{up}`), sends `body` 200 times to warm it, then counts the
/// allocations of `n` more with `headers` added to each, each sent
/// `pace` after the last answer.
fn count(config: &str, headers: &str, body: &[u8], n: usize, pace: Duration) -> Counted {
    let (up, upstream_conns) = static_upstream();
    let config = config.replace("{up}", &up.to_string());
    let gw = sluice_server::embed::Gateway::new(Some(&config)).expect("a gateway");
    let (api, _) = gw.serve("127.0.0.1:0", None).expect("serving");
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {api}\r\ncontent-type: application/json\r\n\
         {headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let mut client = TcpStream::connect(api).expect("connected");
    client.set_nodelay(true).expect("nodelay");
    let (mut buf, mut have) = (vec![0u8; 64 * 1024], 0);
    let mut exchange = |n: usize| {
        for _ in 0..n {
            std::thread::sleep(pace);
            client.write_all(&request).expect("sent");
            assert!(read_message(&mut client, &mut buf, &mut have), "an answer");
            assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..40]);
        }
    };
    // Warm: the upstream connection pooled, lazy tables built.
    exchange(200);
    let region = Region::new(GLOBAL);
    exchange(n);
    let stats = region.change();
    assert_eq!(
        upstream_conns.load(Ordering::Relaxed),
        1,
        "the upstream connection was not kept"
    );
    gw.stop();
    let n = n as f64;
    let c = Counted {
        per: stats.allocations as f64 / n,
        bytes: stats.bytes_allocated as f64 / n,
        re: stats.reallocations as f64 / n,
    };
    println!(
        "{:.1} allocations ({:.0} bytes), {:.1} reallocations per request",
        c.per, c.bytes, c.re
    );
    // Every request allocates: the count is real, not a miss of the hook.
    assert!(
        c.per >= 5.0,
        "{:.1} allocations per request: the counter missed them",
        c.per
    );
    c
}

const MODEL: &str = "[[providers]]\nname = \"up\"\nkind = \"openai\"\nbase_url = \"http://{up}/v1\"\n\
    api_key = \"sk-up\"\n[[models]]\nname = \"m\"\n\
    targets = [{ provider = \"up\", model = \"m\" }]\n";

#[test]
fn a_proxied_chat_request_stays_within_its_allocation_budget() {
    let body = br#"{"model":"m","messages":[{"role":"user","content":"Summarise the incident in two lines."}],"max_tokens":64}"#;
    let c = count(MODEL, "", body, 1000, Duration::ZERO);
    assert!(
        c.per <= BUDGET,
        "{:.1} allocations per request, over the budget of {BUDGET}",
        c.per
    );
    // Nothing is regrown on every request (a map or buffer sized short
    // reallocates each time: the upstream request's header map did, 1.0).
    assert!(
        c.re < 0.5,
        "{:.1} reallocations per request: something is sized short",
        c.re
    );
}

/// Allocations a production-shaped request may make (measured in the test
/// profile, 2026-12-06): `bench/proxy.py`'s production-shaped
/// configuration — a virtual key with rpm/tpm, the audit trail to a file
/// with one field SM4-GCM encrypted and one redacted, prompts redacted,
/// traces sampled at 0.1 to an OTLP endpoint — and a prompt with an email
/// in the user turn and in `user`: 26.6–26.7, where `BUDGET`'s request
/// made 15.0 in the same build. The requests are paced (see [`PACE`]), so
/// the audit writer writes each event on its own: ~2 of them are that
/// write's. Back to back, events share writes and the count depends on
/// how the machine's load groups them (24.5–24.8 here). One allocation
/// more per request is over the budget (checked: the rate limiter's
/// reservations in a `Vec` again, 26.6 → 27.5).
const PROD_BUDGET: f64 = 27.2;

/// Longer than the audit writer's linger (5 ms), so no two events share
/// a write.
const PACE: Duration = Duration::from_millis(7);

#[test]
fn a_production_shaped_request_stays_within_its_allocation_budget() {
    let (otlp, _) = static_upstream();
    let dir = std::env::temp_dir().join(format!("sluice-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let key_file = dir.join("audit.key");
    std::fs::write(&key_file, "000102030405060708090a0b0c0d0e0f").expect("the key written");
    let config = format!(
        "{MODEL}[[keys]]\nname = \"bench\"\nsha256 = \"{}\"\nrpm = 100000000\ntpm = 100000000000\n\
         [audit]\npath = \"{}\"\nfields = [\"metadata.team\"]\nencrypt_fields = [\"user\"]\n\
         key_file = \"{}\"\n[telemetry]\notlp_endpoint = \"http://{otlp}\"\n\
         otlp_protocol = \"http/protobuf\"\nsampling_ratio = 0.1\n[redaction]\nprompts = true\n",
        sluice_core::auth::token_hash_hex("sk-alloc-client"),
        dir.join("audit.jsonl").display(),
        key_file.display(),
    );
    let body = br#"{"model":"m","messages":[{"role":"system","content":"You are a careful assistant. Answer briefly."},{"role":"user","content":"Summarise yesterday's incident for bench-user@example.com: p99 rose after build 4812."}],"max_tokens":64,"user":"bench-user@example.com","metadata":{"team":"bench"}}"#;
    let c = count(
        &config,
        "authorization: Bearer sk-alloc-client\r\n",
        body,
        400,
        PACE,
    );
    let audited = std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    // The configuration did what it says: the events carry both fields,
    // the encrypted one as ciphertext.
    let last = audited.lines().last().expect("audit events written");
    assert!(last.contains(r#""metadata.team":"bench""#), "{last}");
    assert!(last.contains(r#""user":{"enc":"SM4-GCM""#), "{last}");
    assert!(
        c.per <= PROD_BUDGET,
        "{:.1} allocations per request, over the budget of {PROD_BUDGET}",
        c.per
    );
    // One regrowth per request: `traceparent` added to the upstream
    // request's header map, cloned from its template at its exact length.
    assert!(
        c.re < 1.5,
        "{:.1} reallocations per request: something is sized short",
        c.re
    );
}
