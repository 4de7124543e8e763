//! gRPC status codes, from the HTTP API's answers, and the trailers that
//! carry them.

use http::{HeaderMap, HeaderValue};

/// The gRPC status codes the gateway answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Aborted = 10,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    /// The status for an HTTP API status.
    pub fn of_http(status: u16) -> Self {
        match status {
            200..=299 => Self::Ok,
            400 | 405 | 409 | 411 | 413 | 415 | 422 => Self::InvalidArgument,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            408 | 504 => Self::DeadlineExceeded,
            429 => Self::ResourceExhausted,
            499 => Self::Cancelled,
            501 => Self::Unimplemented,
            502 | 503 => Self::Unavailable,
            500 => Self::Internal,
            _ => Self::Unknown,
        }
    }
}

/// A call's outcome: a code and the message the HTTP API would have given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The status of an HTTP API answer: its code from the HTTP status, its
    /// message from the OpenAI-shaped error body (`error.message`).
    pub fn of_http(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            error: Error,
        }
        #[derive(serde::Deserialize)]
        struct Error {
            message: String,
        }
        let message = serde_json::from_slice::<Body>(body)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        Self::new(Code::of_http(status), message)
    }

    /// `grpc-status` and `grpc-message` (percent-encoded as gRPC requires).
    pub fn write(&self, h: &mut HeaderMap) {
        h.insert("grpc-status", HeaderValue::from(self.code as u8 as u16));
        if !self.message.is_empty() {
            let encoded = encode_message(&self.message);
            if let Ok(v) = HeaderValue::from_str(&encoded) {
                h.insert("grpc-message", v);
            }
        }
    }

    /// The trailers that end a call with this status.
    pub fn trailers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(2);
        self.write(&mut h);
        h
    }
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable
/// ASCII, and `%`, as `%XX`.
fn encode_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    for b in m.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_grpc_codes() {
        let cases = [
            (400, Code::InvalidArgument),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (429, Code::ResourceExhausted),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::DeadlineExceeded),
            (499, Code::Cancelled),
            (500, Code::Internal),
        ];
        for (http, code) in cases {
            assert_eq!(Code::of_http(http), code, "{http}");
        }
    }

    #[test]
    fn the_message_comes_from_the_error_body_and_is_percent_encoded() {
        let s = Status::of_http(
            404,
            br#"{"error":{"message":"model 'x' 100% \u00e9 unknown"}}"#,
        );
        assert_eq!(s.code, Code::NotFound);
        let t = s.trailers();
        assert_eq!(t["grpc-status"], "5");
        assert_eq!(t["grpc-message"], "model 'x' 100%25 %C3%A9 unknown");
    }
}
