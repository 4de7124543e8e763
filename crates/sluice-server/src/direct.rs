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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use sluice_core::request::Operation;

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

/// Serves a request [`route`] let through.
pub fn serve(app: &Arc<App>, to: (&'static str, Operation), req: Request<Incoming>) -> Served {
    crate::proxy::handle(app.clone(), to.1, to.0, req.map(Body::new))
}

/// Whether a plugin filter applies to `path` (the filters' own choice,
/// `Plugins::filters_for`).
fn filtered(app: &App, path: &str) -> bool {
    app.plugins.load().filters_for(path).next().is_some()
}
