//! Fuzz targets over the parsers that untrusted bytes reach first: the
//! request peek (client bodies), the SSE decoder and the stream check
//! (upstream bytes), the three stream translators (upstream bytes in any
//! split, re-encoded for either client format), and the agent hub's frame
//! parser (agent frames).
//!
//! Each target is a property checked twice under `cargo test`: on every
//! file of its committed corpus (`fuzz/corpus/<target>/`: real streams and
//! requests, and every input that once failed), then on random inputs from
//! bolero for a bounded time (`BOLERO_RANDOM_TEST_TIME_MS`, 1 s by default;
//! `BOLERO_RANDOM_ITERATIONS` to count instead). `cargo bolero test
//! <target> --engine libfuzzer` (nightly) fuzzes the same property for as
//! long as you like; copy what it finds into the corpus.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::Value;
use sluice_core::request::{self, Operation};
use sluice_providers::check::StreamCheck;
use sluice_providers::sse::Decoder;
use sluice_providers::translate::{StreamBody, UsageCell, Wire};
use sluice_server::hub::frame::{self, AgentFrame};

/// Runs `property` on every file of `fuzz/corpus/<target>/`; the corpus
/// must not be empty (a target that checks nothing is not a target).
fn corpus(target: &str, property: impl Fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a corpus entry").path();
        let input = std::fs::read(&path).expect("a corpus file");
        // A failure names the file it came from.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| property(&input)));
        if let Err(e) = outcome {
            eprintln!("corpus input {} failed", path.display());
            std::panic::resume_unwind(e);
        }
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

/// The first byte of an input chooses where to split the rest.
fn split(input: &[u8]) -> (usize, &[u8]) {
    match input.split_first() {
        Some((s, rest)) => (usize::from(*s), rest),
        None => (0, input),
    }
}

// --- the request peek -------------------------------------------------------

/// Never panics; a peeked body keeps being the same JSON with only `model`
/// changed when it is rewritten, and stays JSON when usage is forced on.
fn request_peek(input: &[u8]) {
    for op in [Operation::Chat, Operation::Embeddings, Operation::Messages] {
        let Ok(peek) = request::peek(input, op) else {
            continue;
        };
        let Ok(mut original) = serde_json::from_slice::<Value>(input) else {
            panic!("peek accepted a body that is not JSON: {input:?}");
        };
        let out = request::rewrite_model(input, peek.model_span.clone(), "m\"2\u{1F600}");
        let mut rewritten: Value =
            serde_json::from_slice(&out).expect("a rewritten body is still JSON");
        assert_eq!(rewritten["model"], "m\"2\u{1F600}");
        rewritten["model"] = Value::Null;
        original["model"] = Value::Null;
        // Duplicate keys: serde keeps the last; the peek read the last too.
        assert_eq!(rewritten, original, "only the model changed");
        let forced: Value = serde_json::from_slice(&request::force_include_usage(input))
            .expect("forcing usage keeps JSON");
        assert_eq!(forced["stream_options"]["include_usage"], true);
    }
}

#[test]
fn request_peek_corpus() {
    corpus("request_peek", request_peek);
}

#[test]
fn request_peek_fuzz() {
    bolero::check!().for_each(request_peek);
}

// --- SSE: the decoder and the passthrough check -----------------------------

/// The same bytes decode to the same events (and the check gives the same
/// verdict) whatever the split, and no event exceeds the limit.
fn sse(input: &[u8]) {
    let (at, bytes) = split(input);
    let at = at.min(bytes.len());
    let decode = |parts: &[&[u8]]| {
        let mut d = Decoder::new(256);
        let mut out = Vec::new();
        for p in parts {
            if d.feed(p).is_err() {
                return None;
            }
            out.extend_from_slice(d.events());
            d.clear();
        }
        d.finish();
        out.extend_from_slice(d.events());
        Some(out)
    };
    let whole = decode(&[bytes]);
    let halves = decode(&[&bytes[..at], &bytes[at..]]);
    if let (Some(a), Some(b)) = (&whole, &halves) {
        assert_eq!(a, b);
        assert!(a.iter().all(|e| e.data.len() <= 256));
    }
    let verdict = |parts: &[&[u8]]| {
        let mut c = StreamCheck::default();
        for p in parts {
            if c.feed(p).is_err() {
                return false;
            }
        }
        c.finish().is_ok()
    };
    assert_eq!(verdict(&[bytes]), verdict(&[&bytes[..at], &bytes[at..]]));
}

#[test]
fn sse_corpus() {
    corpus("sse", sse);
}

#[test]
fn sse_fuzz() {
    bolero::check!().for_each(sse);
}

// --- the stream translators -------------------------------------------------

const PAIRS: [(Wire, Wire); 6] = [
    (Wire::OpenAi, Wire::OpenAi),
    (Wire::OpenAi, Wire::Anthropic),
    (Wire::Anthropic, Wire::OpenAi),
    (Wire::Anthropic, Wire::Anthropic),
    (Wire::Gemini, Wire::OpenAi),
    (Wire::Gemini, Wire::Anthropic),
];

/// Upstream bytes in two frames through each translator: never panics,
/// and what the client gets is SSE whose every data line is JSON or the
/// closing `[DONE]` — whatever the upstream sent. A stream that did not
/// end properly ends in an error, never in a made-up `[DONE]`.
fn translators(input: &[u8]) {
    let (at, bytes) = split(input);
    let at = at.min(bytes.len());
    for (upstream, client) in PAIRS {
        let frames = vec![
            Ok(http_body::Frame::data(Bytes::copy_from_slice(&bytes[..at]))),
            Ok(http_body::Frame::data(Bytes::copy_from_slice(&bytes[at..]))),
        ];
        let inner =
            http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let usage = Arc::new(UsageCell::default());
        let mut body = StreamBody::new(inner, upstream, client, "m", true, 1, usage, None);
        let mut out = Vec::new();
        let mut failed = false;
        loop {
            let next = futures_util::FutureExt::now_or_never(body.frame())
                .expect("every frame is ready: the body never waits");
            match next {
                None => break,
                Some(Ok(f)) => out.extend_from_slice(&f.into_data().unwrap_or_default()),
                Some(Err(_)) => {
                    failed = true;
                    break;
                }
            }
        }
        let text = String::from_utf8(out).expect("the client gets UTF-8");
        let mut done = false;
        for line in text.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    done = true;
                } else {
                    serde_json::from_str::<Value>(data)
                        .unwrap_or_else(|e| panic!("{upstream:?}->{client:?}: {e}: {data}"));
                }
            } else {
                assert!(
                    line.is_empty() || line.starts_with("event: "),
                    "{upstream:?}->{client:?}: not SSE: {line:?}"
                );
            }
        }
        assert!(
            !(done && failed),
            "{upstream:?}->{client:?}: [DONE] and an error"
        );
    }
}

