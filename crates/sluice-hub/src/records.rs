//! Instruction records: each instruction's status and result, kept for
//! polling and waiting, bounded by count and bytes (oldest dropped first).

use std::collections::VecDeque;
use std::time::Duration;

use foldhash::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use sluice_core::config::time::Rfc3339Millis;
use tokio::sync::Notify;

use super::{AgentHandle, Hub, names, stamp, unix_ms};

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
    /// Woken on every status change past `delivered`.
    pub changed: Arc<Notify>,
    /// Status events made while the agent's groups were unknown, held
    /// until they are ([`Hub::set_groups`]); `None` once known.
    pub(crate) held: Option<Vec<Value>>,
}

/// A record as the API shows it, borrowed from the record: written
/// straight to JSON text ([`Hub::record_json`]) without a `Value` tree.
/// Fields in the order `serde_json::Map` keeps them (sorted), so both
/// ways read the same.
#[derive(serde::Serialize)]
struct View<'a> {
    agent_id: &'a str,
    created_at: Rfc3339Millis,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    status: &'static str,
    updated_at: Rfc3339Millis,
}

impl Record {
    fn view_of<'a>(&'a self, id: &'a str) -> View<'a> {
        use sluice_core::config::time::rfc3339_millis as at;
        View {
            agent_id: &self.agent_id,
            created_at: at(self.created_unix_ms),
            id,
            result: self.result.as_ref(),
            status: self.status.name(),
            updated_at: at(self.updated_unix_ms),
        }
    }

    pub fn view(&self, id: &str) -> Value {
        serde_json::to_value(self.view_of(id)).unwrap_or(Value::Null)
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

/// The instruction records of a [`Hub`]: made, moved on, waited for.
impl Hub {
    pub fn create_record(&self, id: &Arc<str>, agent_id: Arc<str>, groups: Vec<Arc<str>>) {
        let _ = self.insert_record(id, agent_id, groups, None);
    }

    /// A record whose agent's groups are not known yet (an instruction
    /// routed to another replica in the same Redis call that finds the
    /// agent): its status events are held until [`Pending::placed`] names
    /// them, so a status that comes back first is not published without
    /// its groups.
    pub(crate) fn create_record_pending(&self, id: &Arc<str>, agent_id: Arc<str>) -> Pending<'_> {
        let replaced = self.insert_record(id, agent_id, Vec::new(), Some(Vec::new()));
        Pending {
            hub: self,
            id: id.clone(),
            replaced,
            done: false,
        }
    }

    fn insert_record(
        &self,
        id: &Arc<str>,
        agent_id: Arc<str>,
        groups: Vec<Arc<str>>,
        held: Option<Vec<Value>>,
    ) -> Option<Record> {
        let now = unix_ms();
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let replaced = r.by_id.insert(
            id.clone(),
            Record {
                agent_id,
                groups,
                status: Status::Queued,
                result: None,
                size: 0,
                created_unix_ms: now,
                updated_unix_ms: now,
                changed: Arc::new(Notify::new()),
                held,
            },
        );
        r.order.push_back(id.clone());
        r.evict(self.cfg.max_instructions, self.cfg.max_result_bytes);
        replaced
    }

    /// The groups of a [`Hub::create_record_pending`] record, now known:
    /// the events held meanwhile go out with them.
    fn set_groups(&self, id: &str, groups: Vec<Arc<str>>) {
        let held = {
            let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rec) = r.by_id.get_mut(id) else {
                return;
            };
            rec.groups = groups;
            match rec.held.take() {
                Some(held) if !held.is_empty() => (held, rec.groups.clone()),
                _ => return,
            }
        };
        for mut e in held.0 {
            e["groups"] = json!(names(&held.1));
            self.emit(e);
        }
    }

    /// Holds status event `e` if its record's groups are still unknown;
    /// else gives it back with them.
    fn hold(&self, id: &str, mut e: Value) -> Option<Value> {
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let rec = r.by_id.get_mut(id)?;
        match &mut rec.held {
            Some(held) => {
                held.push(e);
                None
            }
            None => {
                e["groups"] = json!(names(&rec.groups));
                Some(e)
            }
        }
    }

