//! mimalloc as a Rust global allocator, through its unaligned entry points
//! where they suffice.
//!
//! The `mimalloc` crate's allocator calls `mi_malloc_aligned` for every
//! block. With the alignment of almost every Rust layout (at most 16, no
//! more than the size) that is `mi_malloc`'s work after a few more
//! branches, and for blocks over 1 KiB it takes the aligned allocator's
//! generic path (~210 instructions a call, three a bare proxied request,
//! callgrind). [`Mi`]
//! calls `mi_malloc` whenever mimalloc guarantees its block the layout's
//! alignment (`mi_malloc_is_naturally_aligned` in `alloc-aligned.c`: the
//! alignment is at most `MI_MAX_ALIGN_SIZE`, 16, and at most the size),
//! and the aligned calls otherwise. Measured with `bench/instructions.py`:
//! see `bench/README.md`.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as ffi;

/// The alignment every block `mi_malloc` returns has, when it is no
/// larger than the block (`MI_MAX_ALIGN_SIZE`).
const NATURAL: usize = 16;

/// mimalloc, asked for an alignment only when a layout needs one.
pub struct Mi;

/// Whether `mi_malloc(size)` is aligned for `align`.
#[inline]
fn natural(size: usize, align: usize) -> bool {
    align <= NATURAL && align <= size
}

// SAFETY: every block comes from mimalloc (`mi_malloc`, `mi_zalloc`,
// `mi_realloc` or their aligned forms) with at least the layout's size and
// alignment: the unaligned forms only where mimalloc guarantees the
// alignment, see `natural`. Every block is freed with `mi_free`, which
// takes a block from any of them, and resized with `mi_realloc(_aligned)`,
// which keep the contents up to the smaller size.
unsafe impl GlobalAlloc for Mi {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: plain size and alignment arguments; mimalloc returns a
        // new block or null.
        unsafe {
            if natural(size, align) {
                ffi::mi_malloc(size).cast()
            } else {
                ffi::mi_malloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`; the block comes zeroed.
        unsafe {
            if natural(size, align) {
                ffi::mi_zalloc(size).cast()
            } else {
                ffi::mi_zalloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` is a live block of mimalloc's (this allocator's,
        // per the caller's contract), freed once.
        unsafe { ffi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` is a live block of mimalloc's; mimalloc returns the
        // resized (maybe moved) block, or null with the old one untouched.
        unsafe {
            if natural(new_size, align) {
                ffi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                ffi::mi_realloc_aligned(ptr.cast(), new_size, align).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Mi;
    use std::alloc::{GlobalAlloc, Layout};

    const SIZES: &[usize] = &[1, 7, 8, 15, 16, 17, 24, 33, 100, 1000, 1025, 5000, 70_000];
    const ALIGNS: &[usize] = &[1, 2, 8, 16, 32, 64, 128, 4096];

    #[test]
    fn every_block_has_its_layouts_alignment_and_size() {
        for &size in SIZES {
            for &align in ALIGNS {
                let l = Layout::from_size_align(size, align).expect("layout");
                // Several, so that a block that happens to be aligned does
                // not hide a bin whose blocks are not.
                let blocks: Vec<*mut u8> = (0..64)
                    .map(|_| {
                        // SAFETY: a non-zero size; freed below.
                        let p = unsafe { Mi.alloc(l) };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        // SAFETY: the block is `size` bytes long.
                        unsafe { p.write_bytes(0xa5, size) };
                        p
                    })
                    .collect();
                for p in blocks {
                    // SAFETY: allocated above with `l`.
                    unsafe { Mi.dealloc(p, l) };
                }
            }
        }
    }

    /// The bytes of a block: `0, 1, 2, …` up to `len`.
    fn holds_its_pattern(p: *mut u8, len: usize) -> bool {
        // SAFETY: the caller's block has `len` initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p, len) };
        bytes.iter().enumerate().all(|(i, &b)| b == i as u8)
    }

    #[test]
    fn zeroed_blocks_are_zero_and_resized_blocks_keep_their_bytes() {
        for &size in SIZES {
            for &align in ALIGNS {
                let at = |n| Layout::from_size_align(n, align).expect("layout");
                // SAFETY: a non-zero size; resized and freed below.
                let p = unsafe { Mi.alloc_zeroed(at(size)) };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                // SAFETY: `size` bytes, zeroed by the allocator.
                let zeroed = unsafe { std::slice::from_raw_parts(p, size) };
                assert!(zeroed.iter().all(|&b| b == 0), "size {size} align {align}");
                for i in 0..size {
                    // SAFETY: within the block.
                    unsafe { p.add(i).write(i as u8) };
                }
                let (big, small) = (size * 3 + 5, size / 2 + 1);
                // SAFETY: `p` is live with layout `at(size)`; non-zero size.
                let q = unsafe { Mi.realloc(p, at(size), big) };
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0, "grown {size}->{big} align {align}");
                assert!(
                    holds_its_pattern(q, size),
                    "grown {size}->{big} align {align}"
                );
                // SAFETY: `q` is live with layout `at(big)`; non-zero size.
                let r = unsafe { Mi.realloc(q, at(big), small) };
                assert!(!r.is_null());
                assert_eq!(r as usize % align, 0, "shrunk {big}->{small} align {align}");
                assert!(
                    holds_its_pattern(r, small),
                    "shrunk {big}->{small} align {align}"
                );
                // SAFETY: `r` is live with layout `at(small)`.
                unsafe { Mi.dealloc(r, at(small)) };
            }
        }
    }
}
