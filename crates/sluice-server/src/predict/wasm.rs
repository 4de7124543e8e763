//! `[[predictors]] engine = "wasm"`: a module behind the TensorView ABI,
//! run by `sluice-wasm` and plugged into the batcher as an engine. One
//! input (`input`, the configured dtype and shape) and one output
//! (`output`, whatever the module answers).

use std::sync::Arc;

use sluice_core::config::{PredictorConfig, WasmPredictor};
use sluice_inference::{DType, Data, Dim, Engine, Model, Shaped, TensorSpec};
use sluice_wasm::inference::{Inference, Tensor};
use sluice_wasm::{FailKind, Limits};

use crate::metrics::plugins::PluginMetrics;

/// Marks an engine error that is the input's fault (the module's own
/// error code): answered 400, not 500.
pub(crate) const REFUSED: &str = "the model refused the input: ";

struct WasmEngine {
    name: String,
    plugin: Inference,
    metrics: Arc<PluginMetrics>,
}

impl Engine for WasmEngine {
    fn run(&self, inputs: &[(Vec<usize>, &Data)]) -> Result<Vec<Shaped>, String> {
        let [(shape, data)] = inputs else {
            return Err(format!("plugin '{}' takes one input", self.name));
        };
        let tensor = Tensor {
            bytes: data.to_le_bytes(),
            shape: shape.iter().map(|d| *d as u32).collect(),
            dtype: data.dtype().abi_code(),
        };
        match self.plugin.infer(&tensor) {
            Ok(t) => {
                let dtype = DType::from_abi_code(t.dtype).unwrap_or(DType::F32);
                Ok(vec![Shaped {
                    shape: t.shape.iter().map(|d| *d as usize).collect(),
                    data: Data::from_le_bytes(dtype, &t.bytes),
                }])
            }
            Err(f) => {
                self.metrics.failed(&self.name, f.kind.label());
                tracing::warn!(plugin = %self.name, kind = f.kind.label(), error = %f, "inference plugin failed");
                Err(match f.kind {
                    FailKind::Error => format!("{REFUSED}{f}"),
                    _ => f.message,
                })
            }
        }
    }
}

/// Loads the module and its model; the model's inputs and outputs as the
/// entry declares them.
pub(super) fn load(
    p: &PredictorConfig,
    w: &WasmPredictor,
    metrics: &Arc<PluginMetrics>,
) -> Result<Model, String> {
    let wasm = std::fs::read(&p.path).map_err(|e| format!("cannot read the module: {e}"))?;
    let model = match &w.model_path {
        Some(m) => std::fs::read(m)
            .map_err(|e| format!("cannot read model_path '{}': {e}", m.display()))?,
        None => Vec::new(),
    };
    let limits = Limits {
        max_memory_bytes: w.limits.max_memory_bytes,
        max_call: w.limits.max_call,
    };
    let plugin = Inference::load(&p.name, &wasm, model, limits)?;
    metrics.loaded(&p.name);
    let dtype = DType::from_abi_code(w.dtype).unwrap_or(DType::F32);
    let (batched, input_dims, output_dims) = match &w.input_shape {
        Some(shape) => {
            let mut dims = vec![Dim::Batch];
            dims.extend(shape.iter().map(|d| Dim::Fixed(*d)));
            (true, dims, vec![Dim::Batch, Dim::Open("output_1".into())])
        }
        None => (
            false,
            vec![Dim::Open("input_0".into())],
            vec![Dim::Open("output_0".into())],
        ),
    };
    let engine = WasmEngine {
        name: p.name.clone(),
        plugin,
        metrics: metrics.clone(),
    };
    Ok(Model::custom(
        Box::new(engine),
        batched,
        vec![TensorSpec {
            name: "input".into(),
            dtype,
            dims: input_dims,
        }],
        vec![TensorSpec {
            name: "output".into(),
            dtype: DType::F32,
            dims: output_dims,
        }],
    ))
}
