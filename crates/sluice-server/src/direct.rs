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
//!
//! An instruction posted to an agent (`POST /v1/agents/{id}/instructions`,
//! the hub's busiest call) goes the same way: a pushed instruction cost
//! the gateway 57,900 user-space instructions through the router and
//! 47,600 past it, answer and the agent's ack included (callgrind, 1,000
//! pushes to 100 agents from `bench/agents`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use http::HeaderValue;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_RANGE};
use http::{Method, Request, Response};
use sluice_core::request::Operation;
use tower::Service;
use tower_http::compression::Compression;
use tower_http::compression::predicate::Predicate;

use crate::app::App;
use crate::proxy::InboundBody;

/// The proxied routes with one handler each: path and operation.
pub const PROXIED: [(&str, Operation); 5] = [
    ("/v1/chat/completions", Operation::Chat),
    ("/v1/embeddings", Operation::Embeddings),
    ("/v1/messages", Operation::Messages),
    ("/v1/responses", Operation::Responses),
    ("/v1/completions", Operation::Completions),
];

pub type Served = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// What serves a request past the router.
#[derive(Debug, PartialEq)]
pub enum Direct {
    /// The proxy, for one of the [`PROXIED`] routes.
    Proxy(&'static str, Operation),
    /// An instruction for this agent.
    Instruct(String),
}

/// What may serve a request directly, if anything.
pub fn route<B>(app: &App, req: &Request<B>) -> Option<Direct> {
    if req.method() != Method::POST {
        return None;
    }
    let path = req.uri().path();
    let proxied = PROXIED.iter().find(|(p, _)| *p == path).copied();
    // Its id is copied only once the request is known to go direct.
    let agent = match proxied {
        Some(_) => None,
        None => Some(instructed_agent(path)?),
    };
    crate::pressure::look();
    if crate::pressure::shedding() || filtered(app, path) {
        return None;
    }
    Some(match proxied {
        Some((route, op)) => Direct::Proxy(route, op),
        None => Direct::Instruct(agent?.to_owned()),
    })
}

/// The agent of `/v1/agents/{id}/instructions` when the router would take
/// `{id}` as it is: one segment, nothing percent-encoded, not one of the
/// hub's fixed paths (`/v1/agents/instructions/{id}` is a GET route, so
/// the router answers a POST there with 405). Any other id takes the router.
fn instructed_agent(path: &str) -> Option<&str> {
    let id = path
        .strip_prefix("/v1/agents/")?
        .strip_suffix("/instructions")?;
    let plain = !id.is_empty()
        && !id.contains(['/', '%'])
        && !["connect", "events", "instructions"].contains(&id);
    plain.then_some(id)
}

/// Serves a request [`route`] let through; its response compressed as the
/// layered router would (`crate::layers`) when `compress` (the client
/// accepts an encoding).
pub fn serve(app: &Arc<App>, to: Direct, req: Request<InboundBody>, compress: bool) -> Served {
    let accepts = compress
        .then(|| req.headers().get(ACCEPT_ENCODING).cloned())
        .flatten();
    let served = match to {
        Direct::Proxy(route, op) => crate::proxy::handle_inbound(app.clone(), op, route, req),
        Direct::Instruct(agent) => Box::pin(crate::hub_routes::instruct_directly(
            app.clone(),
            agent,
            req.map(InboundBody::into_body),
        )),
    };
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
    // The size first: most answers are too small, known from the body
    // without a lookup.
    if !when.should_compress(&res)
        || res.headers().contains_key(CONTENT_ENCODING)
        || res.headers().contains_key(CONTENT_RANGE)
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

#[cfg(test)]
mod tests {
    use super::instructed_agent;

    #[test]
    fn an_instruction_path_names_its_agent_when_the_router_would_take_it_as_is() {
        assert_eq!(instructed_agent("/v1/agents/a-1/instructions"), Some("a-1"));
        assert_eq!(
            instructed_agent("/v1/agents/a.b_c/instructions"),
            Some("a.b_c")
        );
        for routed in [
            "/v1/agents//instructions",
            "/v1/agents/a/b/instructions",
            "/v1/agents/a%2Fb/instructions",
            "/v1/agents/instructions/instructions",
            "/v1/agents/connect/instructions",
            "/v1/agents/events/instructions",
            "/v1/agents/instructions",
            "/v1/agents/a-1",
            "/v1/agent-groups/g/instructions",
            "/v2/agents/a/instructions",
        ] {
            assert_eq!(instructed_agent(routed), None, "{routed}");
        }
    }
}
