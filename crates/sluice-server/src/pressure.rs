//! Memory pressure: the cgroup's working set watched against its limit;
//! past `[server] memory_shed_percent` new requests get 503 (and `/readyz`
//! says so, for load balancers), and the API listener stops accepting (new
//! connections wait in the kernel's backlog, costing the process nothing),
//! until use falls 5 points below it.
//!
//! Memory pressure is the process's, so its state is too (statics): the
//! server binary runs one gateway; an embedding host runs no watcher.
//!
//! The allocator keeps freed memory (a burst's buffers) charged to the
//! cgroup: use near the threshold that stopped growing is handed back with
//! `sluice_sys::release_free_memory` (glibc's `malloc_trim`; mimalloc, the
//! binary's allocator, is not reached by it and hands a burst back through
//! `sluice-alloc`'s worker park hook: docs/cgroup.md), and use that stays
//! flat past the threshold stops shedding after a second, so kept memory
//! never refuses work for ever.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sluice_core::cgroup::{Limits, Usage};
use sluice_core::error::{ErrorKind, GatewayError};

use crate::app::App;

static SHEDDING: AtomicBool = AtomicBool::new(false);
static QUICK: OnceLock<Quick> = OnceLock::new();

/// Whether new work is refused now.
pub fn shedding() -> bool {
    SHEDDING.load(Ordering::Relaxed)
}

pub(crate) fn set_shedding(on: bool) {
    SHEDDING.store(on, Ordering::Relaxed);
}

/// A look at memory use between the watcher's (rate-limited; from the
/// accept loop and each request): a burst fills a small cgroup faster than
/// one `memory_check_ms`.
pub fn look() {
    if let Some(q) = QUICK.get() {
        q.look();
    }
}

