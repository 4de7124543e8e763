//! Hot reload: `SIGHUP` or `POST /config/reload` rereads the configuration
//! file and the keys file, validates them, and swaps the new snapshot in.
//!
//! A broken file is refused with its `file:line:col` problems and the
//! running configuration stays. What did not change keeps its state: a
//! target that is the same keeps its breaker, adaptive weight and latency
//! estimate; a provider whose transport settings are the same keeps its
//! connection pool; keys that stay keep their rate-limit buckets and
//! budgets. Requests in flight finish on the snapshot they started with.
//! A listener the file moved is bound before anything is swapped (an
//! address in use refuses the reload); connections the old one accepted
//! run on. TLS, Redis, the audit trail, tracing, logging and the agent hub
//! are set up once at start: changes there wait for a restart or an
//! upgrade (said in the log when the file changes them).

use std::sync::Arc;

use sluice_core::config::{self, Config};
use sluice_core::{ErrorKind, GatewayError};

use crate::access::Access;
use crate::app::{App, Snapshot};

pub use crate::app::Source;
pub use crate::metrics::reload::ReloadMetrics;

pub use crate::metrics::reload::file_hash;

/// What a reload did.
pub struct Reloaded {
    pub sha256: String,
    pub models: usize,
}

/// Rereads, validates and swaps in the configuration. One at a time.
pub async fn reload(app: &Arc<App>) -> Result<Reloaded, GatewayError> {
    reload_with(app, None).await
}

/// Validates and swaps in `text` as the configuration (an embedded
/// gateway's, which has no file), like [`reload`].
pub async fn reload_text(app: &Arc<App>, text: &str) -> Result<Reloaded, GatewayError> {
    reload_with(app, Some(text)).await
}

async fn reload_with(app: &Arc<App>, text: Option<&str>) -> Result<Reloaded, GatewayError> {
    // Serialised with itself and with the admin key API (same lock).
    let mut specs = app.key_specs.lock().await;
    let outcome = try_reload(app, &mut specs, text)
        .map_err(|problems| GatewayError::new(ErrorKind::InvalidConfig, problems));
    let label = if outcome.is_ok() { "ok" } else { "failed" };
    app.metrics
        .reload
        .reloads
        .get_or_create(&crate::metrics::OutcomeLabels { outcome: label })
        .inc();
    match &outcome {
        Ok(r) => {
            app.metrics.reload.loaded(&r.sha256);
            tracing::info!(sha256 = %r.sha256, models = r.models, "configuration reloaded");
        }
        Err(e) => {
            tracing::warn!(problems = %e.message, "configuration not reloaded; the running one stays")
        }
    }
    outcome
}

