//! Shared plugin state: an atomic key-value store with versions and TTLs,
//! namespaced per plugin, behind the WIT `state` interface.
//!
//! Every operation takes one short lock and never awaits while holding it, so
//! concurrent instances see a single order of writes: that is what makes a
//! token bucket built on `compare_and_swap` exact. The methods are `async` so a
//! networked backend (Redis) can replace the map without changing callers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;

/// Largest key a plugin may use, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value a plugin may store, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most live entries across all plugins; a bound on what a hostile plugin can pin.
pub const MAX_ENTRIES: usize = 1_000_000;

/// Why a state operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The backing store could not be reached.
    #[error("state store unavailable")]
    Unavailable,
    /// Key, value or entry count over the host's limits.
    #[error("state key, value or entry count too large")]
    TooLarge,
    /// `increment` on a value that is not an 8-byte counter.
    #[error("value is not a counter")]
    NotACounter,
}

/// A stored value with the version of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes stored.
    pub value: Vec<u8>,
    /// Strictly increasing across all writes of the store.
    pub version: u64,
}

/// What `compare_and_swap` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// Written; the new version.
    Swapped(u64),
    /// Not written; the entry as it is now.
    Conflict(Option<Entry>),
}

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

/// The store shared by every plugin instance of a gateway, across reloads.
#[derive(Clone, Debug)]
pub struct SharedState {
    map: Arc<Mutex<Map>>,
    clock: Clock,
}

impl SharedState {
    /// An in-memory store reading expiry times from `clock`.
    pub fn in_memory(clock: Clock) -> SharedState {
        SharedState {
            map: Arc::new(Mutex::new(Map::default())),
            clock,
        }
    }

