//! The OpenAI wire format, for OpenAI and every compatible server.
//!
//! Same format in and out, so nothing is decoded here: the body goes upstream
//! as bytes (with `model` rewritten by the caller when needed) and comes back
//! as bytes, observed by [`UsageTail`] for token usage.

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http_body_util::Full;
use sluice_core::config::ProviderConfig;
use sluice_core::request::{Operation, Usage};
use sluice_core::{ErrorKind, GatewayError};

const UA: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));

/// Builds the upstream request for `op` with `body` as it should be sent.
pub fn build_request(
    p: &ProviderConfig,
    op: Operation,
    body: Bytes,
    request_id: Option<&HeaderValue>,
) -> Result<http::Request<Full<Bytes>>, GatewayError> {
    let path = match op {
        Operation::Chat => "/chat/completions",
        Operation::Embeddings => "/embeddings",
    };
    let mut b = http::Request::post(format!("{}{path}", p.base_url))
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json, text/event-stream")
        .header(USER_AGENT, UA);
    if let Some(key) = &p.api_key {
        let mut v = HeaderValue::try_from(format!("Bearer {}", key.expose())).map_err(|_| {
            GatewayError::new(
                ErrorKind::Internal,
                format!("provider '{}': api_key is not a valid header value", p.name),
            )
        })?;
        v.set_sensitive(true);
        b = b.header(AUTHORIZATION, v);
    }
    for (name, value) in &p.headers {
        let (Ok(n), Ok(mut v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.expose()),
        ) else {
            return Err(GatewayError::new(
                ErrorKind::Internal,
                format!("provider '{}': header '{name}' is not valid", p.name),
            ));
        };
        v.set_sensitive(true);
        b = b.header(n, v);
    }
    if let Some(id) = request_id {
        b = b.header("x-request-id", id);
    }
    b.body(Full::new(body)).map_err(|e| {
        GatewayError::new(
            ErrorKind::Internal,
            format!("provider '{}': cannot build request: {e}", p.name),
        )
    })
}

/// Keeps the last few KiB of a response to read its usage at the end.
///
/// OpenAI-compatible servers put `usage` last: in the final object of a JSON
/// response and in the last chunk before `[DONE]` of a stream. A bounded tail
/// finds it in both without buffering the response.
#[derive(Debug, Default)]
pub struct UsageTail {
    buf: Vec<u8>,
}

const TAIL: usize = 16 * 1024;

impl UsageTail {
    pub fn observe(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL {
            self.buf.clear();
            self.buf.extend_from_slice(&chunk[chunk.len() - TAIL..]);
            return;
        }
        if self.buf.len() + chunk.len() > 2 * TAIL {
            let drop = self.buf.len() + chunk.len() - TAIL;
            self.buf.drain(..drop.min(self.buf.len()));
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The last non-null `usage` object seen, if any.
    pub fn usage(&self) -> Option<Usage> {
        static FINDER: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"usage\""));
        let finder = &*FINDER;
        let mut end = self.buf.len();
        while let Some(i) = finder.rfind(&self.buf[..end]) {
            if let Some(u) = parse_usage_at(&self.buf[i + 7..]) {
                return Some(u);
            }
            end = i;
        }
        None
    }
}

fn parse_usage_at(after_key: &[u8]) -> Option<Usage> {
    let rest = after_key.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start();
    if !rest.starts_with(b"{") {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(rest);
    serde::Deserialize::deserialize(&mut de).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> ProviderConfig {
        let c = sluice_core::config::parse(
            "[[providers]]\nname=\"p\"\nkind=\"openai\"\nbase_url=\"http://h:1/v1/\"\napi_key=\"sk-1\"\nheaders={\"x-org\"=\"o\"}\n",
            "t",
            &|_| None,
        )
        .unwrap();
        c.providers[0].clone()
    }

    #[test]
    fn request_has_auth_path_and_headers() {
        let p = provider();
        let id = HeaderValue::from_static("req-1");
        let r = build_request(&p, Operation::Chat, Bytes::from_static(b"{}"), Some(&id)).unwrap();
        assert_eq!(r.uri(), "http://h:1/v1/chat/completions");
        assert_eq!(r.headers()[AUTHORIZATION], "Bearer sk-1");
        assert!(r.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(r.headers()["x-org"], "o");
        assert_eq!(r.headers()["x-request-id"], "req-1");
        let r = build_request(&p, Operation::Embeddings, Bytes::new(), None).unwrap();
        assert_eq!(r.uri(), "http://h:1/v1/embeddings");
    }

    #[test]
    fn usage_from_json_response() {
        let mut t = UsageTail::default();
        t.observe(br#"{"id":"x","choices":[{"message":{"content":"the \"usage\" word"}}],"#);
        t.observe(
            br#""usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}"#,
        );
        assert_eq!(
            t.usage(),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5
            })
        );
    }

    #[test]
    fn usage_from_stream_skips_nulls_and_survives_splits() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":9,\"total_tokens\":12}}\n\n",
            "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n",
            "data: [DONE]\n\n"
        )
        .as_bytes();
        for split in [1, 7, 50, stream.len()] {
            let mut t = UsageTail::default();
            for c in stream.chunks(split) {
                t.observe(c);
            }
            assert_eq!(
                t.usage().map(|u| u.completion_tokens),
                Some(9),
                "split {split}"
            );
        }
    }

    #[test]
    fn tail_is_bounded() {
        let mut t = UsageTail::default();
        let big = vec![b'x'; 1000];
        for _ in 0..1000 {
            t.observe(&big);
        }
        assert!(t.buf.len() <= 2 * TAIL);
        assert_eq!(t.usage(), None);
        t.observe(&vec![b'y'; 100_000]);
        assert!(t.buf.len() <= 2 * TAIL);
    }
}
