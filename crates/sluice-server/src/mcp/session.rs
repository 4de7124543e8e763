//! MCP sessions (the handshake revisions) and the tool-call rate limits.
//!
//! A session holds what the handshake settled (the protocol revision),
//! the key that opened it, and its requests in flight (so a
//! `notifications/cancelled` can stop one). Upstream sessions are the
//! gateway's own, shared by every client, so a client's session needs no
//! mapping to upstream ones. With `[redis]` a session is written there too
//! (`sluice:mcp:session:{id}`, expiring with the TTL), so any replica can
//! continue it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::limits::Bucket;
use tokio::sync::oneshot;

pub struct Session {
    pub id: String,
    pub version: String,
    /// The key that opened it: only that key may use it.
    pub key: Option<Arc<str>>,
    last_used_ms: AtomicU64,
    /// When its Redis copy's expiry was last pushed back.
    redis_touched_ms: AtomicU64,
    inflight: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl Session {
    /// Registers a request in flight; the receiver fires when the client
    /// cancels it.
    pub fn start(self: &Arc<Self>, id: &serde_json::Value) -> (InFlight, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let key = id.to_string();
        lock(&self.inflight).insert(key.clone(), tx);
        (
            InFlight {
                session: self.clone(),
                key,
            },
            rx,
        )
    }

    /// The client cancelled request `id`: `true` when it was in flight.
    pub fn cancel(&self, id: &serde_json::Value) -> bool {
        lock(&self.inflight)
            .remove(&id.to_string())
            .is_some_and(|tx| tx.send(()).is_ok())
    }
}

/// Forgets a request in flight when it ends.
pub struct InFlight {
    session: Arc<Session>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.session.inflight).remove(&self.key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    (crate::clock::now_secs() * 1000.0) as u64
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    redis: Option<(redis::aio::ConnectionManager, Duration)>,
}

fn redis_key(id: &str) -> String {
    format!("sluice:mcp:session:{id}")
}

impl Sessions {
    /// Sessions kept in Redis as well (shared by every replica).
    pub fn with_redis(conn: redis::aio::ConnectionManager, timeout: Duration) -> Self {
        Self {
            map: Mutex::default(),
            redis: Some((conn, timeout)),
        }
    }

    /// Runs one Redis command in the background (a slow Redis never holds
    /// a request).
    fn spawn_redis(&self, cmd: redis::Cmd) {
        let Some((conn, timeout)) = self.redis.clone() else {
            return;
        };
        tokio::spawn(async move {
            let mut conn = conn;
            let r = tokio::time::timeout(timeout, cmd.query_async::<()>(&mut conn)).await;
            if !matches!(r, Ok(Ok(()))) {
                tracing::warn!(target: "sluice::mcp", "mcp session: redis write failed or timed out");
            }
        });
    }

    /// A new session; the oldest are forgotten past `max`, and any unused
    /// for `ttl`.
    pub fn open(
        &self,
        version: &str,
        key: Option<Arc<str>>,
        ttl: Duration,
        max: usize,
    ) -> Arc<Session> {
        let id = format!("{:032x}", rand::random::<u128>());
        let s = Arc::new(Session {
            id: id.clone(),
            version: version.to_owned(),
            key,
            last_used_ms: AtomicU64::new(now_ms()),
            redis_touched_ms: AtomicU64::new(now_ms()),
            inflight: Mutex::new(HashMap::new()),
        });
        let record = serde_json::json!({"version": version, "key": s.key.as_deref()});
        self.spawn_redis(
            redis::cmd("SET")
                .arg(redis_key(&id))
                .arg(record.to_string())
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .to_owned(),
        );
        let mut map = lock(&self.map);
        let now = now_ms();
        let ttl = ttl.as_millis() as u64;
        map.retain(|_, s| now.saturating_sub(s.last_used_ms.load(Ordering::Relaxed)) < ttl);
        while map.len() >= max {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.last_used_ms.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(id, s.clone());
        s
    }

    /// The live session `id`, touched: this replica's, else (with Redis)
    /// one another replica opened.
    pub async fn get(&self, id: &str, ttl: Duration) -> Option<Arc<Session>> {
        if let Some(s) = self.local(id, ttl) {
            return Some(s);
        }
        let (conn, timeout) = self.redis.clone()?;
        let mut conn = conn;
        let get = redis::cmd("GET").arg(redis_key(id)).to_owned();
        let v: Option<String> = tokio::time::timeout(timeout, get.query_async(&mut conn))
            .await
            .ok()?
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&v?).ok()?;
        let now = now_ms();
        let s = Arc::new(Session {
            id: id.to_owned(),
            version: v["version"].as_str()?.to_owned(),
            key: v["key"].as_str().map(Arc::from),
            last_used_ms: AtomicU64::new(now),
            redis_touched_ms: AtomicU64::new(now),
            inflight: Mutex::new(HashMap::new()),
        });
        lock(&self.map).insert(id.to_owned(), s.clone());
        Some(s)
    }

