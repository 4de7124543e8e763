//! Buffers a thread keeps between requests, past the allocator's
//! per-thread cache otherwise: the one a request's head (and a small body)
//! is written into (~2 KiB for a chat request, a trip through the
//! allocator's bins and their consolidation under load, and a free, every
//! request), and the last read buffer a pooled connection gave up (4 KiB
//! per answer).

use std::cell::Cell;

use bytes::BytesMut;

/// A larger buffer is not kept (a request with a big body joined).
const KEEP: usize = 64 * 1024;

thread_local! {
    static SPARE: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// An empty buffer with room for `cap` bytes: the thread's spare one
/// when it has it (another request may hold it across its write).
pub(super) fn take(cap: usize) -> Vec<u8> {
    let mut v = SPARE.with(Cell::take);
    v.clear();
    v.reserve(cap);
    v
}

/// Hands `v` back for the thread's next request.
pub(super) fn give(v: Vec<u8>) {
    if v.capacity() <= KEEP {
        SPARE.with(|s| s.set(v));
    }
}

thread_local! {
    static READ: Cell<BytesMut> = Cell::new(BytesMut::new());
}

/// An empty read buffer with room for `room` bytes: the last one a
/// connection of this thread gave back, when nothing else shares its
/// storage any more (its answer's frames are sent) and it is that large;
/// otherwise a new one. A 4 KiB allocation and its free per answer
/// otherwise (past the allocator's per-thread cache).
pub(super) fn take_read(room: usize) -> BytesMut {
    let mut b = READ.with(Cell::take);
    if b.is_empty() && b.try_reclaim(room) {
        return b;
    }
    BytesMut::with_capacity(room)
}

/// Keeps `b` (a pooled connection's read buffer, maybe still shared
/// with frames on their way to a client) for [`take_read`]; the one
/// kept before is let go. (Its storage is at most what a body's reads
/// grow to, `MAX_READ` and change.)
pub(super) fn give_read(b: BytesMut) {
    if b.is_empty() {
        READ.with(|s| s.set(b));
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};

    #[test]
    fn the_spare_is_reused_empty_and_a_big_one_is_not_kept() {
        let mut v = super::take(2048);
        v.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let at = v.as_ptr();
        super::give(v);
        let again = super::take(100);
        assert!(again.is_empty() && again.capacity() >= 2048);
        assert_eq!(again.as_ptr(), at, "the spare was not reused");
        // Taken: another request meanwhile gets its own.
        let other = super::take(10);
        assert_ne!(other.as_ptr(), at);
        super::give(again);
        super::give(Vec::with_capacity(super::KEEP + 1));
        let kept = super::take(1);
        assert_eq!(kept.as_ptr(), at, "a big buffer replaced the spare");
    }

    /// An answer's buffer, with `frame` still sharing it.
    fn answered() -> (BytesMut, Bytes, *const u8) {
        let mut b = BytesMut::with_capacity(4096);
        b.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let at = b.as_ptr();
        let frame = b.split().freeze();
        (b, frame, at)
    }

    #[test]
    fn a_read_buffer_is_taken_back_once_its_frames_are_gone() {
        let (b, frame, at) = answered();
        super::give_read(b);
        drop(frame);
        let back = super::take_read(4096);
        assert_eq!(back.as_ptr(), at, "not taken back");
        assert!(back.is_empty() && back.capacity() >= 4096);
        // Still shared: a new one (and the shared one let go).
        let (b, frame, at) = answered();
        super::give_read(b);
        let new = super::take_read(4096);
        assert_ne!(new.as_ptr(), at);
        assert!(new.capacity() >= 4096);
        assert_eq!(
            &frame[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        );
        // Too small to take back: a new one of the size asked.
        let (b, frame, _) = answered();
        super::give_read(b);
        drop(frame);
        assert!(super::take_read(8192).capacity() >= 8192);
    }
}
