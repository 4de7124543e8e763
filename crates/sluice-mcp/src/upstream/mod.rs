//! One upstream MCP server: connected, initialized, its lists fetched and
//! kept current, restarted with back-off when it goes away, stopped at
//! shutdown.

pub mod http;
pub mod router;
pub mod stdio;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use serde_json::{Value, json};
use sluice_core::config::{McpServerConfig, McpTransport};
use tokio::sync::{broadcast, mpsc, watch};

use self::router::{Event, Router};
use crate::rpc::{self, RpcError};

/// The protocol revision the gateway asks upstream servers for.
pub const UPSTREAM_VERSION: &str = "2025-11-25";
/// List pages fetched from one server at most.
const MAX_PAGES: usize = 100;
/// A server that stayed up this long starts its back-off over.
const HEALTHY: Duration = Duration::from_secs(60);
const FIRST_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Ready,
    Down,
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Down => "down",
            Self::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Status {
    pub state: State,
    pub last_error: Option<String>,
    /// Times it was started again after going away.
    pub restarts: u64,
    /// The child's process id (stdio servers).
    pub pid: Option<u32>,
    /// The server's `serverInfo` and negotiated version when ready.
    pub server_info: Option<Value>,
    pub protocol_version: Option<String>,
}

/// What a server offers, as it named it.
#[derive(Debug, Default)]
pub struct Catalog {
    pub tools: Vec<Value>,
    pub resources: Vec<Value>,
    pub templates: Vec<Value>,
    pub prompts: Vec<Value>,
}

enum Conn {
    Stdio(stdio::Stdio),
    Http(Arc<http::Http>),
}

/// A connected, initialized server.
struct Live {
    conn: Conn,
    router: Arc<Router>,
    capabilities: Value,
    /// The GET stream of an HTTP server, stopped with the connection.
    listen: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(l) = &self.listen {
            l.abort();
        }
    }
}

pub struct Upstream {
    pub name: String,
    pub cfg: McpServerConfig,
    live: ArcSwapOption<Live>,
    catalog: ArcSwap<Catalog>,
    status: Mutex<Status>,
    stop: watch::Sender<bool>,
    /// Which list changed (`tools`, `resources`, `prompts`), for clients.
    changed: broadcast::Sender<&'static str>,
    /// An HTTP server's pooled connections (kept across reconnects).
    client: Option<sluice_providers::transport::ProviderClient>,
    /// Largest message the server may send.
    max_message: usize,
}

impl Upstream {
    /// Starts supervising the server (needs a tokio runtime).
    pub fn start(
        cfg: McpServerConfig,
        changed: broadcast::Sender<&'static str>,
        max_message: usize,
    ) -> Arc<Self> {
        let client =
            match &cfg.transport {
                McpTransport::Http { url, .. } => Some(
                    sluice_providers::transport::client_for_url(url, 16, Duration::from_secs(10)),
                ),
                McpTransport::Stdio { .. } => None,
            };
        for v in &cfg.unset_vars {
            tracing::warn!(target: "sluice::mcp", server = %cfg.name, var = %v, "environment variable is not set: using an empty value");
        }
        let (stop, stopped) = watch::channel(false);
        let me = Arc::new(Self {
            name: cfg.name.clone(),
            cfg,
            live: ArcSwapOption::empty(),
            catalog: ArcSwap::from_pointee(Catalog::default()),
            status: Mutex::new(Status {
                state: State::Starting,
                last_error: None,
                restarts: 0,
                pid: None,
                server_info: None,
                protocol_version: None,
            }),
            stop,
            changed,
            client,
            max_message,
        });
        tokio::spawn(me.clone().supervise(stopped));
        me
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.live.load().is_some()
    }

    /// Requests in flight to this server.
    pub fn in_flight(&self) -> usize {
        self.live
            .load()
            .as_ref()
            .map_or(0, |l| l.router.in_flight())
    }

    /// Stops the server (and its child) for good.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// One request, answered within the server's timeout. Progress the
    /// server reports goes to `progress` (with the caller's token).
    /// Dropping the future cancels the request upstream.
    pub async fn request(
        &self,
        method: &str,
        params: Option<Value>,
        progress: Option<mpsc::Sender<Value>>,
    ) -> Result<Value, RpcError> {
        let Some(live) = self.live.load_full() else {
            let s = self.status();
            let why = s.last_error.unwrap_or_else(|| s.state.name().to_owned());
            return Err(RpcError::new(
                rpc::UPSTREAM_UNAVAILABLE,
                format!("mcp server '{}' is unavailable ({why})", self.name),
            ));
        };
        call(
            &live,
            &self.name,
            method,
            params,
            progress,
            self.cfg.timeout,
        )
        .await
    }

