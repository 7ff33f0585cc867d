//! Where endpoints come from besides the `ip:port`s in the configuration:
//! DNS names re-resolved as their TTLs run out ([`dns`]), a watched file
//! ([`file`]), and etcd v3 ([`etcd`]).
//!
//! Each source runs as a task holding a weak reference to its upstream and
//! hands it the source's whole current list ([`super::Upstream::update`]);
//! the upstream merges the lists and publishes a new endpoint set, the one
//! part of a snapshot that changes while it is live. A source that fails
//! keeps its last good list, and tries again.
//!
//! Another registry (Consul, Kubernetes EndpointSlices) is one more task
//! of the same shape: read the full list, watch for changes, call `update`.

pub(crate) mod dns;
pub(crate) mod etcd;
pub(crate) mod file;

use std::net::SocketAddr;
use std::time::Duration;

/// Endpoints one source contributes: address and weight.
pub(crate) type Found = Vec<(SocketAddr, u32)>;

/// The most endpoints one source may contribute: a registry gone wrong
/// must not make the gateway build a set of millions.
pub(crate) const MAX_ENDPOINTS: usize = 4_096;

/// Waits after a failure: doubling from `first` up to `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            next: first,
            first,
            max,
        }
    }

    pub(crate) fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub(crate) fn succeeded(&mut self) {
        self.next = self.first;
    }
}

/// One registry entry, as files and etcd values give it: `ip:port` or
/// `{address, weight}`.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum Entry {
    Address(SocketAddr),
    Full {
        address: SocketAddr,
        #[serde(default = "one")]
        weight: u32,
    },
}

fn one() -> u32 {
    1
}

impl Entry {
    /// Address and weight, or why the weight is refused.
    pub(crate) fn endpoint(&self) -> Result<(SocketAddr, u32), String> {
        match *self {
            Entry::Address(a) => Ok((a, 1)),
            Entry::Full { address, weight } if (1..=1000).contains(&weight) => {
                Ok((address, weight))
            }
            Entry::Full { address, weight } => {
                Err(format!("{address}: weight {weight} is not 1 to 1000"))
            }
        }
    }
}
