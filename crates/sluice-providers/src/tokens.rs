//! Token streams for binary clients: one `TokenChunk` per content delta,
//! written straight from the decoded upstream event into the output buffer.
//!
//! Three encodings of the same chunk: size-prefixed FlatBuffers
//! (`schema/token_chunk.fbs`), and gRPC messages (`proto/sluice/v1/
//! gateway.proto`) as protobuf or as proto3 JSON, each in gRPC's 5-byte
//! length-prefixed framing.

use flatbuffers::{FlatBufferBuilder, WIPOffset};
use prost::encoding::{self, WireType, encode_key, encode_varint, encoded_len_varint};

use crate::openai::types as ot;

/// How token chunks are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFormat {
    /// `application/x-flatbuffers`: 4-byte little-endian length, then a
    /// `sluice.TokenChunk` buffer.
    FlatBuffers,
    /// `application/grpc` (`+proto`): gRPC frames of `sluice.v1.TokenChunk`.
    GrpcProto,
    /// `application/grpc+json`: gRPC frames of the chunk's proto3 JSON.
    GrpcJson,
}

impl TokenFormat {
    /// The content type of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::FlatBuffers => "application/x-flatbuffers",
            Self::GrpcProto => "application/grpc",
            Self::GrpcJson => "application/grpc+json",
        }
    }
}

/// One chunk, as every encoding sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenChunk<'a> {
    pub id: u64,
    pub text: &'a str,
    pub logprob: f32,
    pub is_last: bool,
    /// Empty except on the last chunk.
    pub finish_reason: &'a str,
    /// (prompt, completion) tokens, on the last chunk.
    pub usage: Option<(u32, u32)>,
}

/// Writes a stream's chunks in one format, counting them from 0.
pub struct TokenEncoder {
    format: TokenFormat,
    next_id: u64,
    finish_reason: Option<String>,
    fbb: FlatBufferBuilder<'static>,
}

impl TokenEncoder {
    pub fn new(format: TokenFormat) -> Self {
        Self {
            format,
            next_id: 0,
            finish_reason: None,
            fbb: FlatBufferBuilder::with_capacity(256),
        }
    }

    /// The id the next chunk gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// A decoded upstream chunk: its first choice's text as one token chunk;
    /// its finish reason kept for the last.
    pub fn chunk(&mut self, c: &ot::Chunk, out: &mut Vec<u8>) {
        let Some(choice) = c.choices.iter().find(|ch| ch.index == 0) else {
            return;
        };
        if let Some(text) = choice.delta.content.as_deref() {
            self.text(text, 0.0, out);
        }
        if let Some(r) = &choice.finish_reason {
            self.finish_reason = Some(r.clone());
        }
    }

    /// An OpenAI chunk event read in place (no chunk value built; text,
    /// finish reason, logprobs and usage borrowed from `data`): its first
    /// choice's text as one token chunk. Returns the usage it carries;
    /// `Err` when `data` is not a chunk.
    pub fn openai_event(
        &mut self,
        data: &str,
        out: &mut Vec<u8>,
    ) -> Result<Option<(u64, u64)>, serde_json::Error> {
        let ev: OpenAiEvent<'_> = serde_json::from_str(data)?;
        if let Some(c) = ev.choices.into_iter().find(|c| c.index == 0) {
            let logprob = c
                .logprobs
                .and_then(|l| l.content)
                .map_or(0.0, |v| v.iter().map(|t| t.logprob).sum());
            if let Some(text) = c.delta.and_then(|d| d.content) {
                self.text(&text, logprob, out);
            }
            if let Some(r) = c.finish_reason {
                self.finish_reason = Some(r.into_owned());
            }
        }
        Ok(ev.usage.map(|u| (u.prompt_tokens, u.completion_tokens)))
    }

    /// One token chunk carrying `text` (nothing for empty text).
    pub fn text(&mut self, text: &str, logprob: f32, out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        self.write(
            &TokenChunk {
                text,
                logprob,
                ..TokenChunk::default()
            },
            out,
        );
    }

    /// The last chunk: the finish reason seen (else "stop") and `usage`.
    pub fn finish(&mut self, usage: Option<(u64, u64)>, out: &mut Vec<u8>) {
        let reason = self.finish_reason.take();
        self.write(
            &TokenChunk {
                is_last: true,
                finish_reason: reason.as_deref().unwrap_or("stop"),
                usage: usage.map(clamp),
                ..TokenChunk::default()
            },
            out,
        );
    }

    /// The last chunk of a stream that failed: finish reason "error" and the
    /// message as its text.
    pub fn error(&mut self, message: &str, usage: Option<(u64, u64)>, out: &mut Vec<u8>) {
        self.write(
            &TokenChunk {
                text: message,
                is_last: true,
                finish_reason: "error",
                usage: usage.map(clamp),
                ..TokenChunk::default()
            },
            out,
        );
    }

    fn write(&mut self, c: &TokenChunk<'_>, out: &mut Vec<u8>) {
        let c = TokenChunk {
            id: self.next_id,
            ..*c
        };
        self.next_id += 1;
        match self.format {
            TokenFormat::FlatBuffers => flat(&mut self.fbb, &c, out),
            TokenFormat::GrpcProto => grpc_frame(out, |buf| proto(&c, buf)),
            TokenFormat::GrpcJson => grpc_frame(out, |buf| json(&c, buf)),
        }
    }
}

/// The parts of an OpenAI chunk a token stream reads, borrowed.
#[derive(serde::Deserialize)]
struct OpenAiEvent<'a> {
    #[serde(borrow, default)]
    choices: Vec<OpenAiChoice<'a>>,
    #[serde(default)]
    usage: Option<ot::UsageOut>,
}

