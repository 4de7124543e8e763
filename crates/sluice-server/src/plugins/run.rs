//! Filters around the API handlers, in file order. The request's headers
//! go through every filter's `proxy_on_request_headers`, then its body
//! (read whole, within `max_body_bytes`) through `proxy_on_request_body`;
//! a local response from any of them answers instead of the handler. The
//! response's headers go through `proxy_on_response_headers`, and its
//! body through `proxy_on_response_body`: whole when its size is known (a
//! JSON answer), chunk by chunk as it streams otherwise ([`super::body`]).
//!
//! WebSocket upgrades, gRPC and uploads (bodies that are not JSON or text)
//! are filtered on their headers only: their bodies stream through.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sluice_core::{ErrorKind, GatewayError};
use sluice_wasm::Failure;
use sluice_wasm::filter::{
    Exchange, Fields, LocalResponse, REQUEST_HEADERS, RESPONSE_HEADERS, Stream,
};

use super::body::Filtered;
use crate::app::App;

/// One request's filters: their streams (HTTP contexts), in order.
pub(super) struct Chain {
    pub streams: Vec<Stream>,
    pub app: Arc<App>,
    /// The route's error shape.
    pub wire: sluice_providers::translate::Wire,
}

impl Chain {
    /// Counts a failure of `plugin` and turns it into the request's 500.
    pub fn failed(&self, plugin: &str, f: &Failure) -> Response {
        self.count(plugin, f);
        let e = GatewayError::new(ErrorKind::Internal, f.message.clone());
        crate::reply::error_response(&e, self.wire)
    }

    pub fn count(&self, plugin: &str, f: &Failure) {
        self.app.metrics.plugins.failed(plugin, f.kind.label());
        tracing::warn!(plugin, kind = f.kind.label(), error = %f, "plugin failed; its request fails");
    }

    pub fn finish(&mut self, x: &mut Exchange) {
        for s in &mut self.streams {
            s.finish(x);
        }
    }
}

pub(crate) async fn filter(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let mut chain = Chain {
        streams: Vec::new(),
        app: app.clone(),
        wire: crate::extract::wire_of(req.uri().path()),
    };
    {
        let plugins = app.plugins.load();
        let path = req.uri().path();
        for l in plugins.filters_for(path) {
            match l.filter.open() {
                Ok(s) => chain.streams.push(s),
                Err(e) => return chain.failed(l.filter.name(), &e),
            }
        }
    }
    if chain.streams.is_empty() {
        return next.run(req).await;
    }
    through(chain, req, next).await
}

/// Whether the body is read whole and offered to the filters.
fn body_filtered(h: &HeaderMap) -> bool {
    if h.contains_key(http::header::UPGRADE) {
        return false;
    }
    match h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(t) => t.contains("json") || t.starts_with("text/"),
    }
}

async fn through(mut chain: Chain, req: Request, next: Next) -> Response {
    let app = chain.app.clone();
    let (mut parts, body) = req.into_parts();
    let mut x = Exchange::default();
    x.maps[REQUEST_HEADERS] = request_fields(&parts);
    x.properties = properties(&app, &parts);
    let whole = body_filtered(&parts.headers);
    let body = if whole {
        let server = &app.snapshot.load().config.server;
        let (max, timeout) = (server.max_body_bytes, server.body_read_timeout);
        match crate::extract::read_body(&parts.headers, body, max, timeout).await {
            Ok(b) => {
                if let Some(m) = model_of(&b) {
                    x.properties.push(("sluice.model".into(), m.into_bytes()));
                }
                x.request_body = b.to_vec();
                None
            }
            Err(e) => return crate::reply::error_response(&e, chain.wire),
        }
    } else {
        Some(body)
    };
    let end = whole && x.request_body.is_empty();
    for i in 0..chain.streams.len() {
        let r = chain.streams[i].request_headers(&mut x, end);
        if let Some(resp) = settle(&mut chain, i, r, &mut x) {
            return resp;
        }
    }
    if whole && !end {
        for i in 0..chain.streams.len() {
            let r = chain.streams[i].request_body(&mut x, true);
            if let Some(resp) = settle(&mut chain, i, r, &mut x) {
                return resp;
            }
        }
    }
    if x.changed[REQUEST_HEADERS] {
        set_headers(&mut parts.headers, &x.maps[REQUEST_HEADERS]);
    }
    let body = match body {
        Some(b) => b,
        None => {
            let bytes = std::mem::take(&mut x.request_body);
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            Body::from(bytes)
        }
    };
    let resp = next.run(Request::from_parts(parts, body)).await;
    respond(chain, x, resp).await
}

/// After a request callback: a failure or a local response ends the
/// request here.
fn settle(
    chain: &mut Chain,
    i: usize,
    r: Result<sluice_wasm::filter::Flow, Failure>,
    x: &mut Exchange,
) -> Option<Response> {
    match r {
        Err(f) => {
            let resp = chain.failed(chain.streams[i].name(), &f);
            chain.finish(x);
            Some(resp)
        }
        Ok(_) => {
            let local = x.local.take()?;
            chain.finish(x);
            Some(local_response(local))
        }
    }
}

