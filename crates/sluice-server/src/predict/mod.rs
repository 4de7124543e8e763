//! Local models: loaded at start from `[[predictors]]`, each behind its
//! batcher, served at `POST /v1/predict` and by the Open Inference
//! Protocol ([`oip`]). Keys and their model lists, the request metrics, the
//! access log and audit apply as for chat.

pub mod oip;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use sluice_core::config::{Config, ConfigError};
use sluice_core::{ErrorKind, GatewayError};
use sluice_inference::{BatchConfig, DType, Data, Predictor, SubmitError, TensorSpec};

use crate::app::App;
use crate::proxy::Recorder;

/// How long a predict request may take when the client sets no deadline.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// The loaded models, by name.
#[derive(Default)]
pub struct Predictors {
    pub by_name: HashMap<String, Arc<Predictor>>,
}

/// Loads every `[[predictors]]` model; each failure located at its entry.
pub fn load(
    config: &Config,
    metrics: Arc<crate::metrics::predict::PredictMetrics>,
) -> Result<Predictors, Vec<ConfigError>> {
    let mut by_name = HashMap::new();
    let mut errors = Vec::new();
    for p in &config.predictors {
        match sluice_inference::load(&p.path) {
            Ok(model) => {
                let cfg = BatchConfig {
                    max_batch_size: p.max_batch_size,
                    max_queue_delay: p.max_queue_delay,
                    threads: p.threads,
                    queue_depth: p.queue_depth,
                };
                let predictor = Predictor::start(&p.name, Arc::new(model), cfg, metrics.clone());
                tracing::info!(model = %p.name, path = %p.path.display(), "predictor loaded");
                by_name.insert(p.name.clone(), Arc::new(predictor));
            }
            Err(e) => errors.push(p.error(format!("predictor '{}': {e}", p.name))),
        }
    }
    if errors.is_empty() {
        Ok(Predictors { by_name })
    } else {
        Err(errors)
    }
}

/// `sluice check-config`: every model file loads (an unsupported
/// operator, a broken file, an unusable input shape say so).
pub fn check(config: &Config) -> Vec<ConfigError> {
    config
        .predictors
        .iter()
        .filter_map(|p| {
            sluice_inference::load(&p.path)
                .err()
                .map(|e| p.error(format!("predictor '{}': {e}", p.name)))
        })
        .collect()
}

pub fn routes(router: Router<Arc<App>>) -> Router<Arc<App>> {
    oip::routes(router.route("/v1/predict", post(predict)))
}

