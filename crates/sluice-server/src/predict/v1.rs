//! `POST /v1/predict {"model": "mlp", "data": [0.1, …]}`: one example, for
//! a model with one input — flat, reshaped to the input's shape without
//! its batch dimension (or, for a model without one, to its whole fixed
//! shape).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use sluice_core::{ErrorKind, GatewayError};
use sluice_inference::{Shaped, TensorSpec};

use super::{Call, DataJson, Numbers, bad, data_of, deadline, infer, infer_alone, read_json};
use crate::app::App;

pub(crate) async fn predict(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut call = Call::start(&app, "/v1/predict", &parts.headers);
    let result = predict_one(&app, &mut call, &parts.headers, body).await;
    call.respond(result, false)
}

#[derive(Deserialize)]
struct Body {
    /// Any JSON, so that a model that is not a string is named as such.
    model: Option<serde_json::Value>,
    data: Option<Numbers>,
}

#[derive(Serialize)]
struct Answer<'a> {
    model: &'a str,
    prediction: DataJson<'a>,
    shape: &'a [usize],
    input_len: usize,
}

fn shape_text(spec: &TensorSpec) -> String {
    format!("{:?}", spec.shape())
}

async fn predict_one(
    app: &Arc<App>,
    call: &mut Call,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<Vec<u8>, GatewayError> {
    // The key first: an unauthenticated caller learns nothing of the body.
    crate::access::authenticate(&app.access.load_full(), headers)?;
    let req: Body = read_json(app, headers, body).await?;
    let name = req
        .model
        .as_ref()
        .and_then(|m| m.as_str())
        .ok_or_else(|| bad("missing required field 'model' (a string)").with_param("model"))?;
    let p = call.admit(app, headers, name).await?;
    let [input] = p.model.inputs.as_slice() else {
        return Err(bad(format!(
            "model '{name}' has {} inputs: use POST /v2/models/{name}/infer",
            p.model.inputs.len()
        )));
    };
    if !input.is_fixed() {
        return Err(bad(format!(
            "model '{name}' takes input '{}' of shape {:?} (-1: any size): use POST \
             /v2/models/{name}/infer with the shape",
            input.name,
            input.oip_shape()
        )));
    }
    let data = req
        .data
        .as_ref()
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
    let out = if p.model.batched {
        infer(&p, 1, vec![data], deadline(headers)).await?
    } else {
        let shape = input.shape();
        infer_alone(&p, vec![Shaped { shape, data }], deadline(headers)).await?
    };
    let first = out
        .first()
        .ok_or_else(|| GatewayError::new(ErrorKind::Internal, "no output"))?;
    // The example's shape: without the batch dimension of a batched model.
    let shape = if p.model.batched {
        first.shape.get(1..).unwrap_or_default()
    } else {
        &first.shape
    };
    let answer = Answer {
        model: name,
        prediction: DataJson(&first.data),
        shape,
        input_len,
    };
    serde_json::to_vec(&answer).map_err(|e| GatewayError::new(ErrorKind::Internal, e.to_string()))
}
