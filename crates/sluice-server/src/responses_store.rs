//! Stored Responses (`store: true`, the default): the Response object for
//! `GET /v1/responses/{id}` and the conversation so far (chat messages) for
//! a later request's `previous_response_id`. In memory, bounded by count
//! and bytes (`[responses] max_stored`, `max_stored_bytes`); the oldest go
//! first. A stored response is visible to the key that made it only.
//!
//! With `[responses] backend = "redis"` (the default when `[redis]` is set)
//! each stored turn is also written to Redis (`sluice:response:{id}`, for
//! `ttl_hours`), so any replica can continue a conversation or return a
//! response another made: a replica that does not hold an id loads it from
//! Redis into its memory first ([`ResponseStore::load`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sluice_providers::responses::Echo;

struct Stored {
    key: Option<Arc<str>>,
    response: Value,
    conversation: Arc<Vec<Value>>,
    size: usize,
}

/// A stored turn as it is kept in Redis.
#[derive(serde::Serialize, serde::Deserialize)]
struct Shared {
    key: Option<String>,
    response: Value,
    conversation: Vec<Value>,
}

/// Where stored turns are shared between replicas.
struct Remote {
    conn: redis::aio::ConnectionManager,
    ttl: std::time::Duration,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Arc<str>, Stored>,
    order: VecDeque<Arc<str>>,
    bytes: usize,
}

pub struct ResponseStore {
    inner: Mutex<Inner>,
    max_count: usize,
    max_bytes: usize,
    remote: Option<Remote>,
}

const TOMBSTONE: &str = r#"{"deleted":true}"#;

fn redis_key(id: &str) -> String {
    format!("sluice:response:{id}")
}

