//! Multimodal requests: the parts a model's targets do not take natively
//! (`modalities`) become text before routing, as `[models.convert]` says.
//!
//! Every conversion of a request runs at once, each within its own
//! deadline (its `timeout_ms`, capped by the request's). They share one
//! cancellation: the request future owns them all, so the client going
//! away, the request's deadline, or a failing branch under
//! `on_failure = "fail"` drops every other branch — and with it its
//! upstream call and, between steps, its processor run. The text parts
//! take the originals' places; parts the targets take are left alone.

mod branch;
pub mod processors;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::HeaderMap;
use serde_json::json;
use sluice_core::config::{Converter, Modality, OnFailure};
use sluice_core::route::ModelRoute;
use sluice_core::{ErrorKind, GatewayError};
use sluice_providers::multimodal::{self as mm, Part};
use tokio::time::Instant;

use crate::app::App;
use crate::proxy::Recorder;
use branch::Failure;

/// The request with its converted parts in place of the originals;
/// `None` when there was nothing to convert.
pub(crate) async fn convert(
    app: &Arc<App>,
    route: &ModelRoute,
    body: &Bytes,
    headers: &HeaderMap,
    deadline: Instant,
    rec: &mut Recorder,
) -> Result<Option<Bytes>, GatewayError> {
    if headers.contains_key(&branch::INTERNAL) || !mm::may_have_media(body, route.modalities) {
        return Ok(None);
    }
    let (parsed, parts) = mm::parts(body)?;
    let branches = plan(route, &parts)?;
    if branches.is_empty() {
        return Ok(None);
    }
    let on_failure = route
        .convert
        .as_ref()
        .map_or(OnFailure::Fail, |c| c.on_failure);
    let converters = app.converters.load_full();
    let request_id = rec
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let ctx = branch::Ctx {
        app,
        converters: &converters,
        headers,
        request_id: &request_id,
    };
    let started = Instant::now();
    let spans: Vec<_> = branches
        .iter()
        .map(|(p, conv)| branch_span(app, rec, p, conv))
        .collect();
    let mut tally = Tally::new(app, &branches);
    let mut running: FuturesUnordered<_> = branches
        .iter()
        .zip(spans)
        .enumerate()
        .map(|(i, ((part, conv), mut span))| {
            let ctx = &ctx;
            async move {
                let own = deadline.min(Instant::now() + conv.timeout);
                let traceparent = span.as_ref().map(|s| s.context().traceparent());
                let work = branch::convert(ctx, part, conv, own, traceparent);
                let r = tokio::time::timeout_at(own, work)
                    .await
                    .unwrap_or(Err(Failure::Timeout));
                if let (Some(s), Err(f)) = (span.as_mut(), &r) {
                    s.fail(outcome(f), &describe(part, conv, f, own, deadline));
                }
                (i, r, own)
            }
        })
        .collect();
    let mut texts: Vec<Option<String>> = vec![None; branches.len()];
    while let Some((i, r, own)) = running.next().await {
        let (part, conv) = branches[i];
        tally.done(i, r.as_ref().map_or_else(outcome, |_| "ok"));
        match settle(part, conv, r, on_failure, (own, deadline)) {
            Ok((text, omitted)) => {
                if omitted {
                    tally.omitted(i);
                }
                texts[i] = Some(text);
            }
            Err(e) => {
                tally.audit(rec);
                return Err(e);
            }
        }
    }
    drop(running);
    tally.audit(rec);
    // Time spent converting is the converters', not the gateway's own.
    rec.excluded += started.elapsed();
    let with = branches
        .iter()
        .zip(texts)
        .map(|((p, _), t)| (*p, t))
        .collect();
    Ok(Some(mm::replace(parsed, with)))
}

/// The parts to convert, each with its converter; a part the route's
/// targets do not take and nothing converts fails the request.
fn plan<'a>(
    route: &'a ModelRoute,
    parts: &'a [Part],
) -> Result<Vec<(&'a Part, &'a Converter)>, GatewayError> {
    let mut branches = Vec::new();
    for p in parts {
        if route.modalities.takes(p.modality) {
            continue;
        }
        match route.convert.as_ref().and_then(|c| c.of(p.modality)) {
            Some(conv) => branches.push((p, conv)),
            None => return Err(unsupported(route, p.modality)),
        }
    }
    Ok(branches)
}

/// What a finished branch puts in its part's place (and whether that is
/// a note for an omitted part), or the error that ends the request.
fn settle(
    part: &Part,
    conv: &Converter,
    r: Result<String, Failure>,
    on_failure: OnFailure,
    (own, deadline): (Instant, Instant),
) -> Result<(String, bool), GatewayError> {
    let f = match r {
        Ok(text) => {
            let text = text.trim();
            return Ok(match part.modality {
                Modality::Audio => (format!("[{} transcript: {text}]", part.name()), false),
                _ => (format!("[{}: {text}]", part.name()), false),
            });
        }
        Err(Failure::Input(e)) => return Err(e),
        Err(f) => f,
    };
    let why = describe(part, conv, &f, own, deadline);
    if on_failure == OnFailure::Omit {
        return Ok((format!("[{} omitted: {why}]", part.name()), true));
    }
    let kind = match f {
        Failure::Timeout => ErrorKind::ConversionTimeout,
        _ => ErrorKind::ConversionFailed,
    };
    Err(GatewayError::new(kind, why))
}

