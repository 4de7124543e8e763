//! What a client connection may hold: a place under the listener's cap and
//! its address's cap, and — for HTTP/2, where hyper has no idle timeout —
//! a count of open streams so a connection with none can be closed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub listener: &'static str,
    pub reason: &'static str,
}

/// `sluice_connections_open{listener}` and
/// `sluice_connections_closed_total{listener,reason}` for connections the
/// gateway closed itself (over a cap, idle, never finished a head).
#[derive(Default, Clone)]
pub struct ConnMetrics {
    pub open: Family<ListenerLabels, Gauge>,
    pub closed: Family<RefusedLabels, Counter>,
}

impl ConnMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_open",
            "Client connections open, by listener",
            self.open.clone(),
        );
        registry.register(
            "connections_closed",
            "Client connections the gateway closed itself, by listener and reason (per_ip_limit, idle, no_request, evicted)",
            self.closed.clone(),
        );
    }

    /// Every series at zero from the start: a rate() over a series that
    /// appears later misses its first increments, and a test or alert that
    /// reads one must find it.
    pub fn precreate(&self) {
        for listener in ["api", "admin"] {
            let _ = self.open.get_or_create(&ListenerLabels { listener });
            for reason in ["per_ip_limit", "idle", "no_request", "evicted"] {
                let _ = self
                    .closed
                    .get_or_create(&RefusedLabels { listener, reason });
            }
        }
    }

    pub fn closed(&self, listener: &'static str, reason: &'static str) {
        self.closed
            .get_or_create(&RefusedLabels { listener, reason })
            .inc();
    }
}

/// Connections open per client address.
type ByIp = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The caps of one listener.
pub struct Limits {
    total: Arc<Semaphore>,
    per_ip: usize,
    by_ip: ByIp,
}

/// A connection's place; given back on drop.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    ip: Option<(IpAddr, ByIp)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((ip, map)) = self.ip.take() {
            let mut m = map.lock().expect("connection map lock is never poisoned");
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

impl Limits {
    /// `total` connections at once; `per_ip` from one address (0: no cap).
    pub fn new(total: usize, per_ip: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total.max(1))),
            per_ip,
            by_ip: Arc::default(),
        }
    }

    /// Waits for a place under the listener's cap: while it is full, new
    /// connections wait in the kernel's backlog instead of costing a
    /// descriptor each.
    pub async fn reserve(&self) -> OwnedSemaphorePermit {
        self.total
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// The connection's place, or `None` when its address is at its cap.
    pub fn admit(&self, permit: OwnedSemaphorePermit, ip: IpAddr) -> Option<Slot> {
        if self.per_ip == 0 {
            return Some(Slot {
                _total: permit,
                ip: None,
            });
        }
        let mut m = self
            .by_ip
            .lock()
            .expect("connection map lock is never poisoned");
        let n = m.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return None;
        }
        *n += 1;
        Some(Slot {
            _total: permit,
            ip: Some((ip, self.by_ip.clone())),
        })
    }
}

/// Connections that have not sent a request yet, oldest first. When the
/// listener is full, the oldest is told to close so a new one can come in:
/// a flood of silent connections cannot keep everyone else waiting for
/// the head timeout (nginx reuses idle connections the same way).
#[derive(Default, Clone)]
pub struct Waiting(Arc<Mutex<VecDeque<oneshot::Sender<()>>>>);

impl Waiting {
    /// Joins the queue; the receiver fires when this connection is to close.
    /// Dropping it leaves the queue (its entry is pruned later).
    pub fn enter(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut q = self.0.lock().expect("waiting queue lock is never poisoned");
        // Entries of connections that went on to a request pile up behind;
        // sweep them whenever the queue doubles, so it stays bounded by the
        // connections really waiting.
        if q.len() >= 64 && q.len().is_power_of_two() {
            q.retain(|s| !s.is_closed());
        }
        q.push_back(tx);
        rx
    }

