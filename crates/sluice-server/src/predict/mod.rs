//! Local models: loaded from `[[predictors]]` at start and on every
//! reload, each behind its batcher, served at `POST /v1/predict` ([`v1`])
//! and by the Open Inference Protocol ([`oip`]). Keys and their model
//! lists, rate limits, the request metrics, spans, the access log and
//! audit apply as for chat.

mod json;
pub mod oip;
pub(crate) mod v1;
mod wasm;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::routing::post;
use http::HeaderValue;
use sluice_core::config::{Config, ConfigError, KeyConfig, PredictorConfig, PredictorEngine};
use sluice_core::{ErrorKind, GatewayError};
use sluice_inference::{Answer, BatchConfig, Data, Model, Predictor, Shaped, SubmitError};
use tokio::sync::oneshot;

use crate::app::App;
use crate::metrics::plugins::PluginMetrics;
use crate::proxy::Recorder;

pub(crate) use json::{DataJson, Numbers, bad, data_of, deadline, read_json};

/// A model as loaded: what it was loaded from, to know on a reload
/// whether it can be kept.
struct Source {
    config: PredictorConfig,
    stamp: Option<Vec<(u64, SystemTime)>>,
}

/// The loaded models, by name.
#[derive(Default)]
pub struct Predictors {
    pub by_name: HashMap<String, Arc<Predictor>>,
    sources: HashMap<String, Source>,
}

/// The files' sizes and modification times, to tell a changed model
/// (and, for a WASM module, its `model_path`).
fn stamp(p: &PredictorConfig) -> Option<Vec<(u64, SystemTime)>> {
    let of = |path: &std::path::Path| {
        let m = std::fs::metadata(path).ok()?;
        Some((m.len(), m.modified().ok()?))
    };
    let mut out = vec![of(&p.path)?];
    if let PredictorEngine::Wasm(w) = &p.engine
        && let Some(m) = &w.model_path
    {
        out.push(of(m)?);
    }
    Some(out)
}

/// Loads one model with its engine.
fn load_model(p: &PredictorConfig, plugins: &Arc<PluginMetrics>) -> Result<Model, String> {
    match &p.engine {
        PredictorEngine::Onnx => sluice_inference::load(&p.path),
        PredictorEngine::Wasm(w) => wasm::load(p, w, plugins),
    }
}

/// Settings that need a fresh load when they change (the entry's
/// position in the file does not).
fn same_settings(a: &PredictorConfig, b: &PredictorConfig) -> bool {
    (
        &a.path,
        a.max_batch_size,
        a.max_queue_delay,
        a.threads,
        a.queue_depth,
        &a.engine,
    ) == (
        &b.path,
        b.max_batch_size,
        b.max_queue_delay,
        b.threads,
        b.queue_depth,
        &b.engine,
    )
}

