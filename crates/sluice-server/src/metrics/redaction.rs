//! `sluice_redaction_cache_*`: what the redactor's cache of texts already
//! scanned (`[redaction] cache_bytes`) saves and holds, read at scrape time.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_core::pii::{CacheStats, Redactor};

#[derive(Default)]
pub struct RedactionMetrics {
    hits: Counter,
    misses: Counter,
    bytes: Gauge,
    /// The redactor last read and its counts then: a reload makes a new
    /// redactor whose counts start again at zero. Held weakly: its memory
    /// stays allocated, so a new redactor cannot take its address and be
    /// taken for it.
    last: Mutex<(Weak<Redactor>, CacheStats)>,
}

impl RedactionMetrics {
    pub fn register(&self, r: &mut Registry) {
        let sub = r.sub_registry_with_prefix("redaction_cache");
        sub.register(
            "hits",
            "Texts to redact found in the cache of texts already scanned (not scanned again)",
            self.hits.clone(),
        );
        sub.register(
            "misses",
            "Texts to redact looked up in the cache and not found (scanned)",
            self.misses.clone(),
        );
        sub.register(
            "bytes",
            "Memory the cache's kept texts and their redacted forms take",
            self.bytes.clone(),
        );
    }

    /// Brings the series up to the current redactor's counts.
    pub fn refresh(&self, redactor: Option<&Arc<Redactor>>) {
        let Some((r, now)) = redactor.and_then(|r| Some((r, r.cache_stats()?))) else {
            self.bytes.set(0);
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let same = std::ptr::eq(last.0.as_ptr(), Arc::as_ptr(r));
        let before = last.1;
        // Counted since the last scrape; all of it for a redactor not seen
        // before (its counts started at zero).
        let since = |now: u64, before: u64| {
            if same && now >= before {
                now - before
            } else {
                now
            }
        };
        self.hits.inc_by(since(now.hits, before.hits));
        self.misses.inc_by(since(now.misses, before.misses));
        self.bytes.set(i64::try_from(now.bytes).unwrap_or(i64::MAX));
        *last = (Arc::downgrade(r), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_carry_over_a_reload() {
        let m = RedactionMetrics::default();
        let text = "mail jane@example.com about the 3 tickets";
        let a = Arc::new(Redactor::builtin().with_cache(1 << 20));
        for _ in 0..4 {
            a.redact(text);
        }
        m.refresh(Some(&a));
        m.refresh(Some(&a));
        assert_eq!((m.hits.get(), m.misses.get()), (2, 2));
        assert!(m.bytes.get() > text.len() as i64);
        // A reload: a new redactor, counting from zero.
        let b = Arc::new(Redactor::builtin().with_cache(1 << 20));
        b.redact(text);
        m.refresh(Some(&b));
        assert_eq!((m.hits.get(), m.misses.get()), (2, 3));
        // Another reload, the old redactor gone first: the new one may be
        // made where it was, and is still counted from zero.
        drop(b);
        let c = Arc::new(Redactor::builtin().with_cache(1 << 20));
        for _ in 0..4 {
            c.redact(text);
        }
        m.refresh(Some(&c));
        assert_eq!((m.hits.get(), m.misses.get()), (4, 5));
        m.refresh(None);
        assert_eq!(m.bytes.get(), 0);
    }
}
