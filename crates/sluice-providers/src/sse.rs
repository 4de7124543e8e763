//! A bounded Server-Sent Events decoder and encoder helpers.
//!
//! Frames arrive split anywhere; the decoder keeps only the unfinished event
//! and refuses one that grows past its limit, so a hostile or broken upstream
//! cannot make it buffer without bound.

use bytes::{Buf, BytesMut};

/// One event: the `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: Option<String>,
    pub data: String,
}

/// Decodes events into a pool that keeps its strings between calls: after
/// warm-up, decoding allocates nothing per event.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_event: usize,
    /// Completed events are `pool[..ready]`; `pool[ready]` is being filled.
    pool: Vec<Event>,
    ready: usize,
    has_data: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge(pub usize);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an SSE event exceeded {} bytes", self.0)
    }
}

impl std::error::Error for TooLarge {}

impl Decoder {
    pub fn new(max_event: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_event,
            pool: vec![Event::default()],
            ready: 0,
            has_data: false,
        }
    }

    /// Feeds bytes; the events they complete join [`events`](Self::events).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), TooLarge> {
        // Parse complete lines straight from the input when nothing is
        // pending (the common case: frames end on event boundaries); keep
        // only an unfinished tail.
        let mut input = bytes;
        if !self.buf.is_empty() {
            self.buf.extend_from_slice(bytes);
            let pending = std::mem::take(&mut self.buf);
            let consumed = self.lines(&pending);
            self.buf = pending;
            self.buf.advance(consumed);
            input = &[];
        }
        let consumed = self.lines(input);
        self.buf.extend_from_slice(&input[consumed..]);
        if self.buf.len() + self.pool[self.ready].data.len() > self.max_event {
            self.buf.advance(self.buf.len());
            return Err(TooLarge(self.max_event));
        }
        Ok(())
    }

    /// Handles every complete line of `data`; returns the bytes consumed.
    fn lines(&mut self, data: &[u8]) -> usize {
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &data[start..]) {
            let mut line = &data[start..start + nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.line(line);
            start += nl + 1;
        }
        start
    }

    /// Flushes an event left without its closing blank line at end of stream.
    pub fn finish(&mut self) {
        if !self.buf.is_empty() {
            let rest = self.buf.split();
            self.line(&rest);
        }
        self.line(b"");
    }

    /// The events completed since the last [`clear`](Self::clear).
    pub fn events(&self) -> &[Event] {
        &self.pool[..self.ready]
    }

    /// Whether nothing is held: no unfinished line, no event begun, none
    /// completed and not yet cleared.
    pub fn is_idle(&self) -> bool {
        let current = &self.pool[self.ready];
        self.ready == 0 && self.buf.is_empty() && !self.has_data && current.event.is_none()
    }

    /// Forgets the completed events, keeping their storage.
    pub fn clear(&mut self) {
        // The event in progress moves to the front; the rest are reused.
        self.pool.swap(0, self.ready);
        self.ready = 0;
    }

    fn line(&mut self, line: &[u8]) {
        if line.is_empty() {
            let current = &self.pool[self.ready];
            if self.has_data || current.event.is_some() {
                self.ready += 1;
                if self.pool.len() == self.ready {
                    self.pool.push(Event::default());
                }
                let next = &mut self.pool[self.ready];
                next.data.clear();
                next.event = None;
                self.has_data = false;
            }
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        // `from_utf8` reads ASCII a word at a time; `from_utf8_lossy`
        // walks every byte (~1,600 instructions per token chunk).
        let value = match std::str::from_utf8(value) {
            Ok(v) => std::borrow::Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(value),
        };
        let current = &mut self.pool[self.ready];
        match field {
            b"data" => {
                if self.has_data {
                    current.data.push('\n');
                }
                current.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => match &mut current.event {
                Some(e) => {
                    e.clear();
                    e.push_str(&value);
                }
                None => current.event = Some(value.into_owned()),
            },
            _ => {} // id, retry: not used by model APIs
        }
    }
}

/// Appends `data: <json>\n\n`.
pub fn push_data(out: &mut Vec<u8>, json: &impl serde::Serialize) {
    out.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut *out, json).expect("serializing to a Vec cannot fail");
    out.extend_from_slice(b"\n\n");
}

