use super::*;

fn r(s: &str) -> String {
    Redactor::builtin().redact(s).into_owned()
}

#[test]
fn the_data_byte_scan_sees_every_byte_at_every_position() {
    let wanted = |c: u8| matches!(c, b'0'..=b'9' | b'@' | b':' | 0xEF);
    for len in [1, 31, 32, 33, 64, 95] {
        for at in [0, len / 2, len - 1] {
            for c in 0..=255u8 {
                let mut b = vec![b'a'; len];
                b[at] = c;
                assert_eq!(has_data_byte(&b), wanted(c), "byte {c:#x} at {at} of {len}");
            }
        }
    }
    assert!(!has_data_byte(b""));
}

#[test]
fn each_kind_is_found_and_checked() {
    assert_eq!(r("mail me: jane.doe+x@example.co.uk."), "mail me: [EMAIL].");
    // Card numbers pass Luhn; one digit off does not.
    assert_eq!(r("card 4111 1111 1111 1111 ok"), "card [CARD] ok");
    assert_eq!(r("card 4111-1111-1111-1111"), "card [CARD]");
    assert_eq!(r("order 4111111111111112"), "order 4111111111111112");
    // IBAN with and without spaces; a wrong check digit stays.
    assert_eq!(r("GB82 WEST 1234 5698 7654 32"), "[IBAN]");
    assert_eq!(r("to DE89370400440532013000."), "to [IBAN].");
    assert_eq!(r("GB83WEST12345698765432"), "GB83WEST12345698765432");
    // GB 11643 check character; a wrong one stays.
    assert_eq!(r("身份证号11010519491231002X。"), "身份证号[CN_ID]。");
    assert_eq!(r("id 110105194912310021"), "id 110105194912310021");
    // IP addresses must parse.
    assert_eq!(
        r("from 192.168.1.20 and 2001:db8::8a2e:370:7334"),
        "from [IP] and [IP]"
    );
    assert_eq!(r("version 999.1.1.1"), "version 999.1.1.1");
    // Phones: international, NANP, mainland mobile.
    assert_eq!(r("call +44 20 7946 0958 now"), "call [PHONE] now");
    assert_eq!(r("call (415) 555-2671"), "call [PHONE]");
    assert_eq!(r("手机13812345678"), "手机[PHONE]");
    // Dates and small numbers are not phones.
    assert_eq!(
        r("on 2026-11-27 at 10:30, 42 items"),
        "on 2026-11-27 at 10:30, 42 items"
    );
}

#[test]
fn clean_text_is_borrowed() {
    let red = Redactor::builtin();
    assert!(matches!(red.redact("hello world 123"), Cow::Borrowed(_)));
    assert!(red.is_clean(""));
    assert!(!red.is_clean("a@b.io"));
}

