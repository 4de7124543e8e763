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
//! [`Memo`] (only what differs from the chunk before is read) ~860; ~420
//! once a chunk whose `content` alone changed is judged from that string
//! and the bytes around it compared (`StreamCheck::feed` ~1,290 -> ~850
//! per event, 37 % -> 28 % of a burst stream's instructions).

/// Deeper nesting is left to serde_json (whose own limit is 128).
const MAX_DEPTH: u32 = 64;

/// `true` when `text` is certainly one JSON value, whitespace around it
/// allowed; `false` when it is not, or when this check does not know.
pub fn surely_json(text: &str) -> bool {
    check::<true>(text.as_bytes(), State::default(), &mut ())
}

/// `true` when `b` is certainly UTF-8 and one JSON value (no separate
/// UTF-8 pass: outside strings JSON is ASCII, and a string's non-ASCII
/// sequences are checked where they are met).
pub fn surely_json_bytes(b: &[u8]) -> bool {
    check::<false>(b, State::default(), &mut ())
}

/// Where the check stands when it is about to read a value: what it has
/// read before `at` is all that made it so (and the byte at `at`, which it
/// may have looked at to tell a value from a closing bracket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// The string value of `prev` that was all that changed from the text
    /// before: its mark's index, opening and closing quotes. A token
    /// stream changes the same one in every chunk.
    changed: Option<Changed>,
}

/// A string value of the memo's text: its mark's index in `marks`, and
/// where its opening and closing quotes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Changed {
    mark: usize,
    open: usize,
    close: usize,
}

/// Longer texts are checked whole and not kept (a token chunk is ~220 bytes).
const MEMO_MAX: usize = 4096;
/// Value starts kept per text (a token chunk has ~15).
const MEMO_MARKS: usize = 64;

