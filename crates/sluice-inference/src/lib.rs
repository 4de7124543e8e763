//! Local model serving: ONNX models run on the CPU by tract (pure Rust,
//! compiled into the binary: no system library), behind a dynamic batcher
//! per model. The server wires endpoints to [`Predictor`]s; it does not
//! see the engine.

mod audio;
pub mod batch;
mod data;
pub mod engine;
pub mod ocr;
mod plans;
pub mod vad;

pub use batch::{Answer, BatchConfig, Observer, Predictor, SubmitError};
pub use engine::{DType, Data, Dim, Engine, Model, Shaped, TensorSpec, load};
