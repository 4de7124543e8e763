//! A quick, allocation-free test that a text is one JSON value, for the
//! per-event check of a passed-through stream ([`crate::check`]).
//!
//! serde_json stays the judge: this only says "surely JSON" (RFC 8259) or
//! "not sure", and "not sure" goes to serde_json for its verdict and its
//! error message. So it must never accept what serde_json refuses; it may
//! refuse what serde_json accepts (nesting deeper than [`MAX_DEPTH`]).
//! Its worth is speed on what a token stream carries — ~220-byte objects of
//! short strings: serde_json (`IgnoredAny`) took ~3,300 instructions per
//! such event, this check ~2,200, strings eight bytes a step
//! (`bench/instructions.py --stream --model burst`, callgrind), and with a
//! [`Memo`] (only what differs from the chunk before is read) ~850.

/// Deeper nesting is left to serde_json (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

/// `true` when `text` is certainly one JSON value, whitespace around it
/// allowed; `false` when it is not, or when this check does not know.
pub fn surely_json(text: &str) -> bool {
    surely_json_bytes(text.as_bytes())
}

/// `true` when `b` is certainly UTF-8 and one JSON value (no separate
/// UTF-8 pass: outside strings JSON is ASCII, and a string's non-ASCII
/// sequences are checked where they are met).
pub fn surely_json_bytes(b: &[u8]) -> bool {
    check(b, State::default(), &mut ())
}

/// Where the check stands when it is about to read a value: what it has
/// read before `at` is all that made it so (and the byte at `at`, which it
/// may have looked at to tell a value from a closing bracket).
#[derive(Clone, Copy, Debug, Default)]
struct State {
    at: usize,
    depth: u32,
    /// Bit `d` set: the container open at depth `d` is an object.
    objects: u64,
}

/// Where [`check`] leaves the states it passes through.
trait Marks {
    fn mark(&mut self, s: State);
}

impl Marks for () {
    #[inline(always)]
    fn mark(&mut self, _: State) {}
}

impl Marks for Vec<State> {
    #[inline]
    fn mark(&mut self, s: State) {
        if self.len() < MEMO_MARKS {
            self.push(s);
        }
    }
}

/// [`surely_json_bytes`] for a run of texts that mostly repeat the one
/// before (a token stream's chunks: id, model and the path to `content`
/// are the same in every one, ~3/4 of each): each text is checked from the
/// last value start that lies in the part it shares with the previous one
/// surely-JSON text, as the check of that text stood there. What the check
/// does from a value start depends only on the bytes before it (and the
/// one at it), so the verdict is the same as checking from the start.
#[derive(Debug, Default)]
pub struct Memo {
    /// The last text found surely JSON (empty when none, or too long).
    prev: Vec<u8>,
    /// The states at its value starts, in order.
    marks: Vec<State>,
}

/// Longer texts are checked whole and not kept (a token chunk is ~220 bytes).
const MEMO_MAX: usize = 4096;
/// Value starts kept per text (a token chunk has ~15).
const MEMO_MARKS: usize = 64;

impl Memo {
    /// [`surely_json_bytes`] of `b`.
    pub fn surely_json_bytes(&mut self, b: &[u8]) -> bool {
        let from = self.resume(b);
        let ok = check(b, from, &mut self.marks);
        self.prev.clear();
        if ok && b.len() <= MEMO_MAX {
            self.prev.extend_from_slice(b);
        } else {
            self.marks.clear();
        }
        ok
    }
}

impl Memo {
    /// Where the check of `b` can start: the last value start of the
    /// previous text before the first byte `b` does not share with it
    /// (whose mark [`check`] will leave again, so it is dropped here).
    fn resume(&mut self, b: &[u8]) -> State {
        let same = common_prefix(&self.prev, b);
        let k = self.marks.partition_point(|m| m.at < same);
        let from = k
            .checked_sub(1)
            .map_or_else(State::default, |k| self.marks[k]);
        self.marks.truncate(k.saturating_sub(1));
        from
    }
}

