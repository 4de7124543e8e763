//! The local processors (`[[processors]]`) and the image fetcher, loaded
//! at start and on every reload (a processor whose entry did not change is
//! kept). Each processor runs on blocking threads, at most `concurrency`
//! at once; a run whose request went away is told to stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sluice_core::config::{Config, ProcessorConfig, ProcessorKind};
use sluice_inference::ocr::Ocr;
use sluice_inference::vad::{Vad, VadSettings};
use sluice_providers::fetch::ImageFetcher;
use tokio::sync::Semaphore;

pub enum Engine {
    Ocr(Box<Ocr>),
    Vad(Vad),
}

pub struct Processor {
    pub config: ProcessorConfig,
    pub engine: Arc<Engine>,
    permits: Arc<Semaphore>,
}

/// What conversions need besides the configuration snapshot.
pub struct Converters {
    pub processors: HashMap<Arc<str>, Arc<Processor>>,
    pub fetcher: Arc<ImageFetcher>,
}

/// Loads the processors `config` names, keeping those of `prev` whose
/// entry is unchanged. The error names the processor.
pub fn load(config: &Config, prev: Option<&Converters>) -> Result<Converters, String> {
    let mut processors = HashMap::new();
    for p in &config.processors {
        let kept = prev
            .and_then(|m| m.processors.get(&p.name))
            .filter(|old| old.config == *p);
        let proc = match kept {
            Some(old) => old.clone(),
            None => Arc::new(Processor {
                engine: Arc::new(engine(p).map_err(|e| format!("processor '{}': {e}", p.name))?),
                permits: Arc::new(Semaphore::new(p.concurrency)),
                config: p.clone(),
            }),
        };
        processors.insert(p.name.clone(), proc);
    }
    let fetcher = match prev {
        Some(m) if m.fetcher.config() == &config.image_fetch => m.fetcher.clone(),
        _ => Arc::new(ImageFetcher::new(&config.image_fetch)),
    };
    Ok(Converters {
        processors,
        fetcher,
    })
}

fn engine(p: &ProcessorConfig) -> Result<Engine, String> {
    Ok(match &p.kind {
        ProcessorKind::Ocr {
            det_model,
            rec_model,
            dict,
            max_side,
        } => Engine::Ocr(Box::new(Ocr::load(
            det_model,
            rec_model,
            dict.as_deref(),
            *max_side,
        )?)),
        ProcessorKind::Vad {
            model,
            threshold,
            min_silence_ms,
            speech_pad_ms,
        } => Engine::Vad(Vad::load(
            model,
            VadSettings {
                threshold: *threshold,
                min_silence_ms: *min_silence_ms,
                speech_pad_ms: *speech_pad_ms,
            },
        )?),
    })
}

/// Sets the flag when dropped: the run's request went away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Processor {
    /// Runs `f` on a blocking thread once a place is free; `f` is handed a
    /// function telling it whether its caller has gone (dropping this
    /// future), to stop between steps.
    pub async fn run<T, F>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(&Engine, &dyn Fn() -> bool) -> T + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "the processor was unloaded".to_owned())?;
        let flag = Arc::new(AtomicBool::new(false));
        let _cancel = CancelOnDrop(flag.clone());
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&engine, &|| flag.load(Ordering::Relaxed))
        })
        .await
        .map_err(|e| format!("the processor failed: {e}"))
    }
}
