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
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use anyhow::Context;
use sluice_core::config::Config;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use logging::LogControl;

/// How this process starts besides its configuration.
#[derive(Default)]
pub struct Start {
    /// The file the configuration came from (`None`: the embedded default).
    pub config_path: Option<std::path::PathBuf>,
    /// Take the listeners over from the process at `[server] upgrade_socket`.
    pub upgrade: bool,
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
pub async fn run(config: Config, log_control: LogControl, start: Start) -> anyhow::Result<()> {
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
    let bound = bind(&config.server, start.upgrade).await?;
    let api_addr = bound.api.local_addr()?;
    let admin_addr = bound.admin.local_addr()?;
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
    let app = app::App::new(config, log_control, api_keys, start.config_path)?;

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
    let offered = upgrade_fds(&bound)?;
    let api = tokio::spawn(listener::serve(
        listener::Listener {
            name: "api",
            listener: bound.api,
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
            listener: bound.admin,
            router: routes::admin(app.clone()),
            cfg: server_cfg.clone(),
            tls: None,
            max_connections: admin_cap,
            metrics: app.metrics.connections.clone(),
        },
        rx,
    ));
    app.ready.store(true, Ordering::Release);
    // After a handover, the old process stops accepting only now that
    // this one serves; then this one owns the upgrade socket.
    let upgrade_socket = match bound.handover {
        Some(h) => Some(tokio::task::spawn_blocking(move || h.ready()).await??),
        None => bound.upgrade_socket,
    };
    println!(
        "{}",
        ready_line(scheme, api_addr, admin_addr, &first_model, keyed)
    );
    tracing::info!(%api_addr, %admin_addr, "sluice ready");

    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(app.clone()));
    let offer = async {
        match (upgrade_socket, offered) {
            (Some(sock), Some((api_fd, admin_fd))) => upgrade::offer(sock, api_fd, admin_fd).await,
            _ => std::future::pending().await,
        }
    };
    let stop = tokio::select! {
        _ = shutdown_signal() => Stop::Signal,
        r = offer => {
            r?;
            Stop::Upgraded
        }
    };
    app.ready.store(false, Ordering::Release);
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
            let _ = tx.send(true);
        }
        Stop::Upgraded => {
            // Accepting stops first, so agents told to reconnect (1001)
            // reach the new process.
            let _ = tx.send(true);
            if let Some(h) = &app.hub {
                h.close_all(std::time::Duration::from_secs(3)).await;
            }
        }
    }
    let _ = tokio::join!(api, admin);
    if let Some(a) = &app.audit {
        a.flush(std::time::Duration::from_secs(5)).await;
    }
    if let Some(t) = &app.tracing {
        t.shutdown().await;
    }
    Ok(())
}

/// The listeners a process serves on, and how it takes part in upgrades.
struct Bound {
    api: TcpListener,
    admin: TcpListener,
    /// Set when these listeners came from a running process.
    handover: Option<upgrade::Handover>,
    /// The upgrade socket this process answers on (a fresh start).
    upgrade_socket: Option<std::os::unix::net::UnixListener>,
}

async fn bind(cfg: &sluice_core::config::ServerConfig, upgrade: bool) -> anyhow::Result<Bound> {
    if !upgrade {
        let upgrade_socket = match &cfg.upgrade_socket {
            Some(p) => Some(upgrade::bind_fresh(p)?),
            None => None,
        };
        let api = TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let admin = TcpListener::bind(cfg.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", cfg.admin_listen))?;
        return Ok(Bound {
            api,
            admin,
            handover: None,
            upgrade_socket,
        });
    }
    let Some(path) = cfg.upgrade_socket.clone() else {
        anyhow::bail!("--upgrade needs [server] upgrade_socket in the configuration");
    };
    let (sockets, handover) =
        tokio::task::spawn_blocking(move || upgrade::receive(&path)).await??;
    Ok(Bound {
        api: adopt(sockets.api, cfg.listen, "").await?,
        admin: adopt(sockets.admin, cfg.admin_listen, " (admin)").await?,
        handover: Some(handover),
        upgrade_socket: None,
    })
}

/// A handed-over listener, when it is where the configuration wants one
/// (port 0: any port); otherwise a new one at the configured address.
async fn adopt(
    inherited: std::net::TcpListener,
    want: SocketAddr,
    what: &str,
) -> anyhow::Result<TcpListener> {
    let have = inherited.local_addr()?;
    if have == want || (want.port() == 0 && want.ip() == have.ip()) {
        return Ok(TcpListener::from_std(inherited)?);
    }
    tracing::info!(%have, %want, "the new configuration moves a listener; binding it anew");
    TcpListener::bind(want)
        .await
        .with_context(|| format!("cannot listen on {want}{what}"))
}

/// Copies of the listening sockets to hand to a successor, when this
/// process answers upgrades.
fn upgrade_fds(
    bound: &Bound,
) -> anyhow::Result<Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>> {
    use std::os::fd::AsFd;
    if bound.upgrade_socket.is_none() && bound.handover.is_none() {
        return Ok(None);
    }
    Ok(Some((
        bound.api.as_fd().try_clone_to_owned()?,
        bound.admin.as_fd().try_clone_to_owned()?,
    )))
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
