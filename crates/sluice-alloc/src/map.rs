//! Large blocks straight from the kernel, in front of an allocator that
//! would keep them.
//!
//! glibc maps blocks from 128 KiB up with `mmap` and unmaps them on free.
//! [`MapLarge`] does the same in front of any allocator for blocks of
//! [`LARGE`] bytes and more: each is its own anonymous mapping, grown and
//! shrunk in place with `mremap` (a growing `Vec` is not copied) and handed
//! back on free, by whichever thread frees it. Smaller blocks, every
//! request's own, go to the inner allocator after one comparison.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Blocks this large or larger are mapped on their own: a large request
/// body or its parsed copy, never a per-request header or buffer.
pub const LARGE: usize = 1 << 20;

/// Blocks this large or larger that go to the inner allocator are counted
/// per thread ([`thread_turnover`]) when allocated and when freed: a large
/// body's buffers as they grow, not a 16 KiB buffer every stream of ~10 KB
/// has (its usage tail). Counting from 64 KiB left ~12 MiB more after a
/// burst (`bench/burst_memory.py`).
const COUNTED: usize = 24 << 10;

const PAGE: usize = 4096;

thread_local! {
    /// Bytes in blocks of `COUNTED` and more this thread had the inner
    /// allocator give out or take back since the last reset. A
    /// const-initialised `Cell` with no destructor: no allocation and no
    /// registration on first use, so the allocator itself may touch it.
    static TURNOVER: Cell<usize> = const { Cell::new(0) };
}

/// Bytes the calling thread allocated or freed through a [`MapLarge`] in
/// blocks of 24 KiB up to [`LARGE`] since its last
/// [`crate::release_thread_memory`]: what its inner allocator may keep
/// after a burst. Frees count too: a request's blocks allocated before a
/// purge and freed after it are what that purge could not hand back.
pub fn thread_turnover() -> usize {
    TURNOVER.with(Cell::get)
}

pub(crate) fn reset_thread_turnover() {
    TURNOVER.with(|a| a.set(0));
}

#[inline]
fn count(size: usize) {
    TURNOVER.with(|a| a.set(a.get().saturating_add(size)));
    note_large();
}

/// Set when any thread allocated or freed a block of 24 KiB or more (a
/// mapped one included); taken by [`take_large_seen`].
static LARGE_SEEN: AtomicBool = AtomicBool::new(false);

/// Marks [`LARGE_SEEN`], writing the shared line only when it changes.
#[inline]
fn note_large() {
    if !LARGE_SEEN.load(Ordering::Relaxed) {
        LARGE_SEEN.store(true, Ordering::Relaxed);
    }
}

/// Whether any thread allocated or freed a block of 24 KiB or more since
/// the last call.
pub(crate) fn take_large_seen() -> bool {
    LARGE_SEEN.load(Ordering::Relaxed) && LARGE_SEEN.swap(false, Ordering::Relaxed)
}

/// A global allocator that maps blocks of [`LARGE`] bytes and more itself
/// (on Linux; elsewhere everything goes to the inner allocator) and hands
/// the rest to `A`.
pub struct MapLarge<A>(A);

impl<A> MapLarge<A> {
    /// `inner` for every block under [`LARGE`] bytes.
    pub const fn new(inner: A) -> Self {
        Self(inner)
    }
}

/// Whether a block of this layout is mapped on its own. A block's layout
/// is the same at allocation and at free, so both agree.
#[inline]
fn mapped(layout: Layout) -> bool {
    cfg!(target_os = "linux") && layout.size() >= LARGE && layout.align() <= PAGE
}

