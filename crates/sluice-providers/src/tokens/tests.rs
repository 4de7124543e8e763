use super::*;

/// A reader for the FlatBuffers layout, written from the format's spec
/// (not the crate that wrote them), to check the bytes a client gets.
struct Flat<'a> {
    buf: &'a [u8],
    table: usize,
}

impl<'a> Flat<'a> {
    fn u32_at(buf: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
    }

    /// The root table of one size-prefixed buffer; the rest of `bytes`.
    fn split(bytes: &'a [u8]) -> (Self, &'a [u8]) {
        let len = Self::u32_at(bytes, 0) as usize;
        let buf = &bytes[4..4 + len];
        let table = Self::u32_at(buf, 0) as usize;
        (Self { buf, table }, &bytes[4 + len..])
    }

    /// The absolute position of field `slot`, if present.
    fn field(&self, slot: u16) -> Option<usize> {
        let soffset = i32::from_le_bytes(self.buf[self.table..self.table + 4].try_into().ok()?);
        let vtable = (self.table as i64 - i64::from(soffset)) as usize;
        let vlen = u16::from_le_bytes(self.buf[vtable..vtable + 2].try_into().ok()?);
        if slot >= vlen {
            return None;
        }
        let at = vtable + slot as usize;
        let off = u16::from_le_bytes(self.buf[at..at + 2].try_into().ok()?);
        (off != 0).then_some(self.table + off as usize)
    }

    fn u64(&self, slot: u16) -> u64 {
        self.field(slot).map_or(0, |at| {
            u64::from_le_bytes(self.buf[at..at + 8].try_into().expect("8 bytes"))
        })
    }

    fn string(&self, slot: u16) -> &'a str {
        self.field(slot).map_or("", |at| {
            let start = at + Self::u32_at(self.buf, at) as usize;
            let len = Self::u32_at(self.buf, start) as usize;
            std::str::from_utf8(&self.buf[start + 4..start + 4 + len]).expect("utf-8")
        })
    }

    fn flag(&self, slot: u16) -> bool {
        self.field(slot).is_some_and(|at| self.buf[at] != 0)
    }

    fn usage(&self) -> Option<(u32, u32, u32)> {
        let at = self.field(slot::USAGE)?;
        let sub = Self {
            buf: self.buf,
            table: at + Self::u32_at(self.buf, at) as usize,
        };
        let f = |s| sub.field(s).map_or(0, |p| Self::u32_at(sub.buf, p));
        Some((f(4), f(6), f(8)))
    }
}

fn chunk(text: Option<&str>, finish: Option<&str>) -> ot::Chunk {
    let delta = ot::Delta {
        content: text.map(str::to_owned),
        ..ot::Delta::default()
    };
    ot::Chunk::single("c1", 1, "m", delta, finish.map(str::to_owned))
}

#[test]
fn flatbuffers_chunks_count_from_zero_and_the_last_carries_reason_and_usage() {
    let mut enc = TokenEncoder::new(TokenFormat::FlatBuffers);
    let mut out = Vec::new();
    enc.chunk(&chunk(Some(""), None), &mut out); // the role chunk: no token
    enc.chunk(&chunk(Some("Hel"), None), &mut out);
    enc.chunk(&chunk(Some("lo ✓"), None), &mut out);
    enc.chunk(&chunk(None, Some("length")), &mut out);
    enc.finish(Some((7, 2)), &mut out);

    let (a, rest) = Flat::split(&out);
    let (b, rest) = Flat::split(rest);
    let (last, rest) = Flat::split(rest);
    assert!(rest.is_empty());
    assert_eq!((a.u64(slot::ID), a.string(slot::TEXT)), (0, "Hel"));
    assert!(!a.flag(slot::IS_LAST));
    assert_eq!(a.usage(), None);
    assert_eq!((b.u64(slot::ID), b.string(slot::TEXT)), (1, "lo ✓"));
    assert_eq!(last.u64(slot::ID), 2);
    assert!(last.flag(slot::IS_LAST));
    assert_eq!(last.string(slot::FINISH_REASON), "length");
    assert_eq!(last.usage(), Some((7, 2, 9)));
}

