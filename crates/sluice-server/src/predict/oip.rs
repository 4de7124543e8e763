//! The Open Inference Protocol (KServe v2; what Triton, KServe and MLServer
//! clients speak), JSON form: health, model metadata and readiness, and
//! `POST /v2/models/{name}/infer` with one or more examples per request.
//! Errors are the protocol's `{"error": "…"}` with the HTTP status.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_core::{ErrorKind, GatewayError};
use sluice_inference::{Data, Shaped, TensorSpec};

use super::{Call, DataJson, Numbers, bad, data_of, deadline, find, infer, infer_alone};
use crate::app::App;
use crate::extract::ApiPath;

pub fn routes(router: Router<Arc<App>>) -> Router<Arc<App>> {
    router
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer_handler))
}

/// The protocol's error body.
pub(crate) fn error(e: &GatewayError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"error": e.message}))).into_response()
}

async fn server_metadata() -> Response {
    Json(json!({"name": "sluice", "version": env!("CARGO_PKG_VERSION"), "extensions": []}))
        .into_response()
}

async fn live() -> Response {
    Json(json!({"live": true})).into_response()
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let ok = app.ready.load(std::sync::atomic::Ordering::Acquire);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ok}))).into_response()
}

fn caller<'a>(
    access: &'a crate::access::Access,
    headers: &http::HeaderMap,
) -> Result<Option<&'a sluice_core::config::KeyConfig>, GatewayError> {
    crate::access::authenticate(access, headers)
}

fn tensor_json(t: &TensorSpec) -> Value {
    json!({"name": t.name, "datatype": t.dtype.oip_name(), "shape": t.oip_shape()})
}

