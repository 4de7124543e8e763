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
    let mut h = HeaderMap::with_capacity(5 + extra.len() + p.headers.len());
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
    // Room for the length, the request id and `Host` (added by the HTTP/1.1
    // pool): a seventh header past a capacity of six regrows the map.
    let mut headers = HeaderMap::with_capacity(template.len() + 3);
    for (k, v) in template {
        headers.insert(k.clone(), v.clone());
    }
    headers.insert(CONTENT_LENGTH, number(body.len() as u64));
    if let Some(id) = request_id {
        headers.insert(REQUEST_ID.clone(), id.clone());
    }
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
    fn a_number_header_is_what_http_makes_of_it() {
        for n in [0, 7, 10, 4096, u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n));
        }
    }
}