#[test]
fn translators_corpus() {
    corpus("translators", translators);
}

#[test]
fn translators_fuzz() {
    bolero::check!().for_each(translators);
}

// --- the agent hub's frames -------------------------------------------------

/// Never panics; what is accepted keeps the protocol's own limits.
fn hub_frames(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return; // binary frames are refused before parsing
    };
    if let Ok(h) = frame::parse_hello(text, 32) {
        assert!(frame::valid_name(&h.agent_id));
        assert!(h.groups.len() <= 32 && h.groups.iter().all(|g| frame::valid_name(g)));
        assert!(h.capabilities.len() <= 64);
    }
    match frame::parse(text) {
        Ok(
            AgentFrame::Ack { id } | AgentFrame::Result { id, .. } | AgentFrame::Chat { id, .. },
        ) => {
            assert!(!id.is_empty() && id.len() <= 128);
        }
        Ok(AgentFrame::Event { .. } | AgentFrame::Ping) => {}
        Err((code, why)) => {
            assert!(matches!(code, 1007 | 1008), "{code}");
            assert!(!why.is_empty());
        }
    }
}

#[test]
fn hub_frames_corpus() {
    corpus("hub_frames", hub_frames);
}

#[test]
fn hub_frames_fuzz() {
    bolero::check!().for_each(hub_frames);
}
