//! Picking an endpoint from the live set: round-robin (plain or smooth
//! weighted), least-request by power of two choices, and consistent hashing
//! on a ring — each skipping endpoints out of rotation, preferring one not
//! yet tried by this request, and routing to every endpoint when too few
//! are healthy (the panic threshold).

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::HeaderName;

use super::endpoint::Endpoint;
use crate::config::Balance;

/// Ring points per unit of weight: enough for an even spread of keys over
/// tens of endpoints.
const POINTS_PER_WEIGHT: usize = 160;
/// Ring points one endpoint may have, whatever its weight.
const MAX_POINTS: usize = 16_000;
/// Ring points in all: a registry of thousands of heavy endpoints must not
/// make a ring of millions (points are scaled down to fit).
const MAX_RING: usize = 160_000;
/// Picks in one weighted round-robin cycle: weights are scaled down to fit.
const MAX_SCHEDULE: u64 = 65_536;

/// The endpoints an upstream sends to now, with what each strategy needs
/// precomputed. Immutable: discovery publishes a new one.
#[derive(Debug, Default)]
pub(crate) struct EndpointSet {
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// Round-robin: endpoint indices in pick order; one cycle honours the
    /// weights.
    schedule: Vec<usize>,
    /// Consistent hashing: (point, endpoint index), sorted by point.
    ring: Vec<(u64, usize)>,
}

/// What a pick found.
pub(crate) struct Picked {
    pub(crate) endpoint: Arc<Endpoint>,
    /// Too few endpoints were healthy: health was ignored.
    pub(crate) panic: bool,
}

impl EndpointSet {
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>, balance: Balance) -> EndpointSet {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let schedule = match balance {
            Balance::RoundRobin => (0..endpoints.len()).collect(),
            Balance::Weighted => smooth_weighted_schedule(&weights),
            Balance::LeastRequest | Balance::ConsistentHash => Vec::new(),
        };
        let ring = match balance {
            Balance::ConsistentHash => ring(&endpoints),
            _ => Vec::new(),
        };
        EndpointSet {
            endpoints,
            schedule,
            ring,
        }
    }

    /// Pick an endpoint for a request. `key` is its hash key (consistent
    /// hashing only); `tried` the endpoints earlier tries of this request
    /// went to, avoided while another will do.
    pub(crate) fn pick(
        &self,
        balance: Balance,
        cursor: &AtomicUsize,
        key: u64,
        tried: &[SocketAddr],
        now: u64,
        panic_percent: u32,
    ) -> Option<Picked> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let healthy = self.endpoints.iter().filter(|e| e.available(now)).count();
        // Too few left to carry the load: spread it over all of them rather
        // than crush the survivors (Envoy's panic routing).
        let panic = (healthy as u64) * 100 < (panic_percent as u64) * (n as u64);
        if healthy == 0 && !panic {
            return None;
        }
        let eligible = |i: usize, fresh: bool| {
            let e = &self.endpoints[i];
            (panic || e.available(now)) && !(fresh && tried.contains(&e.addr()))
        };
        let found = [true, false].into_iter().find_map(|fresh| {
            let ok = |i: usize| eligible(i, fresh);
            match balance {
                Balance::RoundRobin | Balance::Weighted => self.next_in_turn(cursor, ok),
                Balance::LeastRequest => self.less_busy_of_two(ok),
                Balance::ConsistentHash => self.on_ring(key, ok),
            }
        })?;
        Some(Picked {
            endpoint: self.endpoints[found].clone(),
            panic,
        })
    }

    fn next_in_turn(&self, cursor: &AtomicUsize, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        let start = cursor.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|k| self.schedule[(start + k) % len])
            .find(|&i| ok(i))
    }

    fn less_busy_of_two(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        let draw = || {
            let start = rand::random_range(0..n);
            (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
        };
        let a = draw()?;
        let b = draw().unwrap_or(a);
        // Requests in flight per unit of weight, compared without division.
        let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
        let load_a = ea.active() * eb.weight as u64;
        let load_b = eb.active() * ea.weight as u64;
        Some(if load_b < load_a { b } else { a })
    }

    fn on_ring(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.ring.len();
        let start = self.ring.partition_point(|&(p, _)| p < key);
        (0..len)
            .map(|k| self.ring[(start + k) % len].1)
            .find(|&i| ok(i))
    }
}

