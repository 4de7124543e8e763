//! `[[predictors]]`: local models served by the gateway (`/v1/predict`,
//! the Open Inference Protocol), each behind its own batcher. The model
//! files are loaded by the server (`sluice-inference`); here they are
//! named, found, and their batching settled.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Collector;
use super::{ConfigError, line_col};

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
    let base = Path::new(c.file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in raw {
        let p = p.get_ref();
        let name = p.name.get_ref();
        if name.is_empty() || !seen.insert(name.clone()) {
            c.at(
                p.name.span(),
                format!("predictor name '{name}' is empty or used twice"),
            );
            continue;
        }
        let path = Path::new(p.path.get_ref());
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        if std::fs::metadata(&path).is_err() {
            c.at(
                p.path.span(),
                format!(
                    "predictor '{name}': model file '{}' cannot be read",
                    path.display()
                ),
            );
        }
        let (line, column) = line_col(c.text, p.path.span().start);
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
            at: ConfigError {
                file: c.file.to_owned(),
                line,
                column,
                message: String::new(),
            },
        });
    }
    out
}
