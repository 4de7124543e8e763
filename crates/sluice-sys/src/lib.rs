//! The gateway's calls into the C library, behind safe functions.
//!
//! glibc's allocator keeps memory the process freed (a burst's connection
//! buffers, say) and reuses it, but the cgroup keeps charging it: to the
//! kernel and to the memory-pressure watch the process still looks full.
//! [`release_free_memory`] hands the free pages back.
//!
//! [`coarse_nanos`] and [`coarse_unix_secs`] read the kernel's coarse
//! clocks, for ages measured in seconds (an idle upstream connection's)
//! and for the `Date` of an answer.

/// Returns free heap memory to the operating system (glibc `malloc_trim(0)`:
/// every arena, free pages in the middle of the heap too). True when memory
/// was released. Walks the heap: call it from a blocking thread, not on an
/// async worker. A no-op elsewhere than glibc.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a plain integer (the padding to keep at
        // the top of the heap), touches no caller memory, and is thread-safe
        // (it takes each arena's lock as malloc and free do).
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Nanoseconds on a monotonic clock that may lag by up to one kernel tick
/// (1–10 ms): `CLOCK_MONOTONIC_COARSE`, the time of the last tick, read
/// without the time-stamp counter: ~7 ns a read on this machine against
/// ~30–44 for `CLOCK_MONOTONIC` (`Instant::now`). For ages measured in
/// seconds, not for latencies. Elsewhere than Linux, `Instant` since the
/// first call.
pub fn coarse_nanos() -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(t) = coarse(libc::CLOCK_MONOTONIC_COARSE) {
        return t;
    }
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// Whole seconds since the Unix epoch, as of the last kernel tick
/// (`CLOCK_REALTIME_COARSE`, at most a tick behind `SystemTime::now`, at a
/// fifth of its cost): for an HTTP `Date`, which counts seconds.
pub fn coarse_unix_secs() -> u64 {
    #[cfg(target_os = "linux")]
    if let Some(t) = coarse(libc::CLOCK_REALTIME_COARSE) {
        return t / 1_000_000_000;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A coarse clock's reading in nanoseconds; `None` if the call failed
/// (it cannot with a valid clock id and pointer).
#[cfg(target_os = "linux")]
fn coarse(clock: libc::clockid_t) -> Option<u64> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the call's duration;
    // the clock ids passed are constants the kernel has known since
    // 2.6.32, and the call touches no other memory.
    let ok = unsafe { libc::clock_gettime(clock, &mut t) } == 0;
    ok.then(|| {
        (t.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(t.tv_nsec as u64)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_coarse_wall_clock_is_the_wall_clock_within_a_tick() {
        let fine = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let coarse = super::coarse_unix_secs();
        assert!(coarse > 1_700_000_000, "{coarse} is seconds since 1970");
        // A tick behind at most, so the same second or the one before.
        assert!(fine.abs_diff(coarse) <= 1, "{coarse} against {fine}");
    }

    #[test]
    fn the_coarse_clock_keeps_pace_with_instant_within_a_tick() {
        let (c0, i0) = (super::coarse_nanos(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (c1, i1) = (super::coarse_nanos(), std::time::Instant::now());
        let coarse = c1.saturating_sub(c0) as i128;
        let fine = i1.duration_since(i0).as_nanos() as i128;
        // Each coarse read lags by at most a tick (10 ms at HZ=100).
        assert!(coarse > 0, "the clock moved: {c0} then {c1}");
        assert!(
            (coarse - fine).abs() <= 20_000_000,
            "{coarse} ns coarse against {fine} ns"
        );
    }

    #[test]
    fn freed_memory_goes_back() {
        // Many small blocks, most freed, one kept at the end so the top of
        // the heap cannot shrink by itself: only a trim releases the rest.
        let blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 1000]).collect();
        let keep = vec![1u8; 1000];
        drop(blocks);
        let rss = || {
            std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let before = rss();
        let released = super::release_free_memory();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(released, "20 MB were free");
            assert!(rss() < before, "{} pages before, {} after", before, rss());
        }
        assert_eq!(keep[0], 1);
    }
}
