//! Instruction records: each instruction's status and result, kept for
//! polling and waiting, bounded by count and bytes (oldest dropped first).

use std::collections::VecDeque;

use foldhash::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Queued,
    Delivered,
    Acked,
    Completed,
    Undelivered,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Delivered => "delivered",
            Status::Acked => "acked",
            Status::Completed => "completed",
            Status::Undelivered => "undelivered",
        }
    }

    /// No later status can follow.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Undelivered)
    }
}

pub struct Record {
    pub agent_id: Arc<str>,
    /// The agent's groups when the instruction was made (for scoped keys).
    pub groups: Vec<Arc<str>>,
    pub status: Status,
    pub result: Option<Value>,
    /// Bytes of `result` as JSON text.
    pub(crate) size: usize,
    pub created_unix_ms: u64,
    pub updated_unix_ms: u64,
    /// Woken on every status change.
    pub changed: Arc<Notify>,
}

impl Record {
    pub fn view(&self, id: &str) -> Value {
        let mut v = json!({
            "id": id,
            "agent_id": &*self.agent_id,
            "status": self.status.name(),
            "created_at": sluice_core::config::time::format_rfc3339_millis(self.created_unix_ms),
            "updated_at": sluice_core::config::time::format_rfc3339_millis(self.updated_unix_ms),
        });
        if let Some(r) = &self.result {
            v["result"] = r.clone();
        }
        v
    }
}

#[derive(Default)]
pub(crate) struct Records {
    pub(crate) by_id: HashMap<Arc<str>, Record>,
    pub(crate) order: VecDeque<Arc<str>>,
    /// Bytes of the results held (JSON text).
    pub(crate) bytes: usize,
}

impl Records {
    /// Drops the oldest records while over either bound.
    pub(crate) fn evict(&mut self, max_count: usize, max_bytes: usize) {
        while self.order.len() > max_count || self.bytes > max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(rec) = self.by_id.remove(&old) {
                self.bytes -= rec.size;
            }
        }
    }
}
