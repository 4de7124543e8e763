//! The JSON side of predict requests: bodies within the limits, numbers
//! as tensors and back, the deadline.

use std::time::{Duration, Instant};

use serde::de::{DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
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

/// One JSON number as read.
#[derive(Clone, Copy, Debug)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

/// JSON numbers, nested arrays flattened, read straight from the body (no
/// JSON tree is built: a large tensor costs one element per number).
#[derive(Debug, Default)]
pub(crate) struct Numbers(Vec<Num>);

/// Appends the numbers of one JSON value (a number or nested arrays of
/// them) to `out`.
struct Flatten<'a> {
    out: &'a mut Vec<Num>,
    depth: u32,
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers (or arrays of numbers)")
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.out.push(Num::I(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.out.push(Num::U(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.out.push(Num::F(v));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.depth >= 8 {
            return Err(serde::de::Error::custom("arrays nested too deep"));
        }
        if let Some(n) = seq.size_hint() {
            self.out.reserve(n);
        }
        let depth = self.depth + 1;
        while seq
            .next_element_seed(Flatten {
                out: &mut *self.out,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Deserialize<'de> for Numbers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        Flatten {
            out: &mut out,
            depth: 0,
        }
        .deserialize(d)?;
        Ok(Numbers(out))
    }
}

/// The numbers as a tensor of `dtype`; one that does not fit is named.
pub(crate) fn data_of(nums: &Numbers, dtype: DType, what: &str) -> Result<Data, GatewayError> {
    let not = |i: usize, kind: &str| bad(format!("{what}[{i}] is not {kind}"));
    let int = |i: usize, n: &Num| {
        match *n {
            Num::I(v) => Some(v),
            Num::U(v) => i64::try_from(v).ok(),
            Num::F(_) => None,
        }
        .ok_or(i)
    };
    let nums = &nums.0;
    Ok(match dtype {
        DType::F32 => Data::F32(
            nums.iter()
                .map(|n| match *n {
                    Num::I(v) => v as f32,
                    Num::U(v) => v as f32,
                    Num::F(v) => v as f32,
                })
                .collect(),
        ),
        DType::I64 => Data::I64(
            nums.iter()
                .enumerate()
                .map(|(i, n)| int(i, n).map_err(|i| not(i, "an integer")))
                .collect::<Result<_, _>>()?,
        ),
        DType::I32 => Data::I32(
            nums.iter()
                .enumerate()
                .map(|(i, n)| {
                    int(i, n)
                        .ok()
                        .and_then(|v| i32::try_from(v).ok())
                        .ok_or_else(|| not(i, "a 32-bit integer"))
                })
                .collect::<Result<_, _>>()?,
        ),
        DType::U8 => Data::U8(
            nums.iter()
                .enumerate()
                .map(|(i, n)| {
                    int(i, n)
                        .ok()
                        .and_then(|v| u8::try_from(v).ok())
                        .ok_or_else(|| not(i, "an integer from 0 to 255"))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A tensor's elements, serialized as a JSON array (f32 in its shortest
/// form) without building a JSON value per element.
pub(crate) struct DataJson<'a>(pub &'a Data);

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Data::F32(v) => s.collect_seq(v),
            Data::I64(v) => s.collect_seq(v),
            Data::I32(v) => s.collect_seq(v),
            Data::U8(v) => s.collect_seq(v),
        }
    }
}

/// A JSON request body within the body limits, read into `T`; a body
/// that does not fit `T` is a 400 saying why.
pub(crate) async fn read_json<T: DeserializeOwned>(
    app: &App,
    headers: &http::HeaderMap,
    body: axum::body::Body,
) -> Result<T, GatewayError> {
    crate::extract::not_a_form(headers)?;
    let (max, timeout) = {
        let snap = app.snapshot.load();
        (
            snap.config.server.max_body_bytes,
            snap.config.server.body_read_timeout,
        )
    };
    let body = crate::proxy::intake::read_body(headers, body, max, timeout).await?;
    serde_json::from_slice(&body).map_err(|e| {
        let kind = if e.is_data() {
            ErrorKind::InvalidRequest
        } else {
            ErrorKind::InvalidJson
        };
        GatewayError::new(kind, format!("malformed request body: {e}"))
    })
}

pub(crate) fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::InvalidRequest, message.into())
}
