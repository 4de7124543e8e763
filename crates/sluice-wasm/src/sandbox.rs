//! The one wasmtime engine of the process, its epoch ticker, and stores
//! with a plugin's limits.

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::{Config, Engine, Module, ResourceLimiter, Store, Trap};

use crate::{FailKind, Failure, Limits};

/// How often the epoch advances: the granularity of `max_call_ms`.
const TICK: Duration = Duration::from_millis(1);

/// The engine every plugin is compiled for, with a thread that advances
/// its epoch (made on first use: a gateway without plugins has neither).
pub struct Runtime {
    engine: Engine,
}

impl Runtime {
    pub fn get() -> Result<&'static Runtime, String> {
        static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(Self::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn start() -> Result<Self, String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| format!("the WASM engine: {e}"))?;
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("sluice-wasm-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| format!("the WASM epoch thread: {e}"))?;
        Ok(Self { engine })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a module from its bytes: binary WASM or the text format.
    pub fn compile(&self, bytes: &[u8]) -> Result<Module, String> {
        Module::new(&self.engine, bytes).map_err(|e| format!("not a loadable WASM module: {e:#}"))
    }
}

/// A store's limits and whether they were hit.
pub(crate) struct Fence {
    limits: Limits,
    /// Set when the module asked for more memory than it may have.
    pub(crate) hit: bool,
}

impl ResourceLimiter for Fence {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.max_memory_bytes {
            self.hit = true;
            return Err(wasmtime::Error::msg(format!(
                "the plugin asked for {desired} bytes of memory; max_memory_mb allows {}",
                self.limits.max_memory_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl Fence {
    pub(crate) fn new(limits: Limits) -> Self {
        Self { limits, hit: false }
    }
}

/// What a store's data gives the sandbox.
pub(crate) trait Fenced: Send + 'static {
    fn fence(&mut self) -> &mut Fence;
}

/// A store for one instance, its memory capped.
pub(crate) fn store<T: Fenced>(engine: &Engine, data: T) -> Store<T> {
    let mut store = Store::new(engine, data);
    store.limiter(|d| d.fence() as &mut dyn ResourceLimiter);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// Arms the CPU cap for the next call.
pub(crate) fn arm<T>(store: &mut Store<T>, limits: &Limits) {
    let ticks = limits.max_call.as_micros().div_ceil(TICK.as_micros()) as u64;
    store.set_epoch_deadline(ticks.max(1) + 1);
}

/// A failed call, told apart: a timeout, memory past its cap, another trap.
pub(crate) fn classify<T: Fenced>(
    store: &mut Store<T>,
    plugin: &str,
    e: wasmtime::Error,
) -> Failure {
    if std::mem::take(&mut store.data_mut().fence().hit) {
        return Failure::new(
            FailKind::Memory,
            format!("plugin '{plugin}' went over its memory limit: {e}"),
        );
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::new(
            FailKind::Timeout,
            format!("plugin '{plugin}' ran past its max_call_ms and was stopped"),
        ),
        Some(t) => Failure::new(FailKind::Trap, format!("plugin '{plugin}' trapped: {t}")),
        None => Failure::new(FailKind::Trap, format!("plugin '{plugin}' failed: {e:#}")),
    }
}
