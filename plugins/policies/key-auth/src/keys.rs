//! The table of accepted API keys and its constant-time lookup.
//!
//! Keys are stored only as SHA-256 digests. A presented key is hashed once and
//! compared against every stored digest with `subtle`, without stopping at the
//! first match, so the time a lookup takes depends on neither how much of a key
//! matched nor which entry (if any) matched.

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Accepted keys, each with the consumer it authenticates.
pub(crate) struct KeyTable {
    digests: Vec<[u8; 32]>,
    consumers: Vec<String>,
}

impl KeyTable {
    /// Build the table from `(key, consumer)` pairs.
    pub(crate) fn new<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> KeyTable {
        let (digests, consumers) = entries
            .into_iter()
            .map(|(key, consumer)| (digest(key.as_bytes()), consumer.to_string()))
            .unzip();
        KeyTable { digests, consumers }
    }

    /// The consumer of `presented`, or `None` if it is not an accepted key.
    pub(crate) fn consumer(&self, presented: &[u8]) -> Option<&str> {
        let presented = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        // Every entry is compared and the result folded in branch-free; only the
        // final answer is branched on.
        for (i, stored) in self.digests.iter().enumerate() {
            let hit = stored.ct_eq(&presented);
            index.conditional_assign(&(i as u32), hit);
            found |= hit;
        }
        bool::from(found).then(|| self.consumers[index as usize].as_str())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
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