/// How many leading bytes `a` and `b` share, eight a step.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while let (Some(x), Some(y)) = (a.get(i..i + 8), b.get(i..i + 8)) {
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(s);
            u64::from_le_bytes(w)
        };
        let diff = word(x) ^ word(y);
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// The check from `from` (a value start), each value start it passes
/// through left in `marks`.
fn check(b: &[u8], from: State, marks: &mut impl Marks) -> bool {
    let State {
        at: mut i,
        mut depth,
        mut objects,
    } = from;
    'value: loop {
        marks.mark(State {
            at: i,
            depth,
            objects,
        });
        i = skip_ws(b, i);
        match b.get(i) {
            Some(&open @ (b'{' | b'[')) => {
                if depth == MAX_DEPTH {
                    return false;
                }
                let object = open == b'{';
                objects = (objects & !(1 << depth)) | (u64::from(object) << depth);
                depth += 1;
                i = skip_ws(b, i + 1);
                let close = if object { b'}' } else { b']' };
                if b.get(i) == Some(&close) {
                    depth -= 1;
                    i += 1;
                } else if object {
                    match key(b, i) {
                        Some(j) => i = j,
                        None => return false,
                    }
                    continue 'value;
                } else {
                    continue 'value;
                }
            }
            Some(b'"') => match string(b, i) {
                Some(j) => i = j,
                None => return false,
            },
            Some(b'-' | b'0'..=b'9') => match number(b, i) {
                Some(j) => i = j,
                None => return false,
            },
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            _ => return false,
        }
        // After a value: close what it ends, or go on to the next one.
        loop {
            i = skip_ws(b, i);
            if depth == 0 {
                return i == b.len();
            }
            let object = (objects >> (depth - 1)) & 1 == 1;
            match (b.get(i), object) {
                (Some(b','), false) => {
                    i += 1;
                    continue 'value;
                }
                (Some(b','), true) => match key(b, skip_ws(b, i + 1)) {
                    Some(j) => {
                        i = j;
                        continue 'value;
                    }
                    None => return false,
                },
                (Some(b']'), false) | (Some(b'}'), true) => {
                    depth -= 1;
                    i += 1;
                }
                _ => return false,
            }
        }
    }
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// A member's key and its colon, at `i`: the index after the colon.
#[inline]
fn key(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, string(b, i)?);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

/// The string starting at `b[i] == '"'`: the index after its closing quote.
/// Escapes, control characters and non-ASCII (UTF-8) sequences need a look.
#[inline]
fn string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        i = plain_run(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                // serde_json takes any four hex digits when it skips a value
                // (a lone surrogate included).
                b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            0..=0x1F => return None,
            lead @ 0x80..=0xFF => {
                let n = match lead {
                    0xC2..=0xDF => 2,
                    0xE0..=0xEF => 3,
                    0xF0..=0xF4 => 4,
                    _ => return None,
                };
                std::str::from_utf8(b.get(i..i + n)?).ok()?;
                i += n;
            }
            _ => i += 1,
        }
    }
}

/// The index of the first `"`, `\\`, control or non-ASCII byte at or after
/// `i`, eight bytes a step (the length of `b` if there is none). Text is
/// mostly such runs; a byte at a time they cost ~12 instructions a byte.
#[inline]
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // Bytes of `v` below `n`, as their high bit: exact up to the lowest
    // one (higher ones may be false, from the borrow), which is all that
    // is used.
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let special = below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20)
            | (x & HIGH);
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while b
        .get(i)
        .is_some_and(|&c| (0x20..0x80).contains(&c) && c != b'"' && c != b'\\')
    {
        i += 1;
    }
    i
}

/// The number starting at `i`: the index after it.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b[i] == b'-' {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = some_digits(b, i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = some_digits(b, i)?;
    }
    Some(i)
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// At least one digit at `i`: the index after the last.
fn some_digits(b: &[u8], i: usize) -> Option<usize> {
    let end = digits(b, i);
    (end > i).then_some(end)
}

#[cfg(test)]
mod tests {
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
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            prop_assert!(surely_json(&text), "{}", text);
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
                prev = text;
            }
        }

        #[test]
        fn plain_runs_end_where_a_byte_at_a_time_scan_ends(
            bytes in proptest::collection::vec(
                prop_oneof![any::<u8>(), Just(b'"'), Just(b'\\'), Just(0x1F), Just(b' ')], 0..40),
            from in 0usize..40,
        ) {
            let from = from.min(bytes.len());
            let naive = bytes[from..]
                .iter()
                .position(|&c| !(0x20..0x80).contains(&c) || c == b'"' || c == b'\\')
                .map_or(bytes.len(), |p| from + p);
            prop_assert_eq!(plain_run(&bytes, from), naive);
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
}