async fn metadata(
    State(app): State<Arc<App>>,
    ApiPath(name): ApiPath<String>,
    headers: http::HeaderMap,
) -> Response {
    let access = app.access.load_full();
    let p = match caller(&access, &headers).and_then(|k| find(&app, k, &name)) {
        Ok(p) => p,
        Err(e) => return error(&e),
    };
    Json(json!({
        "name": name,
        "versions": ["1"],
        "platform": "onnx_onnxv1",
        "inputs": p.model.inputs.iter().map(tensor_json).collect::<Vec<_>>(),
        "outputs": p.model.outputs.iter().map(tensor_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn model_ready(
    State(app): State<Arc<App>>,
    ApiPath(name): ApiPath<String>,
    headers: http::HeaderMap,
) -> Response {
    let access = app.access.load_full();
    match caller(&access, &headers).and_then(|k| find(&app, k, &name)) {
        Ok(_) => Json(json!({"name": name, "ready": true})).into_response(),
        Err(e) => error(&e),
    }
}

async fn infer_handler(
    State(app): State<Arc<App>>,
    ApiPath(name): ApiPath<String>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let mut call = Call::start(&app, "/v2/models/{name}/infer", &parts.headers);
    let result = run(&app, &mut call, &name, &parts.headers, body).await;
    call.respond(result, true)
}

/// `POST /v2/models/{name}/infer`'s body; tensors' numbers are read
/// straight into flat vectors.
#[derive(Deserialize)]
struct InferBody {
    #[serde(default)]
    id: Option<Value>,
    inputs: Vec<InTensor>,
    #[serde(default)]
    outputs: Option<Vec<Wanted>>,
}

#[derive(Deserialize)]
struct InTensor {
    #[serde(default)]
    name: String,
    #[serde(default)]
    shape: Vec<usize>,
    #[serde(default)]
    datatype: String,
    data: Numbers,
}

#[derive(Deserialize)]
struct Wanted {
    name: String,
}

#[derive(Serialize)]
struct Answer<'a> {
    model_name: &'a str,
    model_version: &'static str,
    outputs: Vec<OutTensor<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct OutTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    data: DataJson<'a>,
}

async fn run(
    app: &Arc<App>,
    call: &mut Call,
    name: &str,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<Vec<u8>, GatewayError> {
    let p = call.admit(app, headers, name).await?;
    let req: InferBody = super::read_json(app, headers, body).await?;
    let out = if p.model.batched {
        let (rows, inputs) = inputs_for(&p.model.inputs, &req.inputs)?;
        infer(&p, rows, inputs, deadline(headers)).await?
    } else {
        let inputs = shaped_inputs(&p.model.inputs, &req.inputs)?;
        infer_alone(&p, inputs, deadline(headers)).await?
    };
    let wanted = |spec: &TensorSpec| {
        req.outputs
            .as_ref()
            .is_none_or(|w| w.iter().any(|w| w.name == spec.name))
    };
    let outputs = p
        .model
        .outputs
        .iter()
        .zip(&out)
        .filter(|(spec, _)| wanted(spec))
        .map(|(spec, t)| OutTensor {
            name: &spec.name,
            datatype: t.data.dtype().oip_name(),
            shape: &t.shape,
            data: DataJson(&t.data),
        })
        .collect();
    let answer = Answer {
        model_name: name,
        model_version: "1",
        outputs,
        id: req.id.as_ref(),
    };
    serde_json::to_vec(&answer).map_err(|e| GatewayError::new(ErrorKind::Internal, e.to_string()))
}

/// The request's tensor for `spec`: by name, or the only one for a
/// model with one input.
fn given_for<'a>(
    specs: &[TensorSpec],
    i: usize,
    given: &'a [InTensor],
) -> Result<&'a InTensor, GatewayError> {
    let spec = &specs[i];
    given
        .iter()
        .find(|t| t.name == spec.name)
        .or_else(|| (specs.len() == 1 && given.len() == 1).then(|| &given[0]))
        .ok_or_else(|| bad(format!("missing input '{}'", spec.name)))
}

fn datatype_of(spec: &TensorSpec, t: &InTensor) -> Result<(), GatewayError> {
    if t.datatype != spec.dtype.oip_name() {
        return Err(bad(format!(
            "input '{}': datatype {} expected, received '{}'",
            spec.name,
            spec.dtype.oip_name(),
            t.datatype
        )));
    }
    Ok(())
}

/// For a model without a batch dimension: every input with the shape the
/// request gives (checked against the model before it runs).
fn shaped_inputs(specs: &[TensorSpec], given: &[InTensor]) -> Result<Vec<Shaped>, GatewayError> {
    (0..specs.len())
        .map(|i| {
            let spec = &specs[i];
            let t = given_for(specs, i, given)?;
            datatype_of(spec, t)?;
            let what = format!("input '{}' data", spec.name);
            let data = data_of(&t.data, spec.dtype, &what)?;
            Ok(Shaped {
                shape: t.shape.clone(),
                data,
            })
        })
        .collect()
}

/// The request's tensors in the model's input order, checked against the
/// model (name, datatype, shape, element count); and the examples in them.
fn inputs_for(
    specs: &[TensorSpec],
    given: &[InTensor],
) -> Result<(usize, Vec<Data>), GatewayError> {
    let mut rows = None;
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let t = given_for(specs, i, given)?;
        datatype_of(spec, t)?;
        let shape = &t.shape;
        let expected_rest = spec.shape();
        // [rows, …] — or one example given without its batch dimension.
        let n = match shape.split_first() {
            Some((n, rest)) if rest == expected_rest.as_slice() => *n,
            _ if *shape == expected_rest => 1,
            _ => {
                return Err(bad(format!(
                    "input '{}': shape [batch, {}] expected, received {shape:?}",
                    spec.name,
                    expected_rest
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        let data = data_of(&t.data, spec.dtype, &format!("input '{}' data", spec.name))?;
        if data.len() != n * spec.per_row() {
            return Err(bad(format!(
                "input '{}': shape {shape:?} holds {} values, received {}",
                spec.name,
                n * spec.per_row(),
                data.len()
            )));
        }
        if *rows.get_or_insert(n) != n {
            return Err(bad("inputs disagree on the number of examples"));
        }
        out.push(data);
    }
    let rows = rows.unwrap_or(0);
    if rows == 0 {
        return Err(bad("no examples in the request"));
    }
    Ok((rows, out))
}