    /// Read a live entry.
    pub async fn get(&self, ns: &Arc<str>, key: &str) -> Result<Option<Entry>, StateError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let map = self.lock();
        Ok(map.live(ns, key, now).map(|s| Entry {
            value: s.value.clone(),
            version: s.version,
        }))
    }

    /// Write unconditionally; returns the new version.
    pub async fn set(
        &self,
        ns: &Arc<str>,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<u64, StateError> {
        check_key(key)?;
        check_value(&value)?;
        let now = self.clock.now_ms();
        let mut map = self.lock();
        map.write(ns, key, value, ttl_ms.map(|t| now.saturating_add(t)), now)
    }

    /// Write only if the live version equals `expected` (`None`: only if absent).
    pub async fn compare_and_swap(
        &self,
        ns: &Arc<str>,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<CasOutcome, StateError> {
        check_key(key)?;
        check_value(&value)?;
        let now = self.clock.now_ms();
        let mut map = self.lock();
        let current = map.live(ns, key, now).map(|s| Entry {
            value: s.value.clone(),
            version: s.version,
        });
        if current.as_ref().map(|e| e.version) != expected {
            return Ok(CasOutcome::Conflict(current));
        }
        let version = map.write(ns, key, value, ttl_ms.map(|t| now.saturating_add(t)), now)?;
        Ok(CasOutcome::Swapped(version))
    }

    /// Add `delta` to an 8-byte little-endian counter, creating it at 0 with
    /// `ttl_ms` if absent; an existing counter keeps its expiry.
    pub async fn increment(
        &self,
        ns: &Arc<str>,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, StateError> {
        self.increment_with_ttl(ns, key, delta, ttl_ms)
            .await
            .map(|(value, _)| value)
    }

    /// [`SharedState::increment`], also returning the milliseconds left
    /// before the counter expires (`None`: never).
    pub async fn increment_with_ttl(
        &self,
        ns: &Arc<str>,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<(i64, Option<u64>), StateError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let mut map = self.lock();
        let (current, expires_ms) = match map.live(ns, key, now) {
            Some(slot) => {
                let bytes: [u8; 8] = slot
                    .value
                    .as_slice()
                    .try_into()
                    .map_err(|_| StateError::NotACounter)?;
                (i64::from_le_bytes(bytes), slot.expires_ms)
            }
            None => (0, ttl_ms.map(|t| now.saturating_add(t))),
        };
        let next = current.wrapping_add(delta);
        map.write(ns, key, next.to_le_bytes().to_vec(), expires_ms, now)?;
        Ok((next, expires_ms.map(|e| e.saturating_sub(now))))
    }

    /// Delete a key; whether a live entry existed.
    pub async fn delete(&self, ns: &Arc<str>, key: &str) -> Result<bool, StateError> {
        check_key(key)?;
        let now = self.clock.now_ms();
        let mut map = self.lock();
        let existed = map.live(ns, key, now).is_some();
        map.slots.remove(&(ns.clone(), key.to_string()));
        Ok(existed)
    }

    /// Number of stored entries, live or not yet swept (for tests and metrics).
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

fn check_key(key: &str) -> Result<(), StateError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StateError::TooLarge);
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), StateError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StateError::TooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn store() -> (SharedState, Clock, Arc<str>) {
        let clock = Clock::manual(1_000_000);
        (SharedState::in_memory(clock.clone()), clock, Arc::from("p"))
    }

    #[tokio::test]
    async fn cas_swaps_on_matching_version_and_conflicts_otherwise() {
        let (s, _, ns) = store();
        let v1 = match s
            .compare_and_swap(&ns, "k", None, b"a".to_vec(), None)
            .await
        {
            Ok(CasOutcome::Swapped(v)) => v,
            other => panic!("{other:?}"),
        };
        let conflict = s
            .compare_and_swap(&ns, "k", None, b"b".to_vec(), None)
            .await;
        assert_eq!(
            conflict,
            Ok(CasOutcome::Conflict(Some(Entry {
                value: b"a".to_vec(),
                version: v1
            })))
        );
        assert!(matches!(
            s.compare_and_swap(&ns, "k", Some(v1), b"c".to_vec(), None).await,
            Ok(CasOutcome::Swapped(v)) if v > v1
        ));
    }

    #[tokio::test]
    async fn entries_expire_after_ttl() {
        let (s, clock, ns) = store();
        s.set(&ns, "k", b"v".to_vec(), Some(100)).await.unwrap();
        clock.advance(Duration::from_millis(99));
        assert!(s.get(&ns, "k").await.unwrap().is_some());
        clock.advance(Duration::from_millis(1));
        assert!(s.get(&ns, "k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn increment_reports_time_left() {
        let (s, clock, ns) = store();
        assert_eq!(
            s.increment_with_ttl(&ns, "w", 1, Some(1_000)).await,
            Ok((1, Some(1_000)))
        );
        clock.advance(Duration::from_millis(400));
        assert_eq!(
            s.increment_with_ttl(&ns, "w", 1, Some(1_000)).await,
            Ok((2, Some(600)))
        );
        assert_eq!(s.increment_with_ttl(&ns, "n", 5, None).await, Ok((5, None)));
    }

    #[tokio::test]
    async fn increment_keeps_first_expiry() {
        let (s, clock, ns) = store();
        assert_eq!(s.increment(&ns, "c", 1, Some(1_000)).await, Ok(1));
        clock.advance(Duration::from_millis(600));
        assert_eq!(s.increment(&ns, "c", 1, Some(1_000)).await, Ok(2));
        clock.advance(Duration::from_millis(400));
        assert_eq!(s.increment(&ns, "c", 1, Some(1_000)).await, Ok(1));
    }

    #[tokio::test]
    async fn namespaces_are_isolated() {
        let (s, _, ns) = store();
        let other: Arc<str> = Arc::from("q");
        s.set(&ns, "k", b"v".to_vec(), None).await.unwrap();
        assert!(s.get(&other, "k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_values_are_refused() {
        let (s, _, ns) = store();
        let big = vec![0; MAX_VALUE_BYTES + 1];
        assert_eq!(s.set(&ns, "k", big, None).await, Err(StateError::TooLarge));
        assert_eq!(
            s.increment(&ns, &"k".repeat(MAX_KEY_BYTES + 1), 1, None)
                .await,
            Err(StateError::TooLarge)
        );
    }

    #[tokio::test]
    async fn increment_rejects_non_counters() {
        let (s, _, ns) = store();
        s.set(&ns, "k", b"abc".to_vec(), None).await.unwrap();
        assert_eq!(
            s.increment(&ns, "k", 1, None).await,
            Err(StateError::NotACounter)
        );
    }
}
