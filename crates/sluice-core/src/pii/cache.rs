//! What texts already scanned came to, so that text a client sends again is
//! not scanned again. An agent resends its whole conversation with every
//! turn: with prompts redacted, each request's scan grew with the
//! conversation, where only the newest message is new. A 10-turn, 3.7 KB
//! one cost 167,471 instructions per request production-shaped against
//! 81,047 for the one-turn request (bare: 68,802 against 44,443), and
//! 124,275 with this cache (`bench/instructions.py --prod --turns 10
//! --unique`; `bench/README.md`).
//!
//! A text is kept the second time it is seen (the first time only its hash
//! is noted), so a stream of texts that never come back costs a hash and a
//! set insert each, not a copy. A hit compares the whole text, so a hash
//! collision can only cost a scan, never return another text's verdict.
//! Memory is bounded: each shard keeps two generations; when the newer
//! passes its share of the budget it becomes the older and the older is
//! dropped. A text found in the older generation moves to the newer.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Mutex, PoisonError};

/// Shards, each behind its own lock: workers looking up different texts
/// rarely meet.
const SHARDS: usize = 8;

/// Texts shorter than this are scanned every time. From 16 bytes, the
/// bench request's 22-byte `user` field is answered by the cache (with 64
/// it was scanned each request: ~0.3 µs of automaton in `perf`); how a
/// lookup and a scan compare below it was not measured.
pub(super) const MIN_LEN: usize = 16;

/// Bookkeeping per kept text besides its bytes (map slot, boxes).
const ENTRY_OVERHEAD: usize = 64;

/// Bytes of the budget per first sighting remembered: a set slot takes ~18,
/// so the set stays near a fourteenth of the budget (it is cleared when
/// full: a text must come back within the last share / 256 first
/// sightings of its shard to be kept).
const PER_SEEN: usize = 256;

/// What a lookup found.
pub(super) enum Found {
    /// Seen before: nothing to redact.
    Clean,
    /// Seen before: its redacted form was appended to the output.
    Redacted,
    /// Not kept: scan it, then hand the verdict to [`Cache::keep`].
    Miss(u64),
}

pub(super) struct Cache {
    hasher: foldhash::fast::RandomState,
    shards: [Mutex<Shard>; SHARDS],
    /// Bytes each shard's newer generation may hold.
    share: usize,
}

/// The maps' keys are the texts' hashes already: used as they are (std's
/// SipHash over them cost more than hashing the texts).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys come here; any other input still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

#[derive(Default)]
struct Shard {
    /// Hashes of texts seen once.
    seen: HashSet<u64, BuildHasherDefault<Prehashed>>,
    newer: ByHash<Entry>,
    older: ByHash<Entry>,
    /// Bytes kept in `newer`.
    bytes: usize,
    /// Bytes kept in `older`.
    older_bytes: usize,
    /// Lookups that found their text, and those that did not.
    hits: u64,
    misses: u64,
}

/// What a redactor's cache did since it was made ([`Redactor::cache_stats`](super::Redactor::cache_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Texts found kept: not scanned.
    pub hits: u64,
    /// Texts looked up and not found: scanned.
    pub misses: u64,
    /// What the kept texts and their redacted forms take now, bookkeeping
    /// included.
    pub bytes: u64,
}

struct Entry {
    text: Box<str>,
    /// `None`: nothing found in it.
    redacted: Option<Box<str>>,
}

/// What a kept text takes of the budget.
fn entry_size(text: &str, redacted: Option<&str>) -> usize {
    text.len() + redacted.map_or(0, str::len) + ENTRY_OVERHEAD
}

impl Entry {
    fn size(&self) -> usize {
        entry_size(&self.text, self.redacted.as_deref())
    }

