//! A walk into one JSON text that checks each byte once as it goes: the
//! caller descends into the values it wants (objects member by member,
//! arrays element by element, strings as their JSON text) and passes over
//! the rest, which is checked as it is skipped. For a reader that wants a
//! few paths of a large body (a request's prompt) without reading it twice,
//! once to check it and once to find its parts.
//!
//! As everywhere in this module, "not sure" (`None`) is no verdict: an
//! escaped key, nesting past [`MAX_WALK`] levels, or text that is not JSON
//! sends the caller to serde_json, which is the judge. The text is a `&str`
//! (UTF-8 already checked), so strings are read as serde_json reads them.

use super::{MAX_DEPTH, skip_ws, string, value};

/// Levels a walk may descend. With [`MAX_DEPTH`] more in a value it
/// passes over, a text it is sure of nests at most 96 deep: serde_json
/// (128) reads it too.
const MAX_WALK: u32 = 128 - MAX_DEPTH - 32;

/// Where a walk stands in its text.
pub struct Cursor<'a> {
    t: &'a str,
    b: &'a [u8],
    i: usize,
    depth: u32,
}

impl<'a> Cursor<'a> {
    /// Before the value that is all of `text` (whitespace around it allowed).
    pub fn new(text: &'a str) -> Self {
        Self {
            t: text,
            b: text.as_bytes(),
            i: 0,
            depth: 0,
        }
    }

    /// Whether the walk has read one whole value and nothing but whitespace
    /// follows it.
    pub fn at_end(&self) -> bool {
        skip_ws(self.b, self.i) == self.b.len()
    }

    /// The first byte of the next value (`None` at the end).
    pub fn peek(&mut self) -> Option<u8> {
        self.i = skip_ws(self.b, self.i);
        self.b.get(self.i).copied()
    }

    /// Where the next value starts (after whitespace).
    pub fn start(&mut self) -> usize {
        self.i = skip_ws(self.b, self.i);
        self.i
    }

    /// The text from `start` (a [`Cursor::start`]) to where the walk is,
    /// whitespace after it left out: the value read since.
    pub fn since(&self, start: usize) -> Option<&'a str> {
        // Both ends lie at ASCII bytes (or the text's end): `get` is sure.
        self.t.get(start..self.i).map(str::trim_ascii_end)
    }

    /// Passes over the next value, checking it; its text.
    pub fn take(&mut self) -> Option<&'a str> {
        let start = self.start();
        self.skip()?;
        self.since(start)
    }

    /// Passes over the next value, checking it.
    pub fn skip(&mut self) -> Option<()> {
        let (end, _) = value::<true>(self.b, self.i)?;
        self.i = end;
        Some(())
    }

    /// The next value, a string: its JSON text, quotes included.
    pub fn string(&mut self) -> Option<&'a str> {
        let at = self.start();
        if self.b.get(at) != Some(&b'"') {
            return None;
        }
        self.i = string::<true>(self.b, at)?;
        self.t.get(at..self.i)
    }

    /// The next value, an object: `each` is called with each key (as
    /// written, which has no escape) and must read its value (descend or
    /// [`Cursor::skip`]). `None` when not sure, or when `each` is.
    pub fn object(&mut self, mut each: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.open(b'{')?;
        if self.close(b'}') {
            return Some(());
        }
        loop {
            let key = self.string()?;
            let key = &key[1..key.len() - 1];
            if memchr::memchr(b'\\', key.as_bytes()).is_some() {
                return None;
            }
            self.i = skip_ws(self.b, self.i);
            if self.b.get(self.i) != Some(&b':') {
                return None;
            }
            self.i += 1;
            each(self, key)?;
            if !self.comma(b'}')? {
                return Some(());
            }
        }
    }

    /// The next value, an array: `each` is called for each element and
    /// must read it. The number of elements.
    pub fn array(&mut self, mut each: impl FnMut(&mut Self) -> Option<()>) -> Option<usize> {
        self.open(b'[')?;
        if self.close(b']') {
            return Some(0);
        }
        let mut n = 0;
        loop {
            each(self)?;
            n += 1;
            if !self.comma(b']')? {
                return Some(n);
            }
        }
    }

    /// Steps into the container `open` starts.
    fn open(&mut self, open: u8) -> Option<()> {
        if self.peek()? != open || self.depth == MAX_WALK {
            return None;
        }
        self.i += 1;
        self.depth += 1;
        Some(())
    }

    /// Steps out of the container when `close` is next.
    fn close(&mut self, close: u8) -> bool {
        self.i = skip_ws(self.b, self.i);
        let closed = self.b.get(self.i) == Some(&close);
        if closed {
            self.i += 1;
            self.depth -= 1;
        }
        closed
    }

    /// After an element or member: `true` past a comma (another follows),
    /// `false` past `close`.
    fn comma(&mut self, close: u8) -> Option<bool> {
        if self.close(close) {
            return Some(false);
        }
        (self.b.get(self.i) == Some(&b',')).then(|| {
            self.i += 1;
            true
        })
    }
}
