//! The request head, as the lean loop reads it.

use std::sync::LazyLock;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};

/// Headers a request may have here; more go to hyper (which allows 100).
pub(super) const MAX_HEADERS: usize = 48;

/// One request parsed and accepted here.
pub(super) struct Parsed {
    pub req: Request<()>,
    pub length: usize,
    pub close: bool,
    /// What its header lines weigh toward `server.max_header_bytes`, those
    /// left out of `req` ([`unread`]) included: name, value and 4 each, as
    /// `crate::listener::head_size` counts them.
    pub fields: usize,
}

/// Headers no handler of the lean loop's routes reads (`crate::direct`:
/// the model routes and agent instructions), left out of the request's
/// map: the official SDKs' telemetry (`x-stainless-*`, nine to twelve
/// per request from the `openai` and `anthropic` SDKs), `user-agent`,
/// `accept` and `host`. The gateway builds its upstream requests from the
/// provider's template and relays none of a client's headers, so each
/// would be named, hashed and stored for nothing (~600 instructions
/// apiece under callgrind). Requests these routes do not serve here (a
/// plugin filter, CORS, another route) go to hyper with every header. A
/// handler on these routes that comes to read one of these must take it
/// off this list. (`connection`, read here, is not kept either.)
pub(super) fn unread(name: &[u8]) -> bool {
    match name.len() {
        4 => same(name, b"host"),
        6 => same(name, b"accept"),
        10 => same(name, b"user-agent"),
        n => n > 12 && same(&name[..12], b"x-stainless-"),
    }
}

/// Whether the token `name` is `lower` (lowercase letters and `-`) in any
/// case. A byte ORed with 0x20 is its lowercase for a letter and itself
/// for `-`; of the other characters a token may hold, none becomes a
/// lowercase letter or `-` that way. Every byte is compared, with no
/// exit inside: `eq_ignore_ascii_case` cost ~70 instructions a name.
fn same<const N: usize>(name: &[u8], lower: &[u8; N]) -> bool {
    name.len() == N
        && name
            .iter()
            .zip(lower)
            .fold(0, |diff, (&a, &b)| diff | ((a | 0x20) ^ b))
            == 0
}

