//! Exact read-modify-write on the host's shared [`state`]:
//! the compare-and-swap loop that keeps an update correct when many pooled
//! instances change the same key at once.
//!
//! [`transact`] talks to a [`Store`] trait rather than the host import, so a
//! plugin's decision logic runs natively in unit tests. In a plugin, pass
//! [`HostStore`]; in tests, enable this crate's `testing` feature and pass a
//! [`memory::MemoryStore`], which threads can hammer.

use crate::state;

/// A stored value and the version of its last write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The bytes last written.
    pub value: Vec<u8>,
    /// Changes on every write; what a compare-and-swap compares.
    pub version: u64,
}

/// What a compare-and-swap did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// The write happened.
    Swapped,
    /// Someone wrote first; this is the entry as it is now.
    Conflict(Option<Entry>),
}

/// The two state operations the loop needs, with the host's semantics:
/// `expected: None` means "only if the key is missing or expired".
pub trait Store {
    /// Why an operation failed.
    type Error;
    /// The entry at `key`, or `None` when it is missing or expired.
    fn get(&self, key: &str) -> Result<Option<Entry>, Self::Error>;
    /// Write `value` (expiring after `ttl_ms`, if given) only if the entry's
    /// version is still `expected`.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Swap, Self::Error>;
}

/// What a decision wants done with the value it was shown.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Leave the stored value alone and return `T`: the decision holds as of
    /// the read, so no write is needed (a refused request takes no token).
    Keep(T),
    /// Replace the value; `then` is returned once the write wins.
    Write {
        /// The new value.
        value: Vec<u8>,
        /// How long the new value lives, in milliseconds; `None` keeps it.
        ttl_ms: Option<u64>,
        /// What [`transact`] returns once the write wins.
        then: T,
    },
}

/// Why [`transact`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum TxError<E> {
    /// The store failed.
    State(E),
    /// Every attempt lost the race to another writer.
    Contended,
}

/// Attempts before [`transact`] reports [`TxError::Contended`].
///
/// Each lost race means another writer's swap succeeded in between, so a
/// caller loops only while others make progress on the same key — for a
/// token bucket, while others take tokens (refusals write nothing, so an
/// empty bucket ends every loop). A bound in the tens is reachable when an
/// unlucky instance is descheduled while a burst of a hundred drains, so the
/// bound sits well above any burst a loop can witness and is only a guard
/// against a store that conflicts for ever; a thousand host calls still fit
/// easily in a plugin call's CPU deadline.
pub const MAX_ATTEMPTS: usize = 1024;

/// Read `key`, let `decide` compute the next value from the current one
/// (`None` when missing), and write it only if nobody wrote in between,
/// retrying with the entry the conflict returned.
pub fn transact<S: Store, T>(
    store: &S,
    key: &str,
    mut decide: impl FnMut(Option<&[u8]>) -> Step<T>,
) -> Result<T, TxError<S::Error>> {
    let mut current = store.get(key).map_err(TxError::State)?;
    for _ in 0..MAX_ATTEMPTS {
        match decide(current.as_ref().map(|e| e.value.as_slice())) {
            Step::Keep(result) => return Ok(result),
            Step::Write {
                value,
                ttl_ms,
                then,
            } => {
                let expected = current.as_ref().map(|e| e.version);
                match store
                    .compare_and_swap(key, expected, &value, ttl_ms)
                    .map_err(TxError::State)?
                {
                    Swap::Swapped => return Ok(then),
                    Swap::Conflict(now) => current = now,
                }
            }
        }
    }
    Err(TxError::Contended)
}

/// The host's shared state, seen as a [`Store`]: what plugins pass to
/// [`transact`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HostStore;

fn entry(e: state::Entry) -> Entry {
    Entry {
        value: e.value,
        version: e.version,
    }
}

impl Store for HostStore {
    type Error = state::StateError;

    fn get(&self, key: &str) -> Result<Option<Entry>, state::StateError> {
        state::get(key).map(|e| e.map(entry))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<u64>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<Swap, state::StateError> {
        state::compare_and_swap(key, expected, value, ttl_ms).map(|r| match r {
            state::CasResult::Swapped(_) => Swap::Swapped,
            state::CasResult::Conflict(current) => Swap::Conflict(current.map(entry)),
        })
    }
}

#[cfg(any(test, feature = "testing"))]
pub mod memory {
    //! An in-memory [`Store`] with the host's semantics, for tests (feature
    //! `testing`; plugins enable it in `[dev-dependencies]` only).

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::{Entry, Store, Swap};

    /// Entries, their TTLs and a version counter behind one lock; TTLs are
    /// recorded, not enforced.
    #[derive(Default)]
    pub struct MemoryStore {
        entries: Mutex<HashMap<String, (Entry, Option<u64>)>>,
        version: AtomicU64,
        /// When set, every call fails, as an unreachable store would.
        pub down: AtomicBool,
    }

