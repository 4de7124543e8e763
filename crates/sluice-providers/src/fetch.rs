//! Fetching an image a request names by URL, for a local processor, with
//! the guards a gateway needs against server-side request forgery: only
//! `http(s)` URLs of allow-listed hosts; no non-public addresses unless
//! allowed (checked on the addresses actually connected to, so a DNS
//! answer cannot rebind past it); no redirects; a size cap read as it
//! streams; a time limit.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use sluice_core::config::ImageFetchConfig;

/// Why an image was not fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The request's fault: not a fetchable URL, a host not allowed, a
    /// private address, an image over the size limit.
    Refused(String),
    /// The host did not give it (unreachable, an error status).
    Failed(String),
    TimedOut,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) | Self::Failed(m) => f.write_str(m),
            Self::TimedOut => f.write_str("the image URL did not answer in time"),
        }
    }
}

/// Resolves names to public addresses only (unless private ones are
/// allowed): what the connector then connects to is what was checked.
#[derive(Clone)]
struct Guarded {
    allow_private: bool,
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower::Service<Name> for Guarded {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let ok: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if ok.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    PRIVATE,
                ));
            }
            Ok(ok.into_iter())
        })
    }
}

const PRIVATE: &str = "the host resolves only to non-public addresses";

/// Whether an address is on the public internet: not loopback, private,
/// link-local, carrier-grade NAT, multicast, documentation or unspecified
/// (IPv4-mapped IPv6 addresses as their IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0xdb8))
        }
    }
}

pub struct ImageFetcher {
    client: Client<HttpsConnector<HttpConnector<Guarded>>, Empty<Bytes>>,
    config: ImageFetchConfig,
}

impl ImageFetcher {
    pub fn new(config: &ImageFetchConfig) -> Self {
        let mut http = HttpConnector::new_with_resolver(Guarded {
            allow_private: config.allow_private,
        });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        let client = crate::transport::builder()
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(crate::transport::with_tls(http, None));
        Self {
            client,
            config: config.clone(),
        }
    }

    pub fn config(&self) -> &ImageFetchConfig {
        &self.config
    }

    /// Checks the URL without fetching it: the scheme, the host against
    /// the allow-list and, for an address literal, that it is public.
    pub fn check(&self, url: &str) -> Result<http::Uri, FetchError> {
        let refused = |m: String| FetchError::Refused(m);
        let uri: http::Uri = url
            .parse()
            .map_err(|_| refused("the image URL does not parse".into()))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(refused("only http and https image URLs are fetched".into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| refused("the image URL has no host".into()))?;
        if !self.config.host_allowed(host) {
            return Err(refused(format!(
                "the gateway does not fetch images from '{host}' (not in [image_fetch] allow_hosts)"
            )));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>()
            && !self.config.allow_private
            && !is_public(ip)
        {
            return Err(refused(format!(
                "the image URL's address {ip} is not public (allow_private is off)"
            )));
        }
        Ok(uri)
    }

    /// The image's bytes, within the size and time limits.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        let uri = self.check(url)?;
        let max = self.config.max_bytes;
        let work = async {
            let resp = self.client.get(uri).await.map_err(|e| {
                let private = std::error::Error::source(&e)
                    .into_iter()
                    .chain(std::iter::successors(std::error::Error::source(&e), |e| {
                        e.source()
                    }))
                    .any(|s| s.to_string().contains(PRIVATE));
                if private {
                    FetchError::Refused(format!("{PRIVATE} (allow_private is off)"))
                } else {
                    FetchError::Failed(format!("the image URL could not be fetched: {e}"))
                }
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(FetchError::Failed(format!(
                    "the image URL answered {status} (redirects are not followed)"
                )));
            }
            let declared = resp
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max as u64) {
                return Err(too_large(max));
            }
            let mut body = resp.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    FetchError::Failed(format!("the image download broke off: {e}"))
                })?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > max {
                        return Err(too_large(max));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(Bytes::from(out))
        };
        tokio::time::timeout(self.config.timeout, work)
            .await
            .unwrap_or(Err(FetchError::TimedOut))
    }
}

fn too_large(max: usize) -> FetchError {
    FetchError::Refused(format!(
        "the image is larger than the limit of {max} bytes ([image_fetch] max_bytes)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_private_addresses() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    fn fetcher(hosts: &[&str], allow_private: bool) -> ImageFetcher {
        ImageFetcher::new(&ImageFetchConfig {
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            allow_private,
            max_bytes: 1000,
            timeout: std::time::Duration::from_secs(1),
        })
    }

    #[tokio::test]
    async fn urls_are_checked_before_anything_is_fetched() {
        let f = fetcher(&["img.example.com", "*.cdn.example", "127.0.0.1"], false);
        assert!(f.check("https://img.example.com/a.png").is_ok());
        assert!(f.check("https://a.b.cdn.example/a.png").is_ok());
        for (url, why) in [
            ("https://cdn.example/a.png", "not in"),
            ("https://evil.com/a.png", "not in"),
            ("ftp://img.example.com/a.png", "only http"),
            ("file:///etc/passwd", "does not parse"),
            ("gopher://img.example.com/", "only http"),
            ("http://127.0.0.1/a.png", "not public"),
        ] {
            match f.check(url) {
                Err(FetchError::Refused(m)) => assert!(m.contains(why), "{url}: {m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let open = fetcher(&["127.0.0.1"], true);
        assert!(open.check("http://127.0.0.1:9/a.png").is_ok());
    }
}
