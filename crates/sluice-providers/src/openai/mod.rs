//! The OpenAI wire format, for OpenAI and every compatible server.
//!
//! Same format in and out, so nothing is decoded here: the body goes upstream
//! as bytes (with `model` rewritten by the caller when needed) and comes back
//! as bytes, observed by [`UsageTail`] for token usage. [`types`] holds the
//! typed shape that translation to and from other formats goes through.

pub mod types;

use bytes::Bytes;
use http::Uri;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use sluice_core::GatewayError;
use sluice_core::config::{ProviderConfig, ProviderKind};
use sluice_core::media::Media;
use sluice_core::request::{Operation, Usage};

use crate::template;

pub use crate::template::UA;

/// A provider's request template, built once per configuration snapshot so a
/// request only clones ready-made URIs and header values.
#[derive(Debug, Clone)]
pub struct Endpoint {
    chat: Uri,
    completions: Uri,
    embeddings: Uri,
    /// The Responses API, for providers that have their own.
    responses: Option<Uri>,
    /// One per [`Media`] endpoint, in its declaration order.
    media: Vec<Uri>,
    headers: HeaderMap,
    /// The base URL and the query every request carries (Azure's version).
    base: String,
    query: String,
}

impl Endpoint {
    pub fn new(p: &ProviderConfig) -> Result<Self, GatewayError> {
        // Azure addresses a deployment and versions its API in the query.
        let query = match p.kind {
            ProviderKind::Azure => format!("?api-version={}", p.api_version),
            _ => String::new(),
        };
        let uri = |path: &str| {
            Uri::try_from(format!("{}{path}{query}", p.base_url))
                .map_err(|_| template::invalid(p, "base_url"))
        };
        let auth = p.api_key.as_ref().map(|key| match p.kind {
            ProviderKind::Azure => (HeaderName::from_static("api-key"), key.expose().to_owned()),
            _ => (AUTHORIZATION, format!("Bearer {}", key.expose())),
        });
        Ok(Self {
            chat: uri("/chat/completions")?,
            completions: uri("/completions")?,
            embeddings: uri("/embeddings")?,
            responses: if p.responses_api {
                Some(uri("/responses")?)
            } else {
                None
            },
            media: Media::ALL
                .iter()
                .map(|m| uri(m.path()))
                .collect::<Result<_, _>>()?,
            headers: template::headers(p, auth, &[])?,
            base: p.base_url.clone(),
            query,
        })
    }

    /// The upstream request for `op` with `body` as it should be sent.
    pub fn request(
        &self,
        op: Operation,
        body: Bytes,
        request_id: Option<&HeaderValue>,
    ) -> http::Request<Full<Bytes>> {
        let uri = match op {
            Operation::Responses if self.responses.is_some() => {
                self.responses.clone().unwrap_or_else(|| self.chat.clone())
            }
            Operation::Chat | Operation::Messages | Operation::Responses => self.chat.clone(),
            Operation::Completions => self.completions.clone(),
            Operation::Embeddings => self.embeddings.clone(),
            Operation::Media(m) => self.media[m as usize].clone(),
        };
        template::request(&self.headers, uri, body, request_id)
    }
}

impl Endpoint {
    /// Whether `/v1/responses` goes to the provider's own Responses API.
    pub fn has_responses_api(&self) -> bool {
        self.responses.is_some()
    }

    /// A request to `path` under the base URL (`/files/…`, `/batches/…`)
    /// as the client made it: its method, query, content type and body,
    /// with the provider's credentials.
    pub fn passthrough(
        &self,
        method: http::Method,
        path: &str,
        client_query: Option<&str>,
        content_type: Option<&HeaderValue>,
        body: Bytes,
        request_id: Option<&HeaderValue>,
    ) -> Result<http::Request<Full<Bytes>>, GatewayError> {
        let mut uri = format!("{}{path}", self.base);
        let queries = [
            client_query.unwrap_or(""),
            self.query.trim_start_matches('?'),
        ];
        for (i, q) in queries.iter().filter(|q| !q.is_empty()).enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(q);
        }
        let uri = Uri::try_from(uri).map_err(|_| {
            GatewayError::new(
                sluice_core::ErrorKind::InvalidRequest,
                "invalid path or query",
            )
        })?;
        let mut req = template::request(&self.headers, uri, body, request_id);
        *req.method_mut() = method;
        let h = req.headers_mut();
        match content_type {
            Some(ct) => {
                h.insert(http::header::CONTENT_TYPE, ct.clone());
            }
            None => {
                h.remove(http::header::CONTENT_TYPE);
            }
        }
        h.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
        Ok(req)
    }
}

