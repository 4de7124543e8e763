//! More than one replica: agents' presence lives in Redis, and an
//! instruction for an agent connected elsewhere travels by pub/sub.
//!
//! - `sluice:replica:{replica}` — the replica's liveness: TTL
//!   `presence_ttl_ms`, refreshed every third of it (one key per replica,
//!   whatever its agents' count). An agent whose replica's key is gone is
//!   not present: a dead replica's agents vanish within the TTL.
//! - `sluice:agent:{id}` — JSON presence (replica, session, groups, …),
//!   written on hello; removed on disconnect only by the session that wrote
//!   it. Its own TTL is long (an hour, or four presence TTLs) and refreshed
//!   a slice of agents per tick, so idle agents cost Redis nearly nothing;
//!   when the replica's key was found missing (Redis restarted, or this
//!   process stalled past the TTL) every agent's key is written again.
//! - `sluice:group:{g}` — a set of agent ids (stale ids are filtered out by
//!   their missing presence).
//! - channel `sluice:hub:{replica}` — each replica listens on its own:
//!   `deliver` (an instruction for one of its agents) and `status` (an
//!   instruction it sent elsewhere moved on: delivered, acked, completed,
//!   undelivered; a `delivered` that an ack follows within
//!   `outbox::HOLD` is left out, see `outbox.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_core::config::RedisConfig;
use tokio::sync::mpsc;

use super::{AgentHandle, Hub, Scope, SendError, Status};

mod messages;
mod outbox;
mod scripts;
use messages::{Message, StatusMessage, Whereabouts};
use outbox::{Update, publisher};
use scripts::{LOOKUP, ROUTE, WITHDRAW};

pub struct Cluster {
    conn: ConnectionManager,
    replica: String,
    /// The replica key's lifetime (`presence_ttl_ms`).
    ttl: Duration,
    /// An agent key's lifetime: long, refreshed slowly.
    agent_ttl: Duration,
    timeout: Duration,
    hub: Weak<Hub>,
    /// Instructions delivered here for another replica: id → the channel
    /// of the replica it came from (shared: a status update allocates none).
    origins: Mutex<HashMap<Arc<str>, Arc<str>>>,
    lookup: redis::Script,
    route: redis::Script,
    /// Status updates for other replicas (channel, message), sent by
    /// [`publisher`].
    statuses: mpsc::Sender<Update>,
    /// Status updates dropped because [`STATUS_QUEUE`] was full.
    dropped: AtomicU64,
}

/// Status updates waiting for Redis; past it they are dropped (with a
/// warning), as they were lost when Redis timed out.
const STATUS_QUEUE: usize = 1024;

fn presence_key(id: &str) -> String {
    format!("sluice:agent:{id}")
}

const REPLICA_PREFIX: &str = "sluice:replica:";

fn replica_key(replica: &str) -> String {
    format!("{REPLICA_PREFIX}{replica}")
}

/// The set of agents that declared tools (their presence holds them).
const TOOL_AGENTS: &str = "sluice:agent-tools";

fn group_key(g: &str) -> String {
    format!("sluice:group:{g}")
}

/// The channels' common start: a replica's is this and its name.
const CHANNEL_PREFIX: &str = "sluice:hub:";

fn channel(replica: &str) -> String {
    format!("{CHANNEL_PREFIX}{replica}")
}

impl Cluster {
    /// Connects (lazily) and starts the listener and presence refresher.
    pub fn start(hub: &Arc<Hub>, redis: &RedisConfig) -> anyhow::Result<Arc<Self>> {
        let conn = sluice_core::redis_conn::connect(redis).map_err(anyhow::Error::msg)?;
        let (statuses, queued) = mpsc::channel(STATUS_QUEUE);
        tokio::spawn(publisher(conn.clone(), redis.timeout, queued));
        let c = Arc::new(Self {
            conn,
            replica: hub.replica.clone(),
            ttl: hub.cfg.presence_ttl,
            agent_ttl: (hub.cfg.presence_ttl * 4).max(Duration::from_secs(3600)),
            timeout: redis.timeout,
            hub: Arc::downgrade(hub),
            origins: Mutex::new(HashMap::new()),
            lookup: redis::Script::new(LOOKUP),
            route: redis::Script::new(ROUTE),
            statuses,
            dropped: AtomicU64::new(0),
        });
        let client = redis::Client::open(redis.url.expose())?;
        tokio::spawn(listen(c.clone(), client));
        tokio::spawn(refresh(c.clone()));
        Ok(c)
    }

    fn session_key(&self, a: &AgentHandle) -> String {
        format!("{}#{}", self.replica, a.session)
    }

