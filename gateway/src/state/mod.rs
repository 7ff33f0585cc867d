//! Shared plugin state: an atomic key-value store with versions and TTLs,
//! namespaced per plugin, behind the WIT `state` interface.
//!
//! Two backends keep the same semantics: [`memory`] (one process, the
//! default) and [`redis`] (every gateway sharing one Redis, so a limit, a
//! breaker or a switch holds across a fleet). Which one a plugin uses is
//! configuration (`state.backend`, per plugin `plugins.<name>.state`), so
//! [`SharedState`] is a router: it lives as long as the process, and each
//! applied configuration swaps in its [`Routes`]. Every operation is one
//! atomic step on its backend — one short lock in memory, one Lua script on
//! the Redis server — which is what makes a token bucket built on
//! `compare_and_swap` exact.

pub mod bucket;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::config::{OnUnavailable, StateBackendKind, StateConfig};
use memory::MemoryStore;
use redis::{Failure, RedisStore};

/// Largest key a plugin may use, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value a plugin may store, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most live entries across all plugins in memory; a bound on what a hostile
/// plugin can pin. Redis bounds itself (`maxmemory`): a write it refuses for
/// memory is [`StateError::TooLarge`] too.
pub const MAX_ENTRIES: usize = 1_000_000;

/// Why a state operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The backing store could not be reached or did not answer in time.
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
    /// Strictly increasing across all writes in the plugin's namespace, and
    /// never reused for a key, even after it is deleted or expires.
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

/// One state operation, as either backend runs it.
#[derive(Debug, Clone)]
pub(crate) enum Op<'a> {
    Get(&'a str),
    Set {
        key: &'a str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    Cas {
        key: &'a str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    Increment {
        key: &'a str,
        delta: i64,
        ttl_ms: Option<u64>,
    },
    Delete(&'a str),
    TakeTokens {
        key: &'a str,
        limit: bucket::Limit,
        cost: u64,
    },
}

impl Op<'_> {
    fn key(&self) -> &str {
        match self {
            Op::Get(key) | Op::Delete(key) => key,
            Op::Set { key, .. }
            | Op::Cas { key, .. }
            | Op::Increment { key, .. }
            | Op::TakeTokens { key, .. } => key,
        }
    }

    /// The host's size limits, the same for every backend.
    fn check(&self) -> Result<(), StateError> {
        if self.key().len() > MAX_KEY_BYTES {
            return Err(StateError::TooLarge);
        }
        match self {
            Op::Set { value, .. } | Op::Cas { value, .. } if value.len() > MAX_VALUE_BYTES => {
                Err(StateError::TooLarge)
            }
            _ => Ok(()),
        }
    }
}

/// What an [`Op`] returned; the variant always matches the op's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Entry(Option<Entry>),
    Version(u64),
    Cas(CasOutcome),
    /// The new value and the milliseconds until it expires.
    Counter(i64, Option<u64>),
    Deleted(bool),
    Bucket(bucket::Taken),
}

/// Which backend each plugin uses: built from one configuration, swapped in
/// when that configuration is applied.
#[derive(Debug, Default)]
pub struct Routes {
    redis: Option<Arc<RedisStore>>,
    /// Plugins on Redis, with what their calls do while it is unreachable;
    /// every other plugin is in memory.
    remote: HashMap<String, OnUnavailable>,
}

