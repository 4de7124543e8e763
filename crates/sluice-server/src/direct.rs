//! The model APIs' routes without the router around them.
//!
//! Nearly every request a gateway serves is a POST to one of a handful of
//! paths, and axum's router with the two middlewares on the API (memory
//! pressure, plugin filters) cost ~13,700 instructions of a proxied
//! request's ~93,300 in cloned boxed services, boxed futures and extension
//! inserts (callgrind, `bench/instructions.py`: 93,322 with the router,
//! 79,650 past it). Such a request goes straight to the proxy when
//! neither middleware has anything to do for it: the gateway is not
//! shedding and no plugin filter applies to its path. Everything else —
//! other paths and methods, shedding, filters — takes the router, which
//! serves these paths with the same handler ([`PROXIED`] is its table too).
//!
//! A request that asks for a compressed response (`Accept-Encoding`: the
//! official Python SDKs send it through httpx, Node's fetch and Go's
//! net/http do too) is served here as well, its response compressed by the
//! layered router's compression when it is worth it, instead of taking
//! that router with CORS and request decompression around it: with the
//! openai SDK's headers a request cost 123,545 instructions through the
//! layered router and 89,958 here (`bench/instructions.py --sdk`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use http::HeaderValue;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_RANGE};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use sluice_core::request::Operation;
use tower::Service;
use tower_http::compression::Compression;
use tower_http::compression::predicate::Predicate;

use crate::app::App;

/// The proxied routes with one handler each: path and operation.
pub const PROXIED: [(&str, Operation); 5] = [
    ("/v1/chat/completions", Operation::Chat),
    ("/v1/embeddings", Operation::Embeddings),
    ("/v1/messages", Operation::Messages),
    ("/v1/responses", Operation::Responses),
    ("/v1/completions", Operation::Completions),
];

pub type Served = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The route and operation of a request the proxy may serve directly.
pub fn route(app: &App, req: &Request<Incoming>) -> Option<(&'static str, Operation)> {
    if req.method() != Method::POST {
        return None;
    }
    let &(route, op) = PROXIED.iter().find(|(p, _)| *p == req.uri().path())?;
    crate::pressure::look();
    if crate::pressure::shedding() || filtered(app, route) {
        return None;
    }
    Some((route, op))
}

/// Serves a request [`route`] let through; its response compressed as the
/// layered router would (`crate::layers`) when `compress` (the client
/// accepts an encoding).
pub fn serve(
    app: &Arc<App>,
    to: (&'static str, Operation),
    req: Request<Incoming>,
    compress: bool,
) -> Served {
    let accepts = compress
        .then(|| req.headers().get(ACCEPT_ENCODING).cloned())
        .flatten();
    let served = crate::proxy::handle(app.clone(), to.1, to.0, req.map(Body::new));
    match accepts {
        None => served,
        Some(accepts) => Box::pin(compressed(served, accepts)),
    }
}

/// The response, compressed by the layered router's compression when it
/// is worth it. Most answers are not (under 1 KiB, or an event stream):
/// they go out as they are, not wrapped in a pass-through body.
async fn compressed(served: Served, accepts: HeaderValue) -> Response<Body> {
    let res = served.await;
    let when = crate::layers::compress_when();
    let h = res.headers();
    if h.contains_key(CONTENT_ENCODING)
        || h.contains_key(CONTENT_RANGE)
        || !when.should_compress(&res)
    {
        return res;
    }
    // Called once, with the request below.
    let mut res = Some(res);
    let answer = move |_: Request<()>| {
        std::future::ready(Ok::<_, Infallible>(res.take().unwrap_or_default()))
    };
    let mut svc = Compression::new(tower::service_fn(answer)).compress_when(when);
    let mut asked = Request::new(());
    asked.headers_mut().insert(ACCEPT_ENCODING, accepts);
    match svc.call(asked).await {
        Ok(r) => r.map(Body::new),
        Err(never) => match never {},
    }
}

/// Whether a plugin filter applies to `path` (the filters' own choice,
/// `Plugins::filters_for`).
fn filtered(app: &App, path: &str) -> bool {
    app.plugins.load().filters_for(path).next().is_some()
}
