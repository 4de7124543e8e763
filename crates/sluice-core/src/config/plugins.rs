//! `[[plugins]]`: proxy-wasm HTTP filters run on the API routes, in file
//! order, and the sandbox limits they share with `engine = "wasm"`
//! predictors. The modules are compiled by the server (`sluice-wasm`);
//! here they are named, found, and their settings checked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Collector;
use super::{ConfigError, line_col};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
    /// A string, or a table handed over as JSON.
    pub config: Option<Spanned<toml::Value>>,
    pub routes: Option<Spanned<Vec<String>>>,
    pub max_memory_mb: Option<Spanned<u64>>,
    pub max_call_ms: Option<Spanned<u64>>,
    pub instances: Option<Spanned<u64>>,
}

/// A sandbox's limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Linear memory at most, in bytes (`max_memory_mb`).
    pub max_memory_bytes: usize,
    /// Longest one call into the module (`max_call_ms`).
    pub max_call: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    pub name: String,
    /// The module: `.wasm`, or the text format (`.wat`).
    pub path: PathBuf,
    /// Handed to `proxy_on_configure`.
    pub config: String,
    /// Paths it filters (`*` at the end: a prefix); `None` = every API route.
    pub routes: Option<Vec<String>>,
    pub limits: SandboxLimits,
    /// Instances requests are spread over; `None` = one per CPU.
    pub instances: Option<usize>,
    /// Where the entry's `path` is, for load errors.
    pub at: ConfigError,
}

impl PluginConfig {
    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
            ..self.at.clone()
        }
    }

    /// Whether requests to `path` go through this filter.
    pub fn applies_to(&self, path: &str) -> bool {
        match &self.routes {
            None => true,
            Some(routes) => routes.iter().any(|r| match r.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => r == path,
            }),
        }
    }
}

/// `max_memory_mb` and `max_call_ms`, with their defaults.
pub(super) fn limits(
    c: &mut Collector<'_>,
    mb: Option<&Spanned<u64>>,
    ms: Option<&Spanned<u64>>,
    (default_mb, default_ms): (u64, u64),
) -> SandboxLimits {
    SandboxLimits {
        max_memory_bytes: (c.positive(mb, default_mb, 4096, "max_memory_mb") as usize) << 20,
        max_call: Duration::from_millis(c.positive(ms, default_ms, 600_000, "max_call_ms")),
    }
}

/// A path relative to the configuration file's folder, which must exist.
pub(super) fn module_path(c: &mut Collector<'_>, path: &Spanned<String>, what: &str) -> PathBuf {
    let base = Path::new(c.file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let p = Path::new(path.get_ref());
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    if std::fs::metadata(&p).is_err() {
        c.at(
            path.span(),
            format!("{what}: file '{}' cannot be read", p.display()),
        );
    }
    p
}

/// `name`, when it is not empty and not seen before (else an error at it).
pub(super) fn fresh_name<'a>(
    c: &mut Collector<'_>,
    seen: &mut HashSet<String>,
    name: &'a Spanned<String>,
    what: &str,
) -> Option<&'a String> {
    let n = name.get_ref();
    if n.is_empty() || !seen.insert(n.clone()) {
        c.at(
            name.span(),
            format!("{what} name '{n}' is empty or used twice"),
        );
        return None;
    }
    Some(n)
}

/// Where an entry's `path` is: load errors point there.
pub(super) fn located(c: &Collector<'_>, path: &Spanned<String>) -> ConfigError {
    let (line, column) = line_col(c.text, path.span().start);
    ConfigError {
        file: c.file.to_owned(),
        line,
        column,
        message: String::new(),
    }
}

pub(super) fn plugins(c: &mut Collector<'_>, raw: &[Spanned<RawPlugin>]) -> Vec<PluginConfig> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for p in raw {
        let p = p.get_ref();
        let Some(name) = fresh_name(c, &mut seen, &p.name, "plugin") else {
            continue;
        };
        let path = module_path(c, &p.path, &format!("plugin '{name}'"));
        let config = match p.config.as_ref().map(|v| (v, v.get_ref())) {
            None => String::new(),
            Some((_, toml::Value::String(s))) => s.clone(),
            Some((_, toml::Value::Table(t))) => serde_json::to_string(t).unwrap_or_default(),
            Some((v, _)) => {
                c.at(
                    v.span(),
                    "config must be a string or a table (handed over as JSON)",
                );
                String::new()
            }
        };
        if let Some(r) = &p.routes
            && let Some(bad) = r.get_ref().iter().find(|r| !r.starts_with('/'))
        {
            c.at(
                r.span(),
                format!("routes: '{bad}' is not a path (it must start with '/')"),
            );
        }
        let limits = limits(
            c,
            p.max_memory_mb.as_ref(),
            p.max_call_ms.as_ref(),
            (64, 100),
        );
        let instances = p
            .instances
            .as_ref()
            .map(|v| c.positive(Some(v), 1, 256, "instances") as usize);
        out.push(PluginConfig {
            name: name.clone(),
            path,
            config,
            routes: p.routes.as_ref().map(|r| r.get_ref().clone()),
            limits,
            instances,
            at: located(c, &p.path),
        });
    }
    out
}