/// The findings as the redactor made them before it used one
/// multi-pattern regex: one alternation finds where a candidate starts,
/// then the first rule matching there on its own (anchored) says which
/// it is and where it ends.
fn findings_by_alternation(text: &str, custom: &str) -> Vec<(usize, usize, String)> {
    use regex_automata::Anchored;
    let mut pats: Vec<(&str, String)> = Kind::ALL
        .iter()
        .map(|k| (k.pattern(), k.tag().to_owned()))
        .collect();
    pats.push((custom, "[CUSTOM]".to_owned()));
    let alts: Vec<String> = pats.iter().map(|(p, _)| format!("(?:{p})")).collect();
    let re = Regex::new(&alts.join("|")).unwrap();
    let alone: Vec<Regex> = pats.iter().map(|(p, _)| Regex::new(p).unwrap()).collect();
    let (mut out, mut at) = (Vec::new(), 0);
    while let Some(m) = (at <= text.len())
        .then(|| re.search(&Input::new(text).range(at..)))
        .flatten()
    {
        let start = m.start();
        let input = Input::new(text).range(start..).anchored(Anchored::Yes);
        let (i, end) = (0..pats.len())
            .find_map(|i| alone[i].search(&input).map(|m| (i, m.end())))
            .unwrap();
        let verified = match Kind::ALL.get(i) {
            Some(k) => k.verified_len(&text[start..end]).map(|n| start + n),
            None => Some(end),
        };
        match verified.filter(|&end| end > start) {
            Some(end) => {
                out.push((start, end, pats[i].1.clone()));
                at = end;
            }
            None => at = start + text[start..].chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

proptest::proptest! {
    #[test]
    fn one_multi_pattern_regex_finds_what_the_alternation_found(
        text in proptest::prop_oneof![
            "[0-9 +\\-().:@a-zA-Z_XxDEGBé中文１＠]{0,80}",
            // Runs of digits in groups, where kinds overlap.
            "(1[0-9]{3}|[0-9]{4}|[0-9]{1,3}|[ .:\\-]|\\+|GB|AB-|DE[0-9]{2}|a@b|\\.io|X){0,16}",
        ],
    ) {
        let custom = "[A-Z]{2}-[0-9]{2,4}|1[0-9]{3}";
        let red = Redactor::new(&Kind::ALL, &[("custom".into(), custom.into())]).unwrap();
        let mut got = Vec::new();
        red.scan(&text, |s, e, tag| got.push((s, e, tag.to_owned())));
        proptest::prop_assert_eq!(got, findings_by_alternation(&text, custom));
    }

    #[test]
    fn the_window_changes_no_finding(
        text in proptest::prop_oneof![
            "[0-9 \t\n+\\-().:@a-zA-Z_XxDEGBé中文]{0,80}",
            // Tokens the kinds are made of, IBAN groups among them.
            r"(GB96 WEST 1234 5698 ABCD|GB13 1234 5678 ABCD EFGH|GB82|DE89|WEST|1234|AB|CDEF|X| |  |\t|\n|a@b|x\.y@c|\.io|\+44|\+1|\(415\)|555-2671|192\.168\.1\.2|::|fe80:|1[0-9]{3}|[0-9]{1,4}|[ .\-]|中|é){0,24}",
        ],
    ) {
        let red = Redactor::builtin();
        let (mut windowed, mut whole) = (Vec::new(), Vec::new());
        red.scan_in(&text, true, |s, e, tag| windowed.push((s, e, tag.to_owned())));
        red.scan_in(&text, false, |s, e, tag| whole.push((s, e, tag.to_owned())));
        proptest::prop_assert_eq!(windowed, whole);
    }
}

#[test]
fn kinds_can_be_chosen_and_custom_patterns_added() {
    let red = Redactor::new(
        &[Kind::Email],
        &[
            ("mrn".into(), r"MRN-[0-9]{6}".into()),
            ("emp".into(), r"E(\d)(\d)".into()),
        ],
    )
    .unwrap();
    assert_eq!(
        red.redact("a@b.io MRN-123456 +44 20 7946 0958 E12"),
        "[EMAIL] [MRN] +44 20 7946 0958 [EMP]"
    );
    let err = Redactor::new(&[], &[("bad".into(), "(".into())]).unwrap_err();
    assert_eq!(err.name, "bad");
    // Nothing on: nothing changes; one kind: nothing else.
    let none = Redactor::new(&[], &[]).unwrap();
    assert_eq!(none.redact("a@b.io"), "a@b.io");
    let email = Redactor::new(&[Kind::Email], &[]).unwrap();
    assert_eq!(
        email.redact("a@b.io +44 20 7946 0958"),
        "[EMAIL] +44 20 7946 0958"
    );
    let phone = Redactor::new(&[Kind::Phone], &[]).unwrap();
    assert_eq!(phone.redact("a@b.io +44 20 7946 0958"), "a@b.io [PHONE]");
}

#[test]
fn request_prompts_are_redacted_and_nothing_else() {
    let red = Redactor::builtin();
    let mut v = serde_json::json!({
        "model": "a@b.io",
        "system": "ops: ops@corp.example",
        "messages": [
            {"role": "user", "content": "I am jane@example.com"},
            {"role": "user", "content": [
                {"type": "text", "text": "card 4111 1111 1111 1111"},
                {"type": "image_url", "image_url": {"url": "https://x/a@b.io"}}
            ]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ip 10.1.2.3"}]}
        ],
        "user": "u@x.io"
    });
    assert!(redact_request(&mut v, &red));
    assert_eq!(v["model"], "a@b.io");
    assert_eq!(v["user"], "[EMAIL]");
    assert_eq!(v["system"], "ops: [EMAIL]");
    assert_eq!(v["messages"][0]["content"], "I am [EMAIL]");
    assert_eq!(v["messages"][1]["content"][0]["text"], "card [CARD]");
    assert_eq!(
        v["messages"][1]["content"][1]["image_url"]["url"],
        "https://x/a@b.io"
    );
    assert_eq!(v["messages"][2]["content"][0]["content"], "ip [IP]");
    let mut clean = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
    assert!(!redact_request(&mut clean, &red));
    let mut emb = serde_json::json!({"input": ["x", "+44 20 7946 0958"]});
    assert!(redact_request(&mut emb, &red));
    assert_eq!(emb["input"][1], "[PHONE]");
}

#[test]
fn tool_calls_user_and_metadata_are_redacted() {
    let red = Redactor::builtin();
    let mut v = serde_json::json!({
        "messages": [
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
              "function": {"name": "mail", "arguments": "{\"to\":\"jane@example.com\",\"n\":1}"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "call",
              "input": {"phone": "+44 20 7946 0958", "nested": ["ip 10.1.2.3"], "n": 4}}]}
        ],
        "user": "jane@example.com",
        "metadata": {"user_id": "jane@example.com", "tags": {"ip": "10.0.0.1"}}
    });
    assert!(redact_request(&mut v, &red));
    let args = v["messages"][0]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert_eq!(args, "{\"to\":\"[EMAIL]\",\"n\":1}");
    assert!(serde_json::from_str::<serde_json::Value>(args).is_ok());
    let input = &v["messages"][1]["content"][0]["input"];
    assert_eq!(input["phone"], "[PHONE]");
    assert_eq!(input["nested"][0], "ip [IP]");
    assert_eq!(input["n"], 4);
    assert_eq!(v["user"], "[EMAIL]");
    assert_eq!(v["metadata"]["user_id"], "[EMAIL]");
    assert_eq!(v["metadata"]["tags"]["ip"], "[IP]");
}

#[test]
fn international_and_fullwidth_forms_are_found() {
    // Accented and CJK addresses, IDN domains.
    assert_eq!(r("write to josé.garcía@example.com"), "write to [EMAIL]");
    assert_eq!(r("邮箱：用户@例子.中国。"), "邮箱：[EMAIL]。");
    assert_eq!(r("请发到jane@example.com谢谢"), "请发到[EMAIL]谢谢");
    assert_eq!(r("mail müller@bücher.de"), "mail [EMAIL]");
    // A Unicode TLD of any length is taken whole (28 letters here).
    let tld = "ελληνικά".repeat(4).chars().take(28).collect::<String>();
    assert_eq!(
        r(&format!("mail a@παράδειγμα.{tld} now")),
        "mail [EMAIL] now"
    );
    // Mainland mobiles as people write them.
    for m in [
        "13800138000",
        "138-0013-8000",
        "138 0013 8000",
        "+86 138 0013 8000",
    ] {
        assert_eq!(r(&format!("tel {m}.")), "tel [PHONE].", "{m}");
    }
    // Fullwidth digits and signs (CJK input methods).
    assert_eq!(
        r("手机：１３８００１３８０００，谢谢"),
        "手机：[PHONE]，谢谢"
    );
    assert_eq!(r("卡号 ４１１１ １１１１ １１１１ １１１１"), "卡号 [CARD]");
    assert_eq!(r("ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ ok"), "[EMAIL] ok");
    // Fullwidth punctuation alone is left alone, and borrowed.
    assert!(matches!(
        Redactor::builtin().redact("你好，世界（测试）"),
        Cow::Borrowed(_)
    ));
    // Cards with dots; a dotted version string is not one.
    assert_eq!(r("card 4111.1111.1111.1111"), "card [CARD]");
    assert_eq!(r("v1.2.3.4"), "v1.2.3.4");
}

#[test]
fn checks() {
    assert!(luhn_valid("4111111111111111"));
    assert!(luhn_valid("5500 0000 0000 0004"));
    assert!(!luhn_valid("1234567812345678"));
    assert!(!luhn_valid("0"));
    assert!(iban_valid("DE89370400440532013000"));
    assert!(iban_valid("FR14 2004 1010 0505 0001 3M02 606"));
    assert!(!iban_valid("DE89370400440532013001"));
    assert!(china_id_valid("11010519491231002X"));
    assert!(china_id_valid("11010519491231002x"));
    assert!(!china_id_valid("110105194912310020"));
}

/// Random text with PII planted in it: never panics, every planted
/// item is gone, the output is stable under a second pass.
#[test]
fn randomized_never_panics_and_removes_planted_items() {
    let red = Redactor::builtin();
    let planted = [
        "jane@example.com",
        "4111 1111 1111 1111",
        "DE89370400440532013000",
        "11010519491231002X",
        "10.0.0.1",
        "+1 415 555 2671",
    ];
    let alphabet: Vec<char> = "ab Z09-.:@+()\n\t\"\\é中文💡".chars().collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut s = String::new();
        let n = (next() % 40) as usize;
        for _ in 0..n {
            s.push(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        let item = planted[(next() % planted.len() as u64) as usize];
        s.push(' ');
        s.push_str(item);
        s.push(' ');
        for _ in 0..(next() % 20) {
            s.push(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        let once = red.redact(&s).into_owned();
        assert!(!once.contains(item), "{s:?} -> {once:?}");
        assert_eq!(red.redact(&once), once, "stable: {s:?}");
    }
}

#[test]
fn a_cached_redactor_answers_as_an_uncached_one_every_time() {
    let plain = Redactor::builtin();
    let cached = Redactor::builtin().with_cache(1 << 20);
    let texts = [
        "Summarise the incident for jane.doe@example.com: build 4812 retried twice.".to_string(),
        "Ticket 88213: the EU pool answered 502 from 09:14 to 09:31 UTC, nothing personal.".into(),
        "card 4111 1111 1111 1111 and 4111 1111 1111 1112, call +44 20 7946 0958 before 10:30"
            .into(),
        "手机１３８１２３４５６７８，邮箱ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ，and a long enough tail"
            .into(),
        // Short: never cached, still redacted.
        "mail a@b.io".into(),
        format!("{} 10.0.0.1", "prose ".repeat(50)),
    ];
    for round in 0..4 {
        for t in &texts {
            assert_eq!(cached.redact(t), plain.redact(t), "round {round}: {t}");
            // Appended after what the buffer held, as request redaction does.
            let (mut a, mut b) = ("head ".to_string(), "head ".to_string());
            assert_eq!(
                cached.redact_reserving(t, &mut a, 7),
                plain.redact_reserving(t, &mut b, 7)
            );
            assert_eq!(a, b, "round {round}: {t}");
        }
    }
    // A whole conversation, sent again and again: the same body upstream.
    let body = serde_json::json!({"model": "m", "messages": texts.iter()
        .map(|t| serde_json::json!({"role": "user", "content": t})).collect::<Vec<_>>()})
    .to_string();
    let want = redact_request_json(body.as_bytes(), &plain)
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        let got = redact_request_json(body.as_bytes(), &cached)
            .unwrap()
            .unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            String::from_utf8(want.clone()).unwrap()
        );
    }
}

#[test]
fn a_small_cache_shared_by_threads_answers_as_no_cache() {
    // Small enough that generations turn over all the time while four
    // threads look up, scan and keep overlapping texts.
    let cached = std::sync::Arc::new(Redactor::builtin().with_cache(16 * 1024));
    let plain = Redactor::builtin();
    let texts: Vec<String> = (0..300)
        .map(|i| match i % 3 {
            0 => format!("turn {i}: write to user{i}@example.com about ticket {i}"),
            1 => format!(
                "turn {i}: nothing personal in ticket {i}, just {} words",
                i * 7
            ),
            _ => format!(
                "call +44 20 7946 {:04} or card 4111 1111 1111 1111 ({i})",
                i % 10_000
            ),
        })
        .collect();
    let want: Vec<String> = texts.iter().map(|t| plain.redact(t).into_owned()).collect();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (cached, texts, want) = (&cached, &texts, &want);
            s.spawn(move || {
                for round in 0..20 {
                    for k in 0..texts.len() {
                        // Each thread its own order, hot texts among cold.
                        let k = (k * (2 * t + 1) + round) % texts.len();
                        let k = if k % 4 == 0 { k % 8 } else { k };
                        assert_eq!(cached.redact(&texts[k]), want[k], "thread {t}");
                    }
                }
            });
        }
    });
    let stats = cached.cache_stats().unwrap();
    assert!(stats.hits > 0 && stats.misses > 0, "{stats:?}");
    assert!(stats.bytes <= 2 * 16 * 1024 + 8 * 512, "{stats:?}");
}

#[test]
fn a_text_too_large_to_keep_is_scanned_without_a_lookup() {
    // 8 KiB in 8 shards: a text past a quarter of a shard is never kept.
    let cached = Redactor::builtin().with_cache(8 * 1024);
    let plain = Redactor::builtin();
    let big = format!("{} write to jane.doe@example.com", "prose ".repeat(60));
    let small = "write to jane.doe@example.com today";
    for _ in 0..3 {
        assert_eq!(cached.redact(&big), plain.redact(&big));
        assert!(cached.redact(&big).contains("[EMAIL]"));
    }
    assert_eq!(cached.cache_stats().unwrap(), Default::default());
    for _ in 0..3 {
        assert_eq!(cached.redact(small), plain.redact(small));
    }
    let stats = cached.cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (1, 2), "{stats:?}");
}
