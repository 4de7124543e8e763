//! The listening sockets of a process: bound at start or taken over from a
//! running process, bound anew when a reload moves them, offered to the
//! next process on upgrade, and drained at the end.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sluice_core::config::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::listener::{self, Spec};
use crate::{conn, routes, upgrade};

pub use crate::listener::Moved;

/// The listeners a process starts with, and how it takes part in upgrades.
pub struct Bound {
    pub api: TcpListener,
    pub admin: TcpListener,
    /// Set when these listeners came from a running process.
    handover: Option<upgrade::Handover>,
    /// The upgrade socket this process answers on (a fresh start).
    upgrade_socket: Option<std::os::unix::net::UnixListener>,
}

/// Binds the listeners, or (`upgrade`) takes them over from the process
/// answering at `cfg.upgrade_socket`.
pub async fn bind(cfg: &ServerConfig, upgrade: bool) -> anyhow::Result<Bound> {
    if !upgrade {
        let upgrade_socket = match &cfg.upgrade_socket {
            Some(p) => Some(upgrade::bind_fresh(p)?),
            None => None,
        };
        let api = listen(cfg.listen, cfg.listen_backlog)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let admin = listen(cfg.admin_listen, cfg.listen_backlog)
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
        api: adopt(sockets.api, cfg.listen, cfg.listen_backlog, "")?,
        admin: adopt(
            sockets.admin,
            cfg.admin_listen,
            cfg.listen_backlog,
            " (admin)",
        )?,
        handover: Some(handover),
        upgrade_socket: None,
    })
}

/// A handed-over listener, when it is where the configuration wants one
/// (port 0: any port); otherwise a new one at the configured address.
fn adopt(
    inherited: std::net::TcpListener,
    want: SocketAddr,
    backlog: u32,
    what: &str,
) -> anyhow::Result<TcpListener> {
    let have = inherited.local_addr()?;
    if have == want || (want.port() == 0 && want.ip() == have.ip()) {
        return Ok(TcpListener::from_std(inherited)?);
    }
    tracing::info!(%have, %want, "the new configuration moves a listener; binding it anew");
    listen(want, backlog).with_context(|| format!("cannot listen on {want}{what}"))
}

/// A listener whose accept queue holds `backlog` connections (the kernel
/// caps it at `net.core.somaxconn`). std's and tokio's `bind` fix it at
/// 128, which a burst of connects — a replica's agents reconnecting at
/// once — overflows; a dropped SYN is retried only after 1 s, then 3 s, …
pub(crate) fn listen_std(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(s.into())
}

fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    TcpListener::from_std(listen_std(addr, backlog)?)
}

/// One listener's accept loop.
struct Slot {
    spec: Spec,
    stop: watch::Sender<bool>,
}

/// The running accept loops.
pub struct Serving {
    shutdown: watch::Sender<bool>,
    api: Slot,
    admin: Slot,
    /// Every accept loop started, moved ones included: each drains its
    /// connections at the end.
    tasks: Vec<JoinHandle<()>>,
    /// Copies of the listening sockets [api, admin], for a successor.
    fds: Arc<Mutex<[OwnedFd; 2]>>,
    handover: Option<upgrade::Handover>,
    upgrade_socket: Option<std::os::unix::net::UnixListener>,
}

impl Serving {
    pub fn start(
        bound: Bound,
        app: &Arc<crate::app::App>,
        cfg: &ServerConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> anyhow::Result<Self> {
        let open_files = conn::open_files_limit();
        let (api_cap, admin_cap) = conn::caps(cfg.max_connections, open_files);
        if api_cap < cfg.max_connections {
            tracing::info!(
                open_files,
                api = api_cap,
                admin = admin_cap,
                "connection caps lowered to fit the descriptor limit"
            );
        }
        let fds = [
            bound.api.as_fd().try_clone_to_owned()?,
            bound.admin.as_fd().try_clone_to_owned()?,
        ];
        let (shutdown, _) = watch::channel(false);
        let spec = |name, router, layered, direct, tls, max_connections| Spec {
            name,
            router,
            layered,
            direct,
            cfg: cfg.clone(),
            tls,
            max_connections,
            metrics: app.metrics.connections.clone(),
        };
        let mut s = Self {
            api: Slot {
                spec: spec(
                    "api",
                    routes::api(app.clone()),
                    Some(crate::layers::around_api(
                        routes::api(app.clone()),
                        app.clone(),
                    )),
                    Some(app.clone()),
                    tls,
                    api_cap,
                ),
                stop: watch::channel(false).0,
            },
            admin: Slot {
                spec: spec(
                    "admin",
                    routes::admin(app.clone()),
                    None,
                    None,
                    None,
                    admin_cap,
                ),
                stop: watch::channel(false).0,
            },
            shutdown,
            tasks: Vec::new(),
            fds: Arc::new(Mutex::new(fds)),
            handover: bound.handover,
            upgrade_socket: bound.upgrade_socket,
        };
        s.spawn("api", bound.api);
        s.spawn("admin", bound.admin);
        Ok(s)
    }

    fn spawn(&mut self, name: &str, listener: TcpListener) {
        let slot = if name == "api" {
            &mut self.api
        } else {
            &mut self.admin
        };
        let (stop, stopped) = watch::channel(false);
        let old = std::mem::replace(&mut slot.stop, stop);
        let _ = old.send(true);
        let task = tokio::spawn(listener::serve(
            listener,
            slot.spec.clone(),
            stopped,
            self.shutdown.subscribe(),
        ));
        self.tasks.push(task);
    }

    /// After a handover: tells the old process this one serves, and takes
    /// the upgrade socket over once it has stopped accepting.
    pub async fn took_over(&mut self) -> anyhow::Result<()> {
        if let Some(h) = self.handover.take() {
            self.upgrade_socket = Some(tokio::task::spawn_blocking(move || h.ready()).await??);
        }
        Ok(())
    }

    /// Answers upgrades (when an upgrade socket is configured) until a new
    /// process has taken the listeners over.
    pub fn offer(&mut self) -> impl Future<Output = anyhow::Result<()>> + use<> {
        let socket = self.upgrade_socket.take();
        let fds = self.fds.clone();
        async move {
            match socket {
                Some(s) => upgrade::offer(s, fds).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Serves on a listener a reload bound: the old one stops accepting
    /// (what it accepted runs on), and an upgrade hands over the new one.
    pub fn moved(&mut self, m: Moved) {
        let addr = m.listener.local_addr().ok();
        let fd = m.listener.as_fd().try_clone_to_owned();
        let listener = match TcpListener::from_std(m.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(listener = m.name, error = %e, "cannot serve on the moved listener");
                return;
            }
        };
        if let Ok(fd) = fd {
            let mut fds = self.fds.lock().expect("fd lock is never poisoned");
            fds[usize::from(m.name != "api")] = fd;
        }
        self.spawn(m.name, listener);
        tracing::info!(listener = m.name, addr = ?addr, "listener moved");
    }

    /// Stops accepting now; the future ends when every connection has
    /// (bounded by `shutdown_grace_ms`).
    pub fn finish(self) -> impl Future<Output = ()> {
        let _ = self.shutdown.send(true);
        let tasks = self.tasks;
        async move {
            for t in tasks {
                let _ = t.await;
            }
        }
    }
}