/// Keeps the end of a response to read its usage once it is complete.
///
/// OpenAI-compatible servers put `usage` last: in the final object of a JSON
/// response and in the last chunk before `[DONE]` of a stream. The last frame
/// is held by reference (no copy, so a one-frame response costs nothing);
/// earlier bytes are copied into a bounded tail only when another frame
/// follows, in case the usage object straddles frames.
#[derive(Debug, Default)]
pub struct UsageTail {
    buf: Vec<u8>,
    last: Bytes,
}

const TAIL: usize = 16 * 1024;

/// The tail's first allocation: most streams then grow it once or twice.
const FIRST: usize = 4 * 1024;

impl UsageTail {
    pub fn observe(&mut self, chunk: &Bytes) {
        let prev = std::mem::replace(&mut self.last, chunk.clone());
        if prev.is_empty() {
            return;
        }
        if prev.len() >= TAIL {
            self.buf.clear();
            self.buf.extend_from_slice(&prev[prev.len() - TAIL..]);
            return;
        }
        if self.buf.len() + prev.len() > 2 * TAIL {
            let drop = self.buf.len() + prev.len() - TAIL;
            self.buf.drain(..drop.min(self.buf.len()));
        }
        if self.buf.capacity() == 0 {
            // A stream's frames are ~100-300 bytes: growing from the first
            // one's size took ~7 reallocations for a 12 KB stream; 4 KiB
            // first takes ~2,700 instructions off a 64-event stream
            // (`bench/instructions.py --stream --model frames`).
            self.buf.reserve(FIRST.max(prev.len()));
        }
        self.buf.extend_from_slice(&prev);
    }

    /// The last non-null `usage` object seen, if any.
    pub fn usage(&self) -> Option<Usage> {
        // Looked for near the end first: the last `NEAR` bytes of the tail
        // joined to the last frame (a stream's last frame is mostly its
        // `[DONE]`, the usage chunk just before it), not the whole tail
        // (~16 KiB copied per stream). A suffix holds the same keys with
        // the same text after them, so what it finds is what the whole
        // would; only when it finds nothing is the whole searched.
        const NEAR: usize = 2048;
        if self.buf.len() > NEAR {
            let near = join(&self.buf[self.buf.len() - NEAR..], &self.last);
            if let Some(u) = find_usage(&near) {
                return Some(u);
            }
        }
        self.with_bytes(find_usage)
    }

    /// The response's model (the last `"model"` string) and its finish
    /// reasons (every non-null `finish_reason` / `stop_reason`, in order,
    /// once each), from the tail: what a trace reports as
    /// `gen_ai.response.model` and `gen_ai.response.finish_reasons`.
    pub fn response_meta(&self) -> (Option<String>, Vec<String>) {
        use memchr::memmem::Finder;
        use std::sync::LazyLock;
        // Built once: a finder costs more to make than to run on a tail.
        static REASONS: LazyLock<[Finder<'static>; 2]> = LazyLock::new(|| {
            [
                Finder::new(b"\"finish_reason\""),
                Finder::new(b"\"stop_reason\""),
            ]
        });
        self.with_bytes(|b| {
            let model = rfind_string(b, b"\"model\"");
            let mut reasons: Vec<String> = Vec::new();
            for key in REASONS.iter() {
                for i in key.find_iter(b) {
                    if let Some(r) = string_at(&b[i + key.needle().len()..])
                        && !reasons.contains(&r)
                    {
                        reasons.push(r);
                    }
                }
            }
            (model, reasons)
        })
    }

    fn with_bytes<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        if self.buf.is_empty() {
            return f(&self.last);
        }
        f(&join(&self.buf, &self.last))
    }
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut joined = Vec::with_capacity(a.len() + b.len());
    joined.extend_from_slice(a);
    joined.extend_from_slice(b);
    joined
}