/// Appends `event: <name>\ndata: <json>\n\n`.
pub fn push_event(out: &mut Vec<u8>, name: &str, json: &impl serde::Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\n");
    push_data(out, json);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in(chunks: &[&[u8]]) -> Vec<Event> {
        let mut d = Decoder::new(1024);
        let mut out = vec![];
        for c in chunks {
            d.feed(c).unwrap();
            out.extend_from_slice(d.events());
            d.clear();
        }
        d.finish();
        out.extend_from_slice(d.events());
        out
    }

    #[test]
    fn events_across_any_split() {
        let text = b"event: message_start\ndata: {\"a\":1}\n\n: ping comment\r\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        let want = vec![
            Event {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into(),
            },
            Event {
                event: None,
                data: "x\ny".into(),
            },
            Event {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for split in 1..text.len() {
            let chunks: Vec<&[u8]> = text.chunks(split).collect();
            assert_eq!(decode_in(&chunks), want, "split {split}");
        }
    }

    #[test]
    fn unterminated_last_event_is_flushed() {
        assert_eq!(
            decode_in(&[b"data: tail"]),
            vec![Event {
                event: None,
                data: "tail".into()
            }]
        );
    }

    #[test]
    fn oversized_event_is_refused() {
        let mut d = Decoder::new(16);
        assert_eq!(d.feed(&[b'x'; 64]), Err(TooLarge(16)));
        let mut d = Decoder::new(16);
        let r = (0..10).try_for_each(|_| d.feed(b"data: 0123456789\n"));
        assert_eq!(r, Err(TooLarge(16)));
    }

    #[test]
    fn pool_is_reused_without_mixing_events() {
        let mut d = Decoder::new(1024);
        d.feed(b"event: a\ndata: first\n\ndata: sec").unwrap();
        assert_eq!(
            d.events(),
            [Event {
                event: Some("a".into()),
                data: "first".into()
            }]
        );
        d.clear();
        d.feed(b"ond\n\n").unwrap();
        assert_eq!(
            d.events(),
            [Event {
                event: None,
                data: "second".into()
            }]
        );
        d.clear();
        d.feed(b"data: x\n\n").unwrap();
        assert_eq!(
            d.events(),
            [Event {
                event: None,
                data: "x".into()
            }]
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    /// Random bytes in random splits never panic the decoder, never let an
    /// event grow past the limit, and the same bytes decode the same events
    /// whatever the split.
    #[test]
    fn decoder_is_split_invariant_and_bounded() {
        let mut state = 42u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        let alphabet = b"data: event:\n\r\n:x{}\xff\xfe ";
        for _ in 0..2_000 {
            let len = next() % 300;
            let input: Vec<u8> = (0..len)
                .map(|_| alphabet[next() % alphabet.len()])
                .collect();
            let decode = |chunks: Vec<&[u8]>| {
                let mut d = Decoder::new(256);
                let mut out = Vec::new();
                for c in chunks {
                    if d.feed(c).is_err() {
                        return None;
                    }
                    out.extend_from_slice(d.events());
                    d.clear();
                }
                d.finish();
                out.extend_from_slice(d.events());
                Some(out)
            };
            let whole = decode(vec![&input]);
            let split = next() % (len + 1);
            let parts = decode(vec![&input[..split], &input[split..]]);
            if let (Some(a), Some(b)) = (&whole, &parts) {
                assert_eq!(a, b, "input {input:?} split at {split}");
                assert!(a.iter().all(|e| e.data.len() <= 256));
            }
        }
    }
}