    /// Tells the oldest waiting connection to close; `false` if none waits.
    pub fn evict_oldest(&self) -> bool {
        let mut q = self.0.lock().expect("waiting queue lock is never poisoned");
        while let Some(tx) = q.pop_front() {
            if tx.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// The most open files this process may have (the soft limit), read from
/// `/proc/self/limits`; `None` where that cannot be read.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Descriptors kept for everything that is not a client connection: the
/// listeners, upstream connections of requests in flight, Redis, files.
const RESERVED_FDS: u64 = 128;
/// The admin listener's share: probes, scrapes and the key API.
const ADMIN_MAX: usize = 64;

/// The API and admin listeners' caps: `max_connections`, lowered so that
/// together they stay under the descriptor limit (running out of
/// descriptors fails every `accept`, health probes included).
pub fn caps(max_connections: usize, open_files: Option<u64>) -> (usize, usize) {
    let admin = max_connections.min(ADMIN_MAX);
    let Some(limit) = open_files else {
        return (max_connections, admin);
    };
    let room = limit.saturating_sub(RESERVED_FDS) as usize;
    let admin = admin.min((room / 4).max(4));
    let api = max_connections.min(room.saturating_sub(admin).max(8));
    (api, admin)
}

/// Open streams on one HTTP/2 connection.
#[derive(Default)]
pub struct Activity {
    open: AtomicUsize,
    changed: Notify,
}

/// One open stream; counted until its response body is dropped.
pub struct Open(Arc<Activity>);

impl Activity {
    pub fn open(self: &Arc<Self>) -> Open {
        if self.open.fetch_add(1, Ordering::AcqRel) == 0 {
            self.changed.notify_waiters();
        }
        Open(self.clone())
    }

    /// Returns once no stream has been open for `after`.
    pub async fn idle(&self, after: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(after) => {
                    if self.open.load(Ordering::Acquire) == 0 {
                        return;
                    }
                }
                _ = changed => {}
            }
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// A response body that keeps its stream counted as open until it is done.
pub struct TrackedBody<B> {
    inner: B,
    _open: Open,
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, open: Open) -> Self {
        Self { inner, _open: open }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_stay_under_the_descriptor_limit() {
        assert_eq!(caps(65_536, None), (65_536, 64));
        let (api, admin) = caps(65_536, Some(256));
        assert!(api + admin + RESERVED_FDS as usize <= 256, "{api} {admin}");
        assert!(api >= 8 && admin >= 4);
        let (api, admin) = caps(65_536, Some(20_000));
        assert_eq!(admin, 64);
        assert!(api > 19_000, "{api}");
        assert_eq!(caps(100, Some(1 << 20)), (100, 64));
    }

    #[tokio::test]
    async fn per_address_cap_and_release() {
        let l = Limits::new(10, 2);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = l.admit(l.reserve().await, ip).expect("first");
        let _b = l.admit(l.reserve().await, ip).expect("second");
        assert!(l.admit(l.reserve().await, ip).is_none(), "third is refused");
        let other: IpAddr = [127, 0, 0, 2].into();
        assert!(l.admit(l.reserve().await, other).is_some());
        drop(a);
        assert!(
            l.admit(l.reserve().await, ip).is_some(),
            "a place came back"
        );
        assert!(l.by_ip.lock().unwrap().len() <= 2);
    }

    #[test]
    fn the_oldest_waiting_connection_is_evicted_first() {
        let w = Waiting::default();
        let mut first = w.enter();
        let gone = w.enter();
        drop(gone); // went on to send a request
        let mut third = w.enter();
        assert!(w.evict_oldest());
        assert!(first.try_recv().is_ok(), "the oldest goes first");
        assert!(third.try_recv().is_err());
        assert!(w.evict_oldest(), "the dropped entry is skipped");
        assert!(third.try_recv().is_ok());
        assert!(!w.evict_oldest(), "nobody left");
        // Entries of connections that moved on do not pile up.
        for _ in 0..10_000 {
            drop(w.enter());
        }
        assert!(w.0.lock().unwrap().len() <= 128);
    }

    #[tokio::test]
    async fn total_cap_makes_the_next_wait() {
        let l = Limits::new(1, 0);
        let held = l.reserve().await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), l.reserve()).await;
        assert!(waiting.is_err(), "the second waits while the first holds");
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), l.reserve()).await;
        assert!(got.is_ok());
    }

    #[tokio::test]
    async fn idle_only_after_the_last_stream_ends() {
        let a = Arc::new(Activity::default());
        let open = a.open();
        let after = Duration::from_millis(100);
        let idle = a.idle(after);
        tokio::pin!(idle);
        // A stream is open: not idle, however many idle periods pass.
        let early = tokio::time::timeout(after * 5, &mut idle).await;
        assert!(early.is_err(), "idle while a stream is open");
        drop(open);
        let start = tokio::time::Instant::now();
        let late = tokio::time::timeout(Duration::from_secs(30), idle).await;
        assert!(late.is_ok(), "idle once the stream ended");
        assert!(start.elapsed() >= after);
    }
}
