//! The in-memory backend: one process's plugin state in a map behind one
//! short lock.
//!
//! Every operation takes the lock once and never awaits while holding it, so
//! concurrent instances see a single order of writes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{CasOutcome, Entry, Op, Reply, StateError, MAX_ENTRIES};
use crate::clock::Clock;

#[derive(Debug)]
struct Slot {
    value: Vec<u8>,
    version: u64,
    expires_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Map {
    slots: HashMap<(Arc<str>, String), Slot>,
    version: u64,
    writes_since_sweep: u64,
}

/// One process's state: every namespace in one map.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    map: Arc<Mutex<Map>>,
    clock: Clock,
}

impl MemoryStore {
    /// An empty store reading expiry times from `clock`, whose first write
    /// gets version `first_version`. A fallback for Redis starts far above
    /// any version Redis hands out, so a version read from one can never
    /// match an entry of the other.
    pub fn new(clock: Clock, first_version: u64) -> MemoryStore {
        MemoryStore {
            map: Arc::new(Mutex::new(Map {
                version: first_version.saturating_sub(1),
                ..Map::default()
            })),
            clock,
        }
    }

    /// Run one operation (already checked against the size limits).
    pub(crate) fn exec(&self, ns: &Arc<str>, op: Op<'_>) -> Result<Reply, StateError> {
        let now = self.clock.now_ms();
        let expiry = |ttl: Option<u64>| ttl.map(|t| now.saturating_add(t));
        let mut map = self.lock();
        match op {
            Op::Get(key) => Ok(Reply::Entry(map.entry(ns, key, now))),
            Op::Set { key, value, ttl_ms } => map
                .write(ns, key, value, expiry(ttl_ms), now)
                .map(Reply::Version),
            Op::Cas {
                key,
                expected,
                value,
                ttl_ms,
            } => {
                let current = map.entry(ns, key, now);
                if current.as_ref().map(|e| e.version) != expected {
                    return Ok(Reply::Cas(CasOutcome::Conflict(current)));
                }
                let version = map.write(ns, key, value, expiry(ttl_ms), now)?;
                Ok(Reply::Cas(CasOutcome::Swapped(version)))
            }
            Op::Increment { key, delta, ttl_ms } => {
                let (current, expires_ms) = match map.live(ns, key, now) {
                    Some(slot) => {
                        let bytes: [u8; 8] = slot
                            .value
                            .as_slice()
                            .try_into()
                            .map_err(|_| StateError::NotACounter)?;
                        (i64::from_le_bytes(bytes), slot.expires_ms)
                    }
                    None => (0, expiry(ttl_ms)),
                };
                let next = current.wrapping_add(delta);
                map.write(ns, key, next.to_le_bytes().to_vec(), expires_ms, now)?;
                Ok(Reply::Counter(
                    next,
                    expires_ms.map(|e| e.saturating_sub(now)),
                ))
            }
            Op::Delete(key) => {
                let existed = map.live(ns, key, now).is_some();
                map.slots.remove(&(ns.clone(), key.to_string()));
                Ok(Reply::Deleted(existed))
            }
            Op::TakeTokens { key, limit, cost } => {
                let stored = map.live(ns, key, now).map(|slot| slot.value.as_slice());
                let (write, taken) = super::bucket::take(&limit, stored, now, cost);
                if let Some(value) = write {
                    map.write(ns, key, value, expiry(Some(limit.ttl_ms())), now)?;
                }
                Ok(Reply::Bucket(taken))
            }
        }
    }

    /// Forget every entry (a Redis fallback, once Redis is back).
    pub fn clear(&self) {
        self.lock().slots.clear();
    }

    /// Number of stored entries, live or not yet swept.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Whether the store holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // A panic while holding this lock cannot leave the map half-written
        // (every write is a single insert), so a poisoned lock is still usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Map {
    fn entry(&self, ns: &Arc<str>, key: &str, now: u64) -> Option<Entry> {
        self.live(ns, key, now).map(|s| Entry {
            value: s.value.clone(),
            version: s.version,
        })
    }

    fn live(&self, ns: &Arc<str>, key: &str, now: u64) -> Option<&Slot> {
        // Looking up by (Arc<str>, String) needs an owned key; the clone of a
        // short key is cheaper than a custom borrowed-key hash scheme.
        self.slots
            .get(&(ns.clone(), key.to_string()))
            .filter(|s| s.expires_ms.is_none_or(|e| e > now))
    }

