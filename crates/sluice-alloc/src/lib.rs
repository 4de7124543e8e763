//! The `sluice` binary's allocator, and handing a burst's memory back.
//!
//! mimalloc 2 (built without transparent huge pages) serves every block
//! under a megabyte: ~4.5 % fewer instructions per proxied request than
//! glibc's allocator (`bench/README.md`). It keeps what a thread freed
//! until that thread calls into it again after a purge delay, though, so a
//! worker that goes idle right after a burst would keep the burst's memory
//! resident (`bench/burst_memory.py`: 63.6–93.2 MiB 2 s after a burst of
//! 32 × 3 MiB requests, against 11.5–11.7 idle; with this crate within
//! 0.5 MiB of idle, see `bench/README.md`). Three things hand it back:
//!
//! - [`MapLarge`]: blocks of [`LARGE`] bytes and more (a large body, its
//!   parsed copy) are their own anonymous mappings, unmapped when freed by
//!   whichever thread frees them, as glibc does;
//! - [`on_worker_park`], the runtime's park hook: a worker about to sleep
//!   asks its mimalloc heap to hand back every free page, once it has
//!   allocated or freed [`BURST`] bytes in blocks of 24 KiB and more since
//!   it last did (a burst of large requests), and otherwise at most once a
//!   second;
//! - [`sweep_after_burst`], for a task on the runtime once a second: after
//!   blocks of 24 KiB and more came and went, every worker purges at its
//!   next park, and the task wakes the parked ones. Without it a worker no
//!   timer woke kept up to 16 MiB of a burst (what it freed after its
//!   last purge, and its blocks other workers freed) until its next work.

mod map;
mod mi;

pub use map::{LARGE, MapLarge, thread_turnover};
pub use mi::Mi;

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};

/// The binary's global allocator: mimalloc ([`Mi`]) behind [`MapLarge`].
pub type Allocator = MapLarge<Mi>;

/// The binary's global allocator (`#[global_allocator] static A:
/// sluice_alloc::Allocator = sluice_alloc::allocator();`).
pub const fn allocator() -> Allocator {
    MapLarge::new(Mi)
}

/// A worker that allocated or freed this many bytes in blocks of 24 KiB
/// and more since its last purge purges when it next parks.
pub const BURST: usize = 1 << 20;

/// Purges after a burst at most this often per worker (nanoseconds): a
/// stream of large requests costs a page walk per ~1 MiB, not per park.
const BURST_SPACING: u64 = 10_000_000;

/// A worker purges at least this rarely while it works (nanoseconds).
const INTERVAL: u64 = 1_000_000_000;

thread_local! {
    /// When this worker last purged (`sluice_sys::coarse_nanos`).
    static LAST: Cell<u64> = const { Cell::new(0) };
    /// The sweep this worker last purged for ([`SWEEP`]).
    static SWEPT: Cell<u32> = const { Cell::new(0) };
}

/// Bumped by [`sweep_after_burst`]: every worker purges at its next park
/// after a bump.
static SWEEP: AtomicU32 = AtomicU32::new(0);

/// The runtime's park hook (`tokio::runtime::Builder::on_thread_park`):
/// when a worker runs out of work, hand what its heap holds free back to
/// the operating system if it allocated or freed [`BURST`] bytes in large
/// blocks since it last did so (and 10 ms have passed), or a second has
/// passed.
/// A purge is also due once after every bump of the sweep
/// ([`sweep_after_burst`]), which wakes the workers no timer wakes. Costs
/// one coarse clock read and one relaxed atomic load per park, and a walk
/// of the heap's pages when it purges.
pub fn on_worker_park() {
    let now = sluice_sys::coarse_nanos();
    let since = now.saturating_sub(LAST.with(Cell::get));
    let burst = since >= BURST_SPACING && thread_turnover() >= BURST;
    let sweep = SWEEP.load(Ordering::Relaxed);
    if since >= INTERVAL || burst || sweep != SWEPT.with(Cell::get) {
        SWEPT.with(|s| s.set(sweep));
        LAST.with(|last| last.set(now));
        release_thread_memory();
    }
}

/// For a task on the runtime, once a second: whether any thread allocated
/// or freed a block of 24 KiB or more since the last call. If so, every
/// worker purges at its next park, and the caller should bring the parked
/// ones to one (by spawning work): a worker that no timer wakes keeps what
/// it freed after its last purge, and what other workers freed of its
/// blocks (mimalloc hands a block freed elsewhere back to the thread that
/// allocated it), until its next work.
pub fn sweep_after_burst() -> bool {
    if !map::take_large_seen() {
        return false;
    }
    SWEEP.fetch_add(1, Ordering::Relaxed);
    true
}