impl Memo {
    /// [`surely_json_bytes`] of `b`.
    pub fn surely_json_bytes(&mut self, b: &[u8]) -> bool {
        if self.one_string_changed(b) {
            return true;
        }
        self.changed = None;
        let from = self.resume(b);
        let ok = check::<false>(b, from, &mut self.marks);
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
    /// Whether `b` is the previous text with only the body of one string
    /// value changed (a token chunk's `content`), itself a whole string
    /// there: the check of `b` reads what it read of the previous text up
    /// to that string's opening quote, the string, and then bytes it read
    /// after the previous one's closing quote in the same state, so `b` is
    /// surely JSON when the string read in `b` closes exactly where the
    /// previous one's closing quote now lies. Then the memo moves to `b`
    /// (the value starts after the string shifted) and `true`; else nothing
    /// changes. The string that changed last time is tried first (two
    /// compares and the string read); else the one where `b` first differs.
    /// Neither reads the values after the string (the whole check's
    /// `finish_reason`, `logprobs` and brackets).
    fn one_string_changed(&mut self, b: &[u8]) -> bool {
        if self.prev.is_empty() || b.len() > MEMO_MAX {
            return false;
        }
        let Some((s, new_close)) = self
            .changed
            .and_then(|s| self.same_around(b, s).map(|c| (s, c)))
            .or_else(|| {
                let s = self.differing_string(b)?;
                self.same_around(b, s).map(|c| (s, c))
            })
        else {
            return false;
        };
        for m in &mut self.marks[s.mark + 1..] {
            m.at = m.at - s.close + new_close;
        }
        self.prev.clear();
        self.prev.extend_from_slice(b);
        self.changed = Some(Changed {
            close: new_close,
            ..s
        });
        true
    }

    /// The string value of the previous text where `b` first differs from
    /// it (from its opening quote on, up to its closing quote).
    fn differing_string(&self, b: &[u8]) -> Option<Changed> {
        let prev = &self.prev[..];
        let same = common_prefix(prev, b);
        // The last value start before the first difference.
        let mark = self.marks.partition_point(|m| m.at < same).checked_sub(1)?;
        let open = skip_ws(prev, self.marks[mark].at);
        if open >= same || prev[open] != b'"' {
            return None;
        }
        let close = string::<false>(prev, open)? - 1;
        (same <= close).then_some(Changed { mark, open, close })
    }

    /// Where the string `s` of the previous text closes in `b`, when `b`
    /// is the previous text with only that string's body changed and the
    /// string, read in `b` from its opening quote, closes right there.
    fn same_around(&self, b: &[u8], s: Changed) -> Option<usize> {
        let prev = &self.prev[..];
        let after = &prev[s.close..];
        let new_close = b.len().checked_sub(after.len()).filter(|&c| c > s.open)?;
        let same = b[..=s.open] == prev[..=s.open] && b[new_close..] == *after;
        (same && string::<false>(b, s.open) == Some(new_close + 1)).then_some(new_close)
    }

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
fn check<const U: bool>(b: &[u8], from: State, marks: &mut impl Marks) -> bool {
    run::<U>(b, from, marks) == Some(b.len())
}

/// Counts the values directly inside the one a run starts with.
struct Elements(usize);

impl Marks for Elements {
    #[inline]
    fn mark(&mut self, s: State) {
        self.0 += usize::from(s.depth == 1);
    }
}

/// The JSON value at `i` (whitespace before it allowed): the index past
/// it and the whitespace after it, and how many values it directly holds
/// (an array's elements); `None` when this check is not sure of it.
fn value<const U: bool>(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut n = Elements(0);
    let from = State {
        at: i,
        ..State::default()
    };
    run::<U>(b, from, &mut n).map(|end| (end, n.0))
}

/// The index past the JSON value at `i` (whitespace before it allowed)
/// and the whitespace after it, when `b` surely holds one there (as
/// [`surely_json_bytes`] judges a value); `None` when not sure.
pub fn value_end(b: &[u8], i: usize) -> Option<usize> {
    value::<false>(b, i).map(|(end, _)| end)
}

/// The members of the JSON object in `b`, each key with its value's text
/// and how many values that directly holds (an array's length), in body
/// order, when `b` is surely UTF-8 and one JSON object (as
/// [`surely_json_bytes`]) and no key has an escape; `false` when not sure
/// (nothing said of `b`: serde_json is the judge then), with `each` maybe
/// called for some.
pub fn object_members<'a>(b: &'a [u8], mut each: impl FnMut(&'a [u8], &'a [u8], usize)) -> bool {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return false;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return skip_ws(b, i + 1) == b.len();
    }
    loop {
        let Some(after_key) = (b.get(i) == Some(&b'"'))
            .then(|| string::<false>(b, i))
            .flatten()
        else {
            return false;
        };
        let key = &b[i + 1..after_key - 1];
        if memchr::memchr(b'\\', key).is_some() {
            return false;
        }
        i = skip_ws(b, after_key);
        if b.get(i) != Some(&b':') {
            return false;
        }
        let start = skip_ws(b, i + 1);
        let Some((end, n)) = value::<false>(b, start) else {
            return false;
        };
        each(key, b[start..end].trim_ascii_end(), n);
        i = end;
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return skip_ws(b, i + 1) == b.len(),
            _ => return false,
        }
    }
}

