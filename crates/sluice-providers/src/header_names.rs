//! Header names that AI clients and providers send and the `http` crate
//! does not know (the SDKs' `x-stainless-*`, providers' rate-limit and
//! request-id headers), made once. `HeaderName::from_bytes` allocates and
//! lowercases a copy of every such name on every request; these are
//! static, so reading them allocates nothing and dropping them frees
//! nothing.

use std::sync::LazyLock;

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
    let known = &BY_SHAPE[shape(src)];
    match known
        .iter()
        .find(|n| n.as_str().as_bytes().eq_ignore_ascii_case(src))
    {
        Some(n) => Ok((*n).clone()),
        None => HeaderName::from_bytes(src),
    }
}

/// Buckets of [`BY_SHAPE`].
const BUCKETS: usize = 256;

/// Where a name of this length, middle and last two bytes (any case) is
/// looked for: a few instructions instead of a scan of a table (~200 per
/// name of the OpenAI SDK's, which sends eleven on every request).
fn shape(src: &[u8]) -> usize {
    let at = |i: usize| src.get(i).map_or(0, u8::to_ascii_lowercase) as usize;
    let len = src.len();
    let (mid, last) = (at(len / 2), at(len.wrapping_sub(1)));
    (len.wrapping_mul(31) ^ mid.wrapping_mul(7) ^ last.wrapping_mul(3) ^ at(len.wrapping_sub(2)))
        % BUCKETS
}

/// Every name above in the bucket of its [`shape`] (most hold none or one).
static BY_SHAPE: LazyLock<Vec<Vec<&'static HeaderName>>> = LazyLock::new(|| {
    let mut buckets = vec![Vec::new(); BUCKETS];
    for table in [&STAINLESS[..], &RATELIMIT, &OPENAI, &ANTHROPIC, &OTHER] {
        for n in table {
            buckets[shape(n.as_str().as_bytes())].push(n);
        }
    }
    buckets
});

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
    fn the_buckets_hold_few_names() {
        let most = BY_SHAPE.iter().map(Vec::len).max().unwrap_or(0);
        let names: usize = BY_SHAPE.iter().map(Vec::len).sum();
        let tables = [&STAINLESS[..], &RATELIMIT, &OPENAI, &ANTHROPIC, &OTHER];
        assert_eq!(names, tables.iter().map(|t| t.len()).sum::<usize>());
        assert!(most <= 2, "a bucket holds {most} names");
    }

    #[test]
    fn other_names_are_made_as_usual() {
        for src in [
            &b"Content-Type"[..],
            b"x-stainless-something-new",
            b"openai-",
            b"x-custom",
            b"X-Ratelimit-Limit-Requests-Extra",
            // The shape of a known name (length, middle and last byte).
            b"x-stainless-lanX",
            b"x-stainless-laNg-",
            b"x-stainlesz-lang",
        ] {
            assert_eq!(header_name(src).ok(), HeaderName::from_bytes(src).ok());
            assert!(header_name(src).is_ok());
        }
        assert!(header_name(b"bad name").is_err());
        assert!(header_name(b"").is_err());
    }
}
