//! The request path for chat completions, messages and embeddings, as
//! stages that depend one way:
//!
//! intake (id, deadline, body) → admit (key, route, budgets, rate limits,
//! stream permits) → attempt (targets, retries, fallbacks) → deliver (the
//! client's format) → watch (the streamed body) → record (metrics, spans,
//! audit, access log) and settle (limits and budgets against real usage).
//!
//! [`handle`] serves an HTTP request; [`serve`] is the same path for
//! callers that already hold the request (the agent hub's chats).

mod admit;
mod attempt;
mod call;
mod coalesce;
mod deliver;
pub mod intake;
pub mod record;
pub mod settle;
mod upload;
mod watch;

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use sluice_core::media::{self, DEFAULT_MODERATION_MODEL, Media};
use sluice_core::request::{self, Operation};
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::anthropic::inbound;
use sluice_providers::translate::Wire;
use tokio::time::Instant;

use crate::app::App;
pub(crate) use admit::{RateInfo, rate_limit};
use call::Call;
pub use call::operation_name;
pub use deliver::copy_response_headers;
pub(crate) use intake::REQUEST_ID;
pub use record::Recorder;

/// A request for the proxy path.
pub struct Inbound {
    pub op: Operation,
    /// The route label for metrics and logs.
    pub route: &'static str,
    pub headers: HeaderMap,
    pub body: InboundBody,
    /// The client's wire format when the route does not tell it (a token
    /// stream asked for with `Accept`).
    pub client: Option<Wire>,
}

/// A request body: still arriving, or already in hand.
pub enum InboundBody {
    Http(Body),
    Read(Bytes),
}

impl InboundBody {
    /// The body as an HTTP body, for handlers that read it themselves.
    pub fn into_body(self) -> Body {
        match self {
            Self::Http(b) => b,
            Self::Read(b) => Body::from(b),
        }
    }
}

