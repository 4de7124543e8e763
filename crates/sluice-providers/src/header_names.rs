//! Header names that AI clients and providers send and the `http` crate
//! does not know (the SDKs' `x-stainless-*`, providers' rate-limit and
//! request-id headers), made once. `HeaderName::from_bytes` allocates and
//! lowercases a copy of every such name on every request; these are
//! static, so reading them allocates nothing and dropping them frees
//! nothing.

use http::header::{HeaderName, InvalidHeaderName};

macro_rules! names {
    ($($n:literal),* $(,)?) => {
        [$(HeaderName::from_static($n)),*]
    };
}

static STAINLESS: [HeaderName; 12] = names![
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-os",
    "x-stainless-arch",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-async",
    "x-stainless-retry-count",
    "x-stainless-read-timeout",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "x-stainless-raw-response",
];

static RATELIMIT: [HeaderName; 6] = names![
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
];

static OPENAI: [HeaderName; 5] = names![
    "openai-organization",
    "openai-project",
    "openai-processing-ms",
    "openai-version",
    "openai-beta",
];

static ANTHROPIC: [HeaderName; 12] = names![
    "anthropic-version",
    "anthropic-beta",
    "anthropic-organization-id",
    "anthropic-dangerous-direct-browser-access",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-remaining",
];

static OTHER: [HeaderName; 9] = names![
    "x-request-id",
    "request-id",
    "x-api-key",
    "x-goog-api-key",
    "traceparent",
    "tracestate",
    "cf-ray",
    "cf-cache-status",
    "x-envoy-upstream-service-time",
];

/// The header name `src` (any case), without allocating when it is one of
/// the names above; otherwise as `HeaderName::from_bytes` makes it.
pub fn header_name(src: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    let starts = |prefix: &[u8]| {
        src.len() > prefix.len() && src[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    // Names the http crate knows (content-type, accept, …) are told apart
    // by their first byte where they can be, and made by it.
    let known: &[HeaderName] = match src.first().map(u8::to_ascii_lowercase) {
        Some(b'x') if starts(b"x-stainless-") => &STAINLESS,
        Some(b'x') if starts(b"x-ratelimit-") => &RATELIMIT,
        Some(b'o') if starts(b"openai-") => &OPENAI,
        Some(b'a') if starts(b"anthropic-") => &ANTHROPIC,
        Some(b'x' | b'r' | b't' | b'c') => &OTHER,
        _ => return HeaderName::from_bytes(src),
    };
    match known
        .iter()
        .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(src))
    {
        Some(n) => Ok(n.clone()),
        None => HeaderName::from_bytes(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_in_any_case_are_the_static_ones() {
        for table in [&STAINLESS[..], &RATELIMIT, &OPENAI, &ANTHROPIC, &OTHER] {
            for n in table {
                let upper = n.as_str().to_ascii_uppercase();
                for src in [upper.as_bytes(), n.as_str().as_bytes()] {
                    let got = header_name(src).expect("a valid name");
                    assert_eq!(&got, n);
                    // The same static bytes, not a copy.
                    assert_eq!(got.as_str().as_ptr(), n.as_str().as_ptr(), "{n}");
                }
            }
        }
    }

    #[test]
    fn other_names_are_made_as_usual() {
        for src in [
            &b"Content-Type"[..],
            b"x-stainless-something-new",
            b"openai-",
            b"x-custom",
            b"X-Ratelimit-Limit-Requests-Extra",
        ] {
            assert_eq!(header_name(src).ok(), HeaderName::from_bytes(src).ok());
            assert!(header_name(src).is_ok());
        }
        assert!(header_name(b"bad name").is_err());
        assert!(header_name(b"").is_err());
    }
}
