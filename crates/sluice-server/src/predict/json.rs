//! The JSON side of predict requests: bodies within the limits, numbers
//! as tensors and back, the deadline.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_core::{ErrorKind, GatewayError};
use sluice_inference::{DType, Data};

use crate::app::App;

/// How long a predict request may take when the client sets no deadline.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

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
