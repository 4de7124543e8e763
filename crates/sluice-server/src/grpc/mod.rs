//! gRPC on the API port (`proto/sluice/v1/gateway.proto`), chosen by the
//! request's content type: `application/grpc` (`+proto`) or
//! `application/grpc+json`. A call becomes the HTTP API's request and goes
//! the same path (keys, limits, routing, retries, metrics, traces, audit);
//! the answer becomes the reply, its status a gRPC status. Token streams
//! come out of the request path already framed (the providers' token
//! encoder), so a streamed token is written once.
//!
//! Also the standard services: `grpc.health.v1.Health` (serving while the
//! gateway is ready) and server reflection (v1 and v1alpha), from tonic.

mod body;
mod calls;
mod connect;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::routing::post;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use sluice_grpc::codec::Codec;
use sluice_grpc::status::{Code, Status};
use tower::util::BoxCloneSyncService;

use crate::app::App;
pub(crate) use body::Tail;

type Service = BoxCloneSyncService<Request, Response<Body>, Infallible>;

/// The standard gRPC services, and what the health service reports.
pub struct Standard {
    reporter: tonic_health::server::HealthReporter,
    health: Service,
    reflection_v1: Service,
    reflection_v1alpha: Service,
}

impl Standard {
    pub fn new() -> anyhow::Result<Self> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(sluice_grpc::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        Ok(Self {
            reporter,
            health: boxed(health),
            reflection_v1: boxed(builder().build_v1()?),
            reflection_v1alpha: boxed(builder().build_v1alpha()?),
        })
    }

    /// What `Check` answers for the whole server ("") and the gateway
    /// service: SERVING while the gateway is ready.
    pub async fn set_ready(&self, ready: bool) {
        use tonic_health::ServingStatus::{NotServing, Serving};
        let status = if ready { Serving } else { NotServing };
        for name in ["", sluice_grpc::SERVICE] {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// A tonic service as one taking and giving axum bodies.
fn boxed<S>(s: S) -> Service
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    use tower::ServiceExt as _;
    BoxCloneSyncService::new(
        s.map_request(|r: Request| r.map(tonic::body::Body::new))
            .map_response(|r: http::Response<tonic::body::Body>| r.map(Body::new)),
    )
}

pub fn routes(router: Router<Arc<App>>) -> Router<Arc<App>> {
    router
        .route("/sluice.v1.Gateway/{method}", post(gateway))
        .route("/grpc.health.v1.Health/{method}", post(health))
        .route(
            "/grpc.reflection.v1.ServerReflection/{method}",
            post(reflection_v1),
        )
        .route(
            "/grpc.reflection.v1alpha.ServerReflection/{method}",
            post(reflection_v1alpha),
        )
}

async fn standard(svc: &Service, req: Request) -> Response<Body> {
    if codec(req.headers()).is_none() {
        return not_grpc();
    }
    use tower::ServiceExt as _;
    match svc.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

async fn health(State(app): State<Arc<App>>, req: Request) -> Response<Body> {
    standard(&app.grpc.health, req).await
}

async fn reflection_v1(State(app): State<Arc<App>>, req: Request) -> Response<Body> {
    standard(&app.grpc.reflection_v1, req).await
}

async fn reflection_v1alpha(State(app): State<Arc<App>>, req: Request) -> Response<Body> {
    standard(&app.grpc.reflection_v1alpha, req).await
}

/// `/sluice.v1.Gateway/{method}`.
async fn gateway(
    State(app): State<Arc<App>>,
    Path(method): Path<String>,
    req: Request,
) -> Response<Body> {
    let Some(codec) = codec(req.headers()) else {
        return not_grpc();
    };
    let (parts, body) = req.into_parts();
    if method == "Connect" {
        return connect::connect(app, codec, &parts.headers, body).await;
    }
    let headers = match call_headers(&parts.headers) {
        Ok(h) => h,
        Err(s) => return status_only(codec, &s, HeaderMap::new()),
    };
    let call = calls::Call {
        app,
        codec,
        headers,
    };
    match method.as_str() {
        "Chat" => call.chat(body).await,
        "ChatStream" => call.chat_stream(body).await,
        "Embed" => call.embed(body).await,
        "Predict" => call.predict(body).await,
        _ => status_only(
            codec,
            &Status::new(
                Code::Unimplemented,
                format!("method {method} is not part of {}", sluice_grpc::SERVICE),
            ),
            HeaderMap::new(),
        ),
    }
}

fn codec(h: &HeaderMap) -> Option<Codec> {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Codec::of_content_type)
}

/// A gRPC path asked for without a gRPC content type: a plain HTTP error.
fn not_grpc() -> Response<Body> {
    let e = sluice_core::GatewayError::new(
        sluice_core::ErrorKind::UnsupportedMediaType,
        "gRPC methods take content-type application/grpc, application/grpc+proto or application/grpc+json",
    );
    crate::reply::error_response(&e, sluice_providers::translate::Wire::OpenAi)
}

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The call's metadata as the HTTP API's request headers: credentials,
/// request id and trace context pass as they are; `grpc-timeout` becomes
/// the API's `x-request-timeout`.
fn call_headers(h: &HeaderMap) -> Result<HeaderMap, Status> {
    let mut out = HeaderMap::with_capacity(h.len());
    for (name, value) in h {
        let skip = name == http::header::CONTENT_TYPE
            || name == http::header::CONTENT_LENGTH
            || name == http::header::TE
            || name.as_str().starts_with("grpc-");
        if !skip {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = h.get(GRPC_TIMEOUT) {
        let t = v.to_str().ok().and_then(parse_timeout).ok_or_else(|| {
            Status::new(
                Code::InvalidArgument,
                "grpc-timeout must be up to 8 digits and a unit (H, M, S, m, u, n)",
            )
        })?;
        // The API's own bound (a day); shorter ones narrow the deadline.
        let secs = t.as_secs_f64().clamp(0.001, 86_400.0);
        out.insert(
            "x-request-timeout",
            HeaderValue::from_str(&format!("{secs:.6}")).expect("a number is a header value"),
        );
    }
    Ok(out)
}

/// `grpc-timeout`: 1 to 8 ASCII digits and a unit.
fn parse_timeout(s: &str) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The response head of a call: 200, the codec's content type, and the
/// API's response headers worth passing on as initial metadata.
fn head(codec: Codec, from: &HeaderMap) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(codec.content_type()),
    );
    for (name, value) in from {
        let s = name.as_str();
        if s == "x-request-id" || s.starts_with("x-ratelimit-") || s == "retry-after" {
            h.append(name.clone(), value.clone());
        }
    }
    r
}

/// A call that ends before any message: the status in the headers
/// ("trailers-only").
fn status_only(codec: Codec, s: &Status, from: HeaderMap) -> Response<Body> {
    let mut r = head(codec, &from).map(|()| Body::empty());
    s.write(r.headers_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "123456789S", "1.5S", "-1S", "10x"] {
            assert_eq!(parse_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn metadata_becomes_api_headers() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer k"));
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("grpc-timeout", HeaderValue::from_static("250m"));
        h.insert("te", HeaderValue::from_static("trailers"));
        let out = call_headers(&h).expect("valid");
        assert_eq!(out["authorization"], "Bearer k");
        assert_eq!(out["content-type"], "application/json");
        assert_eq!(out["x-request-timeout"], "0.250000");
        assert!(out.get("te").is_none() && out.get("grpc-timeout").is_none());
        h.insert("grpc-timeout", HeaderValue::from_static("soon"));
        assert_eq!(call_headers(&h).unwrap_err().code, Code::InvalidArgument);
    }
}