#[test]
fn an_error_chunk_is_last_with_reason_error_and_the_message() {
    let out = error_chunk(TokenFormat::FlatBuffers, 5, "upstream went away");
    let (c, rest) = Flat::split(&out);
    assert!(rest.is_empty());
    assert_eq!(c.u64(slot::ID), 5);
    assert!(c.flag(slot::IS_LAST));
    assert_eq!(c.string(slot::FINISH_REASON), "error");
    assert_eq!(c.string(slot::TEXT), "upstream went away");
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoUsage {
    #[prost(uint32, tag = "1")]
    prompt_tokens: u32,
    #[prost(uint32, tag = "2")]
    completion_tokens: u32,
    #[prost(uint32, tag = "3")]
    total_tokens: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoChunk {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    text: String,
    #[prost(float, tag = "3")]
    logprob: f32,
    #[prost(bool, tag = "4")]
    is_last: bool,
    #[prost(string, tag = "5")]
    finish_reason: String,
    #[prost(message, optional, tag = "6")]
    usage: Option<ProtoUsage>,
}

/// The messages of gRPC frames.
fn frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert_eq!(bytes[0], 0, "uncompressed");
        let len = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
        out.push(&bytes[5..5 + len]);
        bytes = &bytes[5 + len..];
    }
    out
}

#[test]
fn grpc_proto_frames_decode_as_the_proto_message() {
    use prost::Message as _;
    let mut enc = TokenEncoder::new(TokenFormat::GrpcProto);
    let mut out = Vec::new();
    enc.text("Hi", -0.25, &mut out);
    enc.text("!", 0.0, &mut out);
    enc.finish(Some((3, 300)), &mut out);
    let got: Vec<ProtoChunk> = frames(&out)
        .into_iter()
        .map(|m| ProtoChunk::decode(m).expect("a TokenChunk"))
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(
        (got[0].id, got[0].text.as_str(), got[0].logprob),
        (0, "Hi", -0.25)
    );
    assert_eq!((got[1].id, got[1].text.as_str()), (1, "!"));
    assert!(!got[1].is_last);
    let last = &got[2];
    assert_eq!(
        (last.id, last.is_last, last.finish_reason.as_str()),
        (2, true, "stop")
    );
    let u = last.usage.clone().expect("usage");
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
        (3, 300, 303)
    );
}

#[test]
fn grpc_json_frames_use_proto3_json_names() {
    let mut enc = TokenEncoder::new(TokenFormat::GrpcJson);
    let mut out = Vec::new();
    enc.text("a\"b", 0.0, &mut out);
    enc.finish(Some((1, 2)), &mut out);
    let got: Vec<serde_json::Value> = frames(&out)
        .into_iter()
        .map(|m| serde_json::from_slice(m).expect("JSON"))
        .collect();
    assert_eq!(got[0], serde_json::json!({"text": "a\"b"}));
    assert_eq!(
        got[1],
        serde_json::json!({"id": "1", "isLast": true, "finishReason": "stop",
            "usage": {"promptTokens": 1, "completionTokens": 2, "totalTokens": 3}})
    );
}

#[test]
fn openai_events_are_read_in_place_with_logprobs_and_usage() {
    let mut enc = TokenEncoder::new(TokenFormat::GrpcProto);
    let mut out = Vec::new();
    let events = [
        r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hé\n\"x\""},"logprobs":{"content":[{"token":"H","logprob":-0.5},{"token":"é","logprob":-0.25}]},"finish_reason":null}]}"#,
        r#"{"id":"c","choices":[{"index":1,"delta":{"content":"other choice"}}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
        r#"{"id":"c","choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6}}"#,
    ];
    let mut usage = None;
    for e in events {
        usage = enc.openai_event(e, &mut out).expect("a chunk").or(usage);
    }
    assert!(enc.openai_event("{not json", &mut out).is_err());
    enc.finish(usage, &mut out);
    use prost::Message as _;
    let got: Vec<ProtoChunk> = frames(&out)
        .into_iter()
        .map(|m| ProtoChunk::decode(m).expect("a TokenChunk"))
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].text.as_str(), got[0].logprob), ("Hé\n\"x\"", -0.75));
    assert_eq!((got[1].id, got[1].finish_reason.as_str()), (1, "length"));
    assert_eq!(got[1].usage.clone().expect("usage").total_tokens, 6);
}
