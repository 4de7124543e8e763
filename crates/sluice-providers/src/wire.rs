//! Wire formats, and the decisions about them the server asks for without
//! looking at a format itself.

use sluice_core::GatewayError;
use sluice_core::request::Usage;

use crate::anthropic::types as at;
use crate::tokens::{self, TokenFormat};

/// A wire format, of a client or of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
    /// Upstream only: Gemini's `generateContent`.
    Gemini,
    /// OpenAI's Responses API: a client format served through the chat
    /// shape, and the upstream format of providers that have it.
    Responses,
    /// OpenAI's legacy completions: passed through to OpenAI-format
    /// upstreams, translated through the chat shape for the others.
    Completions,
    /// Client only: a chat request (OpenAI's shape) answered as a stream
    /// of binary token chunks (FlatBuffers or gRPC).
    Tokens(TokenFormat),
}

/// How a committed upstream response reaches the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The upstream's bytes as they come; usage is read from their tail.
    Passthrough,
    /// Re-encoded event by event (`translate::StreamBody`).
    Stream,
    /// Read whole, then converted (or relayed) at once.
    Whole,
}

impl Wire {
    /// OpenAI's own formats: usage last, in the same fields.
    fn openai_shaped(self) -> bool {
        matches!(self, Self::OpenAi | Self::Completions)
    }

    /// The format a client speaks on `path`.
    pub fn of_path(path: &str) -> Self {
        if path.starts_with("/v1/messages") {
            Self::Anthropic
        } else if path.starts_with("/v1/responses") {
            Self::Responses
        } else if path.starts_with("/v1/completions") {
            Self::Completions
        } else {
            Self::OpenAi
        }
    }

    /// `e` as this format's JSON error body.
    pub fn error_json(self, e: &GatewayError) -> Vec<u8> {
        match self {
            Self::Anthropic => e.to_anthropic_json(),
            Self::OpenAi | Self::Gemini | Self::Responses | Self::Completions | Self::Tokens(_) => {
                e.to_openai_json()
            }
        }
    }

    /// `e` as this format's server-sent event, for a stream that fails
    /// after it started.
    pub fn error_event(self, e: &GatewayError) -> Vec<u8> {
        self.error_event_at(e, 0)
    }

    /// [`Self::error_event`] for a stream that sent `sent` chunks before
    /// (a token stream numbers its chunks).
    pub fn error_event_at(self, e: &GatewayError, sent: u64) -> Vec<u8> {
        let mut event = Vec::with_capacity(160);
        match self {
            Self::OpenAi | Self::Gemini | Self::Completions => event.extend_from_slice(b"data: "),
            Self::Anthropic => event.extend_from_slice(b"event: error\ndata: "),
            Self::Responses => return crate::responses::stream::error_event(e),
            Self::Tokens(f) => return tokens::error_chunk(f, sent, &e.message),
        }
        event.extend_from_slice(&self.error_json(e));
        event.extend_from_slice(b"\n\n");
        event
    }

    /// Whether a stream that fails after it started tells the client in
    /// its own body (an error event or chunk); gRPC streams end with a
    /// status in their trailers instead.
    pub fn errors_in_band(self) -> bool {
        !matches!(
            self,
            Self::Tokens(TokenFormat::GrpcProto | TokenFormat::GrpcJson)
        )
    }

    /// The content type of a stream delivered to a client of this format,
    /// when it is not the upstream's.
    pub fn stream_content_type(self) -> Option<&'static str> {
        match self {
            Self::Tokens(f) => Some(f.content_type()),
            _ => None,
        }
    }

    /// How a response in this (upstream) format reaches a `client`.
    pub fn delivery(
        self,
        client: Wire,
        stream: bool,
        success: bool,
        include_usage: bool,
    ) -> Delivery {
        let same = self == client;
        match (stream, success) {
            // A provider's own Responses API answering a Responses client.
            (_, true) if same && self == Self::Responses => Delivery::Passthrough,
            // An OpenAI stream the client asked usage for goes through as is.
            (true, true) if same && self.openai_shaped() && include_usage => Delivery::Passthrough,
            (true, true) => Delivery::Stream,
            (false, true) if same && self.openai_shaped() => Delivery::Passthrough,
            _ => Delivery::Whole,
        }
    }

    /// The usage of a whole successful body in this format that goes to a
    /// client of the same format (no conversion reads it on the way).
    pub fn usage_of(self, body: &[u8]) -> Option<Usage> {
        match self {
            Self::Anthropic => serde_json::from_slice::<at::MessagesResponse>(body)
                .ok()
                .map(|r| Usage {
                    prompt_tokens: r.usage.prompt_tokens(),
                    completion_tokens: r.usage.output_tokens,
                }),
            // Passed through: their usage is read from the tail.
            Self::OpenAi | Self::Gemini | Self::Responses | Self::Completions | Self::Tokens(_) => {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_own_responses_api_passes_through() {
        for stream in [false, true] {
            let d = Wire::Responses.delivery(Wire::Responses, stream, true, false);
            assert_eq!(d, Delivery::Passthrough, "stream {stream}");
            // Translated from chat: re-encoded or converted.
            let d = Wire::OpenAi.delivery(Wire::Responses, stream, true, false);
            assert_ne!(d, Delivery::Passthrough, "stream {stream}");
        }
        assert_eq!(
            Wire::Responses.delivery(Wire::Responses, true, false, false),
            Delivery::Whole
        );
    }
}
