//! What every provider's request shares: the headers built once per
//! configuration snapshot (content type, user agent, credentials, the
//! provider's extra headers), and the per-request assembly that only clones
//! them and adds the length and request id.

use bytes::Bytes;
use http::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, USER_AGENT,
};
use http::{Method, Uri};
use http_body_util::Full;
use sluice_core::config::ProviderConfig;
use sluice_core::{ErrorKind, GatewayError};

pub const UA: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Room in the template's index table for headers a request may add to
/// its own: `traceparent` and `tracestate` (the trace's) and `Host`. (Its
/// entries are cloned at their exact length all the same: what is added
/// on every request has a placeholder instead.)
const PER_REQUEST: usize = 3;

/// The "provider 'x': … is not valid" error for a bad configuration value.
pub fn invalid(p: &ProviderConfig, what: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::Internal,
        format!("provider '{}': {what} is not valid", p.name),
    )
}

/// The fixed headers of a provider's requests. `auth` is the credential
/// header (name and full value) when the provider has a key; `extra` are
/// format-specific fixed headers (e.g. `anthropic-version`).
pub fn headers(
    p: &ProviderConfig,
    auth: Option<(HeaderName, String)>,
    extra: &[(HeaderName, HeaderValue)],
) -> Result<HeaderMap, GatewayError> {
    let mut h = HeaderMap::with_capacity(7 + extra.len() + p.headers.len() + PER_REQUEST);
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    h.insert(USER_AGENT, HeaderValue::from_static(UA));
    for (n, v) in extra {
        h.insert(n.clone(), v.clone());
    }
    if let Some((name, value)) = auth {
        let mut v = HeaderValue::try_from(value).map_err(|_| invalid(p, "api_key"))?;
        v.set_sensitive(true);
        h.insert(name, v);
    }
    for (name, value) in &p.headers {
        let n = HeaderName::try_from(name.as_str())
            .map_err(|_| invalid(p, &format!("header name '{name}'")))?;
        let mut v = HeaderValue::try_from(value.expose())
            .map_err(|_| invalid(p, &format!("value of header '{name}'")))?;
        v.set_sensitive(true);
        h.insert(n, v);
    }
    // Placeholders each request's own values replace (see [`request`]).
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    h.insert(REQUEST_ID.clone(), HeaderValue::from_static(""));
    Ok(h)
}

/// A header value holding the decimal `n`, in one allocation
/// (`HeaderValue::from(u64)` makes two: a growable buffer, then its frozen
/// copy).
pub fn number(n: u64) -> HeaderValue {
    HeaderValue::from_str(itoa::Buffer::new().format(n)).expect("digits are a header value")
}

/// A POST of `body` to `uri` with the template headers, its length and the
/// request id; the header map is sized once.
pub fn request(
    template: &HeaderMap,
    uri: Uri,
    body: Bytes,
    request_id: Option<&HeaderValue>,
) -> http::Request<Full<Bytes>> {
    // A clone, not the template's headers inserted one by one (each hashed
    // and placed again). A map's clone has its entries at their exact
    // length, so the length and the id replace the template's placeholders
    // in place: a header added would regrow the entries on every request.
    let mut headers = template.clone();
    headers.insert(CONTENT_LENGTH, number(body.len() as u64));
    match request_id {
        Some(id) => headers.insert(REQUEST_ID.clone(), id.clone()),
        None => headers.remove(&REQUEST_ID),
    };
    let mut req = http::Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_fills_the_templates_placeholders() {
        let extra = [(
            HeaderName::from_static("x-extra"),
            HeaderValue::from_static("e"),
        )];
        // The bare template and one with the provider's own headers and a
        // format's extra header.
        for (headers, extra) in [
            ("", &extra[..0]),
            ("\nheaders={\"x-org\"=\"o\"}", &extra[..]),
        ] {
            let c = sluice_core::config::parse(
                &format!("[[providers]]\nname=\"p\"\nkind=\"openai\"{headers}\n"),
                "t",
                &|_| None,
            )
            .unwrap();
            let auth = Some((http::header::AUTHORIZATION, "Bearer k".to_owned()));
            let t = super::headers(&c.providers[0], auth, extra).unwrap();
            let id = HeaderValue::from_static("req-1");
            let uri = Uri::from_static("http://u/v1/chat/completions");
            let req = request(&t, uri.clone(), Bytes::from_static(b"{}"), Some(&id));
            let h = req.headers();
            // Every header once: the placeholders replaced, not added to.
            assert_eq!(h.len(), t.len());
            assert_eq!(h.keys_len(), h.len());
            assert_eq!(h[CONTENT_LENGTH], "2");
            assert_eq!(h[&REQUEST_ID], "req-1");
            for (k, v) in &t {
                if k != CONTENT_LENGTH && k != REQUEST_ID {
                    assert_eq!(h.get(k), Some(v), "{k}");
                }
            }
            // Without an id the placeholder goes: no empty header is sent.
            let req = request(&t, uri, Bytes::new(), None);
            assert_eq!(req.headers().len(), t.len() - 1);
            assert!(!req.headers().contains_key(&REQUEST_ID));
            assert_eq!(req.headers()[CONTENT_LENGTH], "0");
            // Room in the index table for the trace's headers and `Host`.
            let mut h = req.headers().clone();
            let cap = h.capacity();
            h.insert(http::header::HOST, HeaderValue::from_static("u"));
            h.insert("traceparent", HeaderValue::from_static("00-1-2-01"));
            h.insert("tracestate", HeaderValue::from_static("a=b"));
            assert_eq!(h.capacity(), cap, "the index table of {} regrew", t.len());
        }
    }

    #[test]
    fn a_number_header_is_what_http_makes_of_it() {
        for n in [0, 7, 10, 4096, u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n));
        }
    }
}
