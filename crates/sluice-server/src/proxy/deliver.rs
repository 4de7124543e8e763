//! Handing a committed upstream response to the client in the client's wire
//! format: straight through when formats match, re-encoded as it streams
//! when they do not, converted whole for JSON bodies; and relaying an
//! upstream's error restated the same way.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody as FrameStream};
use hyper::body::Frame;
use sluice_core::route::Admitted;
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::translate::{self, Delivery, StreamBody, UsageCell, Wire};
use sluice_providers::{ADDED_HEADERS, BoxBody};
use tokio::time::timeout_at;

use super::call::{Call, deadline_error};
use super::record::Recorder;
use super::watch::{ObservedBody, Watch};

/// Largest non-streamed response converted between formats in memory.
const CONVERT_LIMIT: usize = 32 << 20;

/// Hands a committed response to the client in the client's format.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn deliver(
    call: &Call<'_>,
    head: http::response::Parts,
    body: BoxBody,
    first: Option<Frame<Bytes>>,
    wire: Wire,
    idle: Option<Duration>,
    mut rec: Recorder,
    adm: Admitted,
) -> Response<Body> {
    let status = head.status;
    // The upstream's map, kept: the lean HTTP/1.1 pool makes it with room
    // for what the gateway adds, so nothing is copied or rebuilt (sized for
    // the upstream's headers alone, it was rebuilt once per answer when the
    // rate-limit headers went in: `HeaderMap::try_grow`, ~2,500 instructions).
    let mut headers = relayed_headers(head.headers, ADDED_HEADERS);
    let stream = call.peek.stream && status.is_success();
    let delivery = match call.op {
        // Media answers (audio, transcripts, images) go as they come.
        sluice_core::request::Operation::Media(_) if status.is_success() => Delivery::Passthrough,
        _ => wire.delivery(
            call.client,
            call.peek.stream,
            status.is_success(),
            call.include_usage,
        ),
    };
    let mut watch = Watch {
        usage_tail: false,
        idle,
        deadline: Some(call.deadline),
        sse: stream,
        // Chat streams end in `[DONE]`; media and Responses streams do not.
        check_events: !matches!(call.op, sluice_core::request::Operation::Media(_))
            && wire != Wire::Responses,
        wire: call.client,
        first: None,
        target: Some(adm),
        usage_cell: None,
    };

    let body: BoxBody = match delivery {
        Delivery::Passthrough => {
            // Bytes as they come, usage read from the tail.
            watch.usage_tail = true;
            watch.first = first;
            body
        }
        Delivery::Stream => {
            if let Some(ct) = call.client.stream_content_type() {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            }
            let cell = Arc::new(UsageCell::default());
            watch.usage_cell = Some(cell.clone());
            StreamBody::new(
                prepend(first, body),
                wire,
                call.client,
                call.client_model,
                call.include_usage,
                unix_now(),
                cell,
                call.responses.clone(),
            )
            .boxed_unsync()
        }
        Delivery::Whole => {
            // A whole JSON body to convert (or to read usage from).
            let collected = timeout_at(
                call.deadline,
                collect_limited(prepend(first, body), CONVERT_LIMIT),
            )
            .await;
            let bytes = match collected {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return rec.reply_error(&e),
                Err(_) => return rec.reply_error(&deadline_error(call.budget)),
            };
            let converted = if !status.is_success() {
                // The upstream's own refusal: relayed, without our secrets.
                let bytes = scrubbed(call, bytes);
                Ok(
                    translate::error_body(wire, call.client, status.as_u16(), &bytes)
                        .map(Bytes::from)
                        .unwrap_or(bytes),
                )
            } else if wire == call.client {
                if let Some(u) = wire.usage_of(&bytes) {
                    rec.set_usage(u);
                }
                Ok(bytes)
            } else {
                translate::json_response(
                    wire,
                    call.client,
                    &bytes,
                    call.client_model,
                    unix_now(),
                    call.responses.as_deref(),
                )
                .map(|(out, usage)| {
                    if let Some(u) = usage {
                        rec.set_usage(u);
                    }
                    Bytes::from(out)
                })
            };
            match converted {
                Ok(b) => Full::new(b).map_err(|never| match never {}).boxed_unsync(),
                Err(e) => {
                    return rec.reply_error(&GatewayError::new(
                        ErrorKind::UpstreamProtocol,
                        format!("the upstream's response could not be read as {wire:?}: {e}"),
                    ));
                }
            }
        }
    };
    let observed = ObservedBody::new(body, rec, watch);
    // Streams: events that arrive together leave together (coalesce.rs).
    let body = if stream {
        Body::new(super::coalesce::Coalesce::new(observed))
    } else {
        Body::new(observed)
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The last upstream error, restated in the client's format.
pub(crate) fn relay_error(
    call: &Call<'_>,
    head: http::response::Parts,
    body: Bytes,
    wire: Wire,
) -> Response<Body> {
    let body = scrubbed(call, body);
    let body = translate::error_body(wire, call.client, head.status.as_u16(), &body)
        .map(Bytes::from)
        .unwrap_or(body);
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = head.status;
    copy_response_headers(&head.headers, out.headers_mut());
    if wire != call.client {
        out.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    out
}

/// An upstream body with the providers' keys and key-shaped text removed.
fn scrubbed(call: &Call<'_>, body: Bytes) -> Bytes {
    match call.snap.scrubber.scrub_bytes(&body) {
        std::borrow::Cow::Borrowed(_) => body,
        std::borrow::Cow::Owned(b) => Bytes::from(b),
    }
}

fn prepend(first: Option<Frame<Bytes>>, rest: BoxBody) -> BoxBody {
    match first {
        None => rest,
        Some(f) => {
            let head = futures_util::stream::iter([Ok::<_, sluice_providers::BodyError>(f)]);
            let stream = futures_util::StreamExt::chain(head, BodyStream::new(rest));
            FrameStream::new(stream).boxed_unsync()
        }
    }
}

/// A whole body, refusing more than `limit` bytes.
async fn collect_limited(mut body: BoxBody, limit: usize) -> Result<Bytes, GatewayError> {
    let unreadable = |why: String| {
        GatewayError::new(
            ErrorKind::UpstreamProtocol,
            format!("could not read the upstream response: {why}"),
        )
    };
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| unreadable(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(unreadable(format!("response larger than {limit} bytes")));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether an upstream's header stays behind: hop-by-hop ones, the length
/// (the body states its own) and cookies (the upstream's session is not
/// the client's).
fn not_relayed(name: &http::HeaderName) -> bool {
    use http::header::{
        CONNECTION, CONTENT_LENGTH, PROXY_AUTHENTICATE, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING,
        UPGRADE,
    };
    // `keep-alive` and `proxy-connection` as `&str`: reached through the
    // pool's `hop_only` instead, a build measured ~800 instructions more
    // per answer with a provider's 24 headers (`--model headers`).
    name == CONNECTION
        || name == CONTENT_LENGTH
        || name == TRANSFER_ENCODING
        || name == TE
        || name == TRAILER
        || name == UPGRADE
        || name == PROXY_AUTHENTICATE
        || name == SET_COOKIE
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// Relays the upstream's headers except those [`not_relayed`] keeps back.
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    to.reserve(from.len());
    for (name, value) in from {
        if !not_relayed(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

/// The upstream's headers as [`copy_response_headers`] relays them, in the
/// upstream's own map, with room for `room` more. (A removal moves the
/// map's last header into its place; headers of different names carry no
/// order, and the values of one name keep theirs.)
pub(crate) fn relayed_headers(mut map: HeaderMap, room: usize) -> HeaderMap {
    // Names are looked for first: most answers have two or three to drop,
    // and each removal is a lookup of its own.
    let mut drop: [Option<http::HeaderName>; 4] = Default::default();
    for (n, name) in map.keys().filter(|k| not_relayed(k)).enumerate() {
        let Some(slot) = drop.get_mut(n) else {
            // Unusually many: the plain copy.
            let mut out = HeaderMap::with_capacity(map.len() + room);
            copy_response_headers(&map, &mut out);
            return out;
        };
        *slot = Some(name.clone());
    }
    // From the last: names found near the end (as `connection` and
    // `content-length` usually are) move nothing.
    for name in drop.into_iter().rev().flatten() {
        map.remove(name);
    }
    map.reserve(room);
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    /// Each name with its values in order, names sorted: what a client
    /// sees of a header map.
    fn seen(map: &HeaderMap) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = map
            .keys()
            .map(|k| {
                let values = map.get_all(k).iter();
                let values = values.map(|v| v.to_str().unwrap().to_owned()).collect();
                (k.as_str().to_owned(), values)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn relayed_headers_are_the_copy_with_room_to_add() {
        let heads: [&[(&str, &str)]; 4] = [
            &[
                ("server", "nginx"),
                ("date", "Sat, 05 Dec 2026 12:00:00 GMT"),
                ("content-type", "application/json"),
                ("content-length", "300"),
                ("connection", "keep-alive"),
            ],
            &[
                ("transfer-encoding", "chunked"),
                ("x-request-id", "a"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("x-many", "1"),
                ("keep-alive", "timeout=5"),
                ("x-many", "2"),
                ("openai-processing-ms", "12"),
            ],
            // More names to drop than looked for at once: the plain copy.
            &[
                ("te", "trailers"),
                ("trailer", "x"),
                ("upgrade", "h2c"),
                ("proxy-connection", "close"),
                ("proxy-authenticate", "Basic"),
                ("x-kept", "yes"),
                ("connection", "close"),
            ],
            &[],
        ];
        for head in heads {
            let mut map = HeaderMap::new();
            for (k, v) in head {
                map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            let mut copied = HeaderMap::new();
            copy_response_headers(&map, &mut copied);
            let relayed = relayed_headers(map, ADDED_HEADERS);
            assert_eq!(seen(&relayed), seen(&copied), "{head:?}");
            assert!(relayed.keys().all(|k| !not_relayed(k)));
            // Held back by name, whatever `not_relayed` is built from.
            for gone in [
                "connection",
                "keep-alive",
                "proxy-connection",
                "transfer-encoding",
                "content-length",
                "te",
                "trailer",
                "upgrade",
                "proxy-authenticate",
                "set-cookie",
            ] {
                assert!(!relayed.contains_key(gone), "{head:?}: {gone}");
                assert!(!copied.contains_key(gone), "{head:?}: {gone}");
            }
            // What the gateway adds goes in without the map regrowing.
            let cap = relayed.capacity();
            assert!(
                cap >= relayed.len() + ADDED_HEADERS,
                "{head:?}: room for {cap}"
            );
        }
    }
}
