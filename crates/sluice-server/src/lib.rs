//! Sluice's server: listeners, routes, the proxy path, and metrics glue.

pub mod access;
pub mod admin_keys;
pub mod app;
pub use sluice_audit as audit;
pub mod clock;
pub mod conn;
mod count_tokens;
mod direct;
pub mod embed;
pub mod extract;
mod files;
mod grpc;
mod h1;
pub mod keys_file;
mod layers;
pub use sluice_hub as hub;
mod hub_events;
mod hub_routes;
pub use hub_routes::gateway as hub_gateway;
pub mod listener;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod multimodal;
pub mod plugins;
pub mod predict;
pub mod pressure;
pub mod proxy;
pub mod reload;
pub mod reply;
mod responses_api;
pub mod responses_store;
pub mod routes;
mod serving;
pub mod shared_limits;
pub use sluice_telemetry as telemetry;
pub mod tls;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use sluice_core::config::Config;

pub use logging::LogControl;

/// How this process starts besides its configuration.
#[derive(Default)]
pub struct Start {
    /// The file the configuration came from (`None`: the embedded default).
    pub config_path: Option<std::path::PathBuf>,
    /// Take the listeners over from the process at `[server] upgrade_socket`.
    pub upgrade: bool,
    /// Listener addresses given on the command line: they win over the
    /// file's, at start and on every reload.
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// The cgroup's limits read at start and the worker threads sized
    /// from them: reported, and memory watched for shedding.
    pub cgroup: Option<(sluice_core::cgroup::Limits, usize)>,
}

/// Why the serving ended.
enum Stop {
    /// SIGINT/SIGTERM.
    Signal,
    /// A new process took the listeners over.
    Upgraded,
}

/// Binds both listeners (or takes them over from a running process),
/// prints the ready line, and serves until SIGINT/SIGTERM or until a new
/// process takes over.
pub async fn run(mut config: Config, log_control: LogControl, start: Start) -> anyhow::Result<()> {
    if let Some(a) = start.listen {
        config.server.listen = a;
    }
    if let Some(a) = start.admin_listen {
        config.server.admin_listen = a;
    }
    // An open API (no keys) is for a developer's own machine: refuse to
    // expose one unless the configuration says so explicitly.
    let api_keys = admin_keys::load(&config)?;
    if config.keys.is_empty() && api_keys.1.is_empty() {
        if !admin_keys::open_api_allowed(&config) {
            anyhow::bail!(
                "refusing to listen on {} with no [[keys]] configured: anyone who can reach it \
                 could spend your provider keys. Add [[keys]], listen on loopback, or set \
                 [auth] allow_open_non_loopback = true",
                config.server.listen
            );
        }
        tracing::warn!(
            listen = %config.server.listen,
            "no [[keys]] configured: the API is open to anyone who can reach it"
        );
    }
    let bound = serving::bind(&config.server, start.upgrade).await?;
    let api_addr = bound.api.local_addr()?;
    let admin_addr = bound.admin.local_addr()?;
    let first_model = config
        .models
        .first()
        .map(|m| m.name.to_string())
        .unwrap_or_else(|| {
            // No model: an MCP gateway is shown its endpoint instead.
            let word = if config.mcp.servers.is_empty() {
                "MODEL"
            } else {
                ""
            };
            word.to_owned()
        });
    let server_cfg = config.server.clone();
    let tls = match &config.server.tls {
        Some(t) => Some(tls::acceptor(t)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let keyed = !(config.keys.is_empty() && api_keys.1.is_empty());
    let (moves, mut moved) = tokio::sync::mpsc::unbounded_channel();
    let source = reload::Source {
        path: start.config_path,
        listen: start.listen,
        admin_listen: start.admin_listen,
        moves,
    };
    let app = app::App::new(config, log_control, api_keys, source)?;
    if let Some((limits, workers)) = start.cgroup {
        pressure::start(&app, limits, workers);
    }
    let mut serving = serving::Serving::start(bound, &app, &server_cfg, tls)?;
    app.ready.store(true, Ordering::Release);
    app.grpc.set_ready(true).await;
    // After a handover, the old process stops accepting only now that
    // this one serves; then this one owns the upgrade socket.
    serving.took_over().await?;
    println!(
        "{}",
        ready_line(scheme, api_addr, admin_addr, &first_model, keyed)
    );
    tracing::info!(%api_addr, %admin_addr, "sluice ready");

    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(app.clone()));
    // Boxed to be dropped before the drain: its copies of the listening
    // sockets must not keep them open once this process stops accepting.
    let mut offer = Box::pin(serving.offer());
    let stop = loop {
        tokio::select! {
            _ = shutdown_signal() => break Stop::Signal,
            r = &mut offer => {
                r?;
                break Stop::Upgraded;
            }
            Some(m) = moved.recv() => serving.moved(m),
        }
    };
    drop(offer);
    app.ready.store(false, Ordering::Release);
    app.grpc.set_ready(false).await;
    match stop {
        Stop::Signal => {
            tracing::info!("shutting down");
            if let Some(p) = &server_cfg.upgrade_socket {
                let _ = std::fs::remove_file(p);
            }
            // Agents first: they are told to reconnect elsewhere before
            // the listeners stop.
            if let Some(h) = &app.hub {
                h.close_all(std::time::Duration::from_secs(3)).await;
            }
            serving.finish().await;
        }
        Stop::Upgraded => {
            // Accepting stops first, so agents told to reconnect (1001)
            // reach the new process.
            let finished = serving.finish();
            if let Some(h) = &app.hub {
                h.close_all(std::time::Duration::from_secs(3)).await;
            }
            finished.await;
        }
    }
    // Tool servers' children are stopped.
    app.mcp.load().shutdown();
    if let Some(a) = &app.audit {
        a.flush(std::time::Duration::from_secs(5)).await;
    }
    if let Some(t) = &app.tracing {
        t.shutdown().await;
    }
    Ok(())
}

/// One line: where Sluice listens and a curl command that works as printed
/// (with keys configured: once `SLUICE_API_KEY` holds one of their tokens).
pub fn ready_line(
    scheme: &str,
    api: SocketAddr,
    admin: SocketAddr,
    model: &str,
    keyed: bool,
) -> String {
    let host = |a: SocketAddr| {
        if a.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), a.port())
        } else {
            a
        }
    };
    let (api, admin) = (host(api), host(admin));
    let auth = if keyed {
        " -H \"authorization: Bearer $SLUICE_API_KEY\""
    } else {
        ""
    };
    if model.is_empty() {
        // Nothing to chat with (an MCP or agent-hub gateway): list the tools.
        return format!(
            "sluice ready: api {scheme}://{api} admin http://{admin} | try: curl -s {scheme}://{api}/mcp{auth} -H 'content-type: application/json' -H 'mcp-protocol-version: 2026-07-28' -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"params\":{{}}}}'"
        );
    }
    format!(
        "sluice ready: api {scheme}://{api} admin http://{admin} | try: curl -s {scheme}://{api}/v1/chat/completions{auth} -H 'content-type: application/json' -d '{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
    )
}

/// `SIGHUP` rereads the configuration (see [`reload`]).
#[cfg(unix)]
async fn reload_on_sighup(app: std::sync::Arc<app::App>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        // The outcome is logged and counted by `reload` itself.
        let _ = reload::reload(&app).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