/// The predictor `name`, if the caller's key may use it.
pub(crate) fn find(
    app: &App,
    key: Option<&sluice_core::config::KeyConfig>,
    name: &str,
) -> Result<Arc<Predictor>, GatewayError> {
    let p = app.predictors.by_name.get(name).cloned().ok_or_else(|| {
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

/// Runs `rows` examples through `p`'s batcher within the deadline.
pub(crate) async fn infer(
    p: &Predictor,
    rows: usize,
    inputs: Vec<Data>,
    deadline: Instant,
) -> Result<Vec<Data>, GatewayError> {
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
        .map_err(|e| match e {
            SubmitError::QueueFull => GatewayError::new(
                ErrorKind::PredictQueueFull,
                format!(
                    "model '{}' has {} requests waiting (queue_depth); try again shortly",
                    p.name, p.config.queue_depth
                ),
            ),
            SubmitError::Stopped => {
                GatewayError::new(ErrorKind::Internal, "the model is not running")
            }
        })?;
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, rx).await {
        Ok(Ok(Ok(out))) => Ok(out),
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

/// The request's deadline: `x-request-timeout` seconds, or 30 s.
pub(crate) fn deadline(headers: &http::HeaderMap) -> Instant {
    let secs = headers
        .get("x-request-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0);
    Instant::now() + secs.map_or(DEFAULT_DEADLINE, Duration::from_secs_f64)
}

/// JSON numbers (nested arrays flattened) as a tensor of `dtype`.
pub(crate) fn data_of(v: &Value, dtype: DType, what: &str) -> Result<Data, GatewayError> {
    let mut flat = Vec::new();
    flatten(v, &mut flat, 0).map_err(|m| bad(format!("{what}: {m}")))?;
    let not = |i: usize, kind: &str| bad(format!("{what}[{i}] is not {kind}"));
    Ok(match dtype {
        DType::F32 => Data::F32(
            flat.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| not(i, "a number"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::I64 => Data::I64(
            flat.iter()
                .enumerate()
                .map(|(i, x)| x.as_i64().ok_or_else(|| not(i, "an integer")))
                .collect::<Result<_, _>>()?,
        ),
        DType::I32 => Data::I32(
            flat.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_i64()
                        .and_then(|n| i32::try_from(n).ok())
                        .ok_or_else(|| not(i, "a 32-bit integer"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::U8 => Data::U8(
            flat.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_u64()
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or_else(|| not(i, "an integer from 0 to 255"))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, depth: u32) -> Result<(), String> {
    match v {
        Value::Array(items) if depth < 8 => {
            for x in items {
                flatten(x, out, depth + 1)?;
            }
            Ok(())
        }
        Value::Array(_) => Err("arrays nested too deep".into()),
        Value::Number(_) => {
            out.push(v);
            Ok(())
        }
        other => Err(format!("expected numbers, found {other}")),
    }
}

/// A tensor's elements as JSON.
pub(crate) fn json_of(d: &Data) -> Value {
    match d {
        Data::F32(v) => json!(v),
        Data::I64(v) => json!(v),
        Data::I32(v) => json!(v),
        Data::U8(v) => json!(v),
    }
}

/// A JSON request body within the body limits.
pub(crate) async fn read_json(
    app: &App,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<Value, GatewayError> {
    crate::extract::not_a_form(headers)?;
    let (max, timeout) = {
        let snap = app.snapshot.load();
        (
            snap.config.server.max_body_bytes,
            snap.config.server.body_read_timeout,
        )
    };
    let body = crate::proxy::intake::read_body(headers, body, max, timeout).await?;
    serde_json::from_slice(&body)
        .map_err(|e| GatewayError::new(ErrorKind::InvalidJson, format!("malformed JSON: {e}")))
}

pub(crate) fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, message.into())
}

fn shape_text(spec: &TensorSpec) -> String {
    format!("{:?}", spec.shape)
}

/// `POST /v1/predict {"model": "mlp", "data": [0.1, …]}`: one example, for
/// a model with one input.
async fn predict(State(app): State<Arc<App>>, req: Request) -> Response {
    let mut rec = Recorder::start(&app, "/v1/predict");
    rec.provider = Arc::from("local");
    let (parts, body) = req.into_parts();
    match predict_one(&app, &mut rec, &parts.headers, body).await {
        Ok(v) => {
            rec.set_status(200);
            rec.finish();
            axum::Json(v).into_response()
        }
        Err(e) => rec.reply_error(&e),
    }
}

async fn predict_one(
    app: &Arc<App>,
    rec: &mut Recorder,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<Value, GatewayError> {
    let access = app.access.load_full();
    let key = crate::access::authenticate(&access, headers)?;
    rec.key = key.map(|k| k.name.clone());
    let req = read_json(app, headers, body).await?;
    let name = req["model"]
        .as_str()
        .ok_or_else(|| bad("missing required field 'model' (a string)").with_param("model"))?;
    rec.model = Arc::from(name);
    let p = find(app, key, name)?;
    let [input] = p.model.inputs.as_slice() else {
        return Err(bad(format!(
            "model '{name}' has {} inputs: use POST /v2/models/{name}/infer",
            p.model.inputs.len()
        )));
    };
    let data = req
        .get("data")
        .ok_or_else(|| bad("missing required field 'data'").with_param("data"))?;
    let data = data_of(data, input.dtype, "data")?;
    if data.len() != input.per_row() {
        return Err(bad(format!(
            "model '{name}' expects {} values (input '{}', shape {}, {}); received {}",
            input.per_row(),
            input.name,
            shape_text(input),
            input.dtype.oip_name(),
            data.len()
        ))
        .with_param("data"));
    }
    let input_len = data.len();
    let out = infer(&p, 1, vec![data], deadline(headers)).await?;
    let first = out
        .first()
        .ok_or_else(|| GatewayError::new(ErrorKind::Internal, "no output"))?;
    Ok(json!({
        "model": name,
        "prediction": json_of(first),
        "shape": p.model.outputs.first().map(|o| o.shape.clone()).unwrap_or_default(),
        "input_len": input_len,
    }))
}
