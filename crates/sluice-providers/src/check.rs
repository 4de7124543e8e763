//! Is what the upstream sent a proper answer? Checks that let the server
//! refuse garbage before it commits and tell a broken stream from a whole one.
//!
//! A `200` is only worth passing on if its body is the kind of body asked
//! for: an SSE stream for a streamed request, a JSON object otherwise. And a
//! stream is only complete when it ended the way its format ends (OpenAI's
//! `data: [DONE]`); one cut short must reach the client as an error, not as
//! a short success.

use crate::sse::{Decoder, TooLarge};
use crate::translate::MAX_EVENT;

/// Whether `first` (the first body bytes of a 2xx) can start the body asked
/// for: an SSE stream when `stream`, else a JSON object. Only the start is
/// judged, so it costs nothing per byte; what follows is checked as it
/// streams ([`StreamCheck`]) or parsed whole by a translation.
pub fn body_start(stream: bool, first: &[u8]) -> Result<(), String> {
    let text = first.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(first);
    let text = text.trim_ascii_start();
    if text.is_empty() {
        return Err(if stream {
            "the upstream answered a stream request with an empty body".into()
        } else {
            "the upstream answered with an empty body".into()
        });
    }
    if stream {
        const FIELDS: [&[u8]; 5] = [b"data:", b"event:", b"id:", b"retry:", b":"];
        let fits = |f: &[u8]| {
            let n = f.len().min(text.len());
            text[..n] == f[..n]
        };
        if FIELDS.iter().any(|f| fits(f)) {
            return Ok(());
        }
        return Err(format!(
            "the upstream answered a stream request with something other than \
             server-sent events (it starts {})",
            preview(text)
        ));
    }
    if text[0] == b'{' {
        Ok(())
    } else {
        Err(format!(
            "the upstream's answer is not a JSON object (it starts {})",
            preview(text)
        ))
    }
}

/// Up to 32 bytes of `b`, quoted and escaped, for an error message.
fn preview(b: &[u8]) -> String {
    let head = &b[..b.len().min(32)];
    format!("{:?}", String::from_utf8_lossy(head))
}

/// Watches an OpenAI SSE stream passed through as bytes: every event's data
/// must be JSON (or the closing `[DONE]`), and the stream must reach
/// `[DONE]`. The bytes themselves are not touched.
#[derive(Debug)]
pub struct StreamCheck {
    sse: Decoder,
    done: bool,
    /// The last token chunk, so the next one is read from where it differs.
    memo: crate::json_quick::Memo,
}

impl Default for StreamCheck {
    fn default() -> Self {
        Self {
            sse: Decoder::new(MAX_EVENT),
            done: false,
            memo: Default::default(),
        }
    }
}

impl StreamCheck {
    /// Looks at the next bytes; `Err` names what is wrong with them.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.done {
            return Ok(()); // after [DONE] nothing more is read by clients
        }
        // An event begun in an earlier frame is finished through the
        // decoder a line at a time; the whole events after it are read in
        // place. (A frame of several upstream chunks, or a read that ended
        // inside an event, starts that way: all of it went through the
        // decoder, ~3x the instructions per event — `feed` took ~2,000 per
        // event of a 64-token burst that way, ~650 in place.)
        let mut bytes = bytes;
        while !self.sse.is_idle() && !self.done && !bytes.is_empty() {
            let line = memchr::memchr(b'\n', bytes).map_or(bytes.len(), |i| i + 1);
            self.feed_decoder(&bytes[..line])?;
            bytes = &bytes[line..];
        }
        if self.done {
            return Ok(());
        }
        let bytes = self.whole_events(bytes)?;
        if bytes.is_empty() {
            // A frame of whole events: the decoder, idle, would take
            // nothing and judge nothing (~150 instructions per event of a
            // paced stream, `bench/instructions.py --stream --model frames`).
            return Ok(());
        }
        self.feed_decoder(bytes)
    }

    /// Checks the one-line `data:` events that `bytes` starts with where
    /// they lie (the decoder holding nothing): a token stream's frames are
    /// such events, and decoding copied each into a `String` first (~1/3
    /// of the check's cost). Returns the rest, from the first line that is
    /// anything else (a comment, `event:`, an unfinished event, invalid
    /// UTF-8, the end of the stream), for the decoder: what it is given
    /// is judged exactly as before. (One message can differ: a frame with
    /// a bad event and then an unfinished one past the event limit is
    /// refused for the bad event here, for the length by the decoder.)
    fn whole_events<'a>(&mut self, mut bytes: &'a [u8]) -> Result<&'a [u8], String> {
        while !self.done {
            let Some(rest) = bytes.strip_prefix(b"data:") else {
                break;
            };
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                break;
            };
            let after = &rest[nl + 1..];
            let blank = match after {
                [b'\n', ..] => 1,
                [b'\r', b'\n', ..] => 2,
                _ => break,
            };
            let value = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
            let value = value.strip_prefix(b" ").unwrap_or(value);
            // A token chunk: UTF-8 and JSON in one pass. Anything else is
            // judged as the decoder would judge its text.
            if !self.memo.surely_json_bytes(value) {
                let Ok(data) = std::str::from_utf8(value) else {
                    break;
                };
                self.done = ends_stream(data)?;
            }
            bytes = &after[blank..];
        }
        Ok(bytes)
    }

    fn feed_decoder(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.sse
            .feed(bytes)
            .map_err(|TooLarge(n)| format!("an upstream SSE event exceeded {n} bytes"))?;
        let verdict = self.judge();
        self.sse.clear();
        verdict
    }

    /// At the end of the upstream body: `Err` unless the stream was whole.
    pub fn finish(&mut self) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        self.sse.finish();
        self.judge()?;
        self.sse.clear();
        if self.done {
            Ok(())
        } else {
            Err("the upstream stream ended before its closing [DONE]".into())
        }
    }

    /// Whether the closing `[DONE]` has been seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn judge(&mut self) -> Result<(), String> {
        for ev in self.sse.events() {
            if self.done {
                break;
            }
            self.done = ends_stream(&ev.data)?;
        }
        Ok(())
    }
}

