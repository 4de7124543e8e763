//! `[[predictors]]`: local models served by the gateway (`/v1/predict`,
//! the Open Inference Protocol), each behind its own batcher. The model
//! files are loaded by the server (`sluice-inference`); here they are
//! named, found, and their batching settled.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::ConfigError;
use super::validate::Collector;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPredictor {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    pub max_batch_size: Option<Spanned<u64>>,
    pub max_queue_delay_us: Option<Spanned<u64>>,
    pub threads: Option<Spanned<u64>>,
    pub queue_depth: Option<Spanned<u64>>,
    pub priority: Option<Spanned<String>>,
    /// `"onnx"` (the default) or `"wasm"`.
    pub engine: Option<Spanned<String>>,
    pub model_path: Option<Spanned<String>>,
    pub input_shape: Option<Spanned<Vec<u64>>>,
    pub dtype: Option<Spanned<String>>,
    pub max_memory_mb: Option<Spanned<u64>>,
    pub max_call_ms: Option<Spanned<u64>>,
}

/// What runs a predictor's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredictorEngine {
    /// An ONNX file, on tract.
    Onnx,
    /// A WASM module behind the TensorView ABI (`docs/wasm-abi.md`).
    Wasm(WasmPredictor),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmPredictor {
    /// Read and handed to the module's `init`.
    pub model_path: Option<PathBuf>,
    /// One example's shape (without the batch dimension): requests are
    /// batched along a leading dimension. `None`: one 1-D tensor of any
    /// length per call, never batched.
    pub input_shape: Option<Vec<usize>>,
    /// The input's element type: 0 = f32, 1 = i32, 2 = i64, 3 = u8.
    pub dtype: u32,
    pub limits: super::SandboxLimits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PredictorConfig {
    /// What clients send as `model`.
    pub name: String,
    /// The model file (relative paths are the config file's folder's).
    pub path: PathBuf,
    /// Examples merged into one inference at most.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch.
    pub max_queue_delay: Duration,
    /// Inference threads for this model.
    pub threads: usize,
    /// Requests waiting at most; more get 429 `predict_queue_full`.
    pub queue_depth: usize,
    /// `true` (`priority = "idle"`, the default): the inference threads run
    /// only when nothing else in the process (or its cgroup) wants the
    /// CPU, so predict load never delays the proxy; `"normal"`: as the
    /// proxy's own threads.
    pub idle_priority: bool,
    pub engine: PredictorEngine,
    /// Where the entry's `path` is, for load errors (`file:line:col`).
    pub at: ConfigError,
}

impl PredictorConfig {
    /// A load error of this model, located at its entry.
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
            ..self.at.clone()
        }
    }
}

pub(super) fn predictors(
    c: &mut Collector<'_>,
    raw: &[Spanned<RawPredictor>],
) -> Vec<PredictorConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in raw {
        let p = p.get_ref();
        let Some(name) = super::plugins::fresh_name(c, &mut seen, &p.name, "predictor") else {
            continue;
        };
        let path = super::plugins::module_path(c, &p.path, &format!("predictor '{name}'"));
        let engine = engine(c, p, name);
        let at = super::plugins::located(c, &p.path);
        out.push(PredictorConfig {
            name: name.clone(),
            path,
            max_batch_size: c.positive(p.max_batch_size.as_ref(), 32, 4096, "max_batch_size")
                as usize,
            max_queue_delay: Duration::from_micros(match &p.max_queue_delay_us {
                None => 500,
                Some(v) if *v.get_ref() > 10_000_000 => {
                    c.at(
                        v.span(),
                        "max_queue_delay_us must be between 0 and 10000000",
                    );
                    500
                }
                Some(v) => *v.get_ref(),
            }),
            threads: c.positive(p.threads.as_ref(), 1, 256, "threads") as usize,
            queue_depth: c.positive(p.queue_depth.as_ref(), 1024, 1_000_000, "queue_depth")
                as usize,
            idle_priority: match p.priority.as_ref().map(|v| (v, v.get_ref().as_str())) {
                None | Some((_, "idle")) => true,
                Some((_, "normal")) => false,
                Some((v, other)) => {
                    c.at(
                        v.span(),
                        format!("priority must be \"idle\" or \"normal\", not \"{other}\""),
                    );
                    true
                }
            },
            engine,
            at,
        });
    }
    out
}

/// `engine` and the keys only a WASM predictor takes.
fn engine(c: &mut Collector<'_>, p: &RawPredictor, name: &str) -> PredictorEngine {
    let wasm = match p.engine.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "onnx")) => false,
        Some((_, "wasm")) => true,
        Some((v, other)) => {
            c.at(
                v.span(),
                format!("engine must be \"onnx\" or \"wasm\", not \"{other}\""),
            );
            false
        }
    };
    if !wasm {
        let only_wasm = [
            p.model_path.as_ref().map(Spanned::span),
            p.input_shape.as_ref().map(Spanned::span),
            p.dtype.as_ref().map(Spanned::span),
            p.max_memory_mb.as_ref().map(Spanned::span),
            p.max_call_ms.as_ref().map(Spanned::span),
        ];
        if let Some(span) = only_wasm.into_iter().flatten().next() {
            c.at(
                span,
                format!("predictor '{name}': this key needs engine = \"wasm\""),
            );
        }
        return PredictorEngine::Onnx;
    }
    let model_path = p
        .model_path
        .as_ref()
        .map(|m| super::plugins::module_path(c, m, &format!("predictor '{name}' model_path")));
    let input_shape = p.input_shape.as_ref().and_then(|s| {
        let dims = s.get_ref();
        if dims.is_empty() || dims.len() > 3 || dims.iter().any(|d| *d == 0 || *d > 1 << 24) {
            c.at(
                s.span(),
                "input_shape must list 1 to 3 sizes (the batch dimension comes first, not listed)",
            );
            return None;
        }
        Some(dims.iter().map(|d| *d as usize).collect())
    });
    let dtype = match p.dtype.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "f32")) => 0,
        Some((_, "i32")) => 1,
        Some((_, "i64")) => 2,
        Some((_, "u8")) => 3,
        Some((v, other)) => {
            c.at(
                v.span(),
                format!("dtype must be \"f32\", \"i32\", \"i64\" or \"u8\", not \"{other}\""),
            );
            0
        }
    };
    let limits = super::plugins::limits(
        c,
        p.max_memory_mb.as_ref(),
        p.max_call_ms.as_ref(),
        (256, 1000),
    );
    PredictorEngine::Wasm(WasmPredictor {
        model_path,
        input_shape,
        dtype,
        limits,
    })
}
