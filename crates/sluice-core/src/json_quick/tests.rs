use super::*;
use proptest::prelude::*;

fn serde_ok(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

#[test]
fn a_token_chunk_is_surely_json() {
    let chunk = r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"content":"tok \"q\" \u00e9\n"},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":12,"completion_tokens":-0.5e+3}}"#;
    assert!(surely_json(chunk));
    for t in [
        "0", "-0", "1.5E-7", "\"\"", " [ ] ", "{}", "[[],{}]", "true", "false", "null",
    ] {
        assert!(surely_json(t), "{t}");
    }
}

#[test]
fn what_serde_json_refuses_is_not_surely_json() {
    for t in [
        "",
        " ",
        "{",
        "}",
        "[1,]",
        "{\"a\":1,}",
        "{\"a\":1 , }",
        "[[1],[2,],3]",
        "{\"a\"}",
        "{a:1}",
        "[1 2]",
        "01",
        "-",
        "1.",
        ".5",
        "1e",
        "1e+",
        "+1",
        "tru",
        "nul",
        "truex",
        "\"\\x\"",
        "\"\\u12g4\"",
        "\"\u{1}\"",
        "\"open",
        "[1]]",
        "{}{}",
        "1 2",
        "[\"a\":1]",
        "{\"a\":1]",
        "NaN",
    ] {
        assert!(!surely_json(t), "{t:?}");
        assert!(rebuilt(t).is_none(), "a cursor walk takes {t:?}");
        assert!(!serde_ok(t), "serde_json takes {t:?}");
    }
}

#[test]
fn bytes_are_surely_json_only_as_utf_8() {
    for ok in [
        &b"\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80\""[..],
        b"[\"a\xc2\xa0b\"]",
    ] {
        assert!(surely_json_bytes(ok), "{ok:?}");
    }
    // Invalid, overlong, a surrogate, cut short, a stray continuation,
    // and non-ASCII outside a string.
    for bad in [
        &b"\"\xff\""[..],
        b"\"\xc0\xaf\"",
        b"\"\xed\xa0\x80\"",
        b"\"\xe4\xb8\"",
        b"\"\x80\"",
        b"\"\xf4\x90\x80\x80\"",
        b"\xc3\xa9",
        b"[1]\xc2\xa0",
    ] {
        assert!(!surely_json_bytes(bad), "{bad:?}");
    }
}

#[test]
fn a_memo_checks_a_token_chunk_from_where_it_differs() {
    let chunk = |t: &str| {
        format!(
            r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{{"index":0,"delta":{{"content":"{t}"}},"finish_reason":null}}]}}"#
        )
    };
    let mut memo = Memo::default();
    assert!(memo.surely_json_bytes(chunk("Hello").as_bytes()));
    let next = chunk(" world");
    let from = memo.resume(next.as_bytes());
    // The content string's start: everything before it is not read again.
    assert_eq!(&next[from.at..from.at + 3], "\" w");
    assert_eq!(from.depth, 4);
    let mut memo = Memo::default();
    for t in ["a", "bc", r"d\u00e9", r#"e\""#, ""] {
        assert!(memo.surely_json_bytes(chunk(t).as_bytes()), "{t}");
    }
    // A chunk whose content alone changed is judged from the string: the
    // memo moves to it with its later value starts shifted.
    let mut memo = Memo::default();
    assert!(memo.surely_json_bytes(chunk("Hello").as_bytes()));
    let next = chunk(" world, and more");
    assert!(memo.one_string_changed(next.as_bytes()));
    let mut whole = Memo::default();
    assert!(whole.surely_json_bytes(next.as_bytes()));
    assert_eq!((&memo.prev, &memo.marks), (&whole.prev, &whole.marks));
    // The next chunk is judged from the same string, found without a look
    // for where it differs.
    let open = memo.changed.expect("the content string").open;
    assert_eq!(&next[open..open + 3], "\" w");
    assert!(memo.one_string_changed(chunk("!").as_bytes()));
    // Not when the string no longer closes where it did, or more changed.
    for other in [
        chunk(r#"a"b"#),
        chunk("a\\"),
        chunk("x").replace("null}", "nul}"),
        chunk(r"\u12"),
    ] {
        assert!(!memo.one_string_changed(other.as_bytes()), "{other}");
    }
    // A chunk cut short, or broken after the shared part, is refused.
    assert!(!memo.surely_json_bytes(&chunk("x").as_bytes()[..120]));
    assert!(memo.surely_json_bytes(chunk("x").as_bytes()));
    assert!(!memo.surely_json_bytes(chunk(r"x\u12").as_bytes()));
    assert!(!memo.surely_json_bytes(chunk("x").replace("null}", "nul}").as_bytes()));
    // Too long to keep: checked whole each time, and still judged.
    let long = chunk(&"y".repeat(MEMO_MAX));
    assert!(memo.surely_json_bytes(long.as_bytes()));
    assert!(memo.prev.is_empty() && memo.marks.is_empty());
    assert!(memo.surely_json_bytes(long.as_bytes()));
}

