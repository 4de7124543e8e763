//! HTTP niceties around the API: CORS for browser apps (`[server]
//! cors_origins`, read per request, so a reload changes it), request bodies
//! sent compressed (gzip, br, zstd; the decompressed size counts against
//! `max_body_bytes`), and responses compressed when the client accepts it
//! (JSON of 1 KiB or more; never event streams).
//!
//! The layers (with axum's router they wrap) cost ~35,000 of the 124,000
//! instructions a chat request with the openai SDK's headers took through
//! them (`bench/instructions.py --sdk`), so only requests
//! that ask for one of them ([`asks`]: an `Origin`, a `Content-Encoding`,
//! an `Accept-Encoding` other than identity) take the layered router — and
//! a model route's request that asks only for compression does not take it
//! either: `crate::direct` wraps the proxy in the same compression.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::{HeaderName, HeaderValue, Method};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{And, NotForContentType, Predicate, SizeAbove};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::decompression::RequestDecompressionLayer;

use crate::app::App;

/// Response headers a browser app may read.
const EXPOSED: [&str; 6] = [
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
];

/// Smallest response body worth compressing.
const COMPRESS_ABOVE: u16 = 1024;

/// What a request asks of the layers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Asks {
    /// Nothing: the plain routes serve it.
    Nothing,
    /// Only a compressed response (`Accept-Encoding` other than identity),
    /// which the model routes give without the layered router
    /// (`crate::direct`): every official SDK asks for it.
    Compression,
    /// CORS (`Origin`) or a compressed request body (`Content-Encoding`).
    More,
}

pub fn asks(h: &http::HeaderMap) -> Asks {
    use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, ORIGIN};
    // One walk over a request's few headers, comparing names (an enum for
    // these), costs less than a hashed lookup for each of the three.
    let mut accept = None;
    for (name, value) in h {
        if name == ORIGIN || name == CONTENT_ENCODING {
            return Asks::More;
        }
        if name == ACCEPT_ENCODING {
            if accept.is_some() {
                // Several lines: the layered router's compression reads them all.
                return Asks::More;
            }
            accept = Some(value);
        }
    }
    match accept {
        None => Asks::Nothing,
        Some(v) if v.as_bytes() == b"identity" => Asks::Nothing,
        Some(_) => Asks::Compression,
    }
}

/// Which responses are compressed (when the client accepts it).
pub type Compress =
    And<And<And<SizeAbove, NotForContentType>, NotForContentType>, NotForContentType>;

pub fn compress_when() -> Compress {
    SizeAbove::new(COMPRESS_ABOVE)
        .and(NotForContentType::const_new("text/event-stream"))
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
}

pub fn around_api(router: Router, app: Arc<App>) -> Router {
    router
        .layer(CompressionLayer::new().compress_when(compress_when()))
        .layer(RequestDecompressionLayer::new())
        .layer(cors(app))
}

fn cors(app: Arc<App>) -> CorsLayer {
    let allowed = AllowOrigin::predicate(move |origin: &HeaderValue, _| {
        let snap = app.snapshot.load();
        snap.config
            .server
            .cors_origins
            .iter()
            .any(|o| o == "*" || o.as_bytes() == origin.as_bytes())
    });
    CorsLayer::new()
        .allow_origin(allowed)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(EXPOSED.map(HeaderName::from_static))
        .max_age(Duration::from_secs(600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_request_asks_of_the_layers() {
        let cases: [(&[(&str, &str)], Asks); 9] = [
            (&[], Asks::Nothing),
            (&[("content-type", "application/json")], Asks::Nothing),
            (&[("accept-encoding", "identity")], Asks::Nothing),
            (&[("Accept-Encoding", "gzip, deflate")], Asks::Compression),
            (
                &[("accept-encoding", "gzip"), ("user-agent", "x")],
                Asks::Compression,
            ),
            (
                &[("accept-encoding", "gzip"), ("accept-encoding", "br")],
                Asks::More,
            ),
            (
                &[("accept-encoding", "identity"), ("origin", "https://a")],
                Asks::More,
            ),
            (&[("content-encoding", "gzip")], Asks::More),
            (&[("x-a", "1"), ("origin", "null")], Asks::More),
        ];
        for (headers, want) in cases {
            let mut h = http::HeaderMap::new();
            for (k, v) in headers {
                let name = http::HeaderName::from_bytes(k.as_bytes()).unwrap();
                h.append(name, http::HeaderValue::from_static(v));
            }
            assert_eq!(asks(&h), want, "{headers:?}");
        }
    }
}