    /// The error of a [`MemoryStore`] that is down.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Unavailable;

    impl MemoryStore {
        /// The TTL given with the last write of `key`.
        pub fn ttl_of(&self, key: &str) -> Option<u64> {
            self.entries.lock().unwrap().get(key).and_then(|(_, t)| *t)
        }

        /// Every key written so far.
        pub fn keys(&self) -> Vec<String> {
            self.entries.lock().unwrap().keys().cloned().collect()
        }

        /// Drop `key`, as its expiry would.
        pub fn remove(&self, key: &str) {
            self.entries.lock().unwrap().remove(key);
        }
    }

    impl Store for MemoryStore {
        type Error = Unavailable;

        fn get(&self, key: &str) -> Result<Option<Entry>, Unavailable> {
            if self.down.load(Ordering::SeqCst) {
                return Err(Unavailable);
            }
            Ok(self
                .entries
                .lock()
                .unwrap()
                .get(key)
                .map(|(e, _)| e.clone()))
        }

        fn compare_and_swap(
            &self,
            key: &str,
            expected: Option<u64>,
            value: &[u8],
            ttl_ms: Option<u64>,
        ) -> Result<Swap, Unavailable> {
            if self.down.load(Ordering::SeqCst) {
                return Err(Unavailable);
            }
            // Widen the gap between a caller's read and its swap, so that
            // concurrent tests really interleave there.
            std::thread::yield_now();
            let mut entries = self.entries.lock().unwrap();
            let current = entries.get(key).map(|(e, _)| e.clone());
            if current.as_ref().map(|e| e.version) != expected {
                return Ok(Swap::Conflict(current));
            }
            let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
            let entry = Entry {
                value: value.to_vec(),
                version,
            };
            entries.insert(key.to_string(), (entry, ttl_ms));
            Ok(Swap::Swapped)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::memory::{MemoryStore, Unavailable};
    use super::*;

    /// A store whose compare-and-swap always loses to a phantom writer.
    struct AlwaysConflicting;

    impl Store for AlwaysConflicting {
        type Error = Unavailable;
        fn get(&self, _key: &str) -> Result<Option<Entry>, Unavailable> {
            Ok(None)
        }
        fn compare_and_swap(
            &self,
            _key: &str,
            _expected: Option<u64>,
            _value: &[u8],
            _ttl_ms: Option<u64>,
        ) -> Result<Swap, Unavailable> {
            Ok(Swap::Conflict(Some(Entry {
                value: vec![1],
                version: 7,
            })))
        }
    }

    #[test]
    fn transact_writes_missing_key() {
        let store = MemoryStore::default();
        let out = transact(&store, "k", |cur| {
            assert_eq!(cur, None);
            Step::Write {
                value: vec![9],
                ttl_ms: Some(5),
                then: "wrote",
            }
        });
        assert_eq!(out, Ok("wrote"));
        assert_eq!(store.get("k").unwrap().unwrap().value, vec![9]);
        assert_eq!(store.ttl_of("k"), Some(5));
    }

    #[test]
    fn transact_keep_does_not_write() {
        let store = MemoryStore::default();
        let out = transact(&store, "k", |_| Step::Keep(1));
        assert_eq!(out, Ok(1));
        assert!(store.keys().is_empty());
    }

    #[test]
    fn transact_retries_with_conflicting_entry() {
        let store = MemoryStore::default();
        let calls = Cell::new(0);
        let out = transact(&store, "k", |cur| {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                // Another instance writes between our read and our swap.
                store
                    .compare_and_swap("k", None, &[42], None)
                    .expect("memory store is up");
                assert_eq!(cur, None);
            } else {
                assert_eq!(cur, Some(&[42u8][..]));
            }
            Step::Write {
                value: vec![cur.map_or(0, |v| v[0]) + 1],
                ttl_ms: None,
                then: (),
            }
        });
        assert_eq!(out, Ok(()));
        assert_eq!(calls.get(), 2);
        assert_eq!(store.get("k").unwrap().unwrap().value, vec![43]);
    }

    #[test]
    fn transact_gives_up_after_max_attempts() {
        let calls = Cell::new(0);
        let out = transact(&AlwaysConflicting, "k", |_| {
            calls.set(calls.get() + 1);
            Step::Write {
                value: vec![],
                ttl_ms: None,
                then: (),
            }
        });
        assert_eq!(out, Err(TxError::Contended));
        assert_eq!(calls.get(), MAX_ATTEMPTS);
    }

    #[test]
    fn transact_reports_state_errors() {
        let store = MemoryStore::default();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let out = transact(&store, "k", |_| Step::Keep(()));
        assert_eq!(out, Err(TxError::State(Unavailable)));
    }
}