/// Serves an HTTP request.
///
/// The request's whole state machine is large (kilobytes): it is put on
/// the heap once, here, so the router's and middlewares' own futures, each
/// boxed and moved on the way in, stay a pointer wide instead of copying it
/// three times per request.
pub fn handle(
    app: Arc<App>,
    op: Operation,
    route: &'static str,
    req: Request<Body>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> {
    handle_inbound(app, op, route, req.map(InboundBody::Http))
}

/// [`handle`] for a request whose body may already be in hand (the lean
/// HTTP/1.1 loop's, when it arrived with the head): it is not read again.
pub fn handle_inbound(
    app: Arc<App>,
    op: Operation,
    route: &'static str,
    req: Request<InboundBody>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> {
    let (parts, body) = req.into_parts();
    // The box first, then the future made in it: `Box::pin(serve(…))`
    // made the whole state machine (KiBs, most of it not in use yet) on
    // the stack and copied it into the box, on every request.
    let made = Box::write(
        Box::new_uninit(),
        serve(
            app,
            Inbound {
                op,
                route,
                headers: parts.headers,
                body,
                client: None,
            },
        ),
    );
    Box::into_pin(made)
}

/// Runs a request through the whole path; the response is in the client's
/// format, its body streamed and accounted for to its end.
pub async fn serve(app: Arc<App>, inbound: Inbound) -> Response<Body> {
    let started = Instant::now();
    let mut rec = Recorder::start_at(&app, inbound.route, started);
    let request_id = intake::request_id(&inbound.headers);
    rec.request_id = Some(request_id.clone());
    // The client's own id, kept apart in the audit event (it may be forged
    // or reused; the event's `id` is the gateway's).
    if app.audit.is_some() {
        rec.client_request_id = inbound
            .headers
            .get(&REQUEST_ID)
            .filter(|v| v.len() <= 256)
            .cloned();
    }
    let durable = app.audit.as_ref().is_some_and(|a| a.is_sync()).then(|| {
        let slot = Arc::new(crate::audit::durable::AckSlot::default());
        rec.audit_ack = Some(slot.clone());
        slot
    });
    if let Some(t) = &app.tracing {
        let mut span = t.server_span(&inbound.headers, inbound.route);
        span.str("sluice.request_id", request_id.to_str().unwrap_or_default());
        rec.span = Some(span);
    }
    let mut limits = admit::RateInfo::default();
    let mut resp = proxy(&app, inbound, rec, &request_id, started, &mut limits).await;
    let h = resp.headers_mut();
    h.insert(REQUEST_ID.clone(), request_id);
    limits.write(h);
    match durable {
        Some(slot) => resp.map(|b| Body::new(crate::audit::durable::DurableBody::new(b, slot))),
        None => resp,
    }
}

/// Intake, admission and the attempts, in that order; every refusal is
/// answered in the client's format.
async fn proxy(
    app: &Arc<App>,
    inbound: Inbound,
    mut rec: Recorder,
    request_id: &HeaderValue,
    started: Instant,
    limits: &mut admit::RateInfo,
) -> Response<Body> {
    let Inbound {
        op,
        headers,
        body,
        client,
        ..
    } = inbound;
    if let Some(w) = client {
        rec.wire = w;
    }
    let snap = app.snapshot.load_full();
    match op {
        Operation::Messages => rec.wire = Wire::Anthropic,
        Operation::Responses => rec.wire = Wire::Responses,
        Operation::Completions => rec.wire = Wire::Completions,
        Operation::Chat | Operation::Embeddings | Operation::Media(_) => {}
    }
    let form = matches!(op, Operation::Media(m) if m.form());
    let access = app.access.load_full();
    let key = match crate::access::authenticate(&access, &headers) {
        Ok(k) => k,
        Err(e) => return rec.reply_error(&e),
    };
    rec.key = key.map(|k| k.name.clone());
    let checked = if form {
        media_form_type(&headers).map(Some)
    } else {
        crate::extract::not_a_form(&headers).map(|()| None)
    };
    let content_type = match checked {
        Ok(ct) => ct,
        Err(e) => return rec.reply_error(&e),
    };
    let client_timeout = match intake::client_timeout(&headers) {
        Ok(t) => t,
        Err(e) => return rec.reply_error(&e),
    };
    // A body in hand was read with the head: the client took no time on it.
    let in_hand = matches!(body, InboundBody::Read(_));
    let intake = read_intake(
        &headers,
        body,
        op,
        content_type.as_ref(),
        &snap.config.server,
    );
    let (body, upload) = match intake.await {
        Ok(b) => b,
        Err(e) => return rec.reply_error(&e),
    };
    // Reading the client's body is the client's time, not the gateway's.
    if !in_hand {
        rec.excluded = started.elapsed();
    }
    // OpenAI makes the moderation model optional.
    let body = match op {
        Operation::Media(Media::Moderation) => request::with_model(body, DEFAULT_MODERATION_MODEL),
        _ => body,
    };
    // Prompts redacted before they go anywhere, when configured (the body
    // is checked first, for the precise error a malformed one deserves);
    // the audit's recorded fields and the peek read from the same pass.
    let audit = app.audit.as_ref().filter(|a| a.wants_fields());
    let heads = audit.map_or(&[][..], |a| a.field_heads());
    let keep = |k: &str| request::PEEKED.contains(&k) || heads.iter().any(|h| h == k);
    let original = body;
    let mut kept = sluice_core::pii::Members::new();
    let form = content_type.as_ref();
    let redacted = intake::redact_prompt(&snap, &original, op, form, keep, &mut kept);
    if let Some(a) = audit {
        rec.audit_fields = match &redacted {
            Ok(intake::Redacted::Read(_)) => Some(a.fields_in(&kept)),
            _ => a.fields_of(&original),
        };
    }
    let tokens = matches!(rec.wire, Wire::Tokens(_));
    let (body, peeked) = match redacted {
        Ok(intake::Redacted::Read(mut p)) => {
            let new = p
                .redacted
                .as_mut()
                .map(|d| Bytes::from(std::mem::take(&mut d.body)));
            let sent = new.as_ref().unwrap_or(&original);
            let peeked = match tokens {
                false => intake::peek_from_pass(sent, &original, &kept, &p, op),
                true => None,
            };
            drop(kept);
            (new.unwrap_or(original), peeked)
        }
        // `kept` (inline, so dropped only at the end of its scope unless
        // dropped here) borrows `original`.
        Ok(intake::Redacted::Form(b)) => {
            drop(kept);
            (b.unwrap_or(original), None)
        }
        Ok(intake::Redacted::Off) => {
            drop(kept);
            (original, None)
        }
        Err(e) => return rec.reply_error(&e),
    };
    // Token streams are always streams, and end with the usage.
    let body = match tokens {
        true => request::as_usage_stream(&body),
        false => body,
    };
    let peeked = match (&content_type, peeked) {
        (Some(ct), _) => media_peek(&body, ct, op, upload.is_some()),
        (None, Some(p)) => Ok(p),
        (None, None) => request::peek(&body, op),
    };
    let peek = match peeked {
        Ok(p) => p,
        Err(e) => return rec.reply_error(&e),
    };
    rec.streamed = peek.stream;
    let admitted = admit::Request {
        snap: &snap,
        access: &access,
        key,
        peek: &peek,
        body_len: body.len(),
    };
    let route = match admitted.admit(app, &mut rec, limits).await {
        Ok(r) => r,
        Err(e) => return rec.reply_error(&e),
    };
    if let Some(span) = rec.span.as_mut().filter(|s| s.is_recording()) {
        let operation = operation_name(op);
        span.rename(operation, &route.name);
        span.str("gen_ai.operation.name", operation);
        span.str("gen_ai.request.model", &route.name);
        span.flag("sluice.stream", peek.stream);
    }
    let budget = client_timeout.map_or(route.timeout, |t| t.min(route.timeout));

    // Anthropic, Responses and completions clients: the request in the
    // OpenAI chat shape for every target; their own body goes to targets
    // that speak their format.
    let mut echo = None;
    let mut untranslatable = None;
    let canonical = match op {
        Operation::Messages => inbound::canonical(&body),
        Operation::Responses => match Box::pin(responses_turn(app, &body, &mut rec)).await {
            Ok((chat, e)) => {
                echo = Some(e);
                Ok(chat)
            }
            // A target with its own Responses API may still take it as is
            // (a response stored there, a hosted tool).
            Err(e) if native_responses_may_take(&snap, route, &e) => {
                untranslatable = Some(e);
                Ok(body.clone())
            }
            Err(e) => Err(e),
        },
        Operation::Completions => sluice_providers::completions::canonical(&body),
        Operation::Chat | Operation::Embeddings | Operation::Media(_) => Ok(Bytes::new()),
    };
    let canonical = match canonical {
        Ok(b) => b,
        Err(e) => return rec.reply_error(&e),
    };
    // Parts the route's targets do not take become text first (all at
    // once, each within its deadline); the request then goes on in the
    // OpenAI chat shape, to every target alike.
    let source = match op {
        Operation::Chat => Some(&body),
        Operation::Messages | Operation::Responses if untranslatable.is_none() => Some(&canonical),
        _ => None,
    };
    let converted = match source {
        Some(b) => {
            let deadline = started + budget;
            match Box::pin(crate::multimodal::convert(
                app, route, b, &headers, deadline, &mut rec,
            ))
            .await
            {
                Ok(c) => c,
                Err(e) => return rec.reply_error(&e),
            }
        }
        None => None,
    };
    let canonical_peek;
    let (op, body_ref, peek_ref, native) = match (op, &converted) {
        (_, Some(c)) => {
            canonical_peek = match request::peek(c, Operation::Chat) {
                Ok(p) => p,
                Err(e) => return rec.reply_error(&e),
            };
            (Operation::Chat, c, &canonical_peek, None)
        }
        (Operation::Chat | Operation::Embeddings | Operation::Media(_), None) => {
            (op, &body, &peek, None)
        }
        (Operation::Messages | Operation::Responses | Operation::Completions, None) => {
            let native = Some(sluice_providers::adapter::Native {
                wire: rec.wire,
                body: &body,
                model_span: peek.model_span.clone(),
            });
            if untranslatable.is_some() {
                (op, &body, &peek, native)
            } else {
                canonical_peek = match request::peek(&canonical, Operation::Chat) {
                    Ok(p) => p,
                    Err(e) => return rec.reply_error(&e),
                };
                // Completions and Responses keep their operation: targets
                // with those endpoints take them as they are.
                let op = match op {
                    Operation::Messages => Operation::Chat,
                    _ => op,
                };
                (op, &canonical, &canonical_peek, native)
            }
        }
    };
    let call = Call {
        snap: &snap,
        op,
        client: rec.wire,
        body: body_ref,
        peek: peek_ref,
        native,
        responses: echo,
        client_model: &peek.model,
        include_usage: peek.include_usage,
        request_id,
        content_type: content_type.as_ref(),
        untranslatable: untranslatable.as_ref(),
        upload: upload.as_ref(),
        deadline: started + budget,
        budget,
    };
    attempt::run(&call, route, rec).await
}

/// Whether a Responses request the gateway cannot translate (`e`) may
/// still go as it is: some target of the route (or its fallbacks) has its
/// own Responses API.
fn native_responses_may_take(
    snap: &crate::app::Snapshot,
    route: &sluice_core::route::ModelRoute,
    e: &GatewayError,
) -> bool {
    if !matches!(
        e.kind,
        ErrorKind::ResponseNotFound | ErrorKind::InvalidRequest
    ) {
        return false;
    }
    std::iter::once(route)
        .chain(route.fallbacks.iter().filter_map(|n| snap.routes.get(n)))
        .flat_map(|m| m.targets.iter())
        .any(|t| {
            snap.upstreams[t.provider]
                .adapter
                .wire(Operation::Responses)
                == Wire::Responses
        })
}

/// A form upload's content type, which must be `multipart/form-data` with
/// a boundary.
fn media_form_type(headers: &HeaderMap) -> Result<HeaderValue, GatewayError> {
    match headers.get(http::header::CONTENT_TYPE) {
        Some(ct) if ct.to_str().ok().and_then(media::boundary).is_some() => Ok(ct.clone()),
        _ => Err(GatewayError::new(
            ErrorKind::UnsupportedMediaType,
            "this endpoint takes a multipart/form-data upload (with a boundary)",
        )),
    }
}

/// A form's fields; from its first bytes when the rest is streamed.
fn media_peek<'a>(
    body: &'a [u8],
    content_type: &HeaderValue,
    op: Operation,
    prefix: bool,
) -> Result<request::RequestPeek<'a>, GatewayError> {
    let boundary = content_type
        .to_str()
        .ok()
        .and_then(media::boundary)
        .unwrap_or_default();
    match op {
        Operation::Media(m) if prefix => media::peek_form_prefix(body, boundary, m)?
            .ok_or_else(|| GatewayError::new(ErrorKind::Internal, "an upload streamed early")),
        Operation::Media(m) => media::peek_form(body, boundary, m),
        _ => request::peek(body, op),
    }
}

