//! WASM plugins in a sandbox, on wasmtime: inference modules behind the
//! TensorView ABI ([`inference`], `docs/wasm-abi.md`) and HTTP filters
//! written against the proxy-wasm ABI v0.2.1 ([`filter`]).
//!
//! Every call into a module runs under the plugin's limits: its linear
//! memory may not grow past `max_memory_mb` (growing further traps), and a
//! call that runs longer than `max_call_ms` is interrupted (an epoch
//! deadline, ticked by one thread per process). A trap, a timeout or a
//! broken answer is a [`Failure`] of that call only; the instance it
//! happened in is thrown away and a fresh one takes its place.

pub mod filter;
mod host;
pub mod inference;
mod sandbox;

use std::time::Duration;

pub use sandbox::Runtime;

/// A plugin's sandbox limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory (and tables) at most, in bytes.
    pub max_memory_bytes: usize,
    /// Longest one call into the module may run.
    pub max_call: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_bytes: 64 << 20,
            max_call: Duration::from_millis(100),
        }
    }
}

/// What went wrong in a call into a plugin: the `kind` label of
/// `sluice_plugin_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// The module trapped (unreachable, an out-of-bounds access, a panic).
    Trap,
    /// The call ran past `max_call_ms`.
    Timeout,
    /// The module tried to grow its memory past `max_memory_mb`.
    Memory,
    /// An answer pointing outside the module's memory, or not the size
    /// its shape and type say.
    View,
    /// The module answered with an error code of its own.
    Error,
    /// The module does not have what the ABI asks (an export, a type), or
    /// could not be started.
    Abi,
}

impl FailKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Timeout => "timeout",
            Self::Memory => "memory",
            Self::View => "view",
            Self::Error => "error",
            Self::Abi => "abi",
        }
    }
}

/// A failed call into a plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailKind,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(kind: FailKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Whether the instance the call ran in can no longer be trusted.
    pub fn poisons(&self) -> bool {
        matches!(
            self.kind,
            FailKind::Trap | FailKind::Timeout | FailKind::Memory | FailKind::Abi
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
