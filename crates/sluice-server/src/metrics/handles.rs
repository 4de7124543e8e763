//! Series handles kept under a label set, so that a request path records
//! into its series without a family lookup (`get_or_create`: a lock, a
//! SipHash of the label set, a compare and a mapped guard, ~420–460
//! instructions each under callgrind). prometheus-client's metrics are
//! shared handles: a clone records into the family's series, and the
//! families never drop a series, so a kept handle never points at a
//! dropped one. Used by [`super::series`] (a finished request) and
//! [`super::target`] (an attempt on a target).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{PoisonError, RwLock};

/// The handles `V` of each label set `K` seen so far.
pub(super) struct Handles<K, V>(RwLock<HashMap<K, V, foldhash::fast::RandomState>>);

impl<K, V> Default for Handles<K, V> {
    fn default() -> Self {
        Self(RwLock::new(HashMap::default()))
    }
}

impl<K: Hash + Eq + Clone, V> Handles<K, V> {
    /// `f` with the handles kept under `key`, made by `make` the first
    /// time `key` is seen (under the write lock; every later call takes
    /// only the read lock).
    pub(super) fn with<R>(
        &self,
        key: K,
        make: impl FnOnce(&K) -> V,
        f: impl FnOnce(&V, &K) -> R,
    ) -> R {
        {
            let kept = self.0.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(v) = kept.get(&key) {
                return f(v, &key);
            }
        }
        let mut kept = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let v = kept.entry(key.clone()).or_insert_with(|| make(&key));
        f(v, &key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_made_once_per_key() {
        let h: Handles<&str, usize> = Handles::default();
        let made = std::cell::Cell::new(0);
        let make = |_: &&str| {
            made.set(made.get() + 1);
            made.get()
        };
        assert_eq!(h.with("a", make, |v, k| (*v, *k)), (1, "a"));
        assert_eq!(h.with("a", make, |v, _| *v), 1, "kept, not made again");
        assert_eq!(h.with("b", make, |v, _| *v), 2);
        assert_eq!(made.get(), 2);
    }
}