/// The walk of [`check`]: from `from` to the end of the value open there
/// (depth 0 again), the index past it and the whitespace after it. `U`:
/// `b` is known to be UTF-8 (a `&str`), so strings' non-ASCII text needs
/// no look (as serde_json reads a `&str`).
fn run<const U: bool>(b: &[u8], from: State, marks: &mut impl Marks) -> Option<usize> {
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
                    return None;
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
                    match key::<U>(b, i) {
                        Some(j) => i = j,
                        None => return None,
                    }
                    continue 'value;
                } else {
                    continue 'value;
                }
            }
            Some(b'"') => match string::<U>(b, i) {
                Some(j) => i = j,
                None => return None,
            },
            Some(b'-' | b'0'..=b'9') => match number(b, i) {
                Some(j) => i = j,
                None => return None,
            },
            Some(b't') if b[i..].starts_with(b"true") => i += 4,
            Some(b'f') if b[i..].starts_with(b"false") => i += 5,
            Some(b'n') if b[i..].starts_with(b"null") => i += 4,
            _ => return None,
        }
        // After a value: close what it ends, or go on to the next one.
        loop {
            i = skip_ws(b, i);
            if depth == 0 {
                return Some(i);
            }
            let object = (objects >> (depth - 1)) & 1 == 1;
            match (b.get(i), object) {
                (Some(b','), false) => {
                    i += 1;
                    continue 'value;
                }
                (Some(b','), true) => match key::<U>(b, skip_ws(b, i + 1)) {
                    Some(j) => {
                        i = j;
                        continue 'value;
                    }
                    None => return None,
                },
                (Some(b']'), false) | (Some(b'}'), true) => {
                    depth -= 1;
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

/// The index of the first byte at or after `i` that is not JSON
/// whitespace.
#[inline]
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// A member's key and its colon, at `i`: the index after the colon.
#[inline]
fn key<const U: bool>(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, string::<U>(b, i)?);
    (b.get(i) == Some(&b':')).then_some(i + 1)
}

/// The string starting at `b[i] == '"'`: the index after its closing quote.
/// Escapes, control characters and non-ASCII (UTF-8) sequences need a look.
#[inline]
fn string<const U: bool>(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        // Keys and a token stream's values end within two words.
        i = plain_run::<U>(b, i, 2);
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
            // Text longer than two words (a prompt), or not ASCII.
            _ => i = long_run::<U>(b, i)?,
        }
    }
}

/// The index of the first `"`, `\\`, control or (unless `U`) non-ASCII
/// byte at or after `i`, eight bytes a step, or where `words` steps took it (the length of
/// `b` if there is none). A byte at a time such runs cost ~12
/// instructions a byte.
#[inline]
fn plain_run<const U: bool>(b: &[u8], mut i: usize, words: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // Bytes of `v` below `n`, as their high bit: exact up to the lowest
    // one (higher ones may be false, from the borrow), which is all that
    // is used.
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    for _ in 0..words {
        let Some(chunk) = b.get(i..i + 8) else {
            while b
                .get(i)
                .is_some_and(|&c| c >= 0x20 && (U || c < 0x80) && c != b'"' && c != b'\\')
            {
                i += 1;
            }
            return i;
        };
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let special = below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20)
            | if U { 0 } else { x & HIGH };
        if special != 0 {
            return i + (special.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// From `i` inside a string: the index of its next `"` or `\\`, the text
/// before it checked (no control character, UTF-8); `None` when there is
/// none or the text is bad. memchr finds the end and the text is checked
/// a vector at a time: eight bytes a step, a prompt's text cost ~5
/// instructions a byte, the bulk of a request's peek. Nothing is read
/// twice, whatever the text holds.
fn long_run<const U: bool>(b: &[u8], i: usize) -> Option<usize> {
    let end = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
    let run = &b[i..end];
    if !all_plain::<U>(run) {
        if U || run.iter().any(|&c| c < 0x20) {
            return None;
        }
        std::str::from_utf8(run).ok()?;
    }
    Some(end)
}

/// Whether every byte of `run` is printable ASCII (0x20–0x7F). Whole
/// chunks are tested without an early exit inside, which the compiler
/// turns into vector compares.
fn all_plain<const U: bool>(run: &[u8]) -> bool {
    let bad = |c: u8| {
        if U {
            c < 0x20
        } else {
            c.wrapping_sub(0x20) >= 0x60
        }
    };
    let mut chunks = run.chunks_exact(32);
    for c in &mut chunks {
        if c.iter().fold(false, |any, &x| any | bad(x)) {
            return false;
        }
    }
    !chunks.remainder().iter().any(|&x| bad(x))
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

pub mod cursor;

#[cfg(test)]
pub(crate) mod spoiled;

#[cfg(test)]
mod tests;