// SAFETY: every block is either the inner allocator's (under LARGE, or
// aligned past a page), allocated, resized and freed only through it with
// the caller's layout, or an anonymous mapping of at least `layout.size()`
// bytes, page-aligned (so aligned for any `align <= PAGE`), private to the
// block and unmapped only when the block is freed. Which of the two a block
// is follows from its layout alone, which the `GlobalAlloc` contract keeps
// the same from allocation to free; `realloc` moves a block across the
// threshold by allocating the other kind, copying and freeing.
unsafe impl<A: GlobalAlloc> GlobalAlloc for MapLarge<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= COUNTED {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.alloc_large(layout, false) };
        }
        // SAFETY: the caller's contract (a non-zero size), passed on.
        unsafe { self.0.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= COUNTED {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.alloc_large(layout, true) };
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= COUNTED {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.dealloc_large(ptr, layout) };
        }
        // SAFETY: `ptr` came from the inner allocator with this layout
        // (blocks this small are never mapped).
        unsafe { self.0.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < COUNTED && new_size < COUNTED {
            // SAFETY: an inner block, staying one: the caller's contract.
            return unsafe { self.0.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.realloc_large(ptr, layout, new_size) }
    }
}

// The paths for blocks of 24 KiB and more, out of line so that the inlined
// allocator calls on every request's path stay one comparison long.
impl<A: GlobalAlloc> MapLarge<A> {
    /// `alloc` or `alloc_zeroed` for a block of `COUNTED` bytes or more.
    ///
    /// # Safety
    /// `GlobalAlloc::alloc`'s contract.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_large(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        if mapped(layout) {
            note_large();
            return map(layout.size()); // anonymous mappings read as zeros
        }
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe {
            if zeroed {
                self.0.alloc_zeroed(layout)
            } else {
                self.0.alloc(layout)
            }
        }
    }

    /// `dealloc` for a block of `COUNTED` bytes or more.
    ///
    /// # Safety
    /// `GlobalAlloc::dealloc`'s contract.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_large(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout) {
            note_large();
            unmap(ptr, layout.size());
            return;
        }
        count(layout.size());
        // SAFETY: `ptr` came from the inner allocator with this layout
        // (blocks of this layout are never mapped).
        unsafe { self.0.dealloc(ptr, layout) }
    }

    /// `realloc` where either size is `COUNTED` bytes or more.
    ///
    /// # Safety
    /// `GlobalAlloc::realloc`'s contract.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_large(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to `align`,
        // does not overflow `isize`, so this is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(layout), mapped(new)) {
            (false, false) => {
                // The old block is handed back (or resized in place), a
                // larger one taken.
                if layout.size() >= COUNTED {
                    count(layout.size());
                }
                if new_size >= COUNTED && new_size > layout.size() {
                    count(new_size);
                }
                // SAFETY: an inner block, staying one: the caller's contract.
                unsafe { self.0.realloc(ptr, layout, new_size) }
            }
            (true, true) => {
                note_large();
                remap(ptr, layout.size(), new_size)
            }
            _ => {
                // SAFETY: `new` has a non-zero size (the caller's contract).
                let p = unsafe { self.alloc(new) };
                if !p.is_null() {
                    // SAFETY: both blocks are live, distinct, and at least
                    // the smaller size long; `ptr` is freed with its own
                    // layout after the copy, and only on success.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                p
            }
        }
    }
}

