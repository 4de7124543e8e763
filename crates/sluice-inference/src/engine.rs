//! ONNX models on the CPU with tract (pure Rust, compiled in): loaded once
//! with the shapes the file declares (dimensions it leaves open become
//! symbols), optimized, and run on whole batches — or, for a model whose
//! inputs do not share a leading batch dimension, one request at a time
//! with the shapes the request gives.

use std::path::Path;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

pub use crate::data::{DType, Data, Shaped};

/// One dimension of a model's input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The batch dimension: examples of a batched model.
    Batch,
    /// A size the model fixes.
    Fixed(usize),
    /// A size the request chooses (inputs sharing a name share the size).
    Open(String),
}

/// A model input or output: its name, element type and dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl TensorSpec {
    /// The shape of one example: without the batch dimension, open sizes
    /// as 0.
    pub fn shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .filter(|d| **d != Dim::Batch)
            .map(|d| match d {
                Dim::Fixed(n) => *n,
                _ => 0,
            })
            .collect()
    }

    /// Elements in one example (0 when a size is open).
    pub fn per_row(&self) -> usize {
        self.shape().iter().product()
    }

    /// Every size but the batch is fixed.
    pub fn is_fixed(&self) -> bool {
        self.dims.iter().all(|d| !matches!(d, Dim::Open(_)))
    }

    /// The Open Inference Protocol's shape: -1 for sizes the request picks.
    pub fn oip_shape(&self) -> Vec<i64> {
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n as i64,
                _ => -1,
            })
            .collect()
    }
}

type Plan = std::sync::Arc<TypedSimplePlan>;

/// Another engine than tract (a WASM plugin, say), plugged in by the
/// server: it runs the inputs with the shapes given, the batch first for a
/// batched model.
pub trait Engine: Send + Sync {
    fn run(&self, inputs: &[(Vec<usize>, &Data)]) -> Result<Vec<Shaped>, String>;
}

enum Runner {
    Tract(Plan),
    Custom(Box<dyn Engine>),
}

/// A loaded model, ready to run.
pub struct Model {
    runner: Runner,
    /// Every input and output leads with one batch dimension, so requests
    /// can be merged into one run.
    pub batched: bool,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("batched", &self.batched)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// Loads an ONNX model. The message of an error says what is wrong: a
/// missing or unreadable file, an operator the engine cannot run, an input
/// of a type or shape that cannot be served.
pub fn load(path: &Path) -> Result<Model, String> {
    let mut model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|e| format!("cannot read the ONNX model: {e:#}"))?;
    let mut declared = Vec::new();
    for i in 0..model.inputs.len() {
        let (spec, dt, dims) = declared_input(&mut model, i)?;
        model
            .set_input_fact(i, InferenceFact::dt_shape(dt, dims.clone()))
            .map_err(|e| format!("{e:#}"))?;
        declared.push((spec, dims));
    }
    let batch = shared_batch(&declared);
    let typed = model
        .into_optimized()
        .map_err(|e| format!("the engine cannot run this model: {e:#}"))?;
    let mut outputs = Vec::new();
    for (i, outlet) in typed.outputs.iter().enumerate() {
        let fact = typed.output_fact(i).map_err(|e| format!("{e:#}"))?;
        // The graph's output name (the tensor's), not its node's.
        let name = typed
            .outlet_label(*outlet)
            .map_or_else(|| typed.node(outlet.node).name.clone(), str::to_owned);
        let dtype = DType::of(fact.datum_type).unwrap_or(DType::F32);
        let dims = fact.shape.iter().map(dim_of).collect();
        outputs.push((TensorSpec { name, dtype, dims }, fact.shape.to_tvec()));
    }
    // Batched only if every output leads with the batch too: otherwise a
    // merged run could not be split back.
    let batch = batch.filter(|b| {
        outputs
            .iter()
            .all(|(_, dims)| dims.first() == Some(&b.to_dim()))
    });
    let mark = |mut spec: TensorSpec| {
        if batch.is_some() {
            spec.dims[0] = Dim::Batch;
        }
        spec
    };
    let inputs = declared.into_iter().map(|(s, _)| mark(s)).collect();
    let outputs = outputs.into_iter().map(|(s, _)| mark(s)).collect();
    let plan = typed
        .into_runnable()
        .map_err(|e| format!("the engine cannot run this model: {e:#}"))?;
    Ok(Model {
        runner: Runner::Tract(plan),
        batched: batch.is_some(),
        inputs,
        outputs,
    })
}

/// Input `i` as the file declares it; a size it leaves unknown becomes a
/// symbol of its own.
fn declared_input(
    model: &mut InferenceModel,
    i: usize,
) -> Result<(TensorSpec, DatumType, TVec<TDim>), String> {
    let fact = model.input_fact(i).map_err(|e| format!("{e:#}"))?.clone();
    let name = model.node(model.inputs[i].node).name.clone();
    let dt = fact
        .datum_type
        .concretize()
        .ok_or_else(|| format!("input '{name}' has no known element type"))?;
    let dtype = DType::of(dt).ok_or_else(|| {
        format!("input '{name}' is {dt:?}: only f32, i64, i32 and u8 inputs are served")
    })?;
    if fact.shape.is_open() {
        return Err(format!("input '{name}' has no known rank"));
    }
    let dims: TVec<TDim> = fact
        .shape
        .dims()
        .enumerate()
        .map(|(k, d)| {
            d.concretize()
                .unwrap_or_else(|| model.symbols.sym(&format!("{name}_{k}")).to_dim())
        })
        .collect();
    let spec = TensorSpec {
        name,
        dtype,
        dims: dims.iter().map(dim_of).collect(),
    };
    Ok((spec, dt, dims))
}