/// What a connection accepted while shedding gets before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
retry-after: 1\r\nconnection: close\r\ncontent-length: 135\r\n\r\n\
{\"error\":{\"message\":\"the gateway is near its memory limit; retry shortly\",\
\"type\":\"server_error\",\"param\":null,\"code\":\"memory_pressure\"}}";

/// Answers a connection accepted while shedding without serving it: a fixed
/// HTTP/1.1 503 on a plain listener (what the client sent so far is read
/// and dropped, so the close is not a reset), nothing on a TLS one (a
/// handshake costs more than the refusal saves). The caller closes it.
pub fn refuse(stream: &tokio::net::TcpStream, tls: bool) {
    if tls {
        return;
    }
    let mut sink = [0u8; 2048];
    while matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.try_write(REFUSAL);
}

/// Reports what start found and keeps watching memory until the process
/// ends.
pub fn start(app: &Arc<App>, limits: Limits, workers: usize) {
    let cg = &app.metrics.cgroup;
    cg.limits(&limits, workers);
    let mib = |b: Option<u64>| b.map_or_else(|| "none".to_owned(), |b| format!("{} MiB", b >> 20));
    tracing::info!(
        version = limits.version,
        cpu_limit_cores = limits.cpu_cores.map_or_else(|| "none".to_owned(), |c| format!("{c:.2}")),
        workers,
        memory_max = %mib(limits.memory_max),
        memory_high = %mib(limits.memory_high),
        memory_budget = %mib(limits.memory_budget()),
        "cgroup limits"
    );
    if let (Some(file), Some(limit)) = (limits.current_file(), limits.pressure_limit()) {
        let _ = QUICK.set(Quick {
            file,
            limit,
            percent: AtomicU8::new(0),
            last: AtomicU64::new(0),
            events: std::sync::atomic::AtomicU32::new(0),
            last_used: AtomicU64::new(0),
            limits: limits.clone(),
        });
    }
    let app = app.clone();
    tokio::spawn(async move {
        let mut state = Watch::default();
        loop {
            // Copied out: no snapshot guard is held across the awaits below.
            let (percent, every) = {
                let snap = app.snapshot.load();
                let server = &snap.config.server;
                (server.memory_shed_percent, server.memory_check)
            };
            if let Some(q) = QUICK.get() {
                q.percent.store(percent, Ordering::Relaxed);
                // The baseline the next quick look measures growth from.
                if let Some(used) = sluice_core::cgroup::read_u64(&q.file) {
                    q.last_used.store(used, Ordering::Relaxed);
                }
            }
            let usage = limits.usage();
            app.metrics.cgroup.usage(&usage);
            let was = app.metrics.cgroup.is_shedding();
            let now = sluice_core::resilience::now_nanos();
            let on = state.next(&usage, limits.pressure_limit(), percent, was, now);
            if state.should_trim(&usage, limits.pressure_limit(), percent, now) {
                // Free memory the allocator kept goes back, so use measures
                // what is live again (off the async workers: it walks the heap).
                let _ = tokio::task::spawn_blocking(sluice_sys::release_free_memory).await;
            }
            if on != was {
                if on {
                    tracing::warn!(
                        working_set_mib = usage.working_set >> 20,
                        "memory pressure: shedding new requests"
                    );
                } else {
                    tracing::info!(
                        working_set_mib = usage.working_set >> 20,
                        "memory pressure over: accepting requests"
                    );
                }
            }
            app.metrics.cgroup.set_shedding(on);
            tokio::time::sleep(every).await;
        }
    });
}

/// Between the watcher's full reads, requests look at the cgroup's total
/// use themselves, every [`QUICK_EVERY_NS`] or every [`QUICK_EVERY_EVENTS`]
/// accepts and requests, whichever comes first: a burst of requests can
/// fill a small cgroup in less than one `memory_check_ms`.
pub struct Quick {
    file: PathBuf,
    limit: u64,
    /// `memory_shed_percent`, as the watcher last read it (0 = off).
    percent: AtomicU8,
    /// Monotonic nanos of the last look.
    last: AtomicU64,
    /// Accepts and requests since the last look.
    events: std::sync::atomic::AtomicU32,
    /// The total use the watcher last read: growth is measured from it.
    last_used: AtomicU64,
    limits: Limits,
}

/// 2 ms: at most 500 small reads a second, whatever the request rate.
const QUICK_EVERY_NS: u64 = 2_000_000;
/// 64 connections or requests (~2 MiB at ~30 KiB each) between looks in a
/// burst: well inside the 10 points between the threshold and the limit
/// of any cgroup worth running in. Each look is one small read (~2 µs).
const QUICK_EVERY_EVENTS: u32 = 64;

impl Quick {
    /// Turns shedding on when the total use (page cache included) is past
    /// the threshold and grew since the watcher's last read, and the working
    /// set confirms it. Only the watcher turns it off.
    fn look(&self) {
        let percent = self.percent.load(Ordering::Relaxed);
        let now = sluice_core::resilience::now_nanos();
        let last = self.last.load(Ordering::Relaxed);
        let burst = self.events.fetch_add(1, Ordering::Relaxed) + 1 >= QUICK_EVERY_EVENTS;
        if percent == 0
            || (!burst && now.saturating_sub(last) < QUICK_EVERY_NS)
            || self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let past =
            |used: u64| u128::from(used) * 100 >= u128::from(self.limit) * u128::from(percent);
        let Some(used) = sluice_core::cgroup::read_u64(&self.file) else {
            return;
        };
        // Growth since the watcher's last read: between two looks in a
        // burst (64 accepts apart) it can be below the 0.5% that counts.
        let before = self.last_used.load(Ordering::Relaxed);
        if past(used)
            && grew(before, used, self.limit)
            && past(self.limits.usage().working_set)
            && !SHEDDING.swap(true, Ordering::Relaxed)
        {
            tracing::warn!("memory pressure (a burst): shedding new requests");
        }
    }
}

/// The shedding decision. Memory the allocator keeps after a burst (freed,
/// reused by the next requests, but still charged to the cgroup) must not
/// hold shedding on for ever, so use past the threshold counts only while
/// it grows: shedding starts when use is past the threshold and grew since
/// the last look, and stops once use falls 5 points below the threshold or
/// has not grown for [`HOLD_NS`]. If admitted work then needs new memory,
/// use grows and shedding starts again within a look.
#[derive(Default)]
pub struct Watch {
    high_events: Option<u64>,
    last_ws: Option<u64>,
    /// Monotonic nanos of the last growth seen.
    grew_at: u64,
    /// Monotonic nanos of the last trim.
    trimmed_at: u64,
}

/// At most one trim a second.
const TRIM_EVERY_NS: u64 = 1_000_000_000;

/// How long use may stay flat past the threshold before shedding stops.
pub const HOLD_NS: u64 = 1_000_000_000;

/// Growth that counts: 0.5% of the limit (noise from page faults of any
/// allocation pattern is far below it).
fn grew(before: u64, now: u64, limit: u64) -> bool {
    now >= before.saturating_add(limit / 200)
}

impl Watch {
    /// At `percent` of the limit (10 points below it when the kernel
    /// throttled the cgroup at `memory.high` since the last look or tasks
    /// stall on memory, PSI some avg10 ≥ 40%) and growing: on. `on`:
    /// whether it sheds now (the watcher's or a request's decision);
    /// `now`: monotonic nanos.
    pub fn next(&mut self, u: &Usage, limit: Option<u64>, percent: u8, on: bool, now: u64) -> bool {
        let throttled = self.high_events.is_some_and(|h| u.high_events > h)
            || u.psi_some_avg10.is_some_and(|p| p >= 40.0);
        self.high_events = Some(u.high_events);
        let last = self.last_ws.replace(u.working_set);
        let (Some(limit), true) = (limit, percent > 0) else {
            return false;
        };
        let growing = last.is_none_or(|l| grew(l, u.working_set, limit));
        if growing {
            self.grew_at = now;
        }
        let used = u128::from(u.working_set) * 100;
        let at = |p: u8| used >= u128::from(limit) * u128::from(p);
        if on {
            at(percent.saturating_sub(5)) && now.saturating_sub(self.grew_at) < HOLD_NS
        } else {
            growing && (at(percent) || (throttled && at(percent.saturating_sub(10))))
        }
    }

    /// Whether to hand free memory back now: use within 10 points of the
    /// threshold and not growing (a burst is over, or shedding holds it),
    /// at most once a second. Called after [`next`](Self::next).
    pub fn should_trim(&mut self, u: &Usage, limit: Option<u64>, percent: u8, now: u64) -> bool {
        let (Some(limit), true) = (limit, percent > 0) else {
            return false;
        };
        let near = u128::from(u.working_set) * 100
            >= u128::from(limit) * u128::from(percent.saturating_sub(10));
        let due = now.saturating_sub(self.trimmed_at) >= TRIM_EVERY_NS;
        if near && due && self.grew_at != now {
            self.trimmed_at = now;
            return true;
        }
        false
    }
}

/// Refuses new API requests while shedding; health checks pass.
pub async fn shed(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let cg = &app.metrics.cgroup;
    look();
    if path != "/healthz" && path != "/readyz" && cg.shed() {
        let e = GatewayError::new(
            ErrorKind::MemoryPressure,
            "the gateway is near its memory limit and sheds new requests; retry shortly",
        );
        let old_http = req.version() <= http::Version::HTTP_11;
        let mut r = crate::reply::error_response(&e, crate::extract::wire_of(path));
        let h = r.headers_mut();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        if old_http {
            // The connection's buffers go too: its next request comes on a
            // new connection, refused at accept for nothing until this ends.
            h.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        return r;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "memory_pressure");
    }

    fn u(ws: u64, high: u64) -> Usage {
        Usage {
            working_set: ws,
            high_events: high,
            psi_some_avg10: None,
        }
    }

    #[test]
    fn sheds_while_use_past_the_threshold_grows() {
        let mut w = Watch::default();
        let mut on = false;
        let mut t = 0;
        let mut step = |ws, high, limit, percent, dt| {
            t += dt;
            on = w.next(&u(ws, high), limit, percent, on, t);
            on
        };
        const MS: u64 = 1_000_000;
        assert!(!step(800, 0, Some(1000), 90, 100 * MS));
        assert!(step(900, 0, Some(1000), 90, 100 * MS), "past 90% and grew");
        assert!(
            step(880, 0, Some(1000), 90, 100 * MS),
            "within 5 points, grew 0.1 s ago"
        );
        assert!(!step(840, 0, Some(1000), 90, 100 * MS), "5 points below");
        // Throttled at memory.high since the last look: 10 points earlier.
        assert!(!step(780, 0, Some(1000), 90, 100 * MS));
        assert!(step(810, 3, Some(1000), 90, 100 * MS));
        assert!(!step(100, 3, Some(1000), 90, 100 * MS));
        // Flat past the threshold (memory the allocator keeps): not a
        // reason to start, and a reason to stop after HOLD_NS.
        assert!(step(950, 3, Some(1000), 90, 100 * MS));
        assert!(step(950, 3, Some(1000), 90, 500 * MS));
        assert!(
            !step(951, 3, Some(1000), 90, 600 * MS),
            "flat for over a second"
        );
        assert!(
            !step(952, 3, Some(1000), 90, 100 * MS),
            "flat: does not start again"
        );
        assert!(step(960, 3, Some(1000), 90, 100 * MS), "grows again");
        // Off, or nothing to measure against.
        assert!(!step(999, 3, Some(1000), 0, 100 * MS));
        assert!(!step(999, 3, None, 90, 100 * MS));
    }

    #[test]
    fn trims_near_the_threshold_once_growth_stops_at_most_once_a_second() {
        let mut w = Watch::default();
        const S: u64 = 1_000_000_000;
        let mut look = |ws, t| {
            w.next(&u(ws, 0), Some(1000), 90, false, t);
            w.should_trim(&u(ws, 0), Some(1000), 90, t)
        };
        assert!(!look(700, S), "far from the threshold");
        assert!(!look(850, 2 * S), "near, but growing");
        assert!(look(850, 3 * S), "near and flat");
        assert!(!look(850, 3 * S + S / 2), "not twice in a second");
        assert!(look(850, 4 * S + S / 2));
    }
}