/// Where the last `key` (a quoted JSON key, two bytes or more) in `hay`
/// starts: `memrchr` to each earlier byte like the key's second, then a
/// compare. The keys looked for sit near the end of a tail: with
/// `memmem::FinderRev` (a two-way search, a byte at a time backwards) the
/// search alone cost ~550 instructions on the bench's answer, and
/// `find_usage` went from ~2,130 to ~1,690 with this (callgrind).
fn rfind(hay: &[u8], key: &[u8]) -> Option<usize> {
    let mut end = hay.len();
    while let Some(j) = memchr::memrchr(key[1], &hay[..end]) {
        let i = j.checked_sub(1)?;
        if hay[i..].starts_with(key) {
            return Some(i);
        }
        end = j;
    }
    None
}

/// The string value after the last occurrence of `key` that has one.
fn rfind_string(bytes: &[u8], key: &[u8]) -> Option<String> {
    let mut end = bytes.len();
    while let Some(i) = rfind(&bytes[..end], key) {
        if let Some(s) = string_at(&bytes[i + key.len()..]) {
            return Some(s);
        }
        end = i;
    }
    None
}

/// `: "value"` at the start of `after_key` (JSON escapes resolved).
fn string_at(after_key: &[u8]) -> Option<String> {
    let rest = after_key.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start();
    if !rest.starts_with(b"\"") {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(rest);
    let s: String = serde::Deserialize::deserialize(&mut de).ok()?;
    Some(s).filter(|s| !s.is_empty())
}

fn find_usage(bytes: &[u8]) -> Option<Usage> {
    let mut end = bytes.len();
    while let Some(i) = rfind(&bytes[..end], b"\"usage\"") {
        if let Some(u) = parse_usage_at(&bytes[i + 7..]) {
            return Some(u);
        }
        end = i;
    }
    None
}

fn parse_usage_at(after_key: &[u8]) -> Option<Usage> {
    let rest = after_key.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start();
    if !rest.starts_with(b"{") {
        return None;
    }
    Usage::read_prefix(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const RFIND_KEYS: &[&[u8]] = &[b"\"usage\"", b"\"u", b"ee", b"\"\""];

    proptest::proptest! {
        /// `rfind` finds what a reverse `memmem` search finds, in text
        /// made of the key's own bytes (overlaps, near misses, a key cut
        /// at either end).
        #[test]
        fn rfind_is_a_reverse_search(
            hay in proptest::collection::vec(proptest::sample::select(&b"\"usage:{}"[..]), 0..64),
            key in proptest::sample::select(RFIND_KEYS),
        ) {
            proptest::prop_assert_eq!(rfind(&hay, key), memchr::memmem::rfind(&hay, key));
        }
    }

    #[test]
    fn response_meta_from_the_tail() {
        let mut t = UsageTail::default();
        t.observe(&Bytes::from_static(
            b"data: {\"model\":\"gpt-4o-2024\",\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":null}]}\n\n",
        ));
        t.observe(&Bytes::from_static(
            b"data: {\"model\":\"gpt-4o-2024\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"},{\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: [DONE]\n\n",
        ));
        let (model, reasons) = t.response_meta();
        assert_eq!(model.as_deref(), Some("gpt-4o-2024"));
        assert_eq!(reasons, ["stop", "length"]);
        let mut a = UsageTail::default();
        a.observe(&Bytes::from_static(
            b"{\"model\":\"claude-x\",\"stop_reason\":\"end_turn\",\"content\":[{\"text\":\"\\\"model\\\": no\"}]}",
        ));
        assert_eq!(
            a.response_meta(),
            (Some("claude-x".into()), vec!["end_turn".into()])
        );
        assert_eq!(UsageTail::default().response_meta(), (None, vec![]));
    }
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE};

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
        let e = Endpoint::new(&provider()).unwrap();
        let id = HeaderValue::from_static("req-1");
        let r = e.request(Operation::Chat, Bytes::from_static(b"{}"), Some(&id));
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "http://h:1/v1/chat/completions");
        assert_eq!(r.headers()[AUTHORIZATION], "Bearer sk-1");
        assert!(r.headers()[AUTHORIZATION].is_sensitive());
        assert_eq!(r.headers()["x-org"], "o");
        assert_eq!(r.headers()["x-request-id"], "req-1");
        assert_eq!(r.headers()[CONTENT_LENGTH], "2");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let r = e.request(Operation::Embeddings, Bytes::new(), None);
        assert_eq!(r.uri(), "http://h:1/v1/embeddings");
        assert!(!r.headers().contains_key("x-request-id"));
    }

    #[test]
    fn azure_uses_api_key_header_and_version_query() {
        let c = sluice_core::config::parse(
            "[[providers]]\nname=\"az\"\nkind=\"azure\"\nbase_url=\"https://r.openai.azure.com/openai/deployments/d1\"\napi_key=\"k1\"\napi_version=\"2024-06-01\"\n",
            "t",
            &|_| None,
        )
        .unwrap();
        let e = Endpoint::new(&c.providers[0]).unwrap();
        let r = e.request(Operation::Chat, Bytes::new(), None);
        assert_eq!(
            r.uri(),
            "https://r.openai.azure.com/openai/deployments/d1/chat/completions?api-version=2024-06-01"
        );
        assert_eq!(r.headers()["api-key"], "k1");
        assert!(!r.headers().contains_key(AUTHORIZATION));
    }

    #[test]
    fn usage_from_json_response() {
        let mut t = UsageTail::default();
        t.observe(&Bytes::from_static(
            br#"{"id":"x","choices":[{"message":{"content":"the \"usage\" word"}}],"#,
        ));
        t.observe(&Bytes::from_static(
            br#""usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}"#,
        ));
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
                t.observe(&Bytes::copy_from_slice(c));
            }
            assert_eq!(
                t.usage().map(|u| u.completion_tokens),
                Some(9),
                "split {split}"
            );
        }
    }

    #[test]
    fn usage_far_from_the_end_is_still_found() {
        // A usage chunk, then more than the near window of chunks without
        // one: found in the whole tail; a later one near the end wins.
        let null = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n";
        let usage = |n: u64| {
            format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":{n}}}}}\n\n"
            )
        };
        let mut t = UsageTail::default();
        t.observe(&Bytes::from(usage(7)));
        for _ in 0..100 {
            t.observe(&Bytes::from_static(null.as_bytes()));
        }
        t.observe(&Bytes::from_static(b"data: [DONE]\n\n"));
        assert!(t.buf.len() > 4096);
        assert_eq!(t.usage().map(|u| u.completion_tokens), Some(7));
        t.observe(&Bytes::from(usage(9)));
        t.observe(&Bytes::from_static(b"data: [DONE]\n\n"));
        assert_eq!(t.usage().map(|u| u.completion_tokens), Some(9));
    }

    #[test]
    fn single_frame_is_not_copied() {
        let mut t = UsageTail::default();
        t.observe(&Bytes::from_static(
            br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        ));
        assert!(t.buf.is_empty());
        assert_eq!(t.usage().map(|u| u.completion_tokens), Some(2));
    }

    #[test]
    fn tail_is_bounded() {
        let mut t = UsageTail::default();
        let big = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..1000 {
            t.observe(&big);
        }
        assert!(t.buf.len() <= 2 * TAIL);
        assert_eq!(t.usage(), None);
        t.observe(&Bytes::from(vec![b'y'; 100_000]));
        t.observe(&big);
        assert!(t.buf.len() <= 2 * TAIL);
    }
}