/// A fresh private anonymous mapping of `size` bytes, or null.
#[cfg(target_os = "linux")]
fn map(size: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping at an address of the
    // kernel's choosing touches no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Hands back the mapping `map` or `remap` made of `size` bytes at `ptr`.
#[cfg(target_os = "linux")]
fn unmap(ptr: *mut u8, size: usize) {
    // SAFETY: `ptr` and `size` are a whole mapping of ours (see the
    // `GlobalAlloc` impl), which the caller gives up with the block.
    // munmap fails only on invalid arguments, which these are not.
    unsafe { libc::munmap(ptr.cast(), size) };
}

/// The mapping of `old` bytes at `ptr` resized to `new` bytes, moved if it
/// must be (contents kept up to the smaller size), or null with the old
/// mapping untouched.
#[cfg(target_os = "linux")]
fn remap(ptr: *mut u8, old: usize, new: usize) -> *mut u8 {
    // SAFETY: `ptr`/`old` are a whole mapping of ours; with MAYMOVE the
    // kernel either moves it (the old address is then gone, as realloc's
    // contract allows) or fails and leaves it as it was.
    let p = unsafe { libc::mremap(ptr.cast(), old, new, libc::MREMAP_MAYMOVE) };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

#[cfg(not(target_os = "linux"))]
fn map(_: usize) -> *mut u8 {
    unreachable!("nothing is mapped elsewhere than Linux")
}

#[cfg(not(target_os = "linux"))]
fn unmap(_: *mut u8, _: usize) {
    unreachable!("nothing is mapped elsewhere than Linux")
}

#[cfg(not(target_os = "linux"))]
fn remap(_: *mut u8, _: usize, _: usize) -> *mut u8 {
    unreachable!("nothing is mapped elsewhere than Linux")
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{LARGE, MapLarge, thread_turnover};
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The system allocator, counting the blocks it holds.
    struct Inner(AtomicUsize);

    // SAFETY: passes every call on to `System` unchanged.
    unsafe impl GlobalAlloc for Inner {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            self.0.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            self.0.fetch_sub(1, Ordering::Relaxed);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(p, l) }
        }
    }

    fn new() -> MapLarge<Inner> {
        MapLarge::new(Inner(AtomicUsize::new(0)))
    }

    fn held(a: &MapLarge<Inner>) -> usize {
        a.0.0.load(Ordering::Relaxed)
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("layout")
    }

    /// Whether a mapping of its own starts at `p` (in /proc/self/maps).
    fn is_mapping(p: *mut u8) -> bool {
        let start = format!("{:x}-", p as usize);
        std::fs::read_to_string("/proc/self/maps")
            .expect("maps")
            .lines()
            .any(|l| l.starts_with(&start))
    }

    fn resident_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").expect("status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    #[test]
    fn small_blocks_go_to_the_inner_allocator_and_large_ones_are_mapped() {
        let a = new();
        let small = layout(LARGE - 1, 8);
        // SAFETY: non-zero sizes; each freed below with its layout.
        let (s, l) = unsafe { (a.alloc(small), a.alloc(layout(LARGE, 8))) };
        assert!(!s.is_null() && !l.is_null());
        assert_eq!(held(&a), 1, "only the small block is the inner one's");
        assert!(
            (l as usize).is_multiple_of(4096),
            "a mapping is page-aligned"
        );
        assert!(is_mapping(l), "the large block is a mapping of its own");
        // SAFETY: `l` is LARGE bytes long.
        unsafe { std::ptr::write_bytes(l, 7, LARGE) };
        // SAFETY: allocated above with these layouts.
        unsafe {
            a.dealloc(s, small);
            a.dealloc(l, layout(LARGE, 8));
        }
        assert_eq!(held(&a), 0);
        assert!(!is_mapping(l), "freed: unmapped");
    }

    #[test]
    fn a_large_block_past_page_alignment_is_the_inner_ones() {
        let a = new();
        let big = layout(LARGE, 8192);
        // SAFETY: a non-zero size; freed below with its layout.
        let p = unsafe { a.alloc(big) };
        assert!(!p.is_null() && (p as usize).is_multiple_of(8192));
        assert_eq!(held(&a), 1);
        // SAFETY: allocated above with `big`.
        unsafe { a.dealloc(p, big) };
        assert_eq!(held(&a), 0);
    }

    #[test]
    fn zeroed_large_blocks_read_zero() {
        let a = new();
        let big = layout(3 * LARGE, 8);
        // SAFETY: a non-zero size; freed below with its layout.
        let p = unsafe { a.alloc_zeroed(big) };
        assert!(!p.is_null());
        // SAFETY: `p` is 3 * LARGE initialised (zero) bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p, 3 * LARGE) };
        assert!(bytes.iter().all(|&b| b == 0));
        // SAFETY: allocated above with `big`.
        unsafe { a.dealloc(p, big) };
    }

    #[test]
    fn resizing_across_the_threshold_keeps_the_contents() {
        let a = new();
        let fill = |p: *mut u8, n: usize| {
            for i in 0..n {
                // SAFETY: `p` is at least `n` bytes long.
                unsafe { p.add(i).write(i as u8 ^ (i >> 8) as u8) };
            }
        };
        let check = |p: *mut u8, n: usize| {
            // SAFETY: `p` is at least `n` initialised bytes long.
            let s = unsafe { std::slice::from_raw_parts(p, n) };
            s.iter()
                .enumerate()
                .all(|(i, &b)| b == i as u8 ^ (i >> 8) as u8)
        };
        let sizes = [
            4096,
            LARGE - 1,
            LARGE,
            2 * LARGE + 5,
            5 * LARGE,
            LARGE + 1,
            100,
        ];
        let first = layout(sizes[0], 8);
        // SAFETY: a non-zero size.
        let mut p = unsafe { a.alloc(first) };
        let mut old = first;
        fill(p, sizes[0]);
        for &n in &sizes[1..] {
            // SAFETY: `p` is live with layout `old`; `n` is non-zero.
            p = unsafe { a.realloc(p, old, n) };
            assert!(!p.is_null(), "{} -> {n}", old.size());
            assert!(check(p, old.size().min(n)), "{} -> {n} kept", old.size());
            assert_eq!(is_mapping(p), n >= LARGE, "{n} bytes mapped or not");
            assert_eq!(held(&a), usize::from(n < LARGE), "{n}: inner blocks");
            fill(p, n);
            old = layout(n, 8);
        }
        // SAFETY: `p` is live with layout `old`.
        unsafe { a.dealloc(p, old) };
        assert_eq!(held(&a), 0);
    }

    #[test]
    fn a_freed_large_block_leaves_the_resident_set() {
        // 128 MiB, bounds at 100: other tests' blocks in the same process
        // (`cargo test` runs them on threads) cannot move it that far.
        let a = new();
        let big = layout(128 << 20, 8);
        let before = resident_kib();
        // SAFETY: a non-zero size; freed below with its layout.
        let p = unsafe { a.alloc(big) };
        assert!(!p.is_null());
        // SAFETY: `p` is 128 MiB long.
        unsafe { std::ptr::write_bytes(p, 1, 128 << 20) };
        let touched = resident_kib();
        assert!(touched >= before + 100 * 1024, "{before} -> {touched} KiB");
        // SAFETY: allocated above with `big`.
        unsafe { a.dealloc(p, big) };
        let after = resident_kib();
        assert!(after + 100 * 1024 <= touched, "{touched} -> {after} KiB");
    }

    #[test]
    fn blocks_from_24_kib_under_the_threshold_are_counted_per_thread_when_allocated_and_freed() {
        let a = new();
        let start = thread_turnover();
        let sizes = [100, 16 << 10, 24 << 10, 300 << 10, LARGE];
        for n in sizes {
            let l = layout(n, 8);
            // SAFETY: a non-zero size, freed at once with the same layout.
            unsafe {
                let p = a.alloc(l);
                assert!(!p.is_null());
                a.dealloc(p, l);
            }
        }
        // Each counted twice: allocated, then freed.
        assert_eq!(thread_turnover() - start, 2 * ((24 << 10) + (300 << 10)));
        let l = layout(8 << 10, 8);
        // SAFETY: a non-zero size; grown twice, then freed with the last
        // layout.
        unsafe {
            let p = a.alloc(l);
            let p = a.realloc(p, l, 16 << 10);
            let p = a.realloc(p, layout(16 << 10, 8), 128 << 10);
            assert!(!p.is_null());
            a.dealloc(p, layout(128 << 10, 8));
        }
        // 16 KiB is not counted; 128 KiB is, grown into and freed.
        assert_eq!(
            thread_turnover() - start,
            2 * ((24 << 10) + (300 << 10)) + 2 * (128 << 10)
        );
        let other = std::thread::spawn(thread_turnover).join().expect("thread");
        assert_eq!(other, 0, "another thread's count is its own");
    }
}