    /// Its verdict; its redacted form appended to `out` (given `room` more
    /// bytes first, as a scan would) when it has one.
    fn answer(&self, out: &mut String, room: usize) -> Found {
        match &self.redacted {
            None => Found::Clean,
            Some(r) => {
                out.reserve(room);
                out.push_str(r);
                Found::Redacted
            }
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("bytes", &(self.share * SHARDS))
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache whose kept texts take at most about `bytes` (twice that
    /// while a generation is replaced); `None` for 0.
    pub(super) fn new(bytes: usize) -> Option<Self> {
        (bytes > 0).then(|| Self {
            hasher: foldhash::fast::RandomState::default(),
            shards: Default::default(),
            share: bytes.div_ceil(SHARDS),
        })
    }

    /// Whether a text of `len` bytes could be kept: a larger one is
    /// scanned without a lookup (it would take most of its shard, not
    /// worth the churn).
    pub(super) fn fits(&self, len: usize) -> bool {
        entry_size("", None) + len <= self.share / 4
    }

    fn shard(&self, hash: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The high bits pick the shard; the maps use all of them.
        self.shards[(hash >> 61) as usize % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks `text` up; on a hit with findings its redacted form is
    /// appended to `out` (given `room` more bytes first, as a scan would).
    pub(super) fn look(&self, text: &str, out: &mut String, room: usize) -> Found {
        let hash = self.hasher.hash_one(text);
        let mut s = self.shard(hash);
        let s = &mut *s;
        if let Some(e) = s.newer.get(&hash).filter(|e| *e.text == *text) {
            s.hits += 1;
            return e.answer(out, room);
        }
        match s.older.remove(&hash) {
            Some(e) if *e.text == *text => {
                s.hits += 1;
                s.older_bytes -= e.size();
                // Answered before it moves: moving it to the newer
                // generation may turn that over, into the older again.
                let found = e.answer(out, room);
                s.put(hash, e, self.share);
                found
            }
            other => {
                // Another text with the same hash stays where it was.
                if let Some(e) = other {
                    s.older.insert(hash, e);
                }
                s.misses += 1;
                Found::Miss(hash)
            }
        }
    }

    /// Notes what scanning `text` (its hash from [`Cache::look`]) found:
    /// kept from its second time on.
    pub(super) fn keep(&self, hash: u64, text: &str, redacted: Option<&str>) {
        // Its redacted form can be longer than the text.
        if entry_size(text, redacted) > self.share / 4 {
            return;
        }
        let mut s = self.shard(hash);
        if s.seen.insert(hash) {
            // First time. The set of hashes is bounded like the texts.
            if s.seen.len() > self.share / PER_SEEN {
                s.seen.clear();
                s.seen.insert(hash);
            }
            return;
        }
        let entry = Entry {
            text: text.into(),
            redacted: redacted.map(Into::into),
        };
        s.put(hash, entry, self.share);
    }

    pub(super) fn stats(&self) -> CacheStats {
        let mut out = CacheStats::default();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(PoisonError::into_inner);
            out.hits += s.hits;
            out.misses += s.misses;
            out.bytes += (s.bytes + s.older_bytes) as u64;
        }
        out
    }
}

impl Shard {
    fn put(&mut self, hash: u64, entry: Entry, share: usize) {
        let size = entry.size();
        if let Some(old) = self.newer.insert(hash, entry) {
            self.bytes -= old.size();
        }
        self.bytes += size;
        if self.bytes > share {
            // The newer generation is full: it becomes the older, and what
            // the older held (not used since) goes.
            self.older = std::mem::take(&mut self.newer);
            self.older_bytes = std::mem::take(&mut self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(c: &Cache, text: &str) -> (Found, String) {
        let mut out = String::new();
        (c.look(text, &mut out, 0), out)
    }

    #[test]
    fn a_text_is_kept_from_its_second_time() {
        let c = Cache::new(1 << 20).unwrap();
        let t = "x".repeat(100);
        for round in 0..2 {
            let (Found::Miss(h), _) = look(&c, &t) else {
                panic!("round {round}: not kept yet");
            };
            c.keep(h, &t, Some("[EMAIL]"));
        }
        let (found, out) = look(&c, &t);
        assert!(matches!(found, Found::Redacted));
        assert_eq!(out, "[EMAIL]");
        let clean = "y".repeat(100);
        for _ in 0..2 {
            let (Found::Miss(h), _) = look(&c, &clean) else {
                panic!()
            };
            c.keep(h, &clean, None);
        }
        let (found, out) = look(&c, &clean);
        assert!(matches!(found, Found::Clean) && out.is_empty());
        assert!(Cache::new(0).is_none());
    }

    #[test]
    fn a_text_moved_up_answers_when_the_move_turns_the_generation_over() {
        let c = Cache::new(8 * 1024).unwrap();
        let t = "x".repeat(100);
        let h = c.hasher.hash_one(t.as_str());
        {
            let mut s = c.shard(h);
            let e = Entry {
                text: t.as_str().into(),
                redacted: Some("[EMAIL]".into()),
            };
            s.older_bytes = e.size();
            s.older.insert(h, e);
            // The newer generation full: the move turns it over.
            s.bytes = c.share;
        }
        let (found, out) = look(&c, &t);
        assert!(matches!(found, Found::Redacted), "not reported clean");
        assert_eq!(out, "[EMAIL]");
        assert!(
            c.shard(h).older.contains_key(&h),
            "turned over with the rest"
        );
    }

    #[test]
    fn a_hash_collision_is_a_miss_not_another_texts_verdict() {
        let c = Cache::new(1 << 20).unwrap();
        let (a, b) = ("a".repeat(100), "b".repeat(100));
        let h = c.hasher.hash_one(a.as_str());
        // `b` filed under `a`'s hash, as a collision would.
        c.keep(h, &b, None);
        c.keep(h, &b, None);
        assert!(matches!(look(&c, &a).0, Found::Miss(_)));
        // Also from the older generation.
        {
            let mut s = c.shard(h);
            s.older = std::mem::take(&mut s.newer);
        }
        assert!(matches!(look(&c, &a).0, Found::Miss(_)));
        assert!(c.shard(h).older.contains_key(&h), "the other text stays");
    }

    #[test]
    fn memory_stays_within_the_budget_and_recent_texts_stay() {
        let budget = 64 * 1024;
        let c = Cache::new(budget).unwrap();
        let hot = format!("{} hot", "h".repeat(200));
        for i in 0..5_000 {
            let t = format!("{i:08} {}", "t".repeat(200));
            for text in [t.as_str(), t.as_str(), hot.as_str()] {
                if let (Found::Miss(h), _) = look(&c, text) {
                    c.keep(h, text, None);
                }
            }
        }
        let mut kept = 0;
        for s in &c.shards {
            let s = s.lock().unwrap();
            let sum: usize = s.newer.values().map(Entry::size).sum();
            assert_eq!(sum, s.bytes);
            assert!(s.bytes <= c.share, "{} > {}", s.bytes, c.share);
            kept += sum + s.older.values().map(Entry::size).sum::<usize>();
            assert!(s.seen.len() <= c.share / PER_SEEN + 1);
        }
        assert!(kept <= 2 * budget + SHARDS * 512, "{kept}");
        let stats = c.stats();
        assert_eq!(stats.bytes as usize, kept);
        // Each `t` missed twice, then `hot` hit all but its first two.
        assert_eq!(stats.hits + stats.misses, 15_000);
        assert!(stats.hits >= 4_990, "{stats:?}");
        assert!(kept > budget / 2, "{kept}: the cache holds something");
        // The text used all along is still a hit.
        assert!(matches!(look(&c, &hot).0, Found::Clean));
        // A text too large for its shard is never kept.
        let big = "z".repeat(budget);
        for _ in 0..3 {
            let (Found::Miss(h), _) = look(&c, &big) else {
                panic!()
            };
            c.keep(h, &big, None);
        }
    }
}