    /// Drops a record that was never sent. Its place in the order goes
    /// too, wherever other records made since put it: a left-over place
    /// would count against `max_instructions` and evict a live record
    /// early (a caller waiting for an agent in transit tries every 50 ms).
    pub(crate) fn forget(&self, id: &str) {
        let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rec) = r.by_id.remove(id) else {
            return;
        };
        r.bytes -= rec.size;
        if let Some(at) = r.order.iter().rposition(|x| &**x == id) {
            r.order.remove(at);
        }
    }

    /// Moves an instruction forward (never back); publishes the change.
    pub fn set_status(&self, id: &str, status: Status, result: Option<Value>) -> bool {
        let (agent_id, groups, notify, holding) = {
            let mut r = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rec) = r.by_id.get_mut(id) else {
                return false;
            };
            if rec.status.is_final() || rec.status >= status {
                return false;
            }
            rec.status = status;
            rec.updated_unix_ms = unix_ms();
            let mut resized = None;
            if let Some(v) = &result {
                let size = v.to_string().len();
                resized = Some((std::mem::replace(&mut rec.size, size), size));
                rec.result = Some(v.clone());
            }
            let out = (
                rec.agent_id.clone(),
                rec.groups.clone(),
                rec.changed.clone(),
                rec.held.is_some(),
            );
            if let Some((old, new)) = resized {
                r.bytes = r.bytes + new - old;
                r.evict(self.cfg.max_instructions, self.cfg.max_result_bytes);
            }
            out
        };
        // Nobody waits for `delivered` ([`Hub::wait`] takes `acked` or
        // later), so it wakes nobody: a caller waiting for the ack is not
        // woken once more per instruction only to wait again.
        if status != Status::Delivered {
            notify.notify_waiters();
        }
        if let Some(c) = self.cluster.get() {
            c.status_changed(id, status, result.as_ref());
        }
        if status != Status::Delivered {
            self.count(status.name());
            if self.events.receiver_count() == 0 {
                return true;
            }
            let mut e = json!({
                "type": format!("instruction.{}", status.name()),
                "id": id,
                "agent_id": &*agent_id,
                "groups": names(&groups),
            });
            if let Some(r) = result {
                e["result"] = r;
            }
            stamp(&mut e);
            if holding {
                match self.hold(id, e) {
                    Some(e) => self.emit(e),
                    None => return true,
                }
            } else {
                self.emit(e);
            }
        }
        true
    }

    /// The agent acknowledged or finished an instruction it was sent.
    pub fn agent_reply(
        &self,
        agent: &AgentHandle,
        id: &str,
        status: Status,
        result: Option<Value>,
    ) -> bool {
        let known = {
            let r = self.records.lock().unwrap_or_else(|p| p.into_inner());
            r.by_id.get(id).is_some_and(|rec| rec.agent_id == agent.id)
        };
        if !known {
            return false;
        }
        if status >= Status::Acked {
            agent
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
        }
        self.set_status(id, status, result)
    }

    /// A record's agent groups, for checking a scoped key against it.
    pub fn record_groups(&self, id: &str) -> Option<Vec<Arc<str>>> {
        let r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        r.by_id.get(id).map(|rec| rec.groups.clone())
    }

    pub fn record_view(&self, id: &str) -> Option<Value> {
        let r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        r.by_id.get(id).map(|rec| rec.view(id))
    }

    /// [`Hub::record_view`] as JSON text, written from the record itself
    /// (an answer to a waiting `POST`: no `Value` tree built and dropped).
    pub fn record_json(&self, id: &str) -> Option<Vec<u8>> {
        let r = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let rec = r.by_id.get(id)?;
        let size = 160 + id.len() + rec.agent_id.len() + rec.size;
        let mut out = Vec::with_capacity(size);
        serde_json::to_writer(&mut out, &rec.view_of(id)).ok()?;
        Some(out)
    }

    /// Waits until the instruction reaches `want` (or a final status), up
    /// to `max`. Returns its status then, `None` if it is unknown. `want`
    /// is `acked` or later: `delivered` wakes no waiter.
    pub async fn wait(&self, id: &str, want: Status, max: Duration) -> Option<Status> {
        debug_assert!(want >= Status::Acked, "nobody is woken for {want:?}");
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let notify = {
                let r = self.records.lock().unwrap_or_else(|p| p.into_inner());
                let rec = r.by_id.get(id)?;
                if rec.status >= want || rec.status.is_final() {
                    return Some(rec.status);
                }
                rec.changed.clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check: a change between the look and `enable` is not lost.
            {
                let r = self.records.lock().unwrap_or_else(|p| p.into_inner());
                let rec = r.by_id.get(id)?;
                if rec.status >= want || rec.status.is_final() {
                    return Some(rec.status);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let r = self.records.lock().unwrap_or_else(|p| p.into_inner());
                return r.by_id.get(id).map(|rec| rec.status);
            }
        }
    }
}

/// A record made before its instruction is routed
/// ([`Hub::create_record_pending`]), until [`Pending::placed`] or
/// [`Pending::unsent`] says how that went. Dropped before either (the
/// caller went away while Redis answered), its held events go out without
/// groups — seen by unscoped subscribers only — rather than never.
pub(crate) struct Pending<'h> {
    hub: &'h Hub,
    id: Arc<str>,
    /// The record of the same id this one replaced (sent again).
    replaced: Option<Record>,
    done: bool,
}

impl Pending<'_> {
    /// Sent: the agent's groups, from its presence.
    pub(crate) fn placed(mut self, groups: Vec<Arc<str>>) {
        self.done = true;
        self.hub.set_groups(&self.id, groups);
    }

    /// Not sent after all: the record is dropped, and the one it replaced,
    /// if any, put back.
    pub(crate) fn unsent(mut self) {
        self.done = true;
        let replaced = self.replaced.take();
        let (hub, id) = (self.hub, &self.id);
        hub.forget(id);
        if let Some(rec) = replaced {
            let mut r = hub.records.lock().unwrap_or_else(|p| p.into_inner());
            r.by_id.insert(id.clone(), rec);
            if !r.order.contains(id) {
                r.order.push_back(id.clone());
            }
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.hub.set_groups(&self.id, Vec::new());
        }
    }
}
