//! The gateway in-process, for the C ABI and the language bindings.
//!
//! A [`Gateway`] is the application the server runs (routes, routing,
//! retries, breakers, limits, budgets, metrics, audit) with a runtime of
//! its own. A call goes through the same API router an HTTP request takes,
//! only without the socket; [`Gateway::serve`] also opens the listeners.

mod call;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_core::config::{self, Config};
use tokio::runtime::{Handle, Runtime};

pub use call::{Events, Options, Reply, streaming_body};

use crate::app::App;

/// Why a gateway did not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is wrong: one `file:line:col: message` per line.
    Config(String),
    /// The configuration is right but something it names did not start
    /// (a model file, an audit sink, the runtime).
    Start(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(m) | Self::Start(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StartError {}

/// What a call needs, cheap to clone into a task.
#[derive(Clone)]
struct Core {
    router: axum::Router,
    /// Read on every call: lock-free, no copy of the key.
    default_key: Arc<arc_swap::ArcSwapOption<String>>,
}

impl Core {
    fn request(
        &self,
        path: &str,
        body: Bytes,
        opts: &Options,
    ) -> Result<http::Request<axum::body::Body>, Reply> {
        let key = self.default_key.load();
        call::request(path, body, opts, key.as_deref().map(String::as_str))
    }
}

/// The listeners [`Gateway::serve`] opened.
struct Served {
    serving: crate::serving::Serving,
    api: SocketAddr,
    admin: SocketAddr,
}

pub struct Gateway {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    app: Arc<App>,
    core: Core,
    admin: axum::Router,
    served: Mutex<Option<Served>>,
}

impl Gateway {
    /// A gateway from a TOML configuration (the server's format, checked
    /// the same way; errors name `<config>`), or the embedded default.
    pub fn new(config_toml: Option<&str>) -> Result<Self, StartError> {
        let env = |k: &str| std::env::var(k).ok();
        let cfg = match config_toml {
            Some(text) => config::parse_whole(text, "<config>", &env),
            None => config::embedded_default(&env),
        }
        .map_err(|e| StartError::Config(e.to_string()))?;
        Self::from_config(cfg)
    }

    pub fn from_config(cfg: Config) -> Result<Self, StartError> {
        log_from_env();
        let start = |e: &dyn std::fmt::Display| StartError::Start(e.to_string());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("sluice")
            .enable_all()
            .build()
            .map_err(|e| start(&e))?;
        let api_keys = crate::admin_keys::load(&cfg).map_err(|e| start(&e))?;
        // Reloads come as text (no file); the listeners are serve()'s, so
        // the configuration's addresses are pinned like a command line's.
        let (moves, _) = tokio::sync::mpsc::unbounded_channel();
        let source = crate::app::Source {
            path: None,
            listen: Some(cfg.server.listen),
            admin_listen: Some(cfg.server.admin_listen),
            moves,
        };
        let app = {
            let _in = runtime.enter();
            App::new(cfg, crate::LogControl::fixed(), api_keys, source)
                .map_err(|e| StartError::Start(format!("{e:#}")))?
        };
        app.ready.store(true, Ordering::Release);
        let core = Core {
            router: crate::routes::api(app.clone()),
            default_key: Arc::new(arc_swap::ArcSwapOption::empty()),
        };
        Ok(Self {
            admin: crate::routes::admin(app.clone()),
            runtime: Some(runtime),
            app,
            core,
            served: Mutex::new(None),
        })
    }

    /// The runtime the gateway's work runs on.
    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }

    /// The key calls present when their [`Options`] name none.
    pub fn set_default_key(&self, key: Option<String>) {
        self.core.default_key.store(key.map(Arc::new));
    }

    /// A POST to `path` on the API; the future runs on the gateway's
    /// runtime whichever executor awaits it, and dropping it cancels the
    /// request.
    pub fn call(
        &self,
        path: &str,
        body: Bytes,
        opts: &Options,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let req = self.core.request(path, body, opts);
        let router = self.core.router.clone();
        let task = self.handle().spawn(async move {
            match req {
                Ok(r) => call::call(router, r).await,
                Err(reply) => reply,
            }
        });
        let abort = task.abort_handle();
        let guard = AbortOnDrop(abort);
        async move {
            let r = task.await;
            drop(guard);
            r.unwrap_or_else(|e| Reply::error(500, "internal_error", e))
        }
    }

    /// [`call`](Self::call), blocking the calling thread.
    pub fn call_blocking(&self, path: &str, body: Bytes, opts: &Options) -> Reply {
        if Handle::try_current().is_ok() {
            return in_async_context();
        }
        self.handle().block_on(self.call(path, body, opts))
    }

    /// A streamed POST: the events, or the whole answer when it is not a
    /// stream (an error). `body` is sent as it is: see [`streaming_body`].
    pub fn stream(
        &self,
        path: &str,
        body: Bytes,
        opts: &Options,
    ) -> impl Future<Output = Result<Events, Reply>> + Send + 'static {
        let req = self.core.request(path, body, opts);
        let router = self.core.router.clone();
        let task = self
            .handle()
            .spawn(async move { Events::open(router, req?).await });
        let guard = AbortOnDrop(task.abort_handle());
        async move {
            let r = task.await;
            drop(guard);
            r.unwrap_or_else(|e| Err(Reply::error(500, "internal_error", e)))
        }
    }

    /// A streamed call whose items arrive on a channel of `buffer` (for
    /// readers outside the runtime): `Reply { status: 200, body: chunk }`
    /// per event, or one error reply; the channel closes at the end.
    /// Aborting the handle or dropping the receiver cancels the request.
    pub fn stream_channel(
        &self,
        path: &str,
        body: Bytes,
        opts: &Options,
        buffer: usize,
    ) -> (tokio::sync::mpsc::Receiver<Reply>, tokio::task::AbortHandle) {
        let opened = self.stream(path, streaming_body(&body), opts);
        let (tx, rx) = tokio::sync::mpsc::channel(buffer.max(1));
        let task = self.handle().spawn(async move {
            let mut events = match opened.await {
                Ok(e) => e,
                Err(r) => {
                    let _ = tx.send(r).await;
                    return;
                }
            };
            while let Some(item) = events.next().await {
                let r = match item {
                    Ok(chunk) => Reply {
                        status: 200,
                        body: chunk,
                    },
                    Err(r) => r,
                };
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        });
        (rx, task.abort_handle())
    }

    /// Blocks on `fut` on the gateway's runtime (refused from inside an
    /// async context, where blocking would stall it).
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> Result<T, Reply> {
        if Handle::try_current().is_ok() {
            return Err(in_async_context());
        }
        Ok(self.handle().block_on(fut))
    }

    /// The Prometheus exposition the admin port's `/metrics` serves.
    pub fn metrics(&self) -> Result<String, Reply> {
        let admin = self.admin.clone();
        let req = http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .map_err(|e| Reply::error(500, "internal_error", e))?;
        let r = self.block_on(async move {
            let task = tokio::spawn(async move {
                use tower::ServiceExt;
                let resp = match admin.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                http_body_util::BodyExt::collect(resp.into_body()).await
            });
            task.await
        })?;
        match r {
            Ok(Ok(b)) => Ok(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
            _ => Err(Reply::error(
                500,
                "internal_error",
                "cannot read the metrics",
            )),
        }
    }

    /// Swaps in a new configuration, as a hot reload does (what did not
    /// change keeps its state: breakers, pools, rate-limit buckets);
    /// refused with its `<config>:line:col` problems, the running one
    /// staying.
    pub fn reload(&self, config_toml: &str) -> Result<(), String> {
        let app = self.app.clone();
        let text = config_toml.to_owned();
        let r = self
            .block_on(async move {
                tokio::spawn(async move {
                    crate::reload::reload_text(&app, &text)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.message.to_string())
                })
                .await
            })
            .map_err(|r| r.error_message().unwrap_or_default())?;
        r.map_err(|e| e.to_string())?
    }

    /// Opens the HTTP listeners (the API at `listen`, the admin API at
    /// `admin_listen` or any free loopback port) on the gateway's threads;
    /// returns where they listen. One serve at a time: [`stop`](Self::stop)
    /// before serving again.
    pub fn serve(
        &self,
        listen: &str,
        admin_listen: Option<&str>,
    ) -> Result<(SocketAddr, SocketAddr), String> {
        let parse = |s: &str| {
            s.parse::<SocketAddr>()
                .map_err(|_| format!("'{s}' is not an address (like 127.0.0.1:8080)"))
        };
        let listen = parse(listen)?;
        let admin_listen = match admin_listen {
            Some(a) => parse(a)?,
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = &*served {
            return Err(format!("already serving on {}", s.api));
        }
        let snap = self.app.snapshot.load();
        let mut cfg = snap.config.server.clone();
        cfg.listen = listen;
        cfg.admin_listen = admin_listen;
        cfg.upgrade_socket = None;
        let mut whole = snap.config.clone();
        whole.server.listen = listen;
        let keyed = !whole.keys.is_empty() || !self.app.access.load().api_keys.is_empty();
        if !keyed && !crate::admin_keys::open_api_allowed(&whole) {
            return Err(format!(
                "refusing to listen on {listen} with no [[keys]] configured: listen on \
                 loopback, add [[keys]], or set [auth] allow_open_non_loopback = true"
            ));
        }
        let tls = match &cfg.tls {
            Some(t) => Some(crate::tls::acceptor(t).map_err(|e| format!("{e:#}"))?),
            None => None,
        };
        let app = self.app.clone();
        let s = self
            .block_on(async move {
                let bound = crate::serving::bind(&cfg, false).await?;
                let api = bound.api.local_addr()?;
                let admin = bound.admin.local_addr()?;
                let serving = crate::serving::Serving::start(bound, &app, &cfg, tls)?;
                anyhow::Ok(Served {
                    serving,
                    api,
                    admin,
                })
            })
            .map_err(|r| r.error_message().unwrap_or_default())?
            .map_err(|e| format!("{e:#}"))?;
        let addrs = (s.api, s.admin);
        tracing::info!(api = %s.api, admin = %s.admin, "sluice serving (embedded)");
        *served = Some(s);
        Ok(addrs)
    }

    /// Where [`serve`](Self::serve) listens, while it does.
    pub fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        let served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        served.as_ref().map(|s| (s.api, s.admin))
    }

    /// Stops serving: no new connections, those open get up to
    /// `shutdown_grace_ms` to finish. In-process calls go on working.
    pub fn stop(&self) {
        let taken = self.served.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(s) = taken else { return };
        let grace = self.app.snapshot.load().config.server.shutdown_grace;
        let hub = self.app.hub.clone();
        let _ = self.block_on(async move {
            if let Some(h) = hub {
                h.close_all(Duration::from_secs(1)).await;
            }
            let _ = tokio::time::timeout(grace + Duration::from_secs(1), s.serving.finish()).await;
        });
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        let app = self.app.clone();
        let _ = self.block_on(async move {
            if let Some(a) = &app.audit {
                a.flush(Duration::from_secs(5)).await;
            }
            if let Some(t) = &app.tracing {
                t.shutdown().await;
            }
        });
        if let Some(rt) = self.runtime.take() {
            if Handle::try_current().is_ok() {
                // Dropped on a runtime's thread (a callback held the last
                // reference): a runtime cannot be shut down from there.
                std::thread::spawn(move || rt.shutdown_timeout(Duration::from_secs(2)));
            } else {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

/// An embedded gateway logs nothing unless `SLUICE_LOG` (a level or
/// filter, e.g. `info` or `sluice_server=debug`) asks it to: then to
/// stderr, once per process, unless the host already set a subscriber.
fn log_from_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(level) = std::env::var("SLUICE_LOG") else {
            return;
        };
        match tracing_subscriber::EnvFilter::try_new(&level) {
            Ok(filter) => {
                let _ = tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_ansi(false)
                    .with_writer(std::io::stderr)
                    .try_init();
            }
            Err(e) => eprintln!("sluice: SLUICE_LOG '{level}': {e}"),
        }
    });
}

fn in_async_context() -> Reply {
    Reply::error(
        500,
        "blocking_in_async_context",
        "a blocking call was made from inside an async runtime: use the async API",
    )
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
