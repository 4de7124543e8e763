//! PII redaction: finds personal data in text and replaces each finding with
//! a tag naming its kind (`[EMAIL]`, `[CARD]`, …).
//!
//! All patterns — the built-in kinds and the user's own — are compiled into
//! one regex, so a text is scanned once however many kinds are on. Which
//! kind a match is comes from each kind's own regex run anchored at the
//! match (the first that matches there is the alternative the combined
//! regex took): no capture groups, whose search over these large Unicode
//! automata costs far more than the scan. A match is only a candidate:
//! card numbers must pass the Luhn check, IBANs the ISO 7064 mod-97 check,
//! mainland-China resident IDs their GB 11643 check character, IP
//! addresses must parse, phone numbers must have 7–15 digits (E.164). A
//! candidate that fails its check is left as it is.
//!
//! Text with no finding is returned borrowed: nothing is allocated for the
//! common case.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

mod request;
pub use request::{
    Members, Pass, Redacted, Seen, redact_request, redact_request_json, redact_request_json_keeping,
};

/// The kinds of personal data found by the built-in patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Email,
    Iban,
    ChinaId,
    Card,
    Ip,
    Phone,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Email,
        Kind::Iban,
        Kind::ChinaId,
        Kind::Card,
        Kind::Ip,
        Kind::Phone,
    ];

    /// The name used in configuration (`kinds = ["email", …]`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Iban => "iban",
            Kind::ChinaId => "china_id",
            Kind::Card => "card",
            Kind::Ip => "ip",
            Kind::Phone => "phone",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::Email => "[EMAIL]",
            Kind::Iban => "[IBAN]",
            Kind::ChinaId => "[CN_ID]",
            Kind::Card => "[CARD]",
            Kind::Ip => "[IP]",
            Kind::Phone => "[PHONE]",
        }
    }

    /// The pattern, written for leftmost-first alternation: more specific
    /// kinds come first. `(?-u:\b)` is an ASCII word boundary, so digits
    /// right next to CJK text still count as a separate number.
    fn pattern(self) -> &'static str {
        match self {
            // Internationalised addresses too (RFC 6531): accented Latin
            // or CJK local parts, IDN domains and TLDs. A local part is one
            // script or the other, so CJK text right before a Latin address
            // is not swallowed with it. A Unicode TLD is two letters or more
            // with no upper bound: `\p{L}{2,24}` compiled the letter class
            // 24 times over, ~2 MB of automaton per copy of this pattern
            // (there are two) and a 4.8 MB peak while it compiled, for
            // every gateway with redaction on (the default); a longer TLD
            // is now taken whole instead of cut at 24 letters.
            Kind::Email => {
                r"(?:[\p{Latin}0-9._%+\-]+|[\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}0-9._%+\-]+)@[\p{L}\p{M}0-9\-]+(?:\.[\p{L}\p{M}0-9\-]+)*\.(?:[A-Za-z]{2,24}|\p{L}\p{L}+)"
            }
            Kind::Iban => {
                r"(?-u:\b)[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?-u:\b)"
            }
            Kind::ChinaId => r"(?-u:\b)[1-9][0-9]{16}[0-9Xx](?-u:\b)",
            Kind::Card => {
                r"(?-u:\b)(?:[0-9]{13,19}|[0-9]{4}(?:[ .\-][0-9]{4}){2,3}(?:[ .\-][0-9]{1,3})?|[0-9]{4}[ \-][0-9]{6}[ \-][0-9]{4,5})(?-u:\b)"
            }
            Kind::Ip => {
                r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{1,4}(?-u:\b)"
            }
            Kind::Phone => {
                r"\+[0-9][0-9 ().\-]{5,20}[0-9]|(?:\([0-9]{3}\) ?|(?-u:\b)[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}(?-u:\b)|(?-u:\b)1[3-9][0-9](?:[ \-]?[0-9]{4}){2}(?-u:\b)"
            }
        }
    }

    /// The length of the longest verified prefix of a candidate: the whole
    /// of it, or — for numbers written in groups — the candidate without
    /// its last groups (`4111 1111 1111 1111 9`: the card, then a 9).
    fn verified_len(self, s: &str) -> Option<usize> {
        let mut end = s.len();
        loop {
            if self.check(&s[..end]) {
                return Some(end);
            }
            if !matches!(self, Kind::Card | Kind::Iban | Kind::Phone) {
                return None;
            }
            end = s[..end].rfind([' ', '-', '.'])?;
        }
    }

    fn check(self, s: &str) -> bool {
        match self {
            Kind::Email => true,
            Kind::Iban => iban_valid(s),
            Kind::ChinaId => china_id_valid(s),
            Kind::Card => luhn_valid(s),
            Kind::Ip => s.parse::<Ipv4Addr>().is_ok() || s.parse::<Ipv6Addr>().is_ok(),
            Kind::Phone => (7..=15).contains(&s.bytes().filter(u8::is_ascii_digit).count()),
        }
    }
}

