//! The table of accepted API keys and its lookup.
//!
//! A presented key is hashed with SipHash under a random key drawn when the
//! instance starts, looked up by that hash, and compared in full in constant
//! time (`subtle`) with the (almost always one) accepted key sharing it. So a
//! lookup costs the same with 1 key or 10,000, and its timing can reveal only
//! whether the presented key's secret-keyed hash matches an accepted key's —
//! nothing an attacker can steer towards a key, and never how much of a key
//! was right. (SHA-256 digests compared one by one cost ≈ 1.7 µs a request
//! in WebAssembly and grew with the table.)

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use subtle::ConstantTimeEq;

/// The accepted keys sharing one keyed hash, each with its consumer.
type Bucket = Vec<(Box<[u8]>, String)>;

/// Accepted keys, each with the consumer it authenticates.
pub(crate) struct KeyTable {
    hasher: RandomState,
    /// Keyed hash → (key, consumer) of each accepted key with that hash.
    by_hash: HashMap<u64, Bucket>,
}

impl KeyTable {
    pub(crate) fn new<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> KeyTable {
        let hasher = RandomState::new();
        let mut by_hash: HashMap<u64, Bucket> = HashMap::new();
        for (key, consumer) in entries {
            by_hash
                .entry(hasher.hash_one(key.as_bytes()))
                .or_default()
                .push((key.as_bytes().into(), consumer.to_string()));
        }
        KeyTable { hasher, by_hash }
    }

    /// The consumer `presented` authenticates, if it is an accepted key.
    pub(crate) fn consumer(&self, presented: &[u8]) -> Option<&str> {
        let candidates = self.by_hash.get(&self.hasher.hash_one(presented))?;
        candidates
            .iter()
            .find(|(key, _)| bool::from(key.as_ref().ct_eq(presented)))
            .map(|(_, consumer)| consumer.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> KeyTable {
        KeyTable::new([("k-alice", "alice"), ("k-bob", "bob"), ("k-carol", "carol")])
    }

    #[test]
    fn known_keys_map_to_their_consumers() {
        let t = table();
        assert_eq!(t.consumer(b"k-alice"), Some("alice"));
        assert_eq!(t.consumer(b"k-bob"), Some("bob"));
        assert_eq!(t.consumer(b"k-carol"), Some("carol"));
    }

    #[test]
    fn unknown_and_near_miss_keys_are_rejected() {
        let t = table();
        assert_eq!(t.consumer(b"k-dave"), None);
        assert_eq!(t.consumer(b"k-alic"), None);
        assert_eq!(t.consumer(b"k-alicee"), None);
        assert_eq!(t.consumer(b""), None);
    }
}