    async fn supervise(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut delay = FIRST_DELAY;
        loop {
            let started = Instant::now();
            self.set(|s| s.state = State::Starting);
            let why = self.run_once(&mut stop).await;
            self.live.store(None);
            self.catalog.store(Arc::new(Catalog::default()));
            for k in ["tools", "resources", "prompts"] {
                let _ = self.changed.send(k);
            }
            if *stop.borrow() {
                self.set(|s| {
                    s.state = State::Stopped;
                    s.pid = None;
                });
                return;
            }
            tracing::warn!(target: "sluice::mcp", server = %self.name, error = %why, retry_ms = delay.as_millis() as u64, "mcp server unavailable: its tools are withdrawn");
            self.set(|s| {
                s.state = State::Down;
                s.last_error = Some(why);
                s.pid = None;
                s.server_info = None;
            });
            if started.elapsed() > HEALTHY {
                delay = FIRST_DELAY;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                self.set(|s| s.state = State::Stopped);
                return;
            }
            delay = (delay * 2).min(self.cfg.max_restart_delay);
            self.set(|s| s.restarts += 1);
        }
    }

    /// Connects, initializes, serves until the connection ends; says why.
    async fn run_once(&self, stop: &mut watch::Receiver<bool>) -> String {
        let (etx, mut events) = mpsc::unbounded_channel();
        let router = Arc::new(Router::new(&self.name, etx));
        let (conn, mut child) = match self.connect(router.clone()) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let init = async {
            let live = self.initialize(conn, router).await?;
            let live = Arc::new(live);
            self.refresh(&live, &["tools", "resources", "prompts"])
                .await;
            Ok::<_, String>(live)
        };
        let live = tokio::select! {
            r = init => r,
            e = wait(&mut child) => Err(e),
            _ = stop.changed() => Err("stopping".into()),
        };
        let live = match live {
            Ok(l) => l,
            Err(e) => {
                kill(child).await;
                return e;
            }
        };
        self.live.store(Some(live.clone()));
        self.set(|s| {
            s.state = State::Ready;
            s.last_error = None;
        });
        tracing::info!(target: "sluice::mcp", server = %self.name, tools = self.catalog().tools.len(), "mcp server ready");
        for k in ["tools", "resources", "prompts"] {
            let _ = self.changed.send(k);
        }
        let why = loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(Event::ListChanged(k)) => {
                        self.refresh(&live, &[k]).await;
                        let _ = self.changed.send(k);
                    }
                    Some(Event::Closed(why)) => break why,
                    None => break "the connection ended".to_owned(),
                },
                e = wait(&mut child) => break e,
                _ = stop.changed() => break "stopping".to_owned(),
            }
        };
        live.router.fail_all(&why);
        if let Conn::Http(h) = &live.conn
            && *stop.borrow()
        {
            h.close().await;
        }
        kill(child).await;
        why
    }

    fn connect(
        &self,
        router: Arc<Router>,
    ) -> Result<(Conn, Option<tokio::process::Child>), String> {
        match &self.cfg.transport {
            McpTransport::Stdio { command, env, cwd } => {
                let (s, child) = stdio::Stdio::spawn(
                    &self.name,
                    (command, env, cwd.as_deref()),
                    router,
                    self.max_message,
                )
                .map_err(|e| format!("cannot start {:?}: {e}", command[0]))?;
                self.set(|st| st.pid = s.pid);
                Ok((Conn::Stdio(s), Some(child)))
            }
            McpTransport::Http { url, headers } => {
                let h = http::Http::new(
                    self.client.clone().expect("an HTTP server has a client"),
                    url,
                    headers,
                    router,
                    self.max_message,
                )?;
                Ok((Conn::Http(Arc::new(h)), None))
            }
        }
    }

    async fn initialize(&self, conn: Conn, router: Arc<Router>) -> Result<Live, String> {
        let mut live = Live {
            conn,
            router,
            capabilities: Value::Null,
            listen: None,
        };
        let params = json!({
            "protocolVersion": UPSTREAM_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "sluice", "version": env!("CARGO_PKG_VERSION")},
        });
        let r = call(
            &live,
            &self.name,
            "initialize",
            Some(params),
            None,
            self.cfg.timeout,
        )
        .await
        .map_err(|e| format!("initialize failed: {}", e.message))?;
        let version = r["protocolVersion"]
            .as_str()
            .unwrap_or(UPSTREAM_VERSION)
            .to_owned();
        live.capabilities = r.get("capabilities").cloned().unwrap_or_default();
        if let Conn::Http(h) = &live.conn {
            h.set_version(&version);
        }
        send(
            &live,
            &rpc::notification("notifications/initialized", None),
            None,
        );
        if let Conn::Http(h) = &live.conn {
            live.listen = Some(tokio::spawn(h.clone().listen()));
        }
        self.set(|s| {
            s.server_info = r.get("serverInfo").cloned();
            s.protocol_version = Some(version);
        });
        Ok(live)
    }

    /// Fetches the named lists again (all pages).
    async fn refresh(&self, live: &Live, kinds: &[&str]) {
        let old = self.catalog();
        let mut next = Catalog {
            tools: old.tools.clone(),
            resources: old.resources.clone(),
            templates: old.templates.clone(),
            prompts: old.prompts.clone(),
        };
        for &k in kinds {
            if live.capabilities.get(k).is_none() {
                continue;
            }
            match k {
                "tools" => next.tools = self.list(live, "tools/list", "tools").await,
                "prompts" => next.prompts = self.list(live, "prompts/list", "prompts").await,
                _ => {
                    next.resources = self.list(live, "resources/list", "resources").await;
                    next.templates = self
                        .list(live, "resources/templates/list", "resourceTemplates")
                        .await;
                }
            }
        }
        self.catalog.store(Arc::new(next));
    }

    async fn list(&self, live: &Live, method: &str, field: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<Value> = None;
        for _ in 0..MAX_PAGES {
            let params = cursor.take().map(|c| json!({ "cursor": c }));
            match call(live, &self.name, method, params, None, self.cfg.timeout).await {
                Ok(mut r) => {
                    if let Some(Value::Array(items)) = r.get_mut(field).map(Value::take) {
                        out.extend(items);
                    }
                    match r.get("nextCursor") {
                        Some(c) if !c.is_null() => cursor = Some(c.clone()),
                        _ => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "sluice::mcp", server = %self.name, method, error = %e, "listing failed");
                    break;
                }
            }
        }
        out
    }
}

