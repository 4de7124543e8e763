//! ONNX models on the CPU with tract (pure Rust, compiled in): loaded
//! once with a symbolic batch dimension on every input, optimized, and run
//! on whole batches.

use std::path::Path;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

/// The element types the endpoints take and give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    I64,
    I32,
    U8,
}

impl DType {
    /// The Open Inference Protocol's name (`FP32`, `INT64`, …).
    pub fn oip_name(self) -> &'static str {
        match self {
            Self::F32 => "FP32",
            Self::I64 => "INT64",
            Self::I32 => "INT32",
            Self::U8 => "UINT8",
        }
    }

    pub fn from_oip(name: &str) -> Option<Self> {
        Some(match name {
            "FP32" => Self::F32,
            "INT64" => Self::I64,
            "INT32" => Self::I32,
            "UINT8" => Self::U8,
            _ => return None,
        })
    }

    fn of(dt: DatumType) -> Option<Self> {
        Some(match dt {
            DatumType::F32 => Self::F32,
            DatumType::I64 => Self::I64,
            DatumType::I32 => Self::I32,
            DatumType::U8 => Self::U8,
            _ => return None,
        })
    }
}

/// A model input or output: its name, element type and shape without the
/// batch dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Elements in one example.
    pub fn per_row(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A tensor's elements, flat and row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::I64(_) => DType::I64,
            Self::I32(_) => DType::I32,
            Self::U8(_) => DType::U8,
        }
    }

    /// An empty tensor of `dtype` with room for `n` elements.
    pub fn with_capacity(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F32 => Self::F32(Vec::with_capacity(n)),
            DType::I64 => Self::I64(Vec::with_capacity(n)),
            DType::I32 => Self::I32(Vec::with_capacity(n)),
            DType::U8 => Self::U8(Vec::with_capacity(n)),
        }
    }

    /// Appends `other` (of the same type; a different one is ignored).
    pub fn extend(&mut self, other: &Data) {
        match (self, other) {
            (Self::F32(a), Self::F32(b)) => a.extend_from_slice(b),
            (Self::I64(a), Self::I64(b)) => a.extend_from_slice(b),
            (Self::I32(a), Self::I32(b)) => a.extend_from_slice(b),
            (Self::U8(a), Self::U8(b)) => a.extend_from_slice(b),
            _ => {}
        }
    }

    /// Elements `range` as their own tensor.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Data {
        match self {
            Self::F32(v) => Self::F32(v[range].to_vec()),
            Self::I64(v) => Self::I64(v[range].to_vec()),
            Self::I32(v) => Self::I32(v[range].to_vec()),
            Self::U8(v) => Self::U8(v[range].to_vec()),
        }
    }

    fn tensor(&self, shape: &[usize]) -> TractResult<Tensor> {
        match self {
            Self::F32(v) => Tensor::from_shape(shape, v),
            Self::I64(v) => Tensor::from_shape(shape, v),
            Self::I32(v) => Tensor::from_shape(shape, v),
            Self::U8(v) => Tensor::from_shape(shape, v),
        }
    }

    fn of(t: &Tensor) -> TractResult<Data> {
        let v = t.try_as_plain_ram()?;
        Ok(match t.datum_type() {
            DatumType::I64 => Self::I64(v.as_slice::<i64>()?.to_vec()),
            DatumType::I32 => Self::I32(v.as_slice::<i32>()?.to_vec()),
            DatumType::U8 => Self::U8(v.as_slice::<u8>()?.to_vec()),
            DatumType::F32 => Self::F32(v.as_slice::<f32>()?.to_vec()),
            _ => {
                let f = t.cast_to::<f32>()?;
                Self::F32(f.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
            }
        })
    }
}

type Plan = std::sync::Arc<TypedSimplePlan>;

/// A loaded model, ready to run batches.
pub struct Model {
    plan: Plan,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// Loads an ONNX model. The message of an error says what is wrong: a
/// missing or unreadable file, an operator the engine cannot run, an input
/// whose shape is not known past its batch dimension.
pub fn load(path: &Path) -> Result<Model, String> {
    let mut model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| format!("cannot read the ONNX model: {e:#}"))?;
    let batch = model.symbols.sym("N");
    let mut inputs = Vec::new();
    for i in 0..model.inputs.len() {
        let fact = model.input_fact(i).map_err(|e| format!("{e:#}"))?.clone();
        let name = model.node(model.inputs[i].node).name.clone();
        let dt = fact
            .datum_type
            .concretize()
            .ok_or_else(|| format!("input '{name}' has no known element type"))?;
        let dtype = DType::of(dt).ok_or_else(|| {
            format!("input '{name}' is {dt:?}: only f32, i64, i32 and u8 inputs are served")
        })?;
        let dims: Vec<TDim> = fact
            .shape
            .dims()
            .map(|d| d.concretize())
            .collect::<Option<_>>()
            .ok_or_else(|| format!("input '{name}' has no known shape"))?;
        let rest: Vec<usize> = dims
            .iter()
            .skip(1)
            .map(|d| d.to_usize().ok())
            .collect::<Option<_>>()
            .filter(|_| !dims.is_empty())
            .ok_or_else(|| format!("input '{name}' must be [batch, fixed dimensions…]"))?;
        let mut shape: TVec<TDim> = tvec![batch.to_dim()];
        shape.extend(rest.iter().map(|&d| d.to_dim()));
        model
            .set_input_fact(i, InferenceFact::dt_shape(dt, shape))
            .map_err(|e| format!("{e:#}"))?;
        inputs.push(TensorSpec {
            name,
            dtype,
            shape: rest,
        });
    }
    let typed = model
        .into_optimized()
        .map_err(|e| format!("the engine cannot run this model: {e:#}"))?;
    let mut outputs = Vec::new();
    for (i, outlet) in typed.outputs.iter().enumerate() {
        let fact = typed.output_fact(i).map_err(|e| format!("{e:#}"))?;
        let name = typed.node(outlet.node).name.clone();
        let dtype = DType::of(fact.datum_type).unwrap_or(DType::F32);
        let shape = fact
            .shape
            .iter()
            .skip(1)
            .map(|d| d.to_usize().unwrap_or(0))
            .collect();
        outputs.push(TensorSpec { name, dtype, shape });
    }
    let plan = typed
        .into_runnable()
        .map_err(|e| format!("the engine cannot run this model: {e:#}"))?;
    Ok(Model {
        plan,
        inputs,
        outputs,
    })
}

impl Model {
    /// Runs `rows` examples at once: each input holds `rows` examples,
    /// flat; each output likewise.
    pub fn run(&self, rows: usize, inputs: &[Data]) -> Result<Vec<Data>, String> {
        let tensors: TVec<TValue> = inputs
            .iter()
            .zip(&self.inputs)
            .map(|(d, spec)| {
                let mut shape = Vec::with_capacity(spec.shape.len() + 1);
                shape.push(rows);
                shape.extend_from_slice(&spec.shape);
                d.tensor(&shape).map(IntoTValue::into_tvalue)
            })
            .collect::<TractResult<_>>()
            .map_err(|e| format!("{e:#}"))?;
        let out = self
            .plan
            .run(tensors)
            .map_err(|e| format!("inference failed: {e:#}"))?;
        out.iter()
            .map(|t| Data::of(t))
            .collect::<TractResult<_>>()
            .map_err(|e| format!("{e:#}"))
    }
}