fn unsupported(route: &ModelRoute, m: Modality) -> GatewayError {
    GatewayError::new(
        ErrorKind::UnsupportedModality,
        format!(
            "model '{}' does not take {} input and has no converter for it ([models.convert] {})",
            route.name,
            m.as_str(),
            m.as_str()
        ),
    )
    .with_param("messages")
}

fn outcome(f: &Failure) -> &'static str {
    match f {
        Failure::Timeout => "timeout",
        Failure::Input(_) | Failure::Failed(_) => "error",
    }
}

/// What went wrong with a part, naming it and its converter.
fn describe(part: &Part, conv: &Converter, f: &Failure, own: Instant, deadline: Instant) -> String {
    let who = format!("{} ({})", part.name(), conv.label());
    match f {
        Failure::Timeout if own >= deadline => {
            format!("{who} was not converted within the request's deadline")
        }
        Failure::Timeout => format!(
            "{who} was not converted within its deadline of {} ms",
            conv.timeout.as_millis()
        ),
        Failure::Failed(m) => format!("{who} could not be converted: {m}"),
        Failure::Input(e) => e.message.to_string(),
    }
}

/// The branch's span: a child of the request's, when it is sampled.
fn branch_span(
    app: &App,
    rec: &Recorder,
    part: &Part,
    conv: &Converter,
) -> Option<sluice_telemetry::Span> {
    let (tracing, parent) = (app.tracing.as_ref()?, rec.span.as_ref()?);
    let operation = match (part.modality, &conv.processor, &conv.model) {
        (Modality::Audio, ..) => "transcription",
        (_, Some(_), _) => "ocr",
        _ => "chat",
    };
    let mut s = tracing.internal_span(parent, operation)?;
    s.rename(operation, &Arc::from(conv.label()));
    s.str("gen_ai.operation.name", operation);
    s.str("sluice.modality", part.modality.as_str());
    s.int("sluice.part", part.ordinal as i64);
    if let Some(p) = &conv.processor {
        s.str("sluice.processor", p);
    }
    if let Some(m) = &conv.model {
        s.str("gen_ai.request.model", m);
    }
    Some(s)
}

/// Each branch's outcome and duration, for the metric and the audit
/// event; branches still running when it is dropped (the request went
/// away, or another branch failed it) are counted as cancelled.
struct Tally<'a> {
    app: &'a App,
    branches: &'a [(&'a Part, &'a Converter)],
    started: Instant,
    outcomes: Vec<Option<(&'static str, Duration)>>,
    omitted: Vec<bool>,
}

impl<'a> Tally<'a> {
    fn new(app: &'a App, branches: &'a [(&'a Part, &'a Converter)]) -> Self {
        Self {
            app,
            branches,
            started: Instant::now(),
            outcomes: vec![None; branches.len()],
            omitted: vec![false; branches.len()],
        }
    }

    fn done(&mut self, i: usize, outcome: &'static str) {
        let took = self.started.elapsed();
        let (part, conv) = self.branches[i];
        self.app
            .metrics
            .modality
            .observe(part.modality.as_str(), conv.label(), outcome, took);
        self.outcomes[i] = Some((outcome, took));
    }

    fn omitted(&mut self, i: usize) {
        self.omitted[i] = true;
    }

    /// What the audit event says about the conversions (audit on only).
    fn audit(&mut self, rec: &mut Recorder) {
        self.cancel_rest();
        if self.app.audit.is_none() {
            return;
        }
        let list: Vec<_> = self
            .branches
            .iter()
            .zip(&self.outcomes)
            .zip(&self.omitted)
            .map(|(((part, conv), o), omitted)| {
                let (outcome, took) = o.unwrap_or(("cancelled", Duration::ZERO));
                json!({
                    "part": part.name(),
                    "modality": part.modality.as_str(),
                    "converter": conv.label(),
                    "by": if conv.processor.is_some() && conv.model.is_none() { "processor" } else { "model" },
                    "processor": conv.processor.as_deref(),
                    "model": conv.model.as_deref(),
                    "outcome": outcome,
                    "omitted": omitted,
                    "ms": took.as_secs_f64() * 1000.0,
                })
            })
            .collect();
        rec.conversions = Some(serde_json::Value::Array(list));
    }

    fn cancel_rest(&mut self) {
        for i in 0..self.outcomes.len() {
            if self.outcomes[i].is_none() {
                self.done(i, "cancelled");
            }
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.cancel_rest();
    }
}