    fn write(
        &mut self,
        ns: &Arc<str>,
        key: &str,
        value: Vec<u8>,
        expires_ms: Option<u64>,
        now: u64,
    ) -> Result<u64, StateError> {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep >= 4096 || self.slots.len() >= MAX_ENTRIES {
            self.slots
                .retain(|_, s| s.expires_ms.is_none_or(|e| e > now));
            self.writes_since_sweep = 0;
        }
        let k = (ns.clone(), key.to_string());
        if self.slots.len() >= MAX_ENTRIES && !self.slots.contains_key(&k) {
            return Err(StateError::TooLarge);
        }
        self.version += 1;
        let version = self.version;
        self.slots.insert(
            k,
            Slot {
                value,
                version,
                expires_ms,
            },
        );
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use crate::clock::Clock;
    use crate::state::{
        CasOutcome, Entry, SharedState, StateError, MAX_KEY_BYTES, MAX_VALUE_BYTES,
    };
    use std::sync::Arc;
    use std::time::Duration;

    fn store() -> (SharedState, Clock, Arc<str>) {
        let clock = Clock::manual(1_000_000);
        (SharedState::in_memory(clock.clone()), clock, Arc::from("p"))
    }

    #[tokio::test]
    async fn cas_swaps_on_matching_version_and_conflicts_otherwise() {
        let (s, _, ns) = store();
        let v1 = match s
            .compare_and_swap(&ns, "k", None, b"a".to_vec(), None, None)
            .await
        {
            Ok(CasOutcome::Swapped(v)) => v,
            other => panic!("{other:?}"),
        };
        let conflict = s
            .compare_and_swap(&ns, "k", None, b"b".to_vec(), None, None)
            .await;
        assert_eq!(
            conflict,
            Ok(CasOutcome::Conflict(Some(Entry {
                value: b"a".to_vec(),
                version: v1
            })))
        );
        assert!(matches!(
            s.compare_and_swap(&ns, "k", Some(v1), b"c".to_vec(), None, None).await,
            Ok(CasOutcome::Swapped(v)) if v > v1
        ));
    }

    #[tokio::test]
    async fn entries_expire_after_ttl() {
        let (s, clock, ns) = store();
        s.set(&ns, "k", b"v".to_vec(), Some(100), None)
            .await
            .unwrap();
        clock.advance(Duration::from_millis(99));
        assert!(s.get(&ns, "k", None).await.unwrap().is_some());
        clock.advance(Duration::from_millis(1));
        assert!(s.get(&ns, "k", None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn increment_reports_time_left() {
        let (s, clock, ns) = store();
        assert_eq!(
            s.increment(&ns, "w", 1, Some(1_000), None).await,
            Ok((1, Some(1_000)))
        );
        clock.advance(Duration::from_millis(400));
        assert_eq!(
            s.increment(&ns, "w", 1, Some(1_000), None).await,
            Ok((2, Some(600)))
        );
        assert_eq!(s.increment(&ns, "n", 5, None, None).await, Ok((5, None)));
    }

    #[tokio::test]
    async fn increment_keeps_first_expiry() {
        let (s, clock, ns) = store();
        assert_eq!(
            s.increment(&ns, "c", 1, Some(1_000), None)
                .await
                .map(|c| c.0),
            Ok(1)
        );
        clock.advance(Duration::from_millis(600));
        assert_eq!(
            s.increment(&ns, "c", 1, Some(1_000), None)
                .await
                .map(|c| c.0),
            Ok(2)
        );
        clock.advance(Duration::from_millis(400));
        assert_eq!(
            s.increment(&ns, "c", 1, Some(1_000), None)
                .await
                .map(|c| c.0),
            Ok(1)
        );
    }

    #[tokio::test]
    async fn namespaces_are_isolated() {
        let (s, _, ns) = store();
        let other: Arc<str> = Arc::from("q");
        s.set(&ns, "k", b"v".to_vec(), None, None).await.unwrap();
        assert!(s.get(&other, "k", None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_values_are_refused() {
        let (s, _, ns) = store();
        let big = vec![0; MAX_VALUE_BYTES + 1];
        assert_eq!(
            s.set(&ns, "k", big, None, None).await,
            Err(StateError::TooLarge)
        );
        assert_eq!(
            s.increment(&ns, &"k".repeat(MAX_KEY_BYTES + 1), 1, None, None)
                .await,
            Err(StateError::TooLarge)
        );
    }

    #[tokio::test]
    async fn increment_rejects_non_counters() {
        let (s, _, ns) = store();
        s.set(&ns, "k", b"abc".to_vec(), None, None).await.unwrap();
        assert_eq!(
            s.increment(&ns, "k", 1, None, None).await,
            Err(StateError::NotACounter)
        );
    }
}