impl ResponseStore {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_count,
            max_bytes,
            remote: None,
        }
    }

    /// Also kept in Redis, shared with every replica.
    pub fn with_redis(
        mut self,
        conn: redis::aio::ConnectionManager,
        ttl: std::time::Duration,
    ) -> Self {
        self.remote = Some(Remote { conn, ttl });
        self
    }

    /// Brings memory up to date with Redis for `id`: loaded when another
    /// replica stored it, forgotten when another deleted it (a tombstone).
    /// Redis lagging behind this replica's own write changes nothing. A
    /// turn another replica just finished may still be on its way: an id
    /// found nowhere is asked again a few times within a second.
    pub async fn load(&self, id: &str) {
        let Some(remote) = &self.remote else { return };
        if !id.starts_with("resp_") || id.len() > 64 {
            return;
        }
        let here = self.lock().by_id.contains_key(id);
        // Nothing, then asked again after these pauses (about 0.85 s in all).
        for pause in [0u64, 100, 250, 500] {
            if pause > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            let mut conn = remote.conn.clone();
            let got: redis::RedisResult<Option<String>> = redis::cmd("GET")
                .arg(redis_key(id))
                .query_async(&mut conn)
                .await;
            match got {
                Ok(Some(text)) => return self.apply(id, &text),
                Ok(None) if here => return,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "stored responses: Redis unavailable");
                    return;
                }
            }
        }
    }

    /// What Redis holds for `id`, applied to memory.
    fn apply(&self, id: &str, text: &str) {
        match serde_json::from_str::<Shared>(text) {
            Ok(s) => self.put(
                Arc::from(id),
                Stored {
                    key: s.key.map(Arc::from),
                    response: s.response,
                    conversation: Arc::new(s.conversation),
                    size: text.len(),
                },
            ),
            // A tombstone (or something unreadable): not a response.
            Err(_) => self.forget(id),
        }
    }

    fn forget(&self, id: &str) {
        let mut inner = self.lock();
        if let Some(s) = inner.by_id.remove(id) {
            inner.bytes -= s.size;
            inner.order.retain(|i| &**i != id);
        }
    }

    /// Writes a stored turn to Redis, in the background.
    fn share(&self, id: &str, s: &Stored) {
        let Some(remote) = &self.remote else { return };
        let shared = Shared {
            key: s.key.as_deref().map(str::to_owned),
            response: s.response.clone(),
            conversation: s.conversation.to_vec(),
        };
        let text = serde_json::to_string(&shared).expect("a Value always serializes");
        let mut conn = remote.conn.clone();
        let (key, ttl) = (redis_key(id), remote.ttl.as_secs().max(1));
        tokio::spawn(async move {
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(&key)
                .arg(text)
                .arg("EX")
                .arg(ttl)
                .query_async(&mut conn)
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "stored responses: could not write to Redis");
            }
        });
    }

    /// Forgets a response everywhere (memory and Redis); whether there was
    /// one `key` may see.
    pub async fn remove(&self, id: &str, key: Option<&str>) -> bool {
        self.load(id).await;
        if !self.delete(id, key) {
            return false;
        }
        if let Some(remote) = &self.remote {
            // A tombstone, so replicas holding it in memory forget it too.
            let mut conn = remote.conn.clone();
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(redis_key(id))
                .arg(TOMBSTONE)
                .arg("EX")
                .arg(remote.ttl.as_secs().max(1))
                .query_async(&mut conn)
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "stored responses: could not delete from Redis");
            }
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The conversation of a stored response, when `key` may see it.
    pub fn conversation(&self, id: &str, key: Option<&str>) -> Option<Arc<Vec<Value>>> {
        let inner = self.lock();
        let s = inner.by_id.get(id)?;
        (s.key.as_deref() == key).then(|| s.conversation.clone())
    }

    /// The Response object, when `key` may see it.
    pub fn response(&self, id: &str, key: Option<&str>) -> Option<Value> {
        let inner = self.lock();
        let s = inner.by_id.get(id)?;
        (s.key.as_deref() == key).then(|| s.response.clone())
    }

    /// An output item of a stored response, by the item's id (`msg_…`,
    /// `fc_…_N`: they carry their response's id), when `key` may see it.
    pub fn item(&self, item_id: &str, key: Option<&str>) -> Option<Value> {
        let r = self.response(&response_of_item(item_id)?, key)?;
        r["output"]
            .as_array()?
            .iter()
            .find(|o| o["id"] == item_id)
            .cloned()
    }

    /// Forgets a response here; whether there was one `key` may see.
    fn delete(&self, id: &str, key: Option<&str>) -> bool {
        let visible = self
            .lock()
            .by_id
            .get(id)
            .is_some_and(|s| s.key.as_deref() == key);
        if visible {
            self.forget(id);
        }
        visible
    }

    fn put(&self, id: Arc<str>, s: Stored) {
        if s.size > self.max_bytes {
            return;
        }
        let mut inner = self.lock();
        inner.bytes += s.size;
        if let Some(old) = inner.by_id.insert(id.clone(), s) {
            inner.bytes -= old.size;
        } else {
            inner.order.push_back(id);
        }
        while inner.order.len() > self.max_count || inner.bytes > self.max_bytes {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(s) = inner.by_id.remove(&old) {
                inner.bytes -= s.size;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A turn to keep once its answer is complete.
pub struct PendingTurn {
    pub store: Arc<ResponseStore>,
    pub key: Option<Arc<str>>,
    /// The conversation up to this turn's input (chat messages).
    pub conversation: Vec<Value>,
    pub echo: Arc<Echo>,
}

impl PendingTurn {
    /// Stores the turn when its answer finished (the encoder saw the end).
    pub fn keep(self) {
        let Some(f) = self.echo.finished() else {
            return;
        };
        let mut conversation = self.conversation;
        conversation.push(f.assistant);
        let size = f.response.to_string().len()
            + conversation
                .iter()
                .map(|m| m.to_string().len())
                .sum::<usize>();
        let stored = Stored {
            key: self.key,
            response: f.response,
            conversation: Arc::new(conversation),
            size,
        };
        self.store.share(&self.echo.id, &stored);
        self.store.put(Arc::from(self.echo.id.as_str()), stored);
    }
}

/// The id of the response an output item came from (`msg_<hex>` and
/// `fc_<hex>_N` carry it).
pub fn response_of_item(item_id: &str) -> Option<String> {
    let rest = item_id
        .strip_prefix("msg_")
        .or_else(|| item_id.strip_prefix("fc_"))?;
    Some(format!("resp_{}", rest.split('_').next()?))
}

/// `resp_` and 32 random hex digits.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("resp_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(key: Option<&str>, n: usize) -> Stored {
        Stored {
            key: key.map(Arc::from),
            response: json!({"n": n}),
            conversation: Arc::new(vec![json!({"role": "user", "content": "x"})]),
            size: 100,
        }
    }

    #[test]
    fn bounded_by_count_and_bytes_oldest_first_and_scoped_by_key() {
        let s = ResponseStore::new(3, 1000);
        for i in 0..5 {
            s.put(Arc::from(format!("r{i}")), stored(Some("a"), i));
        }
        assert_eq!(s.len(), 3);
        assert!(
            s.response("r1", Some("a")).is_none(),
            "the oldest went first"
        );
        assert_eq!(s.response("r4", Some("a")), Some(json!({"n": 4})));
        assert!(
            s.response("r4", Some("b")).is_none(),
            "another key sees nothing"
        );
        assert!(s.response("r4", None).is_none());
        assert!(!s.delete("r4", Some("b")));
        assert!(s.delete("r4", Some("a")));
        assert!(s.conversation("r4", Some("a")).is_none());

        let s = ResponseStore::new(100, 250);
        for i in 0..5 {
            s.put(Arc::from(format!("r{i}")), stored(None, i));
        }
        assert_eq!(s.len(), 2, "250 bytes hold two of 100");
        s.put(
            Arc::from("big"),
            Stored {
                size: 251,
                ..stored(None, 9)
            },
        );
        assert!(
            s.response("big", None).is_none(),
            "larger than the whole store"
        );
    }
}
