//! gRPC's message framing (a compressed flag, a 4-byte big-endian length,
//! the message) with protobuf or proto3 JSON messages.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::status::{Code, Status};

/// How the messages of a call are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

impl Codec {
    /// The codec a gRPC request's content type names; `None` when it is not
    /// a gRPC content type.
    pub fn of_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/grpc" | "application/grpc+proto" => Some(Self::Proto),
            "application/grpc+json" => Some(Self::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Proto => "application/grpc",
            Self::Json => "application/grpc+json",
        }
    }

    /// One message as a frame.
    pub fn frame<M: prost::Message + Serialize>(self, m: &M) -> Bytes {
        let mut buf = BytesMut::with_capacity(5 + m.encoded_len());
        buf.put_u8(0);
        buf.put_u32(0);
        match self {
            Self::Proto => m
                .encode(&mut buf)
                .expect("a BytesMut grows as the message needs"),
            Self::Json => serde_json::to_writer((&mut buf).writer(), m)
                .expect("writing JSON to a BytesMut cannot fail"),
        }
        let len = u32::try_from(buf.len() - 5).unwrap_or(u32::MAX);
        buf[1..5].copy_from_slice(&len.to_be_bytes());
        buf.freeze()
    }

    /// A message's bytes decoded.
    pub fn decode<M: prost::Message + Default + DeserializeOwned>(
        self,
        msg: &[u8],
    ) -> Result<M, Status> {
        match self {
            Self::Proto => M::decode(msg).map_err(|e| {
                Status::new(
                    Code::InvalidArgument,
                    format!("the request message is not valid protobuf: {e}"),
                )
            }),
            Self::Json => serde_json::from_slice(msg).map_err(|e| {
                Status::new(
                    Code::InvalidArgument,
                    format!("the request message is not valid JSON for its type: {e}"),
                )
            }),
        }
    }

    /// The one message of a unary call's body.
    pub fn decode_unary<M: prost::Message + Default + DeserializeOwned>(
        self,
        body: &[u8],
        max: usize,
    ) -> Result<M, Status> {
        let mut frames = Frames::new(max);
        frames.feed(body);
        let msg = frames.next_message()?.ok_or_else(|| {
            Status::new(Code::InvalidArgument, "the call carried no request message")
        })?;
        if frames.pending() > 0 {
            return Err(Status::new(
                Code::InvalidArgument,
                "a unary call takes exactly one request message",
            ));
        }
        self.decode(&msg)
    }
}

/// Messages cut out of a byte stream of frames.
#[derive(Debug)]
pub struct Frames {
    buf: BytesMut,
    max: usize,
}

impl Frames {
    /// `max`: the largest message accepted.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::new(
                Code::Unimplemented,
                "compressed messages are not supported (send grpc-encoding identity)",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "request message of {len} bytes exceeds the limit of {} bytes",
                    self.max
                ),
            ));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let mut frame = self.buf.split_to(5 + len);
        Ok(Some(frame.split_off(5).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    fn request() -> pb::ChatRequest {
        pb::ChatRequest {
            model: "m".into(),
            messages: vec![pb::Message {
                role: "user".into(),
                content: "hi".into(),
            }],
            max_tokens: Some(5),
            temperature: None,
            extra_json: String::new(),
        }
    }

    #[test]
    fn both_codecs_round_trip_a_request() {
        for codec in [Codec::Proto, Codec::Json] {
            let framed = codec.frame(&request());
            let back: pb::ChatRequest = codec.decode_unary(&framed, 1 << 20).expect("decodes");
            assert_eq!(back, request(), "{codec:?}");
        }
    }

    #[test]
    fn json_uses_proto3_names_and_accepts_the_originals() {
        let framed = Codec::Json.frame(&request());
        let text = std::str::from_utf8(&framed[5..]).expect("utf-8");
        assert!(text.contains("\"maxTokens\":5"), "{text}");
        let original =
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
        let back: pb::ChatRequest = Codec::Json.decode(original).expect("decodes");
        assert_eq!(back, request());
    }

    #[test]
    fn bad_frames_are_refused_with_their_reason() {
        let framed = Codec::Proto.frame(&request());
        let too_big = Codec::Proto.decode_unary::<pb::ChatRequest>(&framed, 4);
        assert_eq!(too_big.unwrap_err().code, Code::ResourceExhausted);
        let mut two = framed.to_vec();
        two.extend_from_slice(&framed);
        let e = Codec::Proto.decode_unary::<pb::ChatRequest>(&two, 1 << 20);
        assert_eq!(e.unwrap_err().code, Code::InvalidArgument);
        let e = Codec::Proto.decode_unary::<pb::ChatRequest>(&framed[..7], 1 << 20);
        assert_eq!(e.unwrap_err().code, Code::InvalidArgument);
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        let e = Codec::Proto.decode_unary::<pb::ChatRequest>(&compressed, 1 << 20);
        assert_eq!(e.unwrap_err().code, Code::Unimplemented);
        let e = Codec::Proto.decode_unary::<pb::ChatRequest>(&[0, 0, 0, 0, 2, 0xff, 0xff], 99);
        assert_eq!(e.unwrap_err().code, Code::InvalidArgument);
    }

    #[test]
    fn content_types_choose_the_codec() {
        assert_eq!(
            Codec::of_content_type("application/grpc"),
            Some(Codec::Proto)
        );
        assert_eq!(
            Codec::of_content_type("application/grpc+proto"),
            Some(Codec::Proto)
        );
        assert_eq!(
            Codec::of_content_type("application/grpc+json"),
            Some(Codec::Json)
        );
        assert_eq!(Codec::of_content_type("application/json"), None);
    }
}
