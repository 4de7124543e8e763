//! The agent hub: agents hold one WebSocket each ([`session`]); operators
//! push instructions to them (the gateway serves the HTTP API over
//! [`Hub`]) and get acks, results and events back; agents can also stream
//! chat completions over their socket ([`chat`]), run by the [`Gateway`]
//! the hub is part of. The wire protocol is in `docs/agent-protocol.md`.
//!
//! State here is per process: the registry of connected agents, the
//! instruction records (bounded, oldest dropped first), and a broadcast
//! channel of events for `/v1/agents/events`. With Redis, [`cluster`]
//! routes instructions to agents connected to other replicas.

pub mod chat;
pub mod cluster;
pub mod frame;
mod heartbeat;
mod records;
pub mod session;

use records::Records;
pub use records::{Record, Status};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::config::AgentsConfig;
use tokio::sync::{broadcast, mpsc, watch};

/// What the hub needs from the gateway it runs in.
pub trait Gateway: Send + Sync + 'static {
    /// Runs an agent's chat completion request (an OpenAI request body,
    /// streamed) through the gateway's request path with the agent's
    /// credential: an SSE response, or an error response in the OpenAI
    /// format with its status.
    fn chat(
        &self,
        body: bytes::Bytes,
        auth: Option<http::HeaderValue>,
    ) -> std::pin::Pin<Box<dyn Future<Output = http::Response<axum::body::Body>> + Send>>;
}

/// The agent groups a key is limited to; `None` = every agent.
pub type Scope = Option<Vec<Arc<str>>>;

/// Whether a key limited to `scope` may see and instruct an agent in `groups`.
pub fn in_scope(scope: &Scope, groups: &[Arc<str>]) -> bool {
    scope
        .as_ref()
        .is_none_or(|s| groups.iter().any(|g| s.contains(g)))
}

/// The `outcome` label of `sluice_agent_instructions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A frame waiting to go to an agent. Each is one pointer (plus its tag):
/// the queue's slots are allocated per agent, so they are kept small.
pub enum Outbound {
    /// A JSON text frame.
    Text(Box<String>),
    /// An instruction (its id, its frame): its record is marked delivered
    /// once it is written.
    Instruction(Box<(Arc<str>, String)>),
    /// A heartbeat ([`heartbeat`]).
    Ping,
}

impl Outbound {
    pub fn text(s: String) -> Self {
        Outbound::Text(Box::new(s))
    }
}

/// Why a session was told to end from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    None,
    Replaced,
    Shutdown,
    /// Silent for longer than `missed_heartbeats` allow.
    Silent,
}

/// One connected agent, as the rest of the hub sees it.
pub struct AgentHandle {
    pub id: Arc<str>,
    pub groups: Vec<Arc<str>>,
    pub capabilities: Vec<String>,
    /// Tools it serves (MCP's shape, its own names).
    pub tools: Vec<Value>,
    pub session: u64,
    pub connected_unix_ms: u64,
    /// Monotonic nanoseconds of the last frame (or pong) from the agent.
    pub last_seen: AtomicU64,
    pub tx: mpsc::Sender<Outbound>,
    /// Instructions sent to it and not yet acknowledged.
    pending: Mutex<HashSet<Arc<str>>>,
    kick: watch::Sender<Kick>,
}

impl AgentHandle {
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn presence(&self, replica: &str) -> Value {
        let seen = sluice_core::resilience::now_nanos()
            .saturating_sub(self.last_seen.load(Ordering::Relaxed));
        json!({
            "agent_id": &*self.id,
            "groups": self.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
            "capabilities": self.capabilities,
            "tools": self.tools.iter().map(|t| &t["name"]).collect::<Vec<_>>(),
            "connected_at": sluice_core::config::time::format_rfc3339_millis(self.connected_unix_ms),
            "last_seen_ms_ago": seen / 1_000_000,
            "queue_depth": self.queue_depth(),
            "replica": replica,
        })
    }
}

/// Why an instruction could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    NotConnected,
    /// The caller's key may not instruct this agent (agent_groups).
    NotAllowed,
    /// The agent's outbound queue is full (it is slow or stuck).
    QueueFull {
        depth: usize,
    },
}