/// The request body within its limits: whole, or for a large form upload
/// its first bytes and the rest still arriving.
async fn read_intake(
    headers: &HeaderMap,
    body: InboundBody,
    op: Operation,
    form: Option<&HeaderValue>,
    server: &sluice_core::config::ServerConfig,
) -> Result<(Bytes, Option<upload::StreamedUpload>), GatewayError> {
    let timeout = server.body_read_timeout;
    match (body, op, form) {
        (InboundBody::Http(b), Operation::Media(m), Some(ct)) => {
            let boundary = ct
                .to_str()
                .ok()
                .and_then(media::boundary)
                .unwrap_or_default();
            let limits = (server.max_body_bytes, server.max_upload_bytes);
            match Box::pin(upload::read(headers, b, (boundary, m), limits, timeout)).await? {
                upload::Intake::Whole(b) => Ok((b, None)),
                upload::Intake::Streamed(u) => Ok((u.prefix.clone(), Some(u))),
            }
        }
        (InboundBody::Http(b), ..) => {
            let b = intake::read_body(headers, b, server.max_body_bytes, timeout).await?;
            Ok((b, None))
        }
        (InboundBody::Read(b), ..) => {
            let max = match form {
                Some(_) => server.max_upload_bytes,
                None => server.max_body_bytes,
            };
            Ok((intake::within(b, max)?, None))
        }
    }
}