/// Sends one message; `id` is the request it belongs to (failed if it
/// cannot be sent).
fn send(live: &Live, msg: &Value, id: Option<u64>) -> Option<tokio::task::JoinHandle<()>> {
    match &live.conn {
        Conn::Stdio(s) => {
            if !s.send(msg)
                && let Some(id) = id
            {
                live.router.fail(
                    id,
                    RpcError::new(
                        rpc::UPSTREAM_UNAVAILABLE,
                        "the tool server's input is closed or full",
                    ),
                );
            }
            None
        }
        Conn::Http(h) => {
            let (h, msg) = (h.clone(), msg.clone());
            Some(tokio::spawn(async move { h.post(&msg, id).await }))
        }
    }
}

/// Cancels a request upstream when its caller goes away first.
struct Cancel<'a> {
    live: &'a Live,
    id: u64,
    task: Option<tokio::task::JoinHandle<()>>,
    armed: bool,
    reason: &'static str,
}

impl Drop for Cancel<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if self.live.router.forget(self.id) {
            let params = json!({"requestId": self.id, "reason": self.reason});
            send(
                self.live,
                &rpc::notification("notifications/cancelled", Some(params)),
                None,
            );
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn call(
    live: &Live,
    name: &str,
    method: &str,
    mut params: Option<Value>,
    progress: Option<mpsc::Sender<Value>>,
    timeout: Duration,
) -> Result<Value, RpcError> {
    let (id, rx) = live.router.register(&mut params, progress);
    let msg = rpc::request(&json!(id), method, params.as_ref());
    let mut guard = Cancel {
        live,
        id,
        task: None,
        armed: true,
        reason: "the client went away",
    };
    let answer = match &live.conn {
        // The answer comes on the POST's own response: read it here, not
        // in a task of its own (one wake-up less per call).
        Conn::Http(h) => {
            let post = h.post(&msg, Some(id));
            tokio::pin!(post);
            let mut rx = rx;
            let both = async {
                tokio::select! {
                    r = &mut rx => {
                        // The stream ends right after the answer; let it, so
                        // the connection goes back to the pool.
                        let _ = tokio::time::timeout(Duration::from_millis(100), &mut post).await;
                        r
                    }
                    () = &mut post => rx.await,
                }
            };
            tokio::time::timeout(timeout, both).await
        }
        Conn::Stdio(_) => {
            guard.task = send(live, &msg, Some(id));
            tokio::time::timeout(timeout, rx).await
        }
    };
    match answer {
        Ok(answer) => {
            guard.armed = false;
            answer.unwrap_or_else(|_| {
                Err(RpcError::new(
                    rpc::UPSTREAM_UNAVAILABLE,
                    format!("mcp server '{name}' went away during the request"),
                ))
            })
        }
        Err(_) => {
            guard.reason = "timed out at the gateway";
            Err(RpcError::new(
                rpc::REQUEST_TIMEOUT,
                format!(
                    "mcp server '{name}' did not answer {method} within {} ms",
                    timeout.as_millis()
                ),
            ))
        }
    }
}

/// Waits for a child to exit (never, for a server without one).
async fn wait(child: &mut Option<tokio::process::Child>) -> String {
    match child {
        Some(c) => match c.wait().await {
            Ok(s) => format!("the process exited ({s})"),
            Err(e) => format!("waiting on the process: {e}"),
        },
        None => std::future::pending().await,
    }
}

async fn kill(child: Option<tokio::process::Child>) {
    if let Some(mut c) = child {
        let _ = c.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.wait()).await;
    }
}
