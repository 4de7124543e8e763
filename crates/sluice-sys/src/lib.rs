//! The gateway's calls into the C library, behind safe functions.
//!
//! glibc's allocator keeps memory the process freed (a burst's connection
//! buffers, say) and reuses it, but the cgroup keeps charging it: to the
//! kernel and to the memory-pressure watch the process still looks full.
//! [`release_free_memory`] hands the free pages back.

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

#[cfg(test)]
mod tests {
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
