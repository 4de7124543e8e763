//! PII redaction: finds personal data in text and replaces each finding with
//! a tag naming its kind (`[EMAIL]`, `[CARD]`, …).
//!
//! All patterns — the built-in kinds and the user's own — are compiled into
//! one multi-pattern regex, so a text is scanned once however many kinds
//! are on, and a match names the pattern that found it (leftmost-first:
//! the earliest pattern matching at the leftmost start, as an alternation
//! would take): no capture groups, whose search over these large Unicode
//! automata costs far more than the scan. A match is only a candidate:
//! card numbers must pass the Luhn check, IBANs the ISO 7064 mod-97 check,
//! mainland-China resident IDs their GB 11643 check character, IP
//! addresses must parse, phone numbers must have 7–15 digits (E.164). A
//! candidate that fails its check is left as it is.
//!
//! Text with no finding is returned borrowed: nothing is allocated for the
//! common case.

use std::borrow::Cow;

use regex_automata::Input;
use regex_automata::meta::Regex;

mod kind;
mod request;
mod window;
pub use kind::{Kind, china_id_valid, iban_valid, luhn_valid};
pub use request::{
    Members, Pass, Redacted, Seen, redact_request, redact_request_json, redact_request_json_keeping,
};

/// What an alternative of the combined regex stands for.
#[derive(Debug, Clone)]
enum Rule {
    Builtin(Kind),
    Custom { tag: String },
}

/// A compiled redactor. Cheap to share (`Arc`), safe across threads.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Every rule, one pattern each in order, as one automaton: a match
    /// says where a candidate lies and which rule found it.
    re: Regex,
    /// What each pattern of `re` stands for.
    rules: Vec<Rule>,
    /// Only built-in kinds: every one of them needs an ASCII digit, `@` or
    /// `:` (or a fullwidth form of one), so text without any is clean.
    builtin_only: bool,
    /// No tag holds a character JSON must escape (a custom name could).
    tags_plain: bool,
}

/// A user pattern that does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub name: String,
    pub message: String,
}

impl Redactor {
    /// Every built-in kind, no custom patterns.
    pub fn builtin() -> Self {
        Self::new(&Kind::ALL, &[]).expect("the built-in patterns compile")
    }

    /// `kinds` in their built-in order, then `custom` (name, regex) in the
    /// order given; each custom finding becomes `[NAME]` in upper case.
    pub fn new(kinds: &[Kind], custom: &[(String, String)]) -> Result<Self, PatternError> {
        let mut rules = Vec::new();
        let mut patterns = Vec::new();
        let compile = |name: &str, pats: &[&str]| {
            Regex::new_many(pats).map_err(|e| PatternError {
                name: name.to_owned(),
                message: e.to_string(),
            })
        };
        for k in Kind::ALL.into_iter().filter(|k| kinds.contains(k)) {
            patterns.push(k.pattern());
            rules.push(Rule::Builtin(k));
        }
        for (name, pat) in custom {
            // Each user pattern alone first, for an error that names it.
            compile(name, &[pat])?;
            patterns.push(pat);
            let tag = format!("[{}]", name.to_ascii_uppercase());
            rules.push(Rule::Custom { tag });
        }
        let re = compile("(combined)", &patterns)?;
        let builtin_only = custom.is_empty();
        let tags_plain = rules.iter().all(|r| match r {
            Rule::Builtin(_) => true,
            Rule::Custom { tag } => !tag.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
        });
        Ok(Self {
            re,
            rules,
            builtin_only,
            tags_plain,
        })
    }

    /// Whether every tag can go into a JSON string as it is.
    pub(crate) fn tags_plain(&self) -> bool {
        self.tags_plain
    }

    /// Whether `text` could hold a finding at all: a byte scan that spares
    /// the automaton the prose around the data (system prompts, most turns).
    fn may_match(&self, text: &str) -> bool {
        !self.builtin_only || has_data_byte(text.as_bytes())
    }

