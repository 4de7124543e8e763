//! Stored Responses (`store: true`, the default): the Response object for
//! `GET /v1/responses/{id}` and the conversation so far (chat messages) for
//! a later request's `previous_response_id`. In memory, bounded by count
//! and bytes (`[responses] max_stored`, `max_stored_bytes`); the oldest go
//! first. A stored response is visible to the key that made it only.

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
}

impl ResponseStore {
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_count,
            max_bytes,
        }
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
        let rest = item_id
            .strip_prefix("msg_")
            .or_else(|| item_id.strip_prefix("fc_"))?;
        let response_id = format!("resp_{}", rest.split('_').next()?);
        let r = self.response(&response_id, key)?;
        r["output"]
            .as_array()?
            .iter()
            .find(|o| o["id"] == item_id)
            .cloned()
    }

    /// Forgets a response; whether there was one `key` may see.
    pub fn delete(&self, id: &str, key: Option<&str>) -> bool {
        let mut inner = self.lock();
        if inner.by_id.get(id).is_none_or(|s| s.key.as_deref() != key) {
            return false;
        }
        if let Some(s) = inner.by_id.remove(id) {
            inner.bytes -= s.size;
            inner.order.retain(|i| &**i != id);
        }
        true
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
        self.store.put(
            Arc::from(self.echo.id.as_str()),
            Stored {
                key: self.key,
                response: f.response,
                conversation: Arc::new(conversation),
                size,
            },
        );
    }
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
