//! Sluice's server: listeners, routes, the proxy path, and metrics glue.

pub mod access;
pub mod admin_keys;
mod admission;
pub mod app;
pub mod attempt;
pub mod audit;
pub mod conn;
mod deliver;
pub mod extract;
pub mod hub;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod observe;
mod observed_body;
pub mod proxy;
pub mod redis_conn;
pub mod reload;
pub mod routes;
pub mod shared_limits;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::Context;
use sluice_core::config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use logging::LogControl;

/// Binds both listeners, prints the ready line, and serves until SIGINT/SIGTERM.
pub async fn run(
    config: Config,
    log_control: LogControl,
    config_path: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
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
    let api_listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let admin_listener = TcpListener::bind(config.server.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin)", config.server.admin_listen))?;
    let api_addr = api_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let first_model = config
        .models
        .first()
        .map(|m| m.name.to_string())
        .unwrap_or_else(|| "MODEL".to_owned());
    let server_cfg = config.server.clone();
    let tls = match &config.server.tls {
        Some(t) => Some(tls::acceptor(t)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let keyed = !(config.keys.is_empty() && api_keys.1.is_empty());
    let app = app::App::new(config, log_control, api_keys, config_path)?;

    let (tx, rx) = watch::channel(false);
    let open_files = conn::open_files_limit();
    let (api_cap, admin_cap) = conn::caps(server_cfg.max_connections, open_files);
    if api_cap < server_cfg.max_connections {
        tracing::info!(
            open_files,
            api = api_cap,
            admin = admin_cap,
            "connection caps lowered to fit the descriptor limit"
        );
    }
    let api = tokio::spawn(listener::serve(
        listener::Listener {
            name: "api",
            listener: api_listener,
            router: routes::api(app.clone()),
            cfg: server_cfg.clone(),
            tls,
            max_connections: api_cap,
            metrics: app.metrics.connections.clone(),
        },
        rx.clone(),
    ));
    let admin = tokio::spawn(listener::serve(
        listener::Listener {
            name: "admin",
            listener: admin_listener,
            router: routes::admin(app.clone()),
            cfg: server_cfg,
            tls: None,
            max_connections: admin_cap,
            metrics: app.metrics.connections.clone(),
        },
        rx,
    ));
    app.ready.store(true, Ordering::Release);
    println!(
        "{}",
        ready_line(scheme, api_addr, admin_addr, &first_model, keyed)
    );
    tracing::info!(%api_addr, %admin_addr, "sluice ready");

    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(app.clone()));
    shutdown_signal().await;
    tracing::info!("shutting down");
    app.ready.store(false, Ordering::Release);
    // Agents first: they are told to reconnect elsewhere before the
    // listeners stop.
    if let Some(h) = &app.hub {
        h.close_all(std::time::Duration::from_secs(3)).await;
    }
    let _ = tx.send(true);
    let _ = tokio::join!(api, admin);
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
