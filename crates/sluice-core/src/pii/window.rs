//! Where in a text the built-in kinds' matches can lie, so the automaton
//! reads only that part of it. Prose costs the regex ~9 cycles a byte (the
//! email's Unicode local part keeps its lazy DFA busy over every word),
//! and a prompt's data sits in a few places of it. The bench's prompt
//! and `user` field (an address near the start, a build number mid-way):
//! ~500 ns for the two against ~705 ns without a window (`security-bench`,
//! bench/micro), for ~900 more instructions: the scans below run several
//! bytes a cycle, the automaton about one every nine cycles.
//!
//! Two facts about the built-in patterns (`kind.rs`) make the window exact:
//! - every match holds a data byte (an ASCII digit, `@` or `:`), and one
//!   comes before any space in it: the kinds that allow spaces (card,
//!   phone, IBAN) start with digits, `+` then a digit, `(` then digits, or
//!   two letters then two digits. So a match starts after the last space,
//!   tab or newline before the first data byte at or after where the search
//!   starts ([`start`]).
//! - a match ends in a run of non-whitespace holding a data byte, or in
//!   the IBAN's space-separated groups of up to four capitals and digits
//!   after one. So no match reaches past [`reach`].
//!
//! The fullwidth forms are folded to ASCII before the scan; custom
//! patterns promise neither fact, so a redactor with any gets no window.

fn is_data(c: u8) -> bool {
    // `0`–`9` and `:` are the contiguous 0x30–0x3A; no branch, so chunks
    // of it vectorize.
    (c.wrapping_sub(b'0') <= 10) | (c == b'@')
}

/// Chunks tested whole, without an early exit inside, which the compiler
/// turns into vector compares (a byte at a time with a branch each, these
/// scans cost more than the automaton they spare).
const CHUNK: usize = 32;

fn any_data(chunk: &[u8]) -> bool {
    chunk.iter().fold(false, |any, &c| any | is_data(c))
}

/// The first data byte of `b`.
fn first_data(b: &[u8]) -> Option<usize> {
    let mut chunks = b.chunks_exact(CHUNK);
    let mut at = 0;
    for c in &mut chunks {
        if any_data(c) {
            return c.iter().position(|&c| is_data(c)).map(|i| at + i);
        }
        at += CHUNK;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| is_data(c))
        .map(|i| at + i)
}

/// The last data byte of `b`.
fn last_data(b: &[u8]) -> Option<usize> {
    let mut chunks = b.rchunks_exact(CHUNK);
    let mut end = b.len();
    for c in &mut chunks {
        end -= CHUNK;
        if any_data(c) {
            return c.iter().rposition(|&c| is_data(c)).map(|i| end + i);
        }
    }
    chunks.remainder().iter().rposition(|&c| is_data(c))
}

/// Where a search from `at` may start: after the last whitespace before
/// the first data byte at or after `at`. `None` when there is no data byte
/// left, so no match either.
pub(super) fn start(text: &[u8], at: usize) -> Option<usize> {
    let rest = text.get(at..)?;
    let p = at + first_data(rest)?;
    // Space, tab and newline (a lone `\r` is rare): stopping at fewer kinds
    // of whitespace only widens the window.
    Some(memchr::memrchr3(b' ', b'\n', b'\t', &text[at..p]).map_or(at, |i| at + i + 1))
}

/// Where every match has ended: the end of the run of non-whitespace that
/// holds the last data byte, and of the IBAN groups (` ` and up to four
/// capitals or digits) after it. `None` when there is no data byte.
pub(super) fn reach(text: &[u8]) -> Option<usize> {
    let last = last_data(text)?;
    let mut end =
        memchr::memchr3(b' ', b'\n', b'\t', &text[last..]).map_or(text.len(), |n| last + n);
    while text.get(end) == Some(&b' ') {
        let group = text[end + 1..]
            .iter()
            .take(4)
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            .count();
        if group == 0 {
            break;
        }
        end += 1 + group;
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunked_scans_find_every_data_byte_at_every_position() {
        for len in [1, 31, 32, 33, 64, 70, 95] {
            for at in [0, 1, len / 2, len - 1].into_iter().filter(|&at| at < len) {
                for c in 0..=255u8 {
                    let mut b = vec![b'a'; len];
                    b[at] = c;
                    let want = is_data(c).then_some(at);
                    assert_eq!(first_data(&b), want, "byte {c:#x} at {at} of {len}");
                    assert_eq!(last_data(&b), want, "byte {c:#x} at {at} of {len}");
                }
            }
            let mut b = vec![b'1'; len];
            b[0] = b'x';
            assert_eq!(first_data(&b), (len > 1).then_some(1));
            assert_eq!(last_data(&b), (len > 1).then_some(len - 1));
        }
        assert_eq!(first_data(b""), None);
        assert_eq!(last_data(b""), None);
    }

    #[test]
    fn the_window_is_the_data_and_what_can_lead_or_trail_it() {
        let t = b"write to bench-user@example.com: about build 4812, soon";
        let w = start(t, 0).unwrap();
        assert_eq!(&t[w..w + 10], b"bench-user");
        assert_eq!(&t[..reach(t).unwrap()], &t[..t.len() - 5]);
        // Started past the data: nothing left.
        assert_eq!(start(t, t.len() - 5), None);
        assert_eq!(start(t, t.len()), None);
        assert_eq!(start(b"no data here", 0), None);
        assert_eq!(reach(b"no data here"), None);
        // An IBAN's trailing letter groups are in reach; prose after is not.
        let iban = b"pay GB82 WEST 1234 5698 7654 AB CDEF then more";
        assert_eq!(
            &iban[..reach(iban).unwrap()],
            b"pay GB82 WEST 1234 5698 7654 AB CDEF"
        );
        // Found whole (the mod-97 check holds), letters last.
        let r = super::super::Redactor::builtin();
        assert_eq!(
            r.redact("to GB13 1234 5678 ABCD EFGH today"),
            "to [IBAN] today"
        );
        assert_eq!(r.redact("to GB96 WEST 1234 5698 ABCD"), "to [IBAN]");
        // A window can end inside a run (here after `ABCD` of `ABCDX`): the
        // automaton still sees the byte after it for `\b` (regex-automata
        // reads look-around outside the span), so this is no IBAN, as in
        // the whole text.
        let text = "to GB96 WEST 1234 5698 ABCDX";
        assert_eq!(
            &text[..reach(text.as_bytes()).unwrap()],
            "to GB96 WEST 1234 5698 ABCD"
        );
        assert_eq!(r.redact(text), text);
        // Tabs and newlines end a run too.
        assert_eq!(start(b"a\tb\nc 12", 0), Some(6));
        assert_eq!(start(b"x\n+44 20", 0), Some(2));
    }
}