/// Loads every `[[predictors]]` model; each failure located at its entry.
/// On a reload (`prev`), a model whose entry and file did not change is
/// kept as it runs — its queue and threads too.
pub fn load(
    config: &Config,
    metrics: Arc<crate::metrics::predict::PredictMetrics>,
    plugins: &Arc<PluginMetrics>,
    prev: Option<&Predictors>,
) -> Result<Predictors, Vec<ConfigError>> {
    let mut out = Predictors::default();
    let mut errors = Vec::new();
    for p in &config.predictors {
        let stamp = stamp(p);
        let kept = prev.and_then(|prev| {
            let s = prev.sources.get(&p.name)?;
            (same_settings(&s.config, p) && s.stamp == stamp && stamp.is_some())
                .then(|| prev.by_name.get(&p.name).cloned())?
        });
        let predictor = match kept {
            Some(k) => k,
            None => match load_model(p, plugins) {
                Ok(model) => {
                    let cfg = BatchConfig {
                        max_batch_size: p.max_batch_size,
                        max_queue_delay: p.max_queue_delay,
                        threads: p.threads,
                        queue_depth: p.queue_depth,
                        idle_priority: p.idle_priority,
                    };
                    tracing::info!(model = %p.name, path = %p.path.display(), batched = model.batched, "predictor loaded");
                    Arc::new(Predictor::start(
                        &p.name,
                        Arc::new(model),
                        cfg,
                        metrics.clone(),
                    ))
                }
                Err(e) => {
                    errors.push(p.error(format!("predictor '{}': {e}", p.name)));
                    continue;
                }
            },
        };
        out.by_name.insert(p.name.clone(), predictor);
        let source = Source {
            config: p.clone(),
            stamp,
        };
        out.sources.insert(p.name.clone(), source);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `sluice check-config`: every model file loads (an unsupported
/// operator, a broken file, an unusable input say so).
pub fn check(config: &Config) -> Vec<ConfigError> {
    let plugins = Arc::new(PluginMetrics::default());
    config
        .predictors
        .iter()
        .filter_map(|p| {
            load_model(p, &plugins)
                .err()
                .map(|e| p.error(format!("predictor '{}': {e}", p.name)))
        })
        .collect()
}

pub fn routes(router: Router<Arc<App>>) -> Router<Arc<App>> {
    oip::routes(router.route("/v1/predict", post(v1::predict)))
}

/// The predictor `name`, if the caller's key may use it.
pub(crate) fn find(
    app: &App,
    key: Option<&KeyConfig>,
    name: &str,
) -> Result<Arc<Predictor>, GatewayError> {
    let p = app
        .predictors
        .load()
        .by_name
        .get(name)
        .cloned()
        .ok_or_else(|| {
            GatewayError::new(
                ErrorKind::ModelNotFound,
                format!("no local model '{name}' is served here"),
            )
            .with_param("model")
        })?;
    if let Some(k) = key.filter(|k| !k.allows(name)) {
        return Err(GatewayError::new(
            ErrorKind::Forbidden,
            format!("API key '{}' may not use model '{name}'", k.name),
        )
        .with_param("model"));
    }
    Ok(p)
}

/// One predict request's bookkeeping: its recorder (metrics, access log,
/// audit, span), its id and the rate-limit state for the response headers.
pub(crate) struct Call {
    pub rec: Recorder,
    request_id: HeaderValue,
    limits: crate::proxy::RateInfo,
}

impl Call {
    pub fn start(app: &Arc<App>, route: &'static str, headers: &http::HeaderMap) -> Self {
        let mut rec = Recorder::start(app, route);
        rec.provider = Arc::from("local");
        let request_id = crate::proxy::intake::request_id(headers);
        rec.request_id = Some(request_id.clone());
        if let Some(t) = &app.tracing {
            let mut span = t.server_span(headers, route);
            span.str("sluice.request_id", request_id.to_str().unwrap_or_default());
            rec.span = Some(span);
        }
        Self {
            rec,
            request_id,
            limits: Default::default(),
        }
    }

    /// The model `name` once the caller's key may use it and the rate
    /// limits have room.
    pub async fn admit(
        &mut self,
        app: &Arc<App>,
        headers: &http::HeaderMap,
        name: &str,
    ) -> Result<Arc<Predictor>, GatewayError> {
        let access = app.access.load_full();
        let key = crate::access::authenticate(&access, headers)?;
        self.rec.key = key.map(|k| k.name.clone());
        self.rec.model = Arc::from(name);
        let p = find(app, key, name)?;
        let model = self.rec.model.clone();
        crate::proxy::rate_limit(
            app,
            &access,
            key,
            &model,
            0.0,
            &mut self.rec,
            &mut self.limits,
        )
        .await?;
        if let Some(span) = self.rec.span.as_mut().filter(|s| s.is_recording()) {
            span.rename("predict", &model);
            span.str("gen_ai.operation.name", "predict");
            span.str("gen_ai.request.model", name);
            span.str("gen_ai.system", "sluice.local");
        }
        Ok(p)
    }

    /// The answer (JSON, already serialized), recorded and with the
    /// request's headers; `oip` errors
    /// are the protocol's `{"error": …}`, others OpenAI's.
    pub fn respond(
        mut self,
        result: Result<Vec<u8>, GatewayError>,
        oip: bool,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let mut resp = match result {
            Ok(json) => {
                self.rec.set_status(200);
                self.rec.finish();
                let json_type = http::HeaderValue::from_static("application/json");
                ([(http::header::CONTENT_TYPE, json_type)], json).into_response()
            }
            Err(e) if oip => {
                self.rec.set_error(&e);
                self.rec.finish();
                oip::error(&e)
            }
            Err(e) => self.rec.reply_error(&e),
        };
        let h = resp.headers_mut();
        h.insert(crate::proxy::REQUEST_ID.clone(), self.request_id);
        self.limits.write(h);
        resp
    }
}

/// Runs `rows` examples through `p`'s batcher within the deadline.
pub(crate) async fn infer(
    p: &Predictor,
    rows: usize,
    inputs: Vec<Data>,
    deadline: Instant,
) -> Result<Vec<Shaped>, GatewayError> {
    if rows > p.config.max_batch_size {
        return Err(GatewayError::new(
            ErrorKind::InvalidRequest,
            format!(
                "{rows} examples in one request; model '{}' takes at most {} (max_batch_size)",
                p.name, p.config.max_batch_size
            ),
        ));
    }
    let rx = p
        .submit(rows, inputs, Some(deadline))
        .map_err(|e| refused(p, e))?;
    answer(rx, deadline).await
}

/// Runs one request with its own shapes (a model without a batch
/// dimension), checked against the model first.
pub(crate) async fn infer_alone(
    p: &Predictor,
    inputs: Vec<Shaped>,
    deadline: Instant,
) -> Result<Vec<Shaped>, GatewayError> {
    p.model.check(&inputs).map_err(bad)?;
    let rx = p
        .submit_alone(inputs, Some(deadline))
        .map_err(|e| refused(p, e))?;
    answer(rx, deadline).await
}

fn refused(p: &Predictor, e: SubmitError) -> GatewayError {
    match e {
        SubmitError::QueueFull => GatewayError::new(
            ErrorKind::PredictQueueFull,
            format!(
                "model '{}' has {} requests waiting (queue_depth); try again shortly",
                p.name, p.config.queue_depth
            ),
        ),
        SubmitError::Stopped => GatewayError::new(ErrorKind::Internal, "the model is not running"),
    }
}

async fn answer(
    rx: oneshot::Receiver<Answer>,
    deadline: Instant,
) -> Result<Vec<Shaped>, GatewayError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, rx).await {
        Ok(Ok(Ok(out))) => Ok(out),
        Ok(Ok(Err(e))) if e.starts_with(wasm::REFUSED) => Err(bad(e)),
        Ok(Ok(Err(e))) => Err(GatewayError::new(ErrorKind::Internal, e)),
        Ok(Err(_)) => Err(GatewayError::new(
            ErrorKind::UpstreamTimeout,
            "the request's deadline passed before its batch ran",
        )),
        Err(_) => Err(GatewayError::new(
            ErrorKind::UpstreamTimeout,
            format!("no prediction within {} ms", left.as_millis()),
        )),
    }
}
