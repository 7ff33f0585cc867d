//! The stable hash behind sticky weighted splits: a key always lands in the
//! same bucket 0..100, on every instance, gateway and release.
//!
//! The function is part of the plugin's contract: changing it would move
//! users from one side of a running canary to the other. It is FNV-1a (64-bit)
//! over `salt`, a zero byte and the key, finished with MurmurHash3's `fmix64`
//! so that the low digits used for the bucket are well mixed even for short,
//! similar keys (IP addresses, sequential ids).

use wicket_plugin_sdk::Request;

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

/// A per-request random value for weighted rules without a sticky key: the
/// gateway's monotonic clock (distinct for every request in practice) mixed
/// with the client's address and port and the request target, so requests
/// arriving within one clock tick — or under a clock frozen by a test — still
/// spread.
pub(crate) fn request_seed(monotonic_ns: u64, request: &Request) -> u64 {
    let mut h = fnv1a(&monotonic_ns.to_le_bytes());
    for part in [
        request.client_addr(),
        request.path(),
        request.query().unwrap_or(""),
    ] {
        h = fnv1a_continue(h, part.as_bytes());
        h = fnv1a_continue(h, &[0]);
    }
    fmix64(h)
}

fn percent(h: u64) -> u8 {
    // The modulo bias of 2^64 mod 100 is ~1e-18: irrelevant.
    (h % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use wicket_plugin_sdk::RequestHead;

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

    fn request(client_addr: &str, path: &str) -> Request<'static> {
        Request::from_head(RequestHead {
            method: "GET".to_string(),
            scheme: "http".to_string(),
            authority: "example.test".to_string(),
            path: path.to_string(),
            query: None,
            headers: Vec::new(),
            client_addr: client_addr.to_string(),
            route: "api".to_string(),
            params: Vec::new(),
            upstream: "stable".to_string(),
        })
    }

    #[test]
    fn request_seed_varies_with_clock() {
        let r = request("192.0.2.1:4000", "/a");
        let under_30 = (0..10_000u64)
            .filter(|t| seed_bucket("canary", request_seed(t * 1_000, &r)) < 30)
            .count();
        assert!((2_800..3_200).contains(&under_30), "{under_30}");
    }

    #[test]
    fn request_seed_varies_under_frozen_clock() {
        let under_30 = (0..10_000u32)
            .filter(|port| {
                let r = request(&format!("192.0.2.1:{port}"), "/a");
                seed_bucket("canary", request_seed(42, &r)) < 30
            })
            .count();
        assert!((2_800..3_200).contains(&under_30), "{under_30}");
        let a = request_seed(42, &request("192.0.2.1:1", "/a"));
        assert_ne!(a, request_seed(42, &request("192.0.2.1:1", "/b")));
        assert_eq!(a, request_seed(42, &request("192.0.2.1:1", "/a")));
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