fn try_reload(
    app: &Arc<App>,
    key_specs: &mut Vec<crate::keys_file::KeySpec>,
    given: Option<&str>,
) -> Result<Reloaded, String> {
    let (text, name) = match (given, &app.source.path) {
        (Some(t), _) => (t.to_owned(), "<config>".to_owned()),
        (None, Some(path)) => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            let text =
                String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
            (text, path.display().to_string())
        }
        (None, None) => {
            return Err("running on the embedded default: there is no file to reload".into());
        }
    };
    let bytes = text.as_bytes();
    let mut config =
        config::parse_whole(&text, &name, &|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let prev = app.snapshot.load_full();
    keep_what_start_fixed(&mut config, &prev.config);
    let moved = bind_moved(&mut config, &prev.config, &app.source)?;
    // Keys added through the admin API: reread from the keys file when
    // there is one; without one they live only in memory, and stay.
    let (specs, api_keys) = if config.keys_file.is_some() {
        crate::keys_file::load(&config).map_err(|e| e.to_string())?
    } else {
        (key_specs.clone(), app.access.load().api_keys.clone())
    };
    if config.keys.is_empty() && api_keys.is_empty() && !crate::keys_file::open_api_allowed(&config)
    {
        return Err(format!(
            "the new configuration has no keys while the API listens on {}: refused, the API \
             would be open to anyone who can reach it",
            config.server.listen
        ));
    }
    let snapshot = Snapshot::build_from(config, Some(&prev)).map_err(|e| e.message.to_string())?;
    let models = snapshot.config.models.len();
    // Models whose entry or file changed are loaded before anything is
    // swapped: one that fails refuses the reload, the running ones stay.
    let predictors = {
        let running = app.predictors.load();
        let metrics = app.metrics.predict.clone();
        let load = || {
            crate::predict::load(
                &snapshot.config,
                metrics,
                &app.metrics.plugins,
                Some(&running),
            )
        };
        loading(load).map_err(|errs| config::ConfigErrors(errs).to_string())?
    };
    let plugins = {
        let running = app.plugins.load();
        let load = || crate::plugins::load(&snapshot.config, &app.metrics.plugins, Some(&running));
        loading(load).map_err(|errs| config::ConfigErrors(errs).to_string())?
    };
    let converters = {
        let running = app.converters.load();
        let load = || crate::multimodal::processors::load(&snapshot.config, Some(&running));
        loading(load)?
    };
    let access = app.access.load();
    let access = Access::build(&snapshot.config, api_keys, Some(&access));
    // Keys first: a request that sees the new routes sees the new keys.
    app.access.store(Arc::new(access));
    app.snapshot.store(Arc::new(snapshot));
    app.predictors.store(Arc::new(predictors));
    app.plugins.store(Arc::new(plugins));
    app.converters.store(Arc::new(converters));
    if app.snapshot.load().config.mcp != app.mcp.load().config {
        let running = app.mcp.load_full();
        let next = sluice_mcp::Federation::start(&app.snapshot.load().config.mcp, Some(&running));
        app.mcp.store(next);
    }
    *key_specs = specs;
    for m in moved {
        let _ = app.source.moves.send(m);
    }
    Ok(Reloaded {
        sha256: file_hash(bytes),
        models,
    })
}

/// Binds the listeners whose address the file changed (the command
/// line's stay), before anything is swapped: an address that cannot be
/// bound refuses the reload.
fn bind_moved(
    new: &mut Config,
    running: &Config,
    source: &Source,
) -> Result<Vec<crate::listener::Moved>, String> {
    let mut moved = Vec::new();
    let pairs = [
        (
            "api",
            &mut new.server.listen,
            running.server.listen,
            source.listen,
        ),
        (
            "admin",
            &mut new.server.admin_listen,
            running.server.admin_listen,
            source.admin_listen,
        ),
    ];
    for (name, want, had, pinned) in pairs {
        if let Some(p) = pinned {
            *want = p;
        }
        if *want == had {
            continue;
        }
        let listener = crate::serving::listen_std(*want, new.server.listen_backlog)
            .map_err(|e| format!("cannot listen on {want} ({name}): {e}"))?;
        moved.push(crate::listener::Moved { name, listener });
    }
    Ok(moved)
}

/// Parts set up once at start keep running as they are, and the log says
/// a change there waits.
fn keep_what_start_fixed(new: &mut Config, running: &Config) {
    let fixed = [
        (
            "[server] upgrade_socket",
            new.server.upgrade_socket != running.server.upgrade_socket,
        ),
        (
            "[server] TLS",
            format!("{:?}", new.server.tls) != format!("{:?}", running.server.tls),
        ),
        (
            "[redis]",
            format!("{:?}", new.redis) != format!("{:?}", running.redis),
        ),
        (
            "[audit]",
            format!("{:?}", new.audit) != format!("{:?}", running.audit),
        ),
        (
            "[telemetry]",
            format!("{:?}", new.telemetry) != format!("{:?}", running.telemetry),
        ),
        (
            "[logging] level and format",
            new.logging.level != running.logging.level
                || format!("{:?}", new.logging.format) != format!("{:?}", running.logging.format),
        ),
        (
            "[agents]",
            format!("{:?}", new.agents) != format!("{:?}", running.agents),
        ),
        (
            "[limits]",
            format!("{:?}", new.limits) != format!("{:?}", running.limits),
        ),
    ];
    for (part, changed) in fixed {
        if changed {
            tracing::warn!(
                part,
                "this part of the configuration changed; it takes effect at the next restart"
            );
        }
    }
}

/// Runs a model load (seconds of file reading and optimizing) without
/// stalling the other tasks of a multi-threaded runtime's worker.
fn loading<T>(load: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(load),
        _ => load(),
    }
}
