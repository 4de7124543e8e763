//! Models whose inputs a file leaves open but tract must see fixed to
//! optimize them (PP-OCR's): parsed once, optimized once per input shape
//! the caller asks for, and the last few plans kept.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;

pub(crate) type Plan = Arc<TypedSimplePlan>;

pub(crate) struct Plans {
    model: InferenceModel,
    cache: Mutex<HashMap<Vec<usize>, Plan>>,
    keep: usize,
}

impl Plans {
    /// Parses the file; `metadata` is the value of that metadata entry,
    /// when asked for and present.
    pub(crate) fn load(
        path: &Path,
        keep: usize,
        metadata: Option<&str>,
    ) -> Result<(Self, Option<String>), String> {
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_path(path)
            .map_err(|e| format!("cannot read the ONNX model '{}': {e:#}", path.display()))?;
        let meta = metadata.and_then(|key| {
            proto
                .metadata_props
                .iter()
                .find(|p| p.key == key)
                .map(|p| p.value.clone())
        });
        let model = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| format!("cannot read the ONNX model '{}': {e:#}", path.display()))?;
        let plans = Self {
            model,
            cache: Mutex::new(HashMap::new()),
            keep,
        };
        Ok((plans, meta))
    }

    /// The plan for one f32 input of `shape`, made on first use.
    pub(crate) fn get(&self, shape: &[usize]) -> Result<Plan, String> {
        if let Some(p) = self.lock().get(shape) {
            return Ok(p.clone());
        }
        // Optimized outside the lock: another shape need not wait.
        let plan = self
            .model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("the engine cannot run this model at {shape:?}: {e:#}"))?;
        let mut cache = self.lock();
        if cache.len() >= self.keep
            && let Some(k) = cache.keys().next().cloned()
        {
            cache.remove(&k);
        }
        cache.insert(shape.to_vec(), plan.clone());
        Ok(plan)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<usize>, Plan>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a plan on one f32 input; its first output, with its shape.
pub(crate) fn run(
    plan: &Plan,
    shape: &[usize],
    data: Vec<f32>,
) -> Result<(Vec<usize>, Vec<f32>), String> {
    let x = Tensor::from_shape(shape, &data).map_err(|e| format!("{e:#}"))?;
    let out = plan
        .run(tvec!(x.into()))
        .map_err(|e| format!("inference failed: {e:#}"))?;
    let t = out.first().ok_or("the model gave no output")?;
    let v = t
        .try_as_plain_ram()
        .and_then(|r| Ok(r.as_slice::<f32>()?.to_vec()))
        .map_err(|e| format!("{e:#}"))?;
    Ok((t.shape().to_vec(), v))
}