pub struct Hub {
    pub cfg: AgentsConfig,
    agents: RwLock<HashMap<Arc<str>, Arc<AgentHandle>>>,
    records: Mutex<Records>,
    events: broadcast::Sender<Arc<str>>,
    next_session: AtomicU64,
    next_instruction: AtomicU64,
    id_seed: u64,
    pub shutdown: watch::Sender<bool>,
    pub metrics: HubMetrics,
    /// This process's name among replicas.
    pub replica: String,
    /// Set when Redis is configured: instructions reach other replicas.
    pub cluster: std::sync::OnceLock<Arc<cluster::Cluster>>,
    /// `max_connects_per_sec`'s bucket: (tokens, when last filled, s).
    pacer: Mutex<(f64, f64)>,
    beats: heartbeat::Beats,
    /// Bumped whenever an agent comes or goes here ([`Hub::membership`]).
    members: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct HubMetrics {
    pub connected: prometheus_client::metrics::gauge::Gauge,
    pub evictions: prometheus_client::metrics::counter::Counter,
    pub instructions: prometheus_client::metrics::family::Family<
        OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    /// `instructions`' series, looked up once (a push counts without
    /// hashing its label).
    outcomes: Vec<(&'static str, prometheus_client::metrics::counter::Counter)>,
}

impl Default for HubMetrics {
    /// Every instruction outcome's series from the start, at zero.
    fn default() -> Self {
        let mut m = Self {
            connected: Default::default(),
            evictions: Default::default(),
            instructions: Default::default(),
            outcomes: Vec::new(),
        };
        for outcome in ["queued", "overflow", "acked", "completed", "undelivered"] {
            let c = m
                .instructions
                .get_or_create(&OutcomeLabels { outcome })
                .clone();
            m.outcomes.push((outcome, c));
        }
        m
    }
}

impl Hub {
    pub fn new(cfg: AgentsConfig, metrics: HubMetrics) -> Arc<Self> {
        let (events, _) = broadcast::channel(cfg.events_buffer);
        let (shutdown, _) = watch::channel(false);
        let id_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        let pacer = Mutex::new((burst(&cfg), now_secs()));
        Arc::new(Self {
            pacer,
            beats: heartbeat::Beats::new(cfg.heartbeat),
            members: watch::Sender::new(0),
            replica: format!("{}-{:08x}", hostname(), id_seed as u32),
            cfg,
            agents: RwLock::new(HashMap::new()),
            records: Mutex::new(Records::default()),
            events,
            next_session: AtomicU64::new(1),
            next_instruction: AtomicU64::new(1),
            id_seed,
            shutdown,
            metrics,
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Admits one new connection under `max_connects_per_sec`; `Err` with
    /// how long until one would be. The bucket holds a tenth of a second's
    /// worth (at least 10, at most the rate): a storm is admitted at an
    /// even pace, not a second's worth at once — a thousand handshakes in
    /// the same instant would queue everything else on the replica behind
    /// them.
    pub fn admit_connect(&self) -> Result<(), Duration> {
        let rate = cfg_rate(&self.cfg);
        if rate == 0.0 {
            return Ok(());
        }
        let now = now_secs();
        let mut p = self.pacer.lock().unwrap_or_else(|e| e.into_inner());
        let level = (p.0 + (now - p.1).max(0.0) * rate).min(burst(&self.cfg));
        if level >= 1.0 {
            *p = (level - 1.0, now);
            Ok(())
        } else {
            *p = (level, now);
            Err(Duration::from_secs_f64((1.0 - level) / rate))
        }
    }

    /// How widely agents should spread a reconnect: the time every agent
    /// here would take to get back in at `max_connects_per_sec` (at least
    /// a second).
    pub fn reconnect_jitter_ms(&self) -> u64 {
        let rate = self.cfg.max_connects_per_sec;
        if rate == 0 {
            return 1000;
        }
        (self.connected() as u64 * 1000 / rate).max(1000)
    }

    /// The close reason agents get at shutdown: reconnect elsewhere,
    /// spread over the jitter.
    pub fn going_away_reason(&self) -> String {
        format!(
            "server shutting down; reconnect elsewhere after a random 0-{} ms",
            self.reconnect_jitter_ms()
        )
    }

    pub fn get(&self, id: &str) -> Option<Arc<AgentHandle>> {
        self.agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    pub fn list(&self, group: Option<&str>) -> Vec<Arc<AgentHandle>> {
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = agents
            .values()
            .filter(|a| group.is_none_or(|g| a.groups.iter().any(|x| &**x == g)))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The connected agents `pick` selects (unsorted).
    pub fn select(&self, pick: impl Fn(&AgentHandle) -> bool) -> Vec<Arc<AgentHandle>> {
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        agents.values().filter(|a| pick(a)).cloned().collect()
    }

    pub fn connected(&self) -> usize {
        self.agents.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Queued frames over all agents (for the gauge).
    pub fn total_queue_depth(&self) -> usize {
        let agents = self.agents.read().unwrap_or_else(|p| p.into_inner());
        agents.values().map(|a| a.queue_depth()).sum()
    }

    /// Registers a new session; an older one with the same id is told to
    /// go (`Replaced`). Returns the handle, the queue's receiving end and
    /// the kick signal.
    pub fn register(
        &self,
        id: Arc<str>,
        groups: Vec<Arc<str>>,
        (capabilities, tools): (Vec<String>, Vec<Value>),
    ) -> (
        Arc<AgentHandle>,
        mpsc::Receiver<Outbound>,
        watch::Receiver<Kick>,
    ) {
        let (tx, rx) = mpsc::channel(self.cfg.queue_depth);
        let (kick, kick_rx) = watch::channel(Kick::None);
        let handle = Arc::new(AgentHandle {
            id: id.clone(),
            groups,
            capabilities,
            tools,
            session: self.next_session.fetch_add(1, Ordering::Relaxed),
            connected_unix_ms: unix_ms(),
            last_seen: AtomicU64::new(sluice_core::resilience::now_nanos()),
            tx,
            pending: Mutex::new(HashSet::new()),
            kick,
        });
        let old = {
            let mut agents = self.agents.write().unwrap_or_else(|p| p.into_inner());
            // Read under the registry's lock: `close_all` raises the flag,
            // then kicks whatever the registry holds — a session is either
            // in it by then or sees the flag here.
            if *self.shutdown.borrow() {
                let _ = handle.kick.send(Kick::Shutdown);
            }
            agents.insert(id.clone(), handle.clone())
        };
        self.beats.add(&handle);
        self.members.send_modify(|n| *n += 1);
        match old {
            Some(old) => {
                let _ = old.kick.send(Kick::Replaced);
            }
            None => {
                self.metrics.connected.inc();
            }
        }
        sluice_core::probes::agent_connect(&id, handle.groups.len());
        self.event(json!({
            "type": "agent.connected",
            "agent_id": &*id,
            "groups": handle.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
            "replica": self.replica,
        }));
        if let Some(c) = self.cluster.get() {
            c.announce(&handle);
        }
        (handle, rx, kick_rx)
    }

    /// Ends a session: removes it (unless a newer one replaced it) and
    /// reports every instruction it had not acknowledged as undelivered.
    pub fn unregister(&self, handle: &AgentHandle, reason: &str, evicted: bool) {
        let removed = {
            let mut agents = self.agents.write().unwrap_or_else(|p| p.into_inner());
            match agents.get(&handle.id) {
                Some(cur) if cur.session == handle.session => {
                    agents.remove(&handle.id);
                    true
                }
                _ => false,
            }
        };
        self.beats.remove(handle);
        if removed {
            self.members.send_modify(|n| *n += 1);
            self.metrics.connected.dec();
            if let Some(c) = self.cluster.get() {
                c.withdraw(handle);
            }
        }
        if evicted {
            self.metrics.evictions.inc();
        }
        sluice_core::probes::agent_disconnect(&handle.id, reason, evicted);
        let pending: Vec<Arc<str>> = handle
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for id in &pending {
            self.set_status(id, Status::Undelivered, None);
        }
        self.event(json!({
            "type": if evicted { "agent.evicted" } else { "agent.disconnected" },
            "agent_id": &*handle.id,
            "groups": names(&handle.groups),
            "reason": reason,
            "undelivered": pending.iter().map(|p| &**p).collect::<Vec<_>>(),
        }));
    }

    /// Tells a session a newer one (on another replica) replaced it.
    pub fn kick_replaced(&self, agent: &AgentHandle) {
        let _ = agent.kick.send(Kick::Replaced);
    }

    /// A fresh instruction id: `ins_` and 24 hex digits.
    pub fn new_instruction_id(&self) -> Arc<str> {
        let n = self.next_instruction.fetch_add(1, Ordering::Relaxed);
        instruction_id(self.id_seed, n as u32)
    }

    /// Records and queues an instruction for a local agent.
    pub fn send_local<P: serde::Serialize + ?Sized>(
        &self,
        agent: &AgentHandle,
        id: Arc<str>,
        payload: &P,
    ) -> Result<(), SendError> {
        // Serialized straight from the caller's payload (no copy of it).
        #[derive(serde::Serialize)]
        struct Frame<'a, P: ?Sized> {
            r#type: &'static str,
            id: &'a str,
            payload: &'a P,
        }
        let frame = serde_json::to_string(&Frame {
            r#type: "instruction",
            id: &id,
            payload,
        })
        .unwrap_or_default();
        self.create_record(&id, agent.id.clone(), agent.groups.clone());
        agent
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone());
        match agent
            .tx
            .try_send(Outbound::Instruction(Box::new((id.clone(), frame))))
        {
            Ok(()) => {
                self.count("queued");
                Ok(())
            }
            Err(e) => {
                agent
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                self.forget(&id);
                self.count("overflow");
                Err(match e {
                    mpsc::error::TrySendError::Full(_) => SendError::QueueFull {
                        depth: self.cfg.queue_depth,
                    },
                    mpsc::error::TrySendError::Closed(_) => SendError::NotConnected,
                })
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        match self.metrics.outcomes.iter().find(|(o, _)| *o == outcome) {
            Some((_, c)) => c.inc(),
            None => self
                .metrics
                .instructions
                .get_or_create(&OutcomeLabels { outcome })
                .inc(),
        };
    }

    pub fn event(&self, mut e: Value) {
        if self.events.receiver_count() > 0 {
            stamp(&mut e);
            self.emit(e);
        }
    }

    /// Sends event `e` (stamped) to the subscribers.
    fn emit(&self, e: Value) {
        let _ = self.events.send(Arc::from(e.to_string()));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// Changes whenever an agent connects here or leaves (its tools come or
    /// go with it). Watching this, unlike [`Hub::subscribe`], does not make
    /// every instruction's status change build and send an event.
    pub fn membership(&self) -> watch::Receiver<u64> {
        self.members.subscribe()
    }

    /// Tells every session to close with a "reconnect elsewhere" frame and
    /// waits (up to `max`) for them to go.
    pub async fn close_all(&self, max: Duration) {
        // Stored even with no receiver (`register` reads it).
        self.shutdown.send_replace(true);
        for a in self
            .agents
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = a.kick.send(Kick::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + max;
        while self.connected() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `ins_`, `seed` in 16 hex digits and `n` in 8: what
/// `format!("ins_{seed:016x}{n:08x}")` writes. That `format!` cost ~2,100
/// instructions per id; written digit by digit, an instruction posted
/// across replicas costs ~1,100 fewer (callgrind).
fn instruction_id(seed: u64, n: u32) -> Arc<str> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(28);
    id.push_str("ins_");
    let digits = (0..16).rev().map(|i| seed >> (4 * i));
    let digits = digits.chain((0..8).rev().map(|i| u64::from(n) >> (4 * i)));
    id.extend(digits.map(|d| char::from(HEX[(d & 0xf) as usize])));
    Arc::from(id)
}

/// Marks event `e` with the time it happened.
fn stamp(e: &mut Value) {
    e["ts"] = Value::String(sluice_core::config::time::format_rfc3339_millis(unix_ms()));
}

fn names(groups: &[Arc<str>]) -> Vec<&str> {
    groups.iter().map(|g| &**g).collect()
}

/// The pacing bucket's depth (see [`Hub::admit_connect`]).
fn burst(cfg: &AgentsConfig) -> f64 {
    let rate = cfg_rate(cfg);
    (rate / 10.0).max(10.0).min(rate)
}

fn cfg_rate(cfg: &AgentsConfig) -> f64 {
    cfg.max_connects_per_sec as f64
}

fn now_secs() -> f64 {
    sluice_core::resilience::now_nanos() as f64 / 1e9
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sluice".to_owned())
}

#[cfg(test)]
mod tests;
