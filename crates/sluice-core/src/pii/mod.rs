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
use std::sync::Arc;

use regex_automata::Input;
use regex_automata::meta::Regex;

mod cache;
mod kind;
pub use cache::CacheStats;
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
    /// What texts seen before came to ([`Redactor::with_cache`]).
    cache: Option<Arc<cache::Cache>>,
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
            cache: None,
        })
    }

    /// This redactor, keeping what texts of 16 bytes or more came to in
    /// about `bytes` of memory (up to twice that while it turns over), so a
    /// text sent again — an agent's conversation is resent with every
    /// turn — is not scanned again. 0: no cache.
    pub fn with_cache(mut self, bytes: usize) -> Self {
        self.cache = cache::Cache::new(bytes).map(Arc::new);
        self
    }

    /// What its cache did, and holds; `None` without one.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
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
        let cache = self
            .cache
            .as_deref()
            .filter(|c| text.len() >= cache::MIN_LEN && c.fits(text.len()));
        let Some(cache) = cache else {
            return self.scan_into(text, out, room);
        };
        let hash = match cache.look(text, out, room) {
            cache::Found::Clean => return false,
            cache::Found::Redacted => return true,
            cache::Found::Miss(hash) => hash,
        };
        let mark = out.len();
        let found = self.scan_into(text, out, room);
        cache.keep(hash, text, found.then(|| &out[mark..]));
        found
    }

    /// [`redact_reserving`](Self::redact_reserving) without the cache.
    fn scan_into(&self, text: &str, out: &mut String, room: usize) -> bool {
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
mod tests;