    /// `text` with every verified finding replaced by its tag. Fullwidth
    /// forms (`１３８…`, `＠`, as CJK input methods type them) are read as
    /// their ASCII twins, so they are found too.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = String::new();
        if self.redact_into(text, &mut out) {
            Cow::Owned(out)
        } else {
            Cow::Borrowed(text)
        }
    }

    /// [`redact`](Self::redact), the redacted text appended to `out`: true
    /// when anything was found, else `out` is left as it was. A caller
    /// redacting several texts keeps them in one buffer.
    pub fn redact_into(&self, text: &str, out: &mut String) -> bool {
        self.redact_reserving(text, out, text.len())
    }

    /// [`redact_into`](Self::redact_into), `out` given room for `room`
    /// more bytes at the first finding (a caller that knows how much text
    /// may follow grows `out` once).
    pub(crate) fn redact_reserving(&self, text: &str, out: &mut String, room: usize) -> bool {
        if !self.may_match(text) {
            return false;
        }
        let folded = fold_fullwidth(text);
        let (scanned, map) = match &folded {
            Some((f, map)) => (f.as_str(), Some(map)),
            None => (text, None),
        };
        let at = |i: usize| map.map_or(i, |m| m[i]);
        let (mut found, mut last) = (false, 0);
        self.scan(scanned, |start, end, tag| {
            let (start, end) = (at(start), at(end));
            if !found {
                found = true;
                out.reserve(room);
            }
            out.push_str(&text[last..start]);
            out.push_str(tag);
            last = end;
        });
        if found {
            out.push_str(&text[last..]);
        }
        found
    }

    /// Calls `found(start, end, tag)` for each verified finding, in order.
    fn scan(&self, text: &str, found: impl FnMut(usize, usize, &str)) {
        self.scan_in(text, self.builtin_only, found);
    }

    /// [`scan`](Self::scan), the automaton reading only the part of `text`
    /// where a match can lie when `windowed` (see `window.rs`).
    fn scan_in(&self, text: &str, windowed: bool, mut found: impl FnMut(usize, usize, &str)) {
        let bytes = text.as_bytes();
        let reach = if windowed {
            window::reach(bytes)
        } else {
            Some(text.len())
        };
        let Some(reach) = reach else { return };
        let mut at = 0;
        while at <= reach {
            let from = if windowed {
                match window::start(bytes, at) {
                    Some(from) => from,
                    None => break,
                }
            } else {
                at
            };
            let Some(m) = self.re.search(&Input::new(text).range(from..reach)) else {
                break;
            };
            let start = m.start();
            let verified = match &self.rules[m.pattern().as_usize()] {
                Rule::Builtin(k) => k
                    .verified_len(&text[start..m.end()])
                    .map(|n| (k.tag(), start + n)),
                Rule::Custom { tag } => Some((tag.as_str(), m.end())),
            };
            if let Some((tag, end)) = verified
                && end > start
            {
                found(start, end, tag);
                at = end;
            } else {
                // A candidate that failed its check (or an empty match) may
                // still hide a real finding inside it: look again one
                // character further on.
                at = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }

    /// True when `text` holds no verified finding.
    pub fn is_clean(&self, text: &str) -> bool {
        matches!(self.redact(text), Cow::Borrowed(_))
    }
}

/// Whether `b` holds a byte a built-in kind needs: a digit, `@`, `:` (IPv6)
/// or 0xEF, which leads the fullwidth forms (U+FF00–U+FFEF, folded below).
/// Whole chunks are tested without an early exit inside, which the
/// compiler turns into vector compares: a byte at a time, with a branch
/// each, this scan cost ~6,000 instructions per request in the
/// production-shaped bench (`bench/instructions.py --prod`).
fn has_data_byte(b: &[u8]) -> bool {
    // `0`–`9` and `:` are the contiguous 0x30–0x3A.
    let hit = |c: u8| (c.wrapping_sub(b'0') <= 10) | (c == b'@') | (c == 0xEF);
    let mut chunks = b.chunks_exact(32);
    for c in &mut chunks {
        if c.iter().fold(false, |any, &x| any | hit(x)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&x| hit(x))
}

/// `text` with fullwidth ASCII forms (U+FF01–U+FF5E) and the ideographic
/// space folded to ASCII, and for each byte offset of the folded text the
/// offset in `text` (one past the end included); `None` when there are none.
fn fold_fullwidth(text: &str) -> Option<(String, Vec<usize>)> {
    // Folded only when there is something to find in it: a fullwidth digit
    // (U+FF10–U+FF19, EF BC 90–99) or at sign (U+FF20, EF BC A0). Fullwidth
    // punctuation alone is everyday CJK text and costs nothing.
    let b = text.as_bytes();
    let has = memchr::memchr_iter(0xEF, b)
        .any(|i| matches!(b.get(i + 1..i + 3), Some([0xBC, 0x90..=0x99 | 0xA0])));
    if !has {
        return None;
    }
    let mut folded = String::with_capacity(text.len());
    let mut map = Vec::with_capacity(text.len() + 1);
    for (i, c) in text.char_indices() {
        let ascii = match c {
            '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFEE0),
            '\u{3000}' => Some(' '),
            _ => None,
        };
        let c = ascii.unwrap_or(c);
        for _ in 0..c.len_utf8() {
            map.push(i);
        }
        folded.push(c);
    }
    map.push(text.len());
    Some((folded, map))
}

#[cfg(test)]
mod tests {
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
}
