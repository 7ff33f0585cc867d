//! The stable hash behind sticky weighted splits: a key always lands in the
//! same bucket 0..100, on every instance, gateway and release.
//!
//! The function is part of the plugin's contract: changing it would move
//! users from one side of a running canary to the other. It is FNV-1a (64-bit)
//! over `salt`, a zero byte and the key, finished with MurmurHash3's `fmix64`
//! so that the low digits used for the bucket are well mixed even for short,
//! similar keys (IP addresses, sequential ids).

use std::cell::Cell;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit, continuing from `state` (start with [`FNV_OFFSET`] via [`fnv1a`]).
fn fnv1a_continue(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(FNV_PRIME);
    }
    state
}

/// FNV-1a, 64-bit.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_continue(FNV_OFFSET, bytes)
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The bucket (0..100) of `key` for a rule salted with `salt`.
pub(crate) fn bucket(salt: &str, key: &[u8]) -> u8 {
    let h = fnv1a_continue(fnv1a_continue(FNV_OFFSET, salt.as_bytes()), &[0]);
    percent(fmix64(fnv1a_continue(h, key)))
}

/// The bucket (0..100) of a per-request random `seed` for a rule salted with
/// `salt`: each rule rolls independently.
pub(crate) fn seed_bucket(salt: &str, seed: u64) -> u8 {
    percent(fmix64(seed ^ fnv1a(salt.as_bytes())))
}

/// Per-request seeds for weighted rules without a sticky key: a Weyl sequence
/// (a golden-ratio stride) finished with `fmix64`, started from the clock
/// when the instance is initialised. It costs no host call per request, and
/// the requests one instance serves are spread evenly by construction; each
/// pooled instance runs its own sequence.
#[derive(Debug)]
pub(crate) struct Seeds(Cell<u64>);

impl Seeds {
    pub(crate) fn new(start: u64) -> Seeds {
        Seeds(Cell::new(fmix64(start)))
    }

    pub(crate) fn next(&self) -> u64 {
        let s = self.0.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.0.set(s);
        fmix64(s)
    }
}

fn percent(h: u64) -> u8 {
    // The modulo bias of 2^64 mod 100 is ~1e-18: irrelevant.
    (h % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn bucket_is_stable() {
        // Pinned: a change here moves live users across a canary split.
        assert_eq!(bucket("canary", b"alice"), bucket("canary", b"alice"));
        let pinned: Vec<u8> = ["alice", "bob", "10.0.0.1", ""]
            .iter()
            .map(|k| bucket("canary", k.as_bytes()))
            .collect();
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u8; 4] = [95, 14, 56, 47];

    #[test]
    fn seeds_spread_by_weight_from_any_start() {
        for start in [0, 42, u64::MAX] {
            let seeds = Seeds::new(start);
            let under_30 = (0..10_000)
                .filter(|_| seed_bucket("canary", seeds.next()) < 30)
                .count();
            assert!((2_800..3_200).contains(&under_30), "{under_30}");
        }
        assert_ne!(Seeds::new(1).next(), Seeds::new(2).next());
    }

    #[test]
    fn salt_changes_bucket() {
        let differing = (0..200)
            .filter(|i| {
                let key = format!("user-{i}");
                bucket("a", key.as_bytes()) != bucket("b", key.as_bytes())
            })
            .count();
        assert!(differing > 180, "{differing}");
    }
}