/// Hands every page the calling thread's mimalloc heap holds free back to
/// the operating system now (`mi_collect(true)`), with the shared arenas'
/// free ranges, and restarts [`thread_turnover`]'s count. Walks the
/// thread's pages: tens of microseconds for a busy heap.
pub fn release_thread_memory() {
    // SAFETY: mi_collect takes a plain flag and touches no caller memory.
    // It works on the calling thread's own heap and on shared state under
    // mimalloc's locks and atomics, so any thread may call it at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
    map::reset_thread_turnover();
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::Mutex;

    /// Held by the tests whose bursts set the process-wide burst flag
    /// (`cargo test` runs tests on threads of one process).
    static BURSTS: Mutex<()> = Mutex::new(());

    #[test]
    fn a_purge_restarts_the_count() {
        let a = super::allocator();
        let layout = Layout::from_size_align(64 << 10, 8).expect("layout");
        // SAFETY: a non-zero size; freed below with the same layout.
        let p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        assert!(super::thread_turnover() >= 64 << 10);
        // SAFETY: allocated above by `a` with `layout`.
        unsafe { a.dealloc(p, layout) };
        super::release_thread_memory();
        assert_eq!(super::thread_turnover(), 0);
    }

    #[test]
    fn a_burst_makes_the_next_park_purge() {
        let _serial = BURSTS.lock().unwrap_or_else(|e| e.into_inner());
        let a = super::allocator();
        let layout = Layout::from_size_align(256 << 10, 8).expect("layout");
        // Past the first park's purge (the clock starts at zero) and the
        // spacing after it.
        super::on_worker_park();
        std::thread::sleep(std::time::Duration::from_millis(30));
        super::on_worker_park();
        for _ in 0..(super::BURST / (256 << 10)) {
            // SAFETY: a non-zero size, freed at once with the same layout.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                a.dealloc(p, layout);
            }
        }
        assert!(super::thread_turnover() >= super::BURST);
        super::on_worker_park();
        assert_eq!(super::thread_turnover(), 0, "the park purged");
    }

    #[test]
    fn blocks_freed_after_a_purge_make_the_next_park_purge() {
        let _serial = BURSTS.lock().unwrap_or_else(|e| e.into_inner());
        // A request's buffers allocated before a purge and freed after it:
        // the purge could not hand them back, the next park must.
        let a = super::allocator();
        let layout = Layout::from_size_align(256 << 10, 8).expect("layout");
        let n = super::BURST / (256 << 10);
        let held: Vec<_> = (0..n)
            .map(|_| {
                // SAFETY: a non-zero size, freed below with the same layout.
                let p = unsafe { a.alloc(layout) };
                assert!(!p.is_null());
                p
            })
            .collect();
        super::on_worker_park();
        std::thread::sleep(std::time::Duration::from_millis(30));
        super::release_thread_memory();
        super::on_worker_park();
        assert_eq!(super::thread_turnover(), 0);
        for p in held {
            // SAFETY: allocated above by `a` with `layout`.
            unsafe { a.dealloc(p, layout) };
        }
        assert!(super::thread_turnover() >= super::BURST);
        std::thread::sleep(std::time::Duration::from_millis(30));
        super::on_worker_park();
        assert_eq!(super::thread_turnover(), 0, "the park purged");
    }

    #[test]
    fn after_large_blocks_a_sweep_makes_every_worker_purge_at_its_next_park() {
        let _serial = BURSTS.lock().unwrap_or_else(|e| e.into_inner());
        let layout = Layout::from_size_align(64 << 10, 8).expect("layout");
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (held, told) = std::sync::mpsc::channel::<usize>();
        // A worker that purged lately and holds a little: its parks do not
        // purge, until a sweep.
        let other = std::thread::spawn(move || {
            let a = super::allocator();
            super::on_worker_park();
            // SAFETY: a non-zero size, freed at once with the same layout.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                a.dealloc(p, layout);
            }
            super::on_worker_park();
            held.send(super::thread_turnover()).expect("send");
            wait.recv().expect("recv");
            super::on_worker_park();
            super::thread_turnover()
        });
        assert!(told.recv().expect("recv") > 0, "no purge before the sweep");
        assert!(super::sweep_after_burst(), "a large block was seen");
        go.send(()).expect("send");
        assert_eq!(other.join().expect("join"), 0, "the sweep purged");
    }
}
