//! Header names that AI clients and providers send and the `http` crate
//! does not know (the SDKs' `x-stainless-*`, providers' rate-limit and
//! request-id headers), made once. `HeaderName::from_bytes` allocates and
//! lowercases a copy of every such name on every request; these are
//! static, so reading them allocates nothing and dropping them frees
//! nothing. The standard names every request and answer carries
//! (`content-type`, `content-length`, `date`, …) are looked up here too:
//! `from_bytes` lowercases them into a scratch buffer and matches them
//! against the standard names: ~240 instructions a call on the bench's
//! requests and answers, ~140 through this table (callgrind, ten names
//! per proxied request).

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

/// Standard names of requests and answers, in the `http` crate's own
/// (static) form.
static STANDARD: [HeaderName; 26] = {
    use http::header::*;
    [
        HOST,
        CONTENT_TYPE,
        CONTENT_LENGTH,
        AUTHORIZATION,
        ACCEPT,
        ACCEPT_ENCODING,
        ACCEPT_LANGUAGE,
        USER_AGENT,
        CONNECTION,
        TRANSFER_ENCODING,
        CONTENT_ENCODING,
        DATE,
        SERVER,
        CACHE_CONTROL,
        VARY,
        SET_COOKIE,
        COOKIE,
        ETAG,
        STRICT_TRANSPORT_SECURITY,
        X_CONTENT_TYPE_OPTIONS,
        ALT_SVC,
        RETRY_AFTER,
        EXPECT,
        TE,
        UPGRADE,
        ACCESS_CONTROL_ALLOW_ORIGIN,
    ]
};

/// The header name `src` (any case), without allocating when it is one of
/// the names above; otherwise as `HeaderName::from_bytes` makes it.
pub fn header_name(src: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    match BY_SHAPE[shape(src)].iter().find(|k| k.matches(src)) {
        Some(k) => Ok(k.name.clone()),
        None => HeaderName::from_bytes(src),
    }
}

/// Every table above.
const TABLES: [&[HeaderName]; 6] = [
    &STANDARD, &STAINLESS, &RATELIMIT, &OPENAI, &ANTHROPIC, &OTHER,
];

/// A name of the tables, with where its bytes may come in either case.
struct Known {
    name: &'static HeaderName,
    /// The name's bytes (lower case: letters, digits, `-`).
    bytes: &'static [u8],
    /// 0x20 under each letter (either case matches), 0 under the rest
    /// (only the byte itself matches).
    case: Box<[u8]>,
}

impl Known {
    fn new(name: &'static HeaderName) -> Self {
        let bytes = name.as_str().as_bytes();
        let case = bytes
            .iter()
            .map(|b| if b.is_ascii_lowercase() { 0x20 } else { 0 })
            .collect();
        Self { name, bytes, case }
    }

    /// Whether `src` is this name in any case: a byte-wise compare without
    /// an early exit, which the compiler does a vector at a time
    /// (`eq_ignore_ascii_case`'s byte loop made the table slower than
    /// `from_bytes`).
    fn matches(&self, src: &[u8]) -> bool {
        src.len() == self.bytes.len()
            && src
                .iter()
                .zip(&*self.case)
                .zip(self.bytes)
                .fold(0, |diff, ((s, c), k)| diff | ((s | c) ^ k))
                == 0
    }
}

/// Buckets of [`BY_SHAPE`].
const BUCKETS: usize = 256;

/// Where a name of this length, first, middle and last two bytes (letters
/// in any case) is looked for: a few instructions instead of a scan of a
/// table (~200 per name of the OpenAI SDK's, which sends eleven on every
/// request). `| 0x20` folds the case of letters; what it folds besides
/// only shares a bucket, [`Known::matches`] decides.
fn shape(src: &[u8]) -> usize {
    let at = |i: usize| src.get(i).map_or(0, |b| b | 0x20) as usize;
    let len = src.len();
    let (mid, last) = (at(len / 2), at(len.wrapping_sub(1)));
    (len.wrapping_mul(37)
        ^ mid.wrapping_mul(7)
        ^ last.wrapping_mul(3)
        ^ at(len.wrapping_sub(2))
        ^ at(0).wrapping_mul(13))
        % BUCKETS
}

/// Every name above in the bucket of its [`shape`] (most hold none or one).
static BY_SHAPE: LazyLock<Vec<Vec<Known>>> = LazyLock::new(|| {
    let mut buckets: Vec<Vec<Known>> = (0..BUCKETS).map(|_| Vec::new()).collect();
    for table in TABLES {
        for n in table {
            buckets[shape(n.as_str().as_bytes())].push(Known::new(n));
        }
    }
    buckets
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_in_any_case_are_the_static_ones() {
        for table in TABLES {
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
        assert_eq!(names, TABLES.iter().map(|t| t.len()).sum::<usize>());
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

    /// Every known name with each of its bytes replaced by every byte
    /// value, in lower and upper case: the same answer as `from_bytes`
    /// (what the case fold would confuse — `\r` for `-`, control bytes for
    /// digits — is refused as it is there).
    #[test]
    fn every_one_byte_change_of_a_known_name_is_made_as_usual() {
        for n in TABLES.iter().flat_map(|t| t.iter()) {
            for name in [n.as_str().to_owned(), n.as_str().to_ascii_uppercase()] {
                for at in 0..name.len() {
                    let mut src = name.clone().into_bytes();
                    for b in 0..=255u8 {
                        src[at] = b;
                        let (got, want) =
                            (header_name(&src).ok(), HeaderName::from_bytes(&src).ok());
                        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&src));
                    }
                }
            }
        }
        let mixed = header_name(b"Content-TYPE").unwrap();
        assert_eq!(mixed, http::header::CONTENT_TYPE);
        assert!(header_name(b"content\rtype").is_err());
    }
}