/// What an alternative of the combined regex stands for.
#[derive(Debug, Clone)]
enum Rule {
    Builtin(Kind),
    Custom { tag: String },
}

/// A compiled redactor. Cheap to share (`Arc`), safe across threads.
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Every rule as one alternation, in order: finds where a candidate
    /// starts.
    re: Regex,
    /// Each rule alone: which one matched there, and where it ends.
    rules: Vec<(Rule, Regex)>,
    /// Only built-in kinds: every one of them needs an ASCII digit, `@` or
    /// `:` (or a fullwidth form of one), so text without any is clean.
    builtin_only: bool,
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
        let mut alts = Vec::new();
        let compile = |name: &str, pat: &str| {
            Regex::new(pat).map_err(|e| PatternError {
                name: name.to_owned(),
                message: e.to_string(),
            })
        };
        for k in Kind::ALL.into_iter().filter(|k| kinds.contains(k)) {
            alts.push(format!("(?:{})", k.pattern()));
            rules.push((Rule::Builtin(k), compile(k.name(), k.pattern())?));
        }
        for (name, pat) in custom {
            // Each user pattern alone: for an error that names it, and to
            // tell its matches from the others'.
            let alone = compile(name, pat)?;
            alts.push(format!("(?:{pat})"));
            let tag = format!("[{}]", name.to_ascii_uppercase());
            rules.push((Rule::Custom { tag }, alone));
        }
        // With no rule, a regex that matches nothing.
        let combined = if alts.is_empty() {
            r"[^\s\S]".to_owned()
        } else {
            alts.join("|")
        };
        let re = compile("(combined)", &combined)?;
        let builtin_only = custom.is_empty();
        Ok(Self {
            re,
            rules,
            builtin_only,
        })
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
        if !self.may_match(text) {
            return Cow::Borrowed(text);
        }
        let folded = fold_fullwidth(text);
        let (scanned, map) = match &folded {
            Some((f, map)) => (f.as_str(), Some(map)),
            None => (text, None),
        };
        let at = |i: usize| map.map_or(i, |m| m[i]);
        let mut out: Option<String> = None;
        let mut last = 0;
        self.scan(scanned, |start, end, tag| {
            let (start, end) = (at(start), at(end));
            let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
            o.push_str(&text[last..start]);
            o.push_str(tag);
            last = end;
        });
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[last..]);
                Cow::Owned(o)
            }
        }
    }

    /// Calls `found(start, end, tag)` for each verified finding, in order.
    fn scan(&self, text: &str, mut found: impl FnMut(usize, usize, &str)) {
        let mut at = 0;
        while at <= text.len() {
            let Some(m) = self.re.search(&Input::new(text).range(at..)) else {
                break;
            };
            let start = m.start();
            if let Some((tag, end)) = self.classify(text, start)
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

    /// Which rule matched at `start`: under leftmost-first alternation it
    /// is the first rule that matches there on its own, and it ends where
    /// that rule's own match ends. Then whether its check passes.
    fn classify(&self, text: &str, start: usize) -> Option<(&str, usize)> {
        let input = Input::new(text).range(start..).anchored(Anchored::Yes);
        let (rule, m) = self
            .rules
            .iter()
            .find_map(|(rule, re)| re.search(&input).map(|m| (rule, m)))?;
        match rule {
            Rule::Builtin(k) => k
                .verified_len(&text[start..m.end()])
                .map(|n| (k.tag(), start + n)),
            Rule::Custom { tag } => Some((tag.as_str(), m.end())),
        }
    }

    /// True when `text` holds no verified finding.
    pub fn is_clean(&self, text: &str) -> bool {
        matches!(self.redact(text), Cow::Borrowed(_))
    }
}

/// `text` with fullwidth ASCII forms (U+FF01–U+FF5E) and the ideographic
/// space folded to ASCII, and for each byte offset of the folded text the
/// offset in `text` (one past the end included); `None` when there are none.
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

/// Luhn check over the digits of `s` (separators ignored).
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 IBAN: country letters, two check digits, 11–30 alphanumerics;
/// the rearranged number mod 97 is 1.
pub fn iban_valid(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut rem: u32 = 0;
    for &b in tail.iter().chain(head) {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// GB 11643-1999 resident identity number: 17 digits and a check character.
pub fn china_id_valid(s: &str) -> bool {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let b = s.as_bytes();
    if b.len() != 18 {
        return false;
    }
    let mut sum = 0;
    for (i, w) in W.iter().enumerate() {
        if !b[i].is_ascii_digit() {
            return false;
        }
        sum += u32::from(b[i] - b'0') * w;
    }
    CHECK[(sum % 11) as usize] == b[17].to_ascii_uppercase()
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
        // Nothing on: nothing changes.
        let none = Redactor::new(&[], &[]).unwrap();
        assert_eq!(none.redact("a@b.io"), "a@b.io");
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