/// The symbol every input leads with, when all other sizes are fixed.
fn shared_batch(inputs: &[(TensorSpec, TVec<TDim>)]) -> Option<Symbol> {
    let mut batch: Option<Symbol> = None;
    for (_, dims) in inputs {
        let (TDim::Sym(s), rest) = dims.split_first()? else {
            return None;
        };
        if batch.get_or_insert_with(|| s.clone()) != s || rest.iter().any(|d| d.to_usize().is_err())
        {
            return None;
        }
    }
    batch
}

fn dim_of(d: &TDim) -> Dim {
    match d.to_usize() {
        Ok(n) => Dim::Fixed(n),
        Err(_) => Dim::Open(d.to_string()),
    }
}

impl Model {
    /// A model run by another engine, with the inputs and outputs it
    /// declares.
    pub fn custom(
        engine: Box<dyn Engine>,
        batched: bool,
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
    ) -> Self {
        Self {
            runner: Runner::Custom(engine),
            batched,
            inputs,
            outputs,
        }
    }

    /// Runs `rows` examples at once on a batched model: each input holds
    /// `rows` examples, flat; each output likewise.
    pub fn run(&self, rows: usize, inputs: &[Data]) -> Result<Vec<Shaped>, String> {
        if let Runner::Custom(engine) = &self.runner {
            let shaped: Vec<(Vec<usize>, &Data)> = inputs
                .iter()
                .zip(&self.inputs)
                .map(|(d, spec)| {
                    let mut shape = vec![rows];
                    shape.extend(spec.shape());
                    (shape, d)
                })
                .collect();
            let out = engine.run(&shaped)?;
            // Split back by rows: every output must lead with them.
            if let Some(o) = out.iter().find(|o| o.shape.first() != Some(&rows)) {
                return Err(format!(
                    "the engine answered shape {:?} for a batch of {rows}",
                    o.shape
                ));
            }
            return Ok(out);
        }
        let tensors: TVec<TValue> = inputs
            .iter()
            .zip(&self.inputs)
            .map(|(d, spec)| {
                let mut shape = Vec::with_capacity(spec.dims.len());
                shape.push(rows);
                shape.extend(spec.shape());
                d.tensor(&shape).map(IntoTValue::into_tvalue)
            })
            .collect::<TractResult<_>>()
            .map_err(|e| format!("{e:#}"))?;
        self.execute(tensors)
    }

    /// Runs one request with the shapes it gives (checked with
    /// [`Model::check`]).
    pub fn run_shaped(&self, inputs: &[Shaped]) -> Result<Vec<Shaped>, String> {
        if let Runner::Custom(engine) = &self.runner {
            let shaped: Vec<(Vec<usize>, &Data)> =
                inputs.iter().map(|t| (t.shape.clone(), &t.data)).collect();
            return engine.run(&shaped);
        }
        let tensors: TVec<TValue> = inputs
            .iter()
            .map(|t| t.data.tensor(&t.shape).map(IntoTValue::into_tvalue))
            .collect::<TractResult<_>>()
            .map_err(|e| format!("{e:#}"))?;
        self.execute(tensors)
    }

    fn execute(&self, tensors: TVec<TValue>) -> Result<Vec<Shaped>, String> {
        let Runner::Tract(plan) = &self.runner else {
            return Err("not a tract model".into());
        };
        let out = plan
            .run(tensors)
            .map_err(|e| format!("inference failed: {e:#}"))?;
        out.iter()
            .map(|t| Shaped::of(t))
            .collect::<TractResult<_>>()
            .map_err(|e| format!("{e:#}"))
    }

    /// Whether `inputs` (in the model's order) fit it: element types,
    /// ranks, fixed sizes, open sizes the same wherever they share a name,
    /// and as many elements as each shape holds.
    pub fn check(&self, inputs: &[Shaped]) -> Result<(), String> {
        let mut open: Vec<(&str, usize)> = Vec::new();
        for (spec, t) in self.inputs.iter().zip(inputs) {
            let name = &spec.name;
            if t.data.dtype() != spec.dtype {
                return Err(format!(
                    "input '{name}': datatype {} expected, received {}",
                    spec.dtype.oip_name(),
                    t.data.dtype().oip_name()
                ));
            }
            let fits = t.shape.len() == spec.dims.len()
                && spec.dims.iter().zip(&t.shape).all(|(d, &n)| match d {
                    Dim::Fixed(f) => *f == n,
                    Dim::Batch => true,
                    Dim::Open(sym) => match open.iter().find(|(s, _)| *s == sym.as_str()) {
                        Some((_, m)) => *m == n,
                        None => {
                            open.push((sym.as_str(), n));
                            true
                        }
                    },
                });
            if !fits {
                return Err(format!(
                    "input '{name}': shape {:?} expected (-1: any size, the same for the same name), received {:?}",
                    spec.oip_shape(),
                    t.shape
                ));
            }
            let holds: usize = t.shape.iter().product();
            if holds != t.data.len() {
                return Err(format!(
                    "input '{name}': shape {:?} holds {holds} values, received {}",
                    t.shape,
                    t.data.len()
                ));
            }
        }
        Ok(())
    }
}