    fn local(&self, id: &str, ttl: Duration) -> Option<Arc<Session>> {
        let mut map = lock(&self.map);
        let s = map.get(id)?.clone();
        let now = now_ms();
        let ttl_ms = ttl.as_millis() as u64;
        if now.saturating_sub(s.last_used_ms.load(Ordering::Relaxed)) >= ttl_ms {
            map.remove(id);
            return None;
        }
        drop(map);
        s.last_used_ms.store(now, Ordering::Relaxed);
        // The shared copy lives as long as the session is used anywhere.
        if now.saturating_sub(s.redis_touched_ms.load(Ordering::Relaxed)) > ttl_ms / 4 {
            s.redis_touched_ms.store(now, Ordering::Relaxed);
            self.spawn_redis(
                redis::cmd("PEXPIRE")
                    .arg(redis_key(id))
                    .arg(ttl_ms)
                    .to_owned(),
            );
        }
        Some(s)
    }

    pub fn close(&self, id: &str) -> bool {
        self.spawn_redis(redis::cmd("DEL").arg(redis_key(id)).to_owned());
        lock(&self.map).remove(id).is_some()
    }

    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.map).is_empty()
    }
}

/// `mcp_rpm`: calls per minute per key and tool, and per tool for all
/// keys (a server's `mcp_rpm`). Buckets are kept per (key, tool) seen.
#[derive(Default)]
pub struct ToolLimits {
    buckets: Mutex<HashMap<(Arc<str>, String), Bucket>>,
}

/// Buckets kept at most; past it the idle ones are dropped (they are full).
const MAX_BUCKETS: usize = 100_000;

impl ToolLimits {
    /// Takes one call for `tool` from each limit that applies; `Err` with
    /// the seconds to wait when one is spent.
    pub fn take(
        &self,
        key: Option<(&Arc<str>, u64)>,
        tool: &str,
        tool_rpm: Option<u64>,
    ) -> Result<(), f64> {
        let now = crate::clock::now_secs();
        let mut b = lock(&self.buckets);
        if b.len() > MAX_BUCKETS {
            b.clear();
        }
        let all: Arc<str> = Arc::from("");
        let mut wants = Vec::with_capacity(2);
        if let Some((k, rpm)) = key {
            wants.push(((k.clone(), tool.to_owned()), rpm));
        }
        if let Some(rpm) = tool_rpm {
            wants.push(((all, tool.to_owned()), rpm));
        }
        // A refused call takes from none: what was taken is given back.
        for (i, (k, rpm)) in wants.iter().enumerate() {
            let bucket = b
                .entry(k.clone())
                .or_insert_with(|| Bucket::per_minute(*rpm, now));
            if bucket.limit() != *rpm {
                *bucket = Bucket::per_minute(*rpm, now);
            }
            if let Err(wait) = bucket.take(1.0, now) {
                for (k, _) in &wants[..i] {
                    if let Some(t) = b.get_mut(k) {
                        t.adjust(1.0, now);
                    }
                }
                return Err(wait);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_and_tool_buckets() {
        let l = ToolLimits::default();
        let k: Arc<str> = Arc::from("team-a");
        assert!(l.take(Some((&k, 2)), "w__f", None).is_ok());
        assert!(l.take(Some((&k, 2)), "w__f", None).is_ok());
        let wait = l.take(Some((&k, 2)), "w__f", None).unwrap_err();
        assert!(wait > 0.0 && wait <= 30.0, "{wait}");
        // Another tool, another key: their own buckets.
        assert!(l.take(Some((&k, 2)), "w__g", None).is_ok());
        let k2: Arc<str> = Arc::from("team-b");
        assert!(l.take(Some((&k2, 2)), "w__f", None).is_ok());
        // A tool's own limit counts every key.
        assert!(l.take(None, "e__x", Some(1)).is_ok());
        assert!(l.take(Some((&k2, 5)), "e__x", Some(1)).is_err());
    }

    #[tokio::test]
    async fn sessions_expire_and_cancel() {
        let s = Sessions::default();
        let one = s.open("2025-11-25", None, Duration::from_secs(60), 2);
        assert!(s.get(&one.id, Duration::from_secs(60)).await.is_some());
        let (_g, rx) = one.start(&serde_json::json!(7));
        assert!(one.cancel(&serde_json::json!(7)));
        assert!(rx.await.is_ok());
        assert!(!one.cancel(&serde_json::json!(8)));
        // Sessions are told apart by when they were last used (ms).
        tokio::time::sleep(Duration::from_millis(3)).await;
        s.open("2025-11-25", None, Duration::from_secs(60), 2);
        tokio::time::sleep(Duration::from_millis(3)).await;
        s.open("2025-11-25", None, Duration::from_secs(60), 2);
        assert_eq!(s.len(), 2, "the oldest is forgotten past max");
        assert!(s.get(&one.id, Duration::from_secs(60)).await.is_none());
        assert!(s.get("nope", Duration::from_secs(60)).await.is_none());
    }
}
