//! Property tests (proptest) over the two places untrusted text is decoded
//! before anything else looks at it: the request peek and the PII scanner.
//! They run in the normal test command, bounded by the case counts below.

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_core::pii::{
    Redactor, redact_request, redact_request_json, redact_request_json_keeping,
};
use sluice_core::request::{self, Operation};

fn redactor() -> &'static Redactor {
    static R: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
    R.get_or_init(Redactor::builtin)
}

/// Text that looks like PII often: digits, separators, @, letters, CJK.
fn pii_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex(r"[0-9 +\-().:@a-zA-Z_XxDEGB中文]{0,120}").expect("valid regex")
}

/// JSON shaped like requests: the fields we read, holding anything.
fn request_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        pii_like().prop_map(Value::String),
        any::<String>().prop_map(Value::String),
        // Findings for sure, some in strings that need escapes.
        prop_oneof![
            Just("mail jane.doe@example.com"),
            Just("line\n\"q\" +44 20 7946 0958\t"),
            Just("card 4111 1111 1111 1111 \u{e9}"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ]
    .boxed();
    let value = leaf.clone().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("content".to_owned()),
                    Just("text".to_owned()),
                    Just("role".to_owned()),
                    Just("stream".to_owned()),
                    Just("input".to_owned()),
                    Just("tool_calls".to_owned()),
                    Just("function".to_owned()),
                    Just("arguments".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    // Messages as clients send them (deeper than `value` reaches: OpenAI
    // tool calls' arguments sit five levels down), or anything at all.
    let call = (leaf, any::<bool>()).prop_map(|(arguments, typed)| {
        let mut c = json!({"id": "call_1", "function": {"name": "f", "arguments": arguments}});
        if typed {
            c["type"] = json!("function");
        }
        c
    });
    let message = (
        value.clone(),
        proptest::option::of(proptest::collection::vec(call, 0..3)),
        "[a-z]{1,9}",
    )
        .prop_map(|(content, calls, role)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(c) = calls {
                m["tool_calls"] = Value::Array(c);
            }
            m
        });
    let messages = prop_oneof![
        3 => proptest::collection::vec(message, 0..4).prop_map(Value::Array),
        1 => value.clone(),
    ];
    (
        messages,
        value,
        any::<String>(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(messages, other, model, stream)| {
            let mut o = serde_json::Map::new();
            o.insert("model".into(), Value::String(model));
            o.insert("messages".into(), messages.clone());
            o.insert("input".into(), other.clone());
            o.insert("system".into(), messages.clone());
            o.insert("prompt".into(), other.clone());
            o.insert("user".into(), other.clone());
            o.insert("metadata".into(), other);
            if let Some(s) = stream {
                o.insert("stream".into(), Value::Bool(s));
            }
            Value::Object(o)
        })
}

/// [`request_json`] with the members the peek reads holding small values
/// of every kind, and maybe one member written twice (serde refuses that).
fn request_body_with_options() -> impl Strategy<Value = (Value, Vec<u8>)> {
    let key = prop_oneof![
        Just("model"),
        Just("messages"),
        Just("input"),
        Just("prompt"),
        Just("query"),
        Just("documents"),
        Just("max_tokens"),
        Just("max_completion_tokens"),
        Just("max_output_tokens"),
        Just("stream"),
        Just("stream_options"),
    ];
    let small = prop_oneof![
        Just(Value::Null),
        any::<u32>().prop_map(|n| json!(n)),
        Just(json!(-1)),
        Just(json!(2.5)),
        any::<bool>().prop_map(Value::Bool),
        Just(json!({"include_usage": true})),
        Just(json!({"include_usage": null, "x": 1})),
        Just(json!("x")),
        Just(json!([])),
        Just(json!([{"role": "user", "content": "a@b.io"}])),
    ];
    let options = proptest::collection::vec((key.clone(), small.clone()), 0..4);
    (
        request_json(),
        options,
        proptest::option::of((key, small)),
        any::<bool>(),
    )
        .prop_map(|(mut v, options, twice, pretty)| {
            for (k, x) in options {
                v[k] = x;
            }
            let mut body = if pretty {
                serde_json::to_vec_pretty(&v).expect("serializes")
            } else {
                serde_json::to_vec(&v).expect("serializes")
            };
            if let Some((k, x)) = twice {
                let member = format!("{}:{},", json!(k), x);
                body.splice(1..1, member.into_bytes());
            }
            (v, body)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn redaction_never_panics_and_is_stable(s in any::<String>()) {
        let once = redactor().redact(&s).into_owned();
        prop_assert_eq!(redactor().redact(&once).into_owned(), once);
    }

    /// A built-in-only redactor skips text without a digit, `@`, `:` or a
    /// fullwidth form; the same kinds with a custom pattern beside them
    /// (which never matches) always scan. They must agree.
    #[test]
    fn the_byte_prefilter_hides_no_finding(s in prop_oneof![pii_like(), any::<String>(), "[a-zA-Z .,@:+()\\-]{0,80}"]) {
        static SCANS: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
        let always = SCANS.get_or_init(|| {
            Redactor::new(&sluice_core::pii::Kind::ALL, &[("never".into(), "[^\\s\\S]".into())])
                .expect("compiles")
        });
        prop_assert_eq!(redactor().redact(&s), always.redact(&s));
    }

    #[test]
    fn redaction_of_pii_like_text_is_stable(s in pii_like()) {
        let once = redactor().redact(&s).into_owned();
        prop_assert_eq!(redactor().redact(&once).into_owned(), once);
    }

    #[test]
    fn peek_never_panics_on_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        for op in [Operation::Chat, Operation::Embeddings, Operation::Messages] {
            let _ = request::peek(&b, op);
        }
    }

    #[test]
    fn peek_finds_the_model_and_redaction_keeps_it(v in request_json()) {
        let body = serde_json::to_vec(&v).expect("serializes");
        // Every generated body has a string model; the only refusals are an
        // empty model, an `input` that is null (absent, for the peek) and
        // `messages` that is neither an array nor null. No silent skips.
        match request::peek(&body, Operation::Embeddings) {
            Ok(p) => {
                prop_assert_eq!(p.model.as_ref(), v["model"].as_str().expect("a string"));
                let token: String = serde_json::from_slice(&body[p.model_span.clone()]).expect("the span is the string token");
                prop_assert_eq!(token.as_str(), p.model.as_ref());
            }
            Err(e) => {
                let messages_ok = v["messages"].is_array() || v["messages"].is_null();
                let refusable = v["model"] == "" || v["input"].is_null() || !messages_ok;
                prop_assert!(refusable, "refused {v}: {e:?}");
            }
        }
        // Prompt redaction touches the prompt fields, never the model.
        let mut redacted = v.clone();
        redact_request(&mut redacted, redactor());
        prop_assert_eq!(&redacted["model"], &v["model"]);
        let again = redacted.clone();
        prop_assert!(!redact_request(&mut redacted, redactor()), "a second pass finds nothing");
        prop_assert_eq!(redacted, again);
    }

    #[test]
    fn redaction_in_place_matches_redaction_of_the_value(v in request_json(), pretty in any::<bool>()) {
        let body = if pretty {
            serde_json::to_vec_pretty(&v).expect("serializes")
        } else {
            serde_json::to_vec(&v).expect("serializes")
        };
        let mut expected = v.clone();
        let changed = redact_request(&mut expected, redactor());
        let got = redact_request_json(&body, redactor()).expect("a JSON object");
        prop_assert_eq!(got.is_some(), changed);
        if let Some(b) = got {
            let parsed: Value = serde_json::from_slice(&b).expect("still JSON");
            prop_assert_eq!(parsed, expected);
        }
    }

    #[test]
    fn the_peek_from_the_redaction_pass_is_the_peek_of_the_body((_v, body) in request_body_with_options()) {
        let mut kept = sluice_core::pii::Members::new();
        let keep = |k: &str| request::PEEKED.contains(&k);
        let Ok(pass) = redact_request_json_keeping(&body, redactor(), keep, &mut kept) else {
            return Err(TestCaseError::fail("a JSON object"));
        };
        let sent = pass.redacted.as_ref().map_or(&body[..], |d| &d.body[..]);
        let moved = |at| pass.redacted.as_ref().map_or(at, |d| d.moved(at));
        for op in [
            Operation::Chat,
            Operation::Messages,
            Operation::Embeddings,
            Operation::Completions,
            Operation::Responses,
            Operation::Media(sluice_core::media::Media::ImageGeneration),
            Operation::Media(sluice_core::media::Media::Rerank),
        ] {
            let want = request::peek(sent, op);
            let kept = kept.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
            let got = request::peek_members(sent, &body, kept, pass.messages, moved, op);
            match (want, got) {
                (Ok(w), Some(g)) => {
                    prop_assert_eq!(&w.model, &g.model);
                    prop_assert_eq!(&w.model_span, &g.model_span);
                    prop_assert_eq!(w.stream, g.stream);
                    prop_assert_eq!(w.include_usage, g.include_usage);
                    prop_assert_eq!(w.max_tokens, g.max_tokens);
                }
                (Err(_), None) => {}
                (w, g) => prop_assert!(false, "{op:?}: peek {w:?}, from members {g:?}"),
            }
        }
    }
}