/// A response body of a known size up to this is offered to the filters
/// whole (one call, end of stream), and keeps a `content-length`.
const WHOLE_BODY_MAX: u64 = 16 << 20;

async fn respond(mut chain: Chain, mut x: Exchange, resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let mut fields: Fields = vec![(":status".into(), parts.status.as_str().as_bytes().to_vec())];
    push_headers(&mut fields, &parts.headers);
    x.maps[RESPONSE_HEADERS] = fields;
    x.properties.push((
        "response.code".into(),
        (parts.status.as_u16() as i64).to_le_bytes().to_vec(),
    ));
    for i in 0..chain.streams.len() {
        let r = chain.streams[i].response_headers(&mut x, false);
        if let Some(resp) = settle(&mut chain, i, r, &mut x) {
            return resp;
        }
    }
    if x.changed[RESPONSE_HEADERS] {
        let status = x.maps[RESPONSE_HEADERS]
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok());
        if let Some(s) = status {
            parts.status = s;
        }
        set_headers(&mut parts.headers, &x.maps[RESPONSE_HEADERS]);
    }
    if http_body::Body::size_hint(&body)
        .exact()
        .is_some_and(|n| n <= WHOLE_BODY_MAX)
    {
        // A whole answer (not a stream): offered at once, so that a filter
        // failing on it still gets the client a clean 500.
        let bytes = match http_body_util::BodyExt::collect(body).await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                chain.finish(&mut x);
                let e = GatewayError::new(ErrorKind::Internal, format!("the response body: {e}"));
                return crate::reply::error_response(&e, chain.wire);
            }
        };
        x.response_body = Vec::from(bytes);
        for i in 0..chain.streams.len() {
            if let Err(f) = chain.streams[i].response_body(&mut x, true) {
                let resp = chain.failed(chain.streams[i].name(), &f);
                chain.finish(&mut x);
                return resp;
            }
        }
        let out = std::mem::take(&mut x.response_body);
        chain.finish(&mut x);
        // hyper writes the length of the (maybe changed) body.
        parts.headers.remove(CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(out));
    }
    // A stream: offered chunk by chunk; filters may change its length.
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::new(Filtered::new(body, chain, x)))
}

fn local_response(l: LocalResponse) -> Response {
    let mut resp = Response::new(Body::from(l.body));
    *resp.status_mut() = StatusCode::from_u16(l.status).unwrap_or(StatusCode::FORBIDDEN);
    set_headers(resp.headers_mut(), &l.headers);
    resp
}

fn request_fields(parts: &http::request::Parts) -> Fields {
    let authority = parts
        .headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            parts
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
        })
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    let mut fields: Fields = vec![
        (":method".into(), parts.method.as_str().as_bytes().to_vec()),
        (":path".into(), path.as_bytes().to_vec()),
        (":authority".into(), authority),
        (
            ":scheme".into(),
            parts.uri.scheme_str().unwrap_or("http").as_bytes().to_vec(),
        ),
    ];
    push_headers(&mut fields, &parts.headers);
    fields
}

fn push_headers(fields: &mut Fields, h: &HeaderMap) {
    fields.reserve(h.len());
    for (k, v) in h {
        fields.push((k.as_str().to_owned(), v.as_bytes().to_vec()));
    }
}

/// Replaces `h` with the filters' fields (pseudo-headers left out; a name
/// or value that is not valid HTTP dropped).
fn set_headers(h: &mut HeaderMap, fields: &Fields) {
    h.clear();
    for (k, v) in fields.iter().filter(|(k, _)| !k.starts_with(':')) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            h.append(k, v);
        }
    }
}

/// Properties a filter can read (`proxy_get_property`).
fn properties(app: &App, parts: &http::request::Parts) -> Vec<(String, Vec<u8>)> {
    let mut p = vec![
        (
            "request.path".into(),
            parts
                .uri
                .path_and_query()
                .map_or(parts.uri.path(), |q| q.as_str())
                .as_bytes()
                .to_vec(),
        ),
        (
            "request.url_path".into(),
            parts.uri.path().as_bytes().to_vec(),
        ),
        (
            "request.method".into(),
            parts.method.as_str().as_bytes().to_vec(),
        ),
        (
            "request.protocol".into(),
            protocol(parts.version).as_bytes().to_vec(),
        ),
    ];
    if let Some(q) = parts.uri.query() {
        p.push(("request.query".into(), q.as_bytes().to_vec()));
    }
    if let Some(h) = parts.headers.get(http::header::HOST) {
        p.push(("request.host".into(), h.as_bytes().to_vec()));
    }
    if let Some(id) = parts.headers.get("x-request-id") {
        p.push(("request.id".into(), id.as_bytes().to_vec()));
    }
    let access = app.access.load();
    if let Ok(Some(key)) = crate::access::authenticate(&access, &parts.headers) {
        p.push(("sluice.key".into(), key.name.as_bytes().to_vec()));
    }
    p
}

/// The body's `"model"`, when it is a JSON object that has one.
fn model_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct M {
        model: Option<serde_json::Value>,
    }
    if body.first().is_none_or(|b| *b != b'{') {
        return None;
    }
    let m: M = serde_json::from_slice(body).ok()?;
    match m.model? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// `request.protocol`, as Envoy spells it.
fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