/// Whether an event's `data` is the closing `[DONE]`; `Err` unless it is
/// that, JSON, or empty (a named event with no data, or keep-alive).
fn ends_stream(data: &str) -> Result<bool, String> {
    match data {
        "" => Ok(false),
        "[DONE]" => Ok(true),
        d => json_data(d).map(|()| false),
    }
}

/// `Ok` when `data` is one JSON value. The quick check passes what a token
/// stream carries; serde_json judges the rest and words the refusal.
pub fn json_data(data: &str) -> Result<(), String> {
    if crate::json_quick::surely_json(data) {
        return Ok(());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(data)
        .map(drop)
        .map_err(|e| {
            format!(
                "the upstream sent an SSE event that is not JSON ({e}): {}",
                preview(data.as_bytes())
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl StreamCheck {
        /// `feed` without the in-place path: every byte through the decoder.
        fn feed_decoded(&mut self, bytes: &[u8]) -> Result<(), String> {
            if self.done {
                return Ok(());
            }
            self.feed_decoder(bytes)
        }
    }

    /// Streams made of what upstreams send, well and badly, cut anywhere.
    fn streams() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        const PIECES: [&[u8]; 16] = [
            b"data: {\"a\":1}\n\n",
            b"data:{\"b\":[2]}\r\n\r\n",
            b"data: [DONE]\n\n",
            b"data: [DONE]\r\n\r\n",
            b": ping\n\n",
            b"event: e\n",
            b"id: 3\n",
            b"data: not json\n\n",
            b"data: {\"a\":\n",
            b"data: 1\n",
            b"data:\n\n",
            b"\n",
            b"\r\n",
            b"data: \"\xff\"\n\n",
            b"data: \"\xc3\xa9\"\r\n\n",
            b"\xef\xbb\xbfdata: {}\n\n",
        ];
        let piece = proptest::sample::select(&PIECES[..]);
        proptest::collection::vec(piece, 0..12).prop_flat_map(|pieces| {
            let text = pieces.concat();
            let cuts = proptest::collection::vec(0..=text.len(), 0..6);
            (Just(text), cuts)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// The in-place path judges every stream, cut anywhere, exactly as
        /// the decoder alone does: each frame's verdict, `[DONE]`, the end.
        #[test]
        fn events_checked_in_place_are_judged_as_decoded((text, mut cuts) in streams()) {
            cuts.push(0);
            cuts.push(text.len());
            cuts.sort_unstable();
            let (mut quick, mut decoded) = (StreamCheck::default(), StreamCheck::default());
            for w in cuts.windows(2) {
                let frame = &text[w[0]..w[1]];
                let (a, b) = (quick.feed(frame), decoded.feed_decoded(frame));
                prop_assert_eq!(&a, &b, "{:?}", String::from_utf8_lossy(frame));
                prop_assert_eq!(quick.is_done(), decoded.is_done());
                if a.is_err() {
                    return Ok(());
                }
            }
            prop_assert_eq!(quick.finish(), decoded.finish());
        }
    }

    #[test]
    fn starts_are_judged_by_what_was_asked() {
        assert!(body_start(true, b"data: {}\n\n").is_ok());
        assert!(body_start(true, b"\xEF\xBB\xBF\r\nevent: message_start\n").is_ok());
        assert!(body_start(true, b": keep-alive\n\n").is_ok());
        assert!(
            body_start(true, b"da").is_ok(),
            "a field split across frames"
        );
        assert!(body_start(true, b"{\"id\":\"x\"}").is_err());
        assert!(body_start(true, b"<html>").is_err());
        assert!(body_start(true, b"").is_err());
        assert!(body_start(false, b"  {\"id\":1}").is_ok());
        assert!(body_start(false, b"garbage").is_err());
        assert!(body_start(false, b"data: {}").is_err());
        assert!(body_start(false, b" \n").is_err());
        let e = body_start(false, b"<!doctype html><html><body>Bad gateway").unwrap_err();
        assert!(e.contains("<!doctype html>"), "{e}");
    }

    #[test]
    fn a_whole_stream_passes_in_any_split() {
        let text = b"data: {\"a\":1}\n\n: ping\n\ndata: {\"b\":[2]}\n\ndata: [DONE]\n\n";
        for split in 1..text.len() {
            let mut c = StreamCheck::default();
            for part in text.chunks(split) {
                c.feed(part).unwrap();
            }
            assert!(c.finish().is_ok(), "split {split}");
        }
    }

    #[test]
    fn a_stream_without_done_is_broken() {
        let mut c = StreamCheck::default();
        c.feed(b"data: {\"a\":1}\n\n").unwrap();
        assert!(!c.is_done());
        let e = c.finish().unwrap_err();
        assert!(e.contains("[DONE]"), "{e}");
        // [DONE] without its blank line at the very end still counts.
        let mut c = StreamCheck::default();
        c.feed(b"data: {\"a\":1}\n\ndata: [DONE]").unwrap();
        assert!(c.finish().is_ok());
    }

    #[test]
    fn data_that_is_not_json_is_refused() {
        let mut c = StreamCheck::default();
        let e = c
            .feed(b"data: {\"a\":1}\n\ndata: {not json\n\n")
            .unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let mut c = StreamCheck::default();
        c.feed(b"data: {\"a\":").unwrap();
        assert!(c.finish().is_err(), "a cut event is not JSON");
    }
}