/// The ring: points per endpoint by weight, each a hash of the endpoint's
/// address and the point's number, so an endpoint's points do not depend on
/// the others (which is what bounds remapping).
fn ring(endpoints: &[Arc<Endpoint>]) -> Vec<(u64, usize)> {
    let wanted: usize = endpoints
        .iter()
        .map(|e| (e.weight as usize * POINTS_PER_WEIGHT).min(MAX_POINTS))
        .sum();
    let scale = (MAX_RING as f64 / wanted.max(1) as f64).min(1.0);
    let mut ring = Vec::with_capacity(wanted.min(MAX_RING + endpoints.len()));
    for (i, e) in endpoints.iter().enumerate() {
        let full = (e.weight as usize * POINTS_PER_WEIGHT).min(MAX_POINTS);
        let points = ((full as f64 * scale) as usize).max(1);
        let addr = e.addr().to_string();
        for p in 0..points {
            ring.push((hash_of(&(&addr, p)), i));
        }
    }
    ring.sort_unstable();
    ring
}

/// A stable 64-bit hash (the same on every run of the same build, so every
/// gateway replica sends a key to the same endpoint).
pub(crate) fn hash_of(v: &impl Hash) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// What a consistent-hash key is taken of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashOn {
    Header(HeaderName),
    Cookie(String),
    ClientIp,
    Path,
}

impl HashOn {
    pub(crate) fn parse(s: &str) -> Result<HashOn, String> {
        let bad = || format!("{s:?} is not one of header:<name>, cookie:<name>, client-ip, path");
        match s.split_once(':') {
            None if s == "client-ip" => Ok(HashOn::ClientIp),
            None if s == "path" => Ok(HashOn::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| bad()),
            Some(("cookie", name))
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';') =>
            {
                Ok(HashOn::Cookie(name.to_string()))
            }
            _ => Err(bad()),
        }
    }

    /// The key of a request; its client IP when the header or cookie is
    /// missing (so those requests still spread, and stick per client).
    pub(crate) fn key(
        &self,
        headers: &http::HeaderMap,
        path: &str,
        client: std::net::IpAddr,
    ) -> u64 {
        let found = match self {
            HashOn::Header(name) => headers.get(name).map(|v| hash_of(&v.as_bytes())),
            HashOn::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(n, _)| n == name)
                .map(|(_, v)| hash_of(&v.as_bytes())),
            HashOn::Path => Some(hash_of(&path.as_bytes())),
            HashOn::ClientIp => None,
        };
        found.unwrap_or_else(|| hash_of(&client))
    }
}