#[derive(serde::Deserialize)]
struct OpenAiChoice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(borrow, default)]
    delta: Option<OpenAiDelta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    logprobs: Option<Logprobs>,
}

#[derive(serde::Deserialize)]
struct OpenAiDelta<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct Logprobs {
    #[serde(default)]
    content: Option<Vec<TokenLogprob>>,
}

#[derive(serde::Deserialize)]
struct TokenLogprob {
    logprob: f32,
}

/// One chunk written alone, as the first chunk of a stream would be (for
/// errors raised outside an encoder, at chunk `id`).
pub fn error_chunk(format: TokenFormat, id: u64, message: &str) -> Vec<u8> {
    let mut enc = TokenEncoder::new(format);
    enc.next_id = id;
    let mut out = Vec::with_capacity(64 + message.len());
    enc.error(message, None, &mut out);
    out
}

fn clamp((prompt, completion): (u64, u64)) -> (u32, u32) {
    let c = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    (c(prompt), c(completion))
}

/// `TokenChunk` field slots (vtable offsets: 4 + 2 × field index).
mod slot {
    pub const ID: u16 = 4;
    pub const TEXT: u16 = 6;
    pub const LOGPROB: u16 = 8;
    pub const IS_LAST: u16 = 10;
    pub const FINISH_REASON: u16 = 12;
    pub const USAGE: u16 = 14;
}

fn flat(fbb: &mut FlatBufferBuilder<'static>, c: &TokenChunk<'_>, out: &mut Vec<u8>) {
    fbb.reset();
    let text = fbb.create_string(c.text);
    let reason = (!c.finish_reason.is_empty()).then(|| fbb.create_string(c.finish_reason));
    let usage = c.usage.map(|(p, co)| {
        let t = fbb.start_table();
        fbb.push_slot::<u32>(4, p, 0);
        fbb.push_slot::<u32>(6, co, 0);
        fbb.push_slot::<u32>(8, p.saturating_add(co), 0);
        fbb.end_table(t)
    });
    let t = fbb.start_table();
    fbb.push_slot::<u64>(slot::ID, c.id, 0);
    if let Some(u) = usage {
        fbb.push_slot_always(slot::USAGE, u);
    }
    if let Some(r) = reason {
        fbb.push_slot_always(slot::FINISH_REASON, r);
    }
    fbb.push_slot_always(slot::TEXT, text);
    fbb.push_slot::<f32>(slot::LOGPROB, c.logprob, 0.0);
    fbb.push_slot::<bool>(slot::IS_LAST, c.is_last, false);
    let root = fbb.end_table(t);
    fbb.finish_size_prefixed(WIPOffset::<flatbuffers::Table<'_>>::new(root.value()), None);
    out.extend_from_slice(fbb.finished_data());
}

/// A gRPC message frame: uncompressed flag, 4-byte big-endian length, the
/// message `write` appends.
fn grpc_frame(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 5]);
    write(out);
    let len = u32::try_from(out.len() - start - 5).unwrap_or(u32::MAX);
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// `sluice.v1.TokenChunk` as protobuf (default values left out, as proto3
/// does).
fn proto(c: &TokenChunk<'_>, buf: &mut Vec<u8>) {
    if c.id != 0 {
        encoding::uint64::encode(1, &c.id, buf);
    }
    if !c.text.is_empty() {
        encode_str(2, c.text, buf);
    }
    if c.logprob != 0.0 {
        encoding::float::encode(3, &c.logprob, buf);
    }
    if c.is_last {
        encoding::bool::encode(4, &c.is_last, buf);
    }
    if !c.finish_reason.is_empty() {
        encode_str(5, c.finish_reason, buf);
    }
    if let Some((p, co)) = c.usage {
        let fields = [p, co, p.saturating_add(co)];
        let len: usize = fields
            .iter()
            .filter(|v| **v != 0)
            .map(|v| 1 + encoded_len_varint(u64::from(*v)))
            .sum();
        encode_key(6, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        for (tag, v) in (1..).zip(fields) {
            if v != 0 {
                encoding::uint32::encode(tag, &v, buf);
            }
        }
    }
}

fn encode_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.extend_from_slice(s.as_bytes());
}

/// `sluice.v1.TokenChunk` in proto3's JSON mapping: lowerCamelCase names,
/// the uint64 id as a string, default values left out.
fn json(c: &TokenChunk<'_>, buf: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Json<'a> {
        #[serde(skip_serializing_if = "str::is_empty")]
        id: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        text: &'a str,
        #[serde(skip_serializing_if = "is_zero")]
        logprob: f32,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_last: bool,
        #[serde(skip_serializing_if = "str::is_empty")]
        finish_reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<UsageJson>,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct UsageJson {
        prompt_tokens: u32,
        completion_tokens: u32,
        total_tokens: u32,
    }
    fn is_zero(v: &f32) -> bool {
        *v == 0.0
    }
    let id = if c.id == 0 {
        String::new()
    } else {
        c.id.to_string()
    };
    let j = Json {
        id: &id,
        text: c.text,
        logprob: c.logprob,
        is_last: c.is_last,
        finish_reason: c.finish_reason,
        usage: c.usage.map(|(p, co)| UsageJson {
            prompt_tokens: p,
            completion_tokens: co,
            total_tokens: p.saturating_add(co),
        }),
    };
    serde_json::to_writer(buf, &j).expect("writing JSON to a Vec cannot fail");
}

#[cfg(test)]
mod tests;
