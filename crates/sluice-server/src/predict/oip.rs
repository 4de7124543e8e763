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
use serde_json::{Value, json};
use sluice_core::GatewayError;
use sluice_inference::{Data, Shaped, TensorSpec};

use super::{Call, bad, data_of, deadline, find, infer, infer_alone, json_of};
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

async fn run(
    app: &Arc<App>,
    call: &mut Call,
    name: &str,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<Value, GatewayError> {
    let p = call.admit(app, headers, name).await?;
    let req = super::read_json(app, headers, body).await?;
    let given = req["inputs"]
        .as_array()
        .ok_or_else(|| bad("'inputs' must be an array of tensors"))?;
    let out = if p.model.batched {
        let (rows, inputs) = inputs_for(&p.model.inputs, given)?;
        infer(&p, rows, inputs, deadline(headers)).await?
    } else {
        let inputs = shaped_inputs(&p.model.inputs, given)?;
        infer_alone(&p, inputs, deadline(headers)).await?
    };
    let wanted: Option<Vec<&str>> = req["outputs"]
        .as_array()
        .map(|o| o.iter().filter_map(|x| x["name"].as_str()).collect());
    let outputs: Vec<Value> = p
        .model
        .outputs
        .iter()
        .zip(&out)
        .filter(|(spec, _)| {
            wanted
                .as_ref()
                .is_none_or(|w| w.contains(&spec.name.as_str()))
        })
        .map(|(spec, t)| {
            json!({
                "name": spec.name,
                "datatype": t.data.dtype().oip_name(),
                "shape": t.shape,
                "data": json_of(&t.data),
            })
        })
        .collect();
    let mut answer = json!({"model_name": name, "model_version": "1", "outputs": outputs});
    if let Some(id) = req.get("id") {
        answer["id"] = id.clone();
    }
    Ok(answer)
}

/// The request's tensor for `spec`: by name, or the only one for a
/// model with one input.
fn given_for<'a>(
    specs: &[TensorSpec],
    i: usize,
    given: &'a [Value],
) -> Result<&'a Value, GatewayError> {
    let spec = &specs[i];
    given
        .iter()
        .find(|t| t["name"] == spec.name.as_str())
        .or_else(|| (specs.len() == 1 && given.len() == 1).then(|| &given[0]))
        .ok_or_else(|| bad(format!("missing input '{}'", spec.name)))
}

fn datatype_of(spec: &TensorSpec, t: &Value) -> Result<(), GatewayError> {
    let dtype = t["datatype"].as_str().unwrap_or_default();
    if dtype != spec.dtype.oip_name() {
        return Err(bad(format!(
            "input '{}': datatype {} expected, received '{dtype}'",
            spec.name,
            spec.dtype.oip_name()
        )));
    }
    Ok(())
}

fn shape_of(spec: &TensorSpec, t: &Value) -> Result<Vec<usize>, GatewayError> {
    t["shape"]
        .as_array()
        .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
        .ok_or_else(|| {
            bad(format!(
                "input '{}': 'shape' must be an array of sizes",
                spec.name
            ))
        })
}

/// For a model without a batch dimension: every input with the shape the
/// request gives (checked against the model before it runs).
fn shaped_inputs(specs: &[TensorSpec], given: &[Value]) -> Result<Vec<Shaped>, GatewayError> {
    (0..specs.len())
        .map(|i| {
            let spec = &specs[i];
            let t = given_for(specs, i, given)?;
            datatype_of(spec, t)?;
            let shape = shape_of(spec, t)?;
            let data = data_of(
                &t["data"],
                spec.dtype,
                &format!("input '{}' data", spec.name),
            )?;
            Ok(Shaped { shape, data })
        })
        .collect()
}

/// The request's tensors in the model's input order, checked against the
/// model (name, datatype, shape, element count); and the examples in them.
fn inputs_for(specs: &[TensorSpec], given: &[Value]) -> Result<(usize, Vec<Data>), GatewayError> {
    let mut rows = None;
    let mut out = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let t = given_for(specs, i, given)?;
        datatype_of(spec, t)?;
        let shape = shape_of(spec, t)?;
        let expected_rest = spec.shape();
        // [rows, …] — or one example given without its batch dimension.
        let n = match shape.split_first() {
            Some((n, rest)) if rest == expected_rest.as_slice() => *n,
            _ if shape == expected_rest => 1,
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
        let data = data_of(
            &t["data"],
            spec.dtype,
            &format!("input '{}' data", spec.name),
        )?;
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