    fn presence_value(&self, a: &AgentHandle) -> String {
        json!({
            "agent_id": &*a.id,
            "replica": self.replica,
            "session_key": self.session_key(a),
            "groups": a.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
            "capabilities": a.capabilities,
            "tools": a.tools,
            "connected_at": sluice_core::config::time::format_rfc3339_millis(a.connected_unix_ms),
        })
        .to_string()
    }

    async fn run(&self, pipe: redis::Pipeline) -> Result<(), ()> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "agent hub: redis error");
                Err(())
            }
            Err(_) => {
                tracing::warn!("agent hub: redis timed out");
                Err(())
            }
        }
    }

    /// An agent's presence key and set memberships; with `get`, the SET
    /// answers the value it replaced.
    fn write_presence(&self, pipe: &mut redis::Pipeline, a: &AgentHandle, get: bool) {
        let set = pipe
            .cmd("SET")
            .arg(presence_key(&a.id))
            .arg(self.presence_value(a))
            .arg("PX")
            .arg(self.agent_ttl.as_millis() as u64);
        if get {
            set.arg("GET");
        } else {
            set.ignore();
        }
        for g in &a.groups {
            pipe.cmd("SADD").arg(group_key(g)).arg(&*a.id).ignore();
        }
        if !a.tools.is_empty() {
            pipe.cmd("SADD").arg(TOOL_AGENTS).arg(&*a.id).ignore();
        }
    }

    /// A session started here: its presence and groups, in the background;
    /// a session with the same id on another replica is told to go.
    pub fn announce(self: &Arc<Self>, a: &AgentHandle) {
        let mut pipe = redis::pipe();
        self.write_presence(&mut pipe, a, true);
        let me = self.clone();
        let agent_id = a.id.to_string();
        tokio::spawn(async move {
            let mut conn = me.conn.clone();
            let r =
                tokio::time::timeout(me.timeout, pipe.query_async::<(Option<String>,)>(&mut conn))
                    .await;
            let Ok(Ok((Some(old),))) = r else { return };
            let Ok(old) = serde_json::from_str::<Value>(&old) else {
                return;
            };
            let (Some(replica), Some(session_key)) = (
                old.get("replica").and_then(Value::as_str),
                old.get("session_key").and_then(Value::as_str),
            ) else {
                return;
            };
            if replica != me.replica {
                let msg = json!({"op": "kick", "agent_id": agent_id, "session_key": session_key});
                let mut pipe = redis::pipe();
                pipe.cmd("PUBLISH")
                    .arg(channel(replica))
                    .arg(msg.to_string())
                    .ignore();
                let _ = me.run(pipe).await;
            }
        });
    }

    /// A session here ended: its presence goes, if it is still its own.
    pub fn withdraw(self: &Arc<Self>, a: &AgentHandle) {
        let script = redis::Script::new(WITHDRAW);
        let key = presence_key(&a.id);
        let session_key = self.session_key(a);
        let mut groups: Vec<String> = a.groups.iter().map(|g| group_key(g)).collect();
        if !a.tools.is_empty() {
            groups.push(TOOL_AGENTS.to_owned());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.key(key).arg(session_key);
            for g in groups {
                inv.arg(g);
            }
            let mut conn = me.conn.clone();
            let _ = tokio::time::timeout(me.timeout, inv.invoke_async::<i64>(&mut conn)).await;
        });
    }

    async fn lookup(&self, agent_id: &str) -> Option<Value> {
        let mut conn = self.conn.clone();
        let mut inv = self.lookup.key(presence_key(agent_id));
        inv.arg(REPLICA_PREFIX);
        let v: Option<String> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .ok()?
            .ok()?;
        serde_json::from_str(&v?).ok()
    }

    /// The replica an agent is connected to, if it is alive.
    pub async fn replica_of(&self, agent_id: &str) -> Option<String> {
        let p = self.lookup(agent_id).await?;
        p.get("replica")?.as_str().map(str::to_owned)
    }

    /// An agent's presence wherever it is connected.
    pub async fn presence(&self, agent_id: &str) -> Option<Value> {
        self.lookup(agent_id).await.map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("session_key");
            }
            v
        })
    }

    /// Members of a group connected to any replica.
    pub async fn group_members(&self, group: &str) -> Vec<String> {
        self.present(&group_key(group))
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// The presence (with its tools) of every agent that declared tools,
    /// on any replica.
    pub async fn tool_agents(&self) -> Vec<Value> {
        self.present(TOOL_AGENTS)
            .await
            .into_iter()
            .filter_map(|(_, p)| serde_json::from_str(&p).ok())
            .collect()
    }

    /// The agent ids in a set whose presence key still exists, with it
    /// (stale ids, of agents gone with their replica, are left out).
    async fn present(&self, set: &str) -> Vec<(String, String)> {
        let mut conn = self.conn.clone();
        let members = redis::cmd("SMEMBERS").arg(set).to_owned();
        let ids: Vec<String> =
            match tokio::time::timeout(self.timeout, members.query_async(&mut conn)).await {
                Ok(Ok(v)) => v,
                _ => return Vec::new(),
            };
        if ids.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = ids.iter().map(|i| presence_key(i)).collect();
        let mget = redis::cmd("MGET").arg(&keys).to_owned();
        let present: Vec<Option<String>> =
            match tokio::time::timeout(self.timeout, mget.query_async(&mut conn)).await {
                Ok(Ok(v)) => v,
                _ => return Vec::new(),
            };
        let found: Vec<(String, String, Value)> = ids
            .into_iter()
            .zip(present)
            .filter_map(|(id, p)| {
                let p = p?;
                let v = serde_json::from_str::<Value>(&p).ok()?;
                Some((id, p, v))
            })
            .collect();
        // Only agents whose replica is alive.
        let mut replicas: Vec<&str> = found
            .iter()
            .filter_map(|(_, _, v)| v.get("replica")?.as_str())
            .collect();
        replicas.sort_unstable();
        replicas.dedup();
        let mut pipe = redis::pipe();
        for r in &replicas {
            pipe.cmd("EXISTS").arg(replica_key(r));
        }
        let alive: Vec<bool> =
            match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
                Ok(Ok(v)) => v,
                _ => return Vec::new(),
            };
        let live = |r: Option<&str>| {
            r.and_then(|r| replicas.binary_search(&r).ok())
                .is_some_and(|i| alive.get(i).copied().unwrap_or(false))
        };
        found
            .iter()
            .filter(|(_, _, v)| live(v.get("replica").and_then(Value::as_str)))
            .map(|(id, p, _)| (id.clone(), p.clone()))
            .collect()
    }

    /// Sends an instruction to the replica `agent_id` is connected to; the
    /// record stays here and follows the status updates that come back.
    /// Returns that replica's name. Sending the same id again (the agent
    /// moved) starts its record over. One Redis round trip ([`ROUTE`]
    /// finds the agent, checks `scope` against its groups and publishes),
    /// so the record is made first, its events held until the presence
    /// names the agent's groups.
    pub async fn route<P: Serialize + Sync + ?Sized>(
        &self,
        hub: &Hub,
        agent_id: &str,
        id: Arc<str>,
        payload: &P,
        scope: &Scope,
    ) -> Result<String, SendError> {
        #[derive(Serialize)]
        struct Deliver<'a, P: ?Sized> {
            op: &'static str,
            id: &'a str,
            agent_id: &'a str,
            payload: &'a P,
            origin: &'a str,
        }
        let msg = serde_json::to_string(&Deliver {
            op: "deliver",
            id: &id,
            agent_id,
            payload,
            origin: &self.replica,
        })
        .unwrap_or_default();
        let pending = hub.create_record_pending(&id, Arc::from(agent_id));
        let mut inv = self.route.key(presence_key(agent_id));
        inv.arg(REPLICA_PREFIX)
            .arg(&self.replica)
            .arg(CHANNEL_PREFIX)
            .arg(msg);
        if let Some(groups) = scope {
            inv.arg("1");
            for g in groups {
                inv.arg(&**g);
            }
        }
        let mut conn = self.conn.clone();
        let sent: Result<Result<Option<(String, i64)>, _>, _> =
            tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await;
        let presence = match sent {
            Ok(Ok(Some((presence, n)))) if n > 0 => Some(presence),
            Ok(Ok(Some((_, -1)))) => {
                pending.unsent();
                return Err(SendError::NotAllowed);
            }
            _ => None,
        };
        let found = presence
            .as_deref()
            .and_then(|p| serde_json::from_str::<Whereabouts>(p).ok());
        match found {
            Some(Whereabouts {
                replica: Some(replica),
                groups,
            }) => {
                pending.placed(groups.iter().map(|g| Arc::from(&**g)).collect());
                Ok(replica)
            }
            // Not present, or nobody listens on its replica's channel (the
            // replica is gone and its presence keys not expired yet): the
            // agent is not connected, and the record never existed (or is
            // as it was before this try) — a caller waiting for the agent
            // to come back tries again, so no junk accumulates.
            _ => {
                pending.unsent();
                Err(SendError::NotConnected)
            }
        }
    }

    /// An instruction's status moved here: tell the replica it came from.
    pub fn status_changed(&self, id: &str, status: Status, result: Option<&Value>) {
        let origin = {
            let mut o = self.origins.lock().unwrap_or_else(|p| p.into_inner());
            if status.is_final() {
                o.remove_entry(id)
            } else {
                o.get_key_value(id).map(|(id, c)| (id.clone(), c.clone()))
            }
        };
        let Some((id_arc, channel)) = origin else {
            return;
        };
        let msg = StatusMessage {
            op: "status",
            id,
            status: status.name(),
            result,
        };
        let msg = serde_json::to_string(&msg).unwrap_or_default();
        let update = Update {
            channel,
            id: id_arc,
            delivered: status == Status::Delivered,
            msg,
        };
        if self.statuses.try_send(update).is_err() {
            // Logged at the 1st, 2nd, 4th, 8th… drop: Redis down under
            // load must not flood the log.
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "agent hub: {STATUS_QUEUE} status updates wait for redis; further ones are dropped"
                );
            }
        }
    }

    fn on_message(self: &Arc<Self>, text: &str) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let Ok(m) = serde_json::from_str::<Message>(text) else {
            return;
        };
        match &*m.op {
            "deliver" => {
                let id: Arc<str> = Arc::from(&*m.id);
                self.origins
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), Arc::from(channel(&m.origin)));
                let sent = match (hub.get(&m.agent_id), m.payload) {
                    (Some(agent), Some(raw)) => hub.send_local(&agent, id.clone(), raw).is_ok(),
                    (Some(agent), None) => hub.send_local(&agent, id.clone(), &Value::Null).is_ok(),
                    (None, _) => false,
                };
                if !sent {
                    self.status_changed(&id, Status::Undelivered, None);
                }
            }
            "kick" => {
                if let Some(agent) = hub.get(&m.agent_id)
                    && self.session_key(&agent) == m.session_key
                {
                    hub.kick_replaced(&agent);
                }
            }
            "status" => {
                let status = match &*m.status {
                    "delivered" => Status::Delivered,
                    "acked" => Status::Acked,
                    "completed" => Status::Completed,
                    "undelivered" => Status::Undelivered,
                    _ => return,
                };
                hub.set_status(&m.id, status, m.result);
            }
            _ => {}
        }
    }
}