impl Routes {
    /// The routes a configuration asks for. A Redis store equal in settings
    /// to the one `previous` holds is kept (with its connection); `base`
    /// resolves relative file names. Errors name their field.
    pub fn build(
        cfg: &crate::config::Config,
        base: &std::path::Path,
        previous: Option<&Routes>,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Result<Routes, Vec<(String, String)>> {
        let state: &StateConfig = &cfg.state;
        let mut errors = Vec::new();
        let redis = match &state.redis {
            None => None,
            Some(r) => match redis::RedisSettings::from_config(r, base) {
                Err((field, msg)) => {
                    errors.push((format!("state.redis.{field}"), msg));
                    None
                }
                Ok(settings) => Some(
                    match previous
                        .and_then(|p| p.redis.as_ref())
                        .filter(|s| s.settings() == &settings)
                    {
                        Some(same) => same.clone(),
                        None => RedisStore::new(settings, metrics.clone()),
                    },
                ),
            },
        };
        if state.backend == StateBackendKind::Redis && state.redis.is_none() {
            errors.push((
                "state.redis".into(),
                "`backend: redis` needs a `redis` section with at least `url`".into(),
            ));
        }
        let mut remote = HashMap::new();
        for (name, p) in &cfg.plugins {
            let kind = p.state.backend.unwrap_or(state.backend);
            match kind {
                StateBackendKind::Memory => {
                    if p.state.on_unavailable != OnUnavailable::Error {
                        errors.push((
                            format!("plugins.{name}.state.on_unavailable"),
                            "only a plugin whose state is on Redis can be unavailable".into(),
                        ));
                    }
                }
                StateBackendKind::Redis => {
                    if state.redis.is_none() {
                        errors.push((
                            format!("plugins.{name}.state.backend"),
                            "state on Redis needs a `state.redis` section".into(),
                        ));
                    }
                    remote.insert(name.clone(), p.state.on_unavailable);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Routes { redis, remote })
    }

    /// `None`: the plugin is in memory.
    fn on_redis(&self, ns: &str) -> Option<OnUnavailable> {
        if self.remote.is_empty() {
            return None;
        }
        self.remote.get(ns).copied()
    }
}

/// The store shared by every plugin instance and the admin API, across
/// reloads: routes each plugin's operations to its backend.
#[derive(Clone, Debug)]
pub struct SharedState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    memory: MemoryStore,
    routes: ArcSwap<Routes>,
}

impl SharedState {
    /// Every plugin in memory, reading expiry times from `clock`, until
    /// [`SharedState::apply`] says otherwise.
    pub fn in_memory(clock: Clock) -> SharedState {
        SharedState {
            inner: Arc::new(Inner {
                memory: MemoryStore::new(clock, 1),
                routes: ArcSwap::from_pointee(Routes::default()),
            }),
        }
    }

    /// Route by `routes` from now on. A Redis store new in them is started
    /// first: its first health probe runs (bounded by its connect timeout),
    /// so a gateway that starts with Redis up serves from Redis at once.
    pub async fn apply(&self, routes: Arc<Routes>) {
        if let Some(redis) = &routes.redis {
            redis.start().await;
        }
        self.inner.routes.store(routes);
    }

    /// The backends and their health, for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let routes = self.inner.routes.load();
        let plugins: serde_json::Map<String, serde_json::Value> = routes
            .remote
            .iter()
            .map(|(name, on)| {
                (
                    name.clone(),
                    serde_json::json!({ "backend": "redis", "on_unavailable": on.as_str() }),
                )
            })
            .collect();
        serde_json::json!({
            "memory": { "entries": self.inner.memory.len() },
            "redis": routes.redis.as_ref().map(|r| r.status()),
            "plugins_on_redis": plugins,
        })
    }

    /// Read a live entry. `deadline`: when the answer is no longer useful
    /// (a hook's wall-clock deadline); a remote call is cut there.
    pub async fn get(
        &self,
        ns: &Arc<str>,
        key: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<Entry>, StateError> {
        match self.run(ns, Op::Get(key), deadline).await? {
            Reply::Entry(e) => Ok(e),
            other => unreachable!("get answered {other:?}"),
        }
    }

    /// Write unconditionally; returns the new version.
    pub async fn set(
        &self,
        ns: &Arc<str>,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<u64, StateError> {
        let op = Op::Set { key, value, ttl_ms };
        match self.run(ns, op, deadline).await? {
            Reply::Version(v) => Ok(v),
            other => unreachable!("set answered {other:?}"),
        }
    }

    /// Write only if the live version equals `expected` (`None`: only if absent).
    pub async fn compare_and_swap(
        &self,
        ns: &Arc<str>,
        key: &str,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<CasOutcome, StateError> {
        let op = Op::Cas {
            key,
            expected,
            value,
            ttl_ms,
        };
        match self.run(ns, op, deadline).await? {
            Reply::Cas(outcome) => Ok(outcome),
            other => unreachable!("compare-and-swap answered {other:?}"),
        }
    }

    /// Add `delta` to an 8-byte little-endian counter, creating it at 0 with
    /// `ttl_ms` if absent; an existing counter keeps its expiry. Returns the
    /// new value and the milliseconds left before it expires (`None`: never).
    pub async fn increment(
        &self,
        ns: &Arc<str>,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<(i64, Option<u64>), StateError> {
        let op = Op::Increment { key, delta, ttl_ms };
        match self.run(ns, op, deadline).await? {
            Reply::Counter(value, ttl) => Ok((value, ttl)),
            other => unreachable!("increment answered {other:?}"),
        }
    }

    /// Delete a key; whether a live entry existed.
    pub async fn delete(
        &self,
        ns: &Arc<str>,
        key: &str,
        deadline: Option<Instant>,
    ) -> Result<bool, StateError> {
        match self.run(ns, Op::Delete(key), deadline).await? {
            Reply::Deleted(existed) => Ok(existed),
            other => unreachable!("delete answered {other:?}"),
        }
    }

    /// Take `cost` tokens from the token bucket under `key` (`rate` every
    /// `period_ms`, at most `burst`, starting full) in one atomic step.
    #[allow(clippy::too_many_arguments)]
    pub async fn take_tokens(
        &self,
        ns: &Arc<str>,
        key: &str,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
        deadline: Option<Instant>,
    ) -> Result<bucket::Taken, StateError> {
        let limit = bucket::Limit::new(rate, period_ms, burst, cost)?;
        let op = Op::TakeTokens { key, limit, cost };
        match self.run(ns, op, deadline).await? {
            Reply::Bucket(taken) => Ok(taken),
            other => unreachable!("take-tokens answered {other:?}"),
        }
    }

    /// Entries held in memory, live or not yet swept (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.memory.len()
    }

    /// Whether memory holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn run(
        &self,
        ns: &Arc<str>,
        op: Op<'_>,
        deadline: Option<Instant>,
    ) -> Result<Reply, StateError> {
        op.check()?;
        let routes = self.inner.routes.load();
        let Some(on_unavailable) = routes.on_redis(ns) else {
            return self.inner.memory.exec(ns, op);
        };
        let redis = routes
            .redis
            .clone()
            .expect("a plugin is bound to Redis only when the routes hold a store");
        drop(routes);
        if redis.is_up() {
            match redis.exec(ns, &op, deadline).await {
                Ok(reply) => return Ok(reply),
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::Unreachable) => {}
            }
        }
        match on_unavailable {
            OnUnavailable::Error => {
                redis.count_unavailable();
                Err(StateError::Unavailable)
            }
            OnUnavailable::Memory => redis.fallback(ns, op),
        }
    }
}