#[test]
fn common_prefixes_are_counted_to_the_byte() {
    let a = b"0123456789abcdefghij";
    for n in 0..=a.len() {
        let mut b = a.to_vec();
        if n < b.len() {
            b[n] ^= 1;
        }
        assert_eq!(common_prefix(a, &b), n);
        assert_eq!(common_prefix(&a[..n], a), n);
        assert_eq!(common_prefix(a, &a[..n]), n);
    }
}

#[test]
fn nesting_past_the_limit_is_left_to_serde_json() {
    let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert!(surely_json(&deep(MAX_DEPTH as usize)));
    assert!(!surely_json(&deep(MAX_DEPTH as usize + 1)));
    assert!(serde_ok(&deep(MAX_DEPTH as usize + 1)));
}

/// Texts made of JSON's own pieces, so most are near misses.
fn pieces() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{"),
        Just("}"),
        Just("["),
        Just("]"),
        Just(":"),
        Just(","),
        Just(" "),
        Just("\"k\""),
        Just("\"\\n\\u00e9\\/\""),
        Just("\"\\u12\""),
        Just("\"\\q\""),
        Just("\"é\u{1f}\""),
        Just("0"),
        Just("-12"),
        Just("3.25e-4"),
        Just("01"),
        Just("1."),
        Just("-"),
        Just("true"),
        Just("fals"),
        Just("null"),
        Just("\""),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

/// The value of `text` as a cursor walk reads it: each container
/// descended into, strings and scalars as the texts it hands back.
fn rebuilt(text: &str) -> Option<serde_json::Value> {
    fn value(c: &mut cursor::Cursor<'_>) -> Option<serde_json::Value> {
        use serde_json::Value;
        match c.peek()? {
            b'{' => {
                let mut m = serde_json::Map::new();
                c.object(|c, k| {
                    m.insert(k.to_owned(), value(c)?);
                    Some(())
                })?;
                Some(Value::Object(m))
            }
            b'[' => {
                let mut a = Vec::new();
                c.array(|c| value(c).map(|v| a.push(v)))?;
                Some(Value::Array(a))
            }
            b'"' => serde_json::from_str(c.string()?).ok(),
            _ => serde_json::from_str(c.take()?).ok(),
        }
    }
    let mut c = cursor::Cursor::new(text);
    let v = value(&mut c)?;
    c.at_end().then_some(v)
}

/// `v` as serde_json writes it, compact or pretty.
fn written(v: &serde_json::Value, pretty: bool) -> String {
    if pretty {
        serde_json::to_string_pretty(v).unwrap()
    } else {
        serde_json::to_string(v).unwrap()
    }
}

fn values() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            proptest::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    // Cheap cases: many of them, so near misses like `[0,]` come up.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn never_takes_what_serde_json_refuses(text in pieces()) {
        prop_assert!(!surely_json(&text) || serde_ok(&text), "{:?}", text);
    }

    #[test]
    fn takes_what_serde_json_writes(v in values(), pretty in any::<bool>()) {
        let text = written(&v, pretty);
        prop_assert!(surely_json(&text), "{}", text);
    }

    /// On JSON serde_json wrote, a cursor that descends into every
    /// container reads the value serde_json reads (keys with escapes: not
    /// sure), and one that skips it whole is sure of it.
    #[test]
    fn a_cursor_walk_reads_what_serde_json_reads(v in values(), pretty in any::<bool>()) {
        let text = written(&v, pretty);
        // As serde_json reads the text (floats need not round-trip).
        let want: serde_json::Value = serde_json::from_str(&text).unwrap();
        match rebuilt(&text) {
            Some(got) => prop_assert_eq!(got, want, "{}", text),
            None => prop_assert!(text.contains('\\'), "not sure of {}", text),
        }
        let mut c = cursor::Cursor::new(&text);
        prop_assert!(c.skip().is_some() && c.at_end(), "{}", text);
    }

    /// Whatever a cursor walk is sure of, serde_json takes.
    #[test]
    fn a_cursor_walk_never_takes_what_serde_json_refuses(text in pieces()) {
        prop_assert!(rebuilt(&text).is_none() || serde_ok(&text), "{:?}", text);
    }

    /// Texts that share starts with the one before (whole, cut and
    /// continued, one letter changed): the memo's verdict on each is
    /// the check's from the start.
    #[test]
    fn a_memo_judges_each_text_as_the_whole_check_does(
        steps in proptest::collection::vec(
            (0u8..4, values(), any::<prop::sample::Index>(), pieces()), 1..8),
    ) {
        let mut memo = Memo::default();
        let mut prev = String::new();
        for (how, v, at, tail) in steps {
            let mut at = at.index(prev.len() + 1);
            while !prev.is_char_boundary(at) {
                at -= 1;
            }
            let text = match how {
                0 => serde_json::to_string(&v).unwrap(),
                1 => format!("{}{tail}", &prev[..at]),
                2 => format!("{}{tail}{}", &prev[..at], &prev[at..]),
                _ => {
                    let mut t = prev.clone().into_bytes();
                    if let Some(c) = t.get_mut(at).filter(|c| c.is_ascii_alphanumeric()) {
                        *c = if *c == b'x' { b'y' } else { b'x' };
                    }
                    String::from_utf8(t).unwrap()
                }
            };
            let fresh = surely_json_bytes(text.as_bytes());
            prop_assert_eq!(memo.surely_json_bytes(text.as_bytes()), fresh,
                "{:?} after {:?}", text, prev);
            // What the memo keeps for the next text is what a check of
            // this one from the start leaves, whichever way it was judged.
            let mut whole = Memo::default();
            whole.surely_json_bytes(text.as_bytes());
            prop_assert_eq!(&memo.prev, &whole.prev, "{:?} after {:?}", text, prev);
            prop_assert_eq!(&memo.marks, &whole.marks, "{:?} after {:?}", text, prev);
            prev = text;
        }
    }

    #[test]
    fn plain_runs_end_where_a_byte_at_a_time_scan_ends(
        bytes in proptest::collection::vec(
            prop_oneof![
                1 => any::<u8>(), 1 => Just(b'"'), 1 => Just(b'\\'), 1 => Just(0x1F),
                1 => Just(0xC3), 1 => Just(0xA9), 12 => b' '..=b'~',
            ], 0..100),
        from in 0usize..100,
    ) {
        let from = from.min(bytes.len());
        let naive = |text: bool| bytes[from..]
            .iter()
            .position(|&c| c < 0x20 || (!text && c >= 0x80) || c == b'"' || c == b'\\')
            .map_or(bytes.len(), |p| from + p);
        let quote = bytes[from..].iter().position(|&c| c == b'"' || c == b'\\').map(|p| from + p);
        // Bytes, and text known to be UTF-8 (non-ASCII needs no look).
        for (text, plain, long) in [
            (false, plain_run::<false> as fn(&[u8], usize, usize) -> usize,
             long_run::<false> as fn(&[u8], usize) -> Option<usize>),
            (true, plain_run::<true>, long_run::<true>),
        ] {
            let naive = naive(text);
            prop_assert_eq!(plain(&bytes, from, usize::MAX), naive);
            // Two words at most: where the scan ends, or sixteen bytes on.
            let two = plain(&bytes, from, 2);
            prop_assert!(two == naive || (two == from + 16 && two < naive), "{} {}", two, naive);
            // From there, the long run ends at the quote or backslash, the
            // text before it checked.
            let good = |end: usize| {
                let run = &bytes[from..end];
                !run.iter().any(|&c| c < 0x20) && (text || std::str::from_utf8(run).is_ok())
            };
            prop_assert_eq!(long(&bytes, from), quote.filter(|&q| good(q)));
        }
    }

    #[test]
    fn bytes_taken_are_utf_8_and_json(
        v in values(), at in any::<prop::sample::Index>(),
        with in prop_oneof![0x80u8..=0xFF, Just(b'"'), Just(0xC3)], replace in any::<bool>(),
    ) {
        let mut text = serde_json::to_string(&v).unwrap().into_bytes();
        let at = at.index(text.len());
        if replace { text[at] = with } else { text.insert(at, with) }
        if surely_json_bytes(&text) {
            let s = std::str::from_utf8(&text);
            prop_assert!(s.is_ok_and(serde_ok), "{:?}", text);
        }
    }

    #[test]
    fn a_changed_byte_is_judged_as_serde_json_judges_it(
        v in values(), at in any::<prop::sample::Index>(), with in 0usize..12,
        replace in any::<bool>(),
    ) {
        let mut text = serde_json::to_string(&v).unwrap().into_bytes();
        let at = at.index(text.len());
        let b = b"{}[]:,\"\\0e-x"[with];
        if replace { text[at] = b } else { text.insert(at, b) }
        if let Ok(text) = String::from_utf8(text) {
            prop_assert!(!surely_json(&text) || serde_ok(&text), "{:?}", text);
        }
    }
}