/// nginx's smooth weighted round-robin, unrolled into one cycle so picking is
/// a single atomic increment. Weights {5, 1, 1} give a, a, b, a, c, a, a —
/// spread out rather than five a's in a row.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    if weights.is_empty() {
        return Vec::new();
    }
    let gcd = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let mut weights: Vec<i64> = weights.iter().map(|&w| (w / gcd) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total as u64 * weights.len() as u64 > MAX_SCHEDULE * 64 {
        return spread_schedule(&weights);
    }
    if total as u64 > MAX_SCHEDULE {
        let scale = MAX_SCHEDULE as f64 / total as f64;
        for w in &mut weights {
            *w = ((*w as f64 * scale) as i64).max(1);
        }
    }
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .expect("at least one endpoint");
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

/// The same shares for large sets, in O(total · log total) rather than
/// O(total · endpoints): endpoint `i`'s `k`th pick sits at `(k + ½) / wᵢ` of
/// the cycle, and the cycle is those positions in order (interleaved, if
/// less evenly than the smooth order). Weights are scaled to fit
/// [`MAX_SCHEDULE`].
fn spread_schedule(weights: &[i64]) -> Vec<usize> {
    let total: i64 = weights.iter().sum();
    let scale = (MAX_SCHEDULE as f64 / total as f64).min(1.0);
    let mut slots: Vec<(f64, usize)> = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        let w = ((w as f64 * scale) as i64).max(1);
        for k in 0..w {
            slots.push(((k as f64 + 0.5) / w as f64, i));
        }
    }
    slots.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    slots.into_iter().map(|(_, i)| i).collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::endpoint::Observed;
    use std::collections::HashMap;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Endpoint::for_test(format!("10.0.0.{}:80", i + 1).parse().unwrap(), 1))
            .collect()
    }

    fn owners(set: &EndpointSet, keys: u64) -> Vec<SocketAddr> {
        let cursor = AtomicUsize::new(0);
        (0..keys)
            .map(|k| {
                set.pick(Balance::ConsistentHash, &cursor, hash_of(&k), &[], 0, 0)
                    .unwrap()
                    .endpoint
                    .addr()
            })
            .collect()
    }

    #[test]
    fn schedule_follows_weights_and_interleaves() {
        let s = smooth_weighted_schedule(&[5, 1, 1]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_weighted_schedule(&[3, 1]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn large_sets_build_bounded_schedules_and_rings() {
        let weights: Vec<u32> = (0..4_096).map(|i| 1 + (i % 1_000) as u32).collect();
        let s = smooth_weighted_schedule(&weights);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 4_096, "{}", s.len());
        let mut counts = vec![0usize; weights.len()];
        for &i in &s {
            counts[i] += 1;
        }
        assert!(
            counts.iter().all(|&c| c >= 1),
            "every endpoint is in the cycle"
        );
        // Scaled to fit, a light endpoint keeps at least one pick.
        assert!(counts[999] > counts[0] * 20, "shares follow the weights");
        let eps: Vec<_> = (0..2_000)
            .map(|i| {
                let addr = format!("10.0.{}.{}:80", i / 250, i % 250 + 1);
                Endpoint::for_test(addr.parse().unwrap(), 1000)
            })
            .collect();
        assert!(ring(&eps).len() <= MAX_RING + eps.len());
    }

    #[test]
    fn schedule_reduces_common_factors() {
        assert_eq!(smooth_weighted_schedule(&[200, 100]).len(), 3);
        assert_eq!(smooth_weighted_schedule(&[1, 1, 1]), vec![0, 1, 2]);
    }

    #[test]
    fn hashing_spreads_keys_evenly() {
        let set = EndpointSet::new(endpoints(10), Balance::ConsistentHash);
        let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
        for a in owners(&set, 100_000) {
            *counts.entry(a).or_default() += 1;
        }
        assert_eq!(counts.len(), 10);
        for (a, c) in counts {
            // Within ±25 % of the fair share of 10,000.
            assert!((7_500..=12_500).contains(&c), "{a} got {c}");
        }
    }

    #[test]
    fn hashing_moves_only_the_keys_of_an_endpoint_that_leaves_or_joins() {
        let all = endpoints(11);
        let before = owners(
            &EndpointSet::new(all[..10].to_vec(), Balance::ConsistentHash),
            20_000,
        );
        // One leaves: only its keys move.
        let after = owners(
            &EndpointSet::new(all[1..10].to_vec(), Balance::ConsistentHash),
            20_000,
        );
        let gone = all[0].addr();
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let owned = before.iter().filter(|&&b| b == gone).count();
        assert_eq!(moved, owned, "only the departed endpoint's keys move");
        assert!((moved as f64 / 20_000.0) < 0.15, "moved {moved}");
        // One joins: keys move only to it, about 1/11 of them.
        let joined = owners(
            &EndpointSet::new(all.to_vec(), Balance::ConsistentHash),
            20_000,
        );
        let new = all[10].addr();
        let moved: Vec<_> = before.iter().zip(&joined).filter(|(b, a)| b != a).collect();
        assert!(moved.iter().all(|(_, a)| **a == new));
        let fraction = moved.len() as f64 / 20_000.0;
        assert!((0.05..0.14).contains(&fraction), "moved {fraction}");
    }

    #[test]
    fn hashing_skips_an_ejected_endpoint_and_keeps_the_rest_in_place() {
        let eps = endpoints(5);
        let set = EndpointSet::new(eps.clone(), Balance::ConsistentHash);
        let before = owners(&set, 5_000);
        let cfg = crate::config::OutlierConfig {
            consecutive_failures: 1,
            ..Default::default()
        };
        eps[2].observe(
            Observed::Failure(crate::upstream::UpstreamErrorKind::Reset),
            0,
            &cfg,
            || Some(()),
        );
        let after = owners(&set, 5_000);
        for (b, a) in before.iter().zip(&after) {
            if *b != eps[2].addr() {
                assert_eq!(a, b);
            } else {
                assert_ne!(*a, eps[2].addr());
            }
        }
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let eps = endpoints(2);
        let set = EndpointSet::new(eps.clone(), Balance::LeastRequest);
        let busy: Vec<_> = (0..5).map(|_| eps[0].start()).collect();
        let cursor = AtomicUsize::new(0);
        let mut idle = 0;
        for _ in 0..1_000 {
            let p = set
                .pick(Balance::LeastRequest, &cursor, 0, &[], 0, 50)
                .unwrap();
            if p.endpoint.addr() == eps[1].addr() {
                idle += 1;
            }
        }
        // Two draws both land on the busy one a quarter of the time.
        assert!(idle > 650, "idle endpoint picked {idle} of 1000");
        drop(busy);
    }

    #[test]
    fn a_retry_goes_to_an_endpoint_not_yet_tried() {
        let eps = endpoints(3);
        let cursor = AtomicUsize::new(0);
        for balance in [
            Balance::RoundRobin,
            Balance::LeastRequest,
            Balance::ConsistentHash,
        ] {
            let set = EndpointSet::new(eps.clone(), balance);
            for k in 0..50u64 {
                let first = set.pick(balance, &cursor, hash_of(&k), &[], 0, 50).unwrap();
                let tried = [first.endpoint.addr()];
                let second = set
                    .pick(balance, &cursor, hash_of(&k), &tried, 0, 50)
                    .unwrap();
                assert_ne!(second.endpoint.addr(), tried[0], "{balance:?}");
            }
        }
    }

    #[test]
    fn below_the_panic_threshold_every_endpoint_takes_traffic() {
        let eps = endpoints(4);
        let set = EndpointSet::new(eps.clone(), Balance::RoundRobin);
        for e in &eps[..3] {
            e.probed(false, 1, 1);
        }
        let cursor = AtomicUsize::new(0);
        // One of four healthy is under 50 %: all four take traffic.
        let picked: std::collections::HashSet<_> = (0..8)
            .map(|_| {
                let p = set
                    .pick(Balance::RoundRobin, &cursor, 0, &[], 0, 50)
                    .unwrap();
                assert!(p.panic);
                p.endpoint.addr()
            })
            .collect();
        assert_eq!(picked.len(), 4);
        // Without panic routing only the healthy one does.
        for _ in 0..8 {
            let p = set
                .pick(Balance::RoundRobin, &cursor, 0, &[], 0, 0)
                .unwrap();
            assert_eq!(p.endpoint.addr(), eps[3].addr());
        }
        eps[3].probed(false, 1, 1);
        assert!(set
            .pick(Balance::RoundRobin, &cursor, 0, &[], 0, 0)
            .is_none());
    }
}