/// Whether a `connection` value asks to close; `None` for anything but
/// `keep-alive` and `close` (or a value that is not visible ASCII). Kept
/// out of [`parse`]: with it inside, the loop grew past what LLVM inlines
/// `HeaderValue::from_maybe_shared` into (~40 instructions more a header).
#[inline(never)]
fn closes(value: &HeaderValue) -> Option<bool> {
    value.to_str().ok()?;
    let mut close = false;
    for token in sluice_providers::tokens(value.as_bytes()) {
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// The request head in `head` as an `http::Request`, if it is one this
/// loop serves: an HTTP/1.1 POST in origin form with one valid
/// `content-length`, no `transfer-encoding`, `expect` or `upgrade`, and a
/// `connection` header (if any) of `keep-alive` or `close`.
pub(super) fn parse(head: &Bytes) -> Option<Parsed> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut p = httparse::Request::new(&mut slots);
    match p.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let path = p.path?;
    if p.method? != "POST" || p.version? != 1 || !path.starts_with('/') {
        return None;
    }
    // Sized for what is kept: with the SDKs' headers sized for all, the
    // map's entries took 2.5 KiB, past glibc's per-thread cache.
    // Bit `i`: header `i` is [`unread`].
    const _: () = assert!(MAX_HEADERS <= 64);
    let skip = p.headers.iter().enumerate().fold(0u64, |skip, (i, h)| {
        skip | u64::from(unread(h.name.as_bytes())) << i
    });
    // (`connection` is counted in, rarely sent: HTTP/1.1 keeps alive.)
    let kept = p.headers.len() - skip.count_ones() as usize;
    let mut headers = HeaderMap::with_capacity(kept);
    let mut length = None;
    let mut close = false;
    let mut fields = 0;
    for (i, h) in p.headers.iter().enumerate() {
        fields += h.name.len() + h.value.len() + 4;
        if skip & (1 << i) != 0 {
            continue;
        }
        let name = sluice_providers::header_names::header_name(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(h.value)).ok()?;
        if name == CONTENT_LENGTH {
            if length.is_some() {
                return None;
            }
            length = Some(length_of(h.value)?);
        } else if name == TRANSFER_ENCODING || name == EXPECT || name == UPGRADE {
            return None;
        } else if name == CONNECTION {
            // It speaks of this connection only: nothing after reads it.
            close |= closes(&value)?;
            continue;
        }
        headers.append(name, value);
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::POST;
    *req.uri_mut() = Uri::from_maybe_shared(head.slice_ref(path.as_bytes())).ok()?;
    *req.headers_mut() = headers;
    Some(Parsed {
        req,
        length: length?,
        close,
        fields,
    })
}

/// The length of the head at the start of `buf`, if it has all arrived;
/// its end is searched for from `from` on.
pub(super) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    static END: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    let rest = buf.get(from..).filter(|r| !r.is_empty())?;
    END.find(rest).map(|at| from + at + 4)
}

/// A `content-length` value: digits only, as hyper reads it (`parse`
/// alone would take "+5").
pub(super) fn length_of(v: &[u8]) -> Option<usize> {
    sluice_providers::content_length(v).and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn plain_posts_with_a_length_are_served_here() {
        let p = parse(&head(
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\
             X-Custom: v\r\nConnection: keep-alive, Close\r\n\r\n",
        ))
        .unwrap();
        assert_eq!(p.length, 12);
        assert!(p.close);
        assert_eq!(p.req.uri().path(), "/v1/chat/completions");
        assert_eq!(p.req.uri().query(), Some("x=1"));
        assert_eq!(p.req.headers()["x-custom"], "v");
        assert_eq!(p.req.headers()["content-length"], "12");
        // `host` is not read past here, `connection` only by the loop.
        assert_eq!(p.req.headers().len(), 2);

        let kept = parse(&head("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n")).unwrap();
        assert!(!kept.close);
    }

    #[test]
    fn headers_no_handler_reads_are_left_out_but_counted() {
        let text = "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\
             Accept-Encoding: gzip\r\nAccept: application/json\r\nUser-Agent: OpenAI/Python\r\nConnection: keep-alive\r\n\
             X-Stainless-Lang: python\r\nx-stainless-retry-count: 0\r\nX-Accept: kept\r\n\
             x-stainless-: kept\r\nAuthorization: Bearer k\r\n\r\n";
        let p = parse(&head(text)).unwrap();
        assert!(!p.close);
        let h = p.req.headers();
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept-encoding",
                "authorization",
                "content-length",
                "x-accept",
                "x-stainless-"
            ]
        );
        // Every line counts toward the head's size, as hyper's path counts
        // them (name, value, ": " and CRLF).
        let lines: usize = text
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty())
            .map(|l| l.len() + 2)
            .sum();
        assert_eq!(p.fields, lines);
        assert_eq!(
            crate::listener::line_size(&p.req),
            "POST /v1/chat/completions HTTP/1.1\r\n".len()
        );
        for name in [
            "Host",
            "accept",
            "ACCEPT",
            "user-agent",
            "X-Stainless-OS",
            "x-stainless-a",
        ] {
            assert!(unread(name.as_bytes()), "{name}");
        }
        for name in [
            "hosts",
            "ho^t",
            "x_stainless-lang",
            "x-stainless_a",
            "accepts",
            "x-stainless-",
            "x-stainless",
            "user-agents",
            "content-type",
        ] {
            assert!(!unread(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn anything_else_goes_to_hyper() {
        for other in [
            "GET /v1/models HTTP/1.1\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.0\r\nContent-Length: 2\r\n\r\n",
            "POST http://a/v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\nBad Name: x\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 2\r\n",
        ] {
            assert!(parse(&head(other)).is_none(), "{other:?}");
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        let text = format!("POST / HTTP/1.1\r\nContent-Length: 2\r\n{many}\r\n");
        assert!(parse(&head(&text)).is_none());
    }

    #[test]
    fn a_heads_end_is_found_across_the_reads_that_brought_it() {
        let head = b"POST / HTTP/1.1\r\nA: b\r\n\r\nbody";
        let end = head.len() - 4;
        // A search from 3 bytes before where the last one (which found
        // nothing) ended finds what a search from the start finds, at every
        // pair of read boundaries.
        for before in 0..head.len() {
            if head_end(&head[..before], 0).is_some() {
                continue;
            }
            for now in before..=head.len() {
                let from = before.saturating_sub(3);
                assert_eq!(
                    head_end(&head[..now], from),
                    head_end(&head[..now], 0),
                    "{before} {now}"
                );
            }
        }
        assert_eq!(head_end(head, 21), Some(end));
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"\r\n\r\n", 0), Some(4));
    }
}
