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

#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_event: usize,
    current: Event,
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
            current: Event::default(),
            has_data: false,
        }
    }

    /// Feeds bytes; pushes every event completed by them onto `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Event>) -> Result<(), TooLarge> {
        self.buf.extend_from_slice(bytes);
        while let Some(nl) = memchr::memchr(b'\n', &self.buf) {
            let line = self.buf.split_to(nl + 1);
            let mut line = &line[..nl];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.line(line, out);
        }
        if self.buf.len() + self.current.data.len() > self.max_event {
            self.buf.advance(self.buf.len());
            return Err(TooLarge(self.max_event));
        }
        Ok(())
    }

    /// Flushes an event left without its closing blank line at end of stream.
    pub fn finish(&mut self, out: &mut Vec<Event>) {
        if !self.buf.is_empty() {
            let rest = self.buf.split();
            self.line(&rest, out);
        }
        self.line(b"", out);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line.is_empty() {
            if self.has_data || self.current.event.is_some() {
                out.push(std::mem::take(&mut self.current));
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
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.current.event = Some(value.into_owned()),
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
            d.feed(c, &mut out).unwrap();
        }
        d.finish(&mut out);
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
        let mut out = vec![];
        assert_eq!(d.feed(&[b'x'; 64], &mut out), Err(TooLarge(16)));
        let mut d = Decoder::new(16);
        let r = (0..10).try_for_each(|_| d.feed(b"data: 0123456789\n", &mut out));
        assert_eq!(r, Err(TooLarge(16)));
    }
}
