//! Secrets out of upstream text: an upstream's error body may quote the key
//! it was sent (whole, or masked as `sk-abc***wxyz`), and that body goes to
//! the client. Every relayed upstream body and message passes through a
//! [`Scrubber`] first: the configured provider keys and anything shaped
//! like an API key become `[redacted]`, and the text around them is kept
//! (a JSON body stays valid JSON: nothing added contains a quote).

use std::borrow::Cow;

use regex::Regex;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Key shapes: OpenAI-style `sk-…`/`rk-…`/`pk-…` (Anthropic's `sk-ant-…`
/// too), Google's `AIza…`, masked keys (`abcd***wxyz`), and bearer
/// credentials.
const SHAPES: &str = concat!(
    r"(?:\b(?:sk|rk|pk)[-_][A-Za-z0-9_\-*]{6,})",
    r"|(?:\bAIza[0-9A-Za-z_\-]{20,})",
    r"|(?:[A-Za-z0-9_\-]*\*{3,}[A-Za-z0-9_\-*]*)",
    r"|(?:(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*)",
);

/// Finds secrets in text. Built once per configuration.
#[derive(Debug, Clone)]
pub struct Scrubber {
    re: Regex,
}

impl Scrubber {
    /// Scrubs the shapes and each of `known` (the configured keys; short
    /// ones, under 8 characters, are not looked for: they would match
    /// ordinary words).
    pub fn new<'a>(known: impl IntoIterator<Item = &'a str>) -> Self {
        let mut alts: Vec<String> = known
            .into_iter()
            .filter(|k| k.len() >= 8)
            .map(regex::escape)
            .collect();
        // Longest first, so a key that contains another is taken whole.
        alts.sort_by_key(|a| std::cmp::Reverse(a.len()));
        alts.push(SHAPES.to_owned());
        let re = Regex::new(&alts.join("|")).expect("escaped keys and the shapes compile");
        Self { re }
    }

    /// `text` with every secret replaced; borrowed when there is none.
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        self.re.replace_all(text, REDACTED)
    }

    /// Bytes that may or may not be UTF-8 (an upstream body): scrubbed when
    /// they are text, and returned as they are otherwise.
    pub fn scrub_bytes<'b>(&self, bytes: &'b [u8]) -> Cow<'b, [u8]> {
        match std::str::from_utf8(bytes) {
            Ok(text) => match self.scrub(text) {
                Cow::Borrowed(_) => Cow::Borrowed(bytes),
                Cow::Owned(s) => Cow::Owned(s.into_bytes()),
            },
            Err(_) => Cow::Borrowed(bytes),
        }
    }
}

impl Default for Scrubber {
    fn default() -> Self {
        Self::new([])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_key_shapes_go_and_the_json_stays_valid() {
        let s = Scrubber::new(["my-private-upstream-key-1", "short"]);
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-abc***wxyz. You sent my-private-upstream-key-1 and sk-ant-api03-AAAAaaaa_bbb-1; Google AIzaSyA1234567890abcdefghijk; Authorization: Bearer eyJhbGciOi.x.y","code":"invalid_api_key"}}"#;
        let out = s.scrub(body);
        for secret in [
            "sk-abc",
            "wxyz",
            "my-private-upstream-key-1",
            "sk-ant",
            "AIzaSy",
            "eyJhbGciOi",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        let v: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Incorrect API key provided: [redacted]. You sent [redacted]")
        );
    }

    #[test]
    fn ordinary_text_is_borrowed() {
        let s = Scrubber::new(["short"]);
        for t in [
            "The model 'gpt-4o' does not exist",
            "max_tokens is too large: 9999",
            "a short word",
            "task-123 and desk-lamp",
        ] {
            assert!(matches!(s.scrub(t), Cow::Borrowed(_)), "{t}");
        }
        assert!(matches!(
            s.scrub_bytes(b"\xff\xfe sk-abcdefghij"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            &*s.scrub_bytes(b"key sk-abcdefghij"),
            b"key [redacted]".as_slice()
        );
    }
}