/// The responses whose output items an `item_reference` input names
/// (item ids carry their response's id: `msg_<hex>`, `fc_<hex>_N`).
fn referenced_responses(body: &[u8]) -> Vec<String> {
    static REFERENCE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"item_reference"));
    if REFERENCE.find(body).is_none() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let mut ids: Vec<String> = v["input"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["type"] == "item_reference")
        .filter_map(|i| crate::responses_store::response_of_item(i["id"].as_str()?))
        .collect();
    ids.sort();
    ids.dedup();
    ids.truncate(16);
    ids
}

/// A Responses request as a chat request, with the conversation its
/// `previous_response_id` names; the turn is kept (when `store`) once its
/// answer completes.
async fn responses_turn(
    app: &Arc<App>,
    body: &[u8],
    rec: &mut Recorder,
) -> Result<(Bytes, Arc<sluice_providers::responses::Echo>), GatewayError> {
    #[derive(serde::Deserialize)]
    struct Previous {
        previous_response_id: Option<String>,
    }
    let previous = serde_json::from_slice::<Previous>(body)
        .ok()
        .and_then(|p| p.previous_response_id);
    // What another replica stored: brought into memory first.
    if let Some(id) = &previous {
        app.responses.load(id).await;
    }
    for id in referenced_responses(body) {
        app.responses.load(&id).await;
    }
    let key = rec.key.clone();
    let history = match &previous {
        Some(id) => app
            .responses
            .conversation(id, key.as_deref())
            .ok_or_else(|| {
                GatewayError::new(
                    ErrorKind::ResponseNotFound,
                    format!(
                        "previous response '{id}' was not found (unknown, expired, or not stored)"
                    ),
                )
                .with_param("previous_response_id")
            })?,
        None => Arc::default(),
    };
    let store = &app.responses;
    let resolve = |item: &str| store.item(item, key.as_deref());
    let t = sluice_providers::responses::canonical(
        body,
        &history,
        crate::responses_store::new_id(),
        crate::clock::now_unix(),
        &resolve,
    )?;
    if t.store {
        rec.accounting.turn = Some(crate::responses_store::PendingTurn {
            store: app.responses.clone(),
            key,
            conversation: t.conversation,
            echo: t.echo.clone(),
        });
    }
    Ok((t.chat, t.echo))
}