/// Listens on this replica's channel, reconnecting after a failure.
async fn listen(c: Arc<Cluster>, client: redis::Client) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut ps) => {
                if ps.subscribe(channel(&c.replica)).await.is_ok() {
                    backoff = Duration::from_millis(100);
                    let mut stream = ps.on_message();
                    while let Some(msg) = stream.next().await {
                        // Read in place (no copy of the message).
                        if let Ok(text) = std::str::from_utf8(msg.get_payload_bytes()) {
                            c.on_message(text);
                        }
                    }
                }
                tracing::warn!("agent hub: redis subscription lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "agent hub: cannot subscribe in redis"),
        }
        if c.hub.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Every third of `presence_ttl_ms`: this replica's liveness key, and the
/// presence of a slice of its agents (each once per third of their long
/// TTL) — or of all of them when the liveness key was missing (the first
/// tick, Redis restarted or flushed, this process stalled past the TTL).
async fn refresh(c: Arc<Cluster>) {
    let period = c.ttl / 3;
    let slots = (c.agent_ttl.as_millis() / 3 / period.as_millis().max(1)).max(1) as u64;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slot = 0u64;
    loop {
        tick.tick().await;
        let Some(hub) = c.hub.upgrade() else { return };
        let mut conn = c.conn.clone();
        let alive = redis::cmd("SET")
            .arg(replica_key(&c.replica))
            .arg(super::unix_ms())
            .arg("PX")
            .arg(c.ttl.as_millis() as u64)
            .arg("GET")
            .to_owned();
        let was =
            match tokio::time::timeout(c.timeout, alive.query_async::<Option<String>>(&mut conn))
                .await
            {
                Ok(Ok(was)) => was,
                _ => continue,
            };
        slot += 1;
        let agents: Vec<Arc<AgentHandle>> = if was.is_none() {
            hub.list(None)
        } else {
            hub.select(|a| a.session % slots == slot % slots)
        };
        drop(hub);
        for chunk in agents.chunks(500) {
            let mut pipe = redis::pipe();
            for a in chunk {
                c.write_presence(&mut pipe, a, false);
            }
            let _ = c.run(pipe).await;
        }
    }
}

/// The groups a presence names.
pub fn presence_groups(p: &Value) -> Vec<Arc<str>> {
    p.get("groups")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(Arc::from).collect())
        .unwrap_or_default()
}
