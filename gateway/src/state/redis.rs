//! The Redis backend: plugin state on a Redis every gateway of a fleet
//! shares, with the memory backend's semantics exactly.
//!
//! Each operation is one round trip and atomic on the server: reads are
//! plain commands, writes are Lua scripts (loaded once, then called by SHA),
//! never WATCH. An entry is a hash `{v: value, n: version}` under
//! `<prefix>{<plugin>}:<key>`, with its TTL on the key; versions come from
//! one counter per plugin, `<prefix>{<plugin>}#version`, so a version is
//! never reused for a key even after it expires (the hash tag keeps a
//! plugin's keys in one slot). Counters are 8 bytes little-endian like every
//! other value; the script adds in two 32-bit halves because Lua's numbers
//! are doubles.
//!
//! One multiplexed connection carries every call (concurrent calls are
//! pipelined on it) and reconnects on its own. Health is tracked here: a
//! call that cannot reach Redis marks it down, so later calls fail at once
//! (or go to the plugin's memory fallback) instead of each waiting for a
//! timeout, and a probe marks it up again when it answers.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{IntoConnectionInfo, Value};
use tokio::time::Instant;

use super::memory::MemoryStore;
use super::{CasOutcome, Entry, Op, Reply, StateError};
use crate::clock::Clock;
use crate::config::RedisConfig;
use crate::metrics::{Metrics, StateMetrics};

/// Versions of a memory fallback start here, far above any Redis counter,
/// so a version read from one never matches an entry of the other.
const FALLBACK_FIRST_VERSION: u64 = 1 << 62;

/// Redis's Lua numbers are doubles: versions stay exact below 2^53, which
/// at a million writes a second is centuries away. TTLs are capped there
/// too (a TTL of 285,000 years is "never" for every purpose).
const MAX_TTL_MS: u64 = 1 << 53;

const SET: &str = r"
local n = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'n', string.format('%.0f', n))
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
";

const CAS: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'n')
if ARGV[1] == '' then
  if cur[2] then return {0, cur[1], cur[2]} end
elseif cur[2] ~= ARGV[1] then
  return {0, cur[1], cur[2]}
end
local n = redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'n', string.format('%.0f', n))
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, n}
";

const INCREMENT: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'n')
local lo, hi = 0, 0
if cur[2] then
  if #cur[1] ~= 8 then return {0} end
  lo, hi = struct.unpack('<I4I4', cur[1])
end
lo = lo + tonumber(ARGV[1])
local carry = 0
if lo >= 4294967296 then
  lo = lo - 4294967296
  carry = 1
end
hi = (hi + tonumber(ARGV[2]) + carry) % 4294967296
local v = struct.pack('<I4I4', lo, hi)
local n = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', v, 'n', string.format('%.0f', n))
if not cur[2] and ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, v, redis.call('PTTL', KEYS[1])}
";

/// `take-tokens` (`bucket.rs` holds the same arithmetic for memory): the
/// bucket `[1, units: u64 LE, last_ms: u64 LE]` in the entry's `v`, on the
/// server's clock so every gateway agrees. Written only when tokens are
/// taken. Numbers stay below 2^53 (the host checks the limit), so doubles
/// are exact; u64s are packed in 32-bit halves.
const TAKE: &str = r"
local rate, period, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function ceil_div(n, d)
  local q = math.floor(n / d)
  if q * d < n then q = q + 1 end
  return q
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = burst * period
local ttl = math.max(ceil_div(cap, rate), 1)
local units, last = cap, now
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and #cur == 17 and string.byte(cur, 1) == 1 then
  local ulo, uhi, llo, lhi = struct.unpack('<I4I4I4I4', string.sub(cur, 2))
  units = math.min(uhi * 4294967296 + ulo, cap)
  last = lhi * 4294967296 + llo
  local elapsed = math.min(math.max(now - last, 0), ttl)
  units = math.min(units + elapsed * rate, cap)
  if now > last then last = now end
end
local need = cost * period
if units >= need then
  units = units - need
  local v = string.char(1) .. struct.pack('<I4I4I4I4', units % 4294967296, math.floor(units / 4294967296),
    last % 4294967296, math.floor(last / 4294967296))
  local n = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'v', v, 'n', string.format('%.0f', n))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, math.floor(units / period), ceil_div(cap - units, rate), 0}
end
return {0, math.floor(units / period), ceil_div(cap - units, rate), ceil_div(need - units, rate)}
";

/// Everything that decides how the store connects, compared on reload to
/// keep a store (and its connection) whose settings did not change.
#[derive(Clone, PartialEq)]
pub struct RedisSettings {
    config: RedisConfig,
    password: Option<String>,
    tls: Option<TlsFiles>,
}

/// PEM bytes for `rediss://`: the CA, and a client certificate with its key.
type TlsFiles = (Option<Vec<u8>>, Option<(Vec<u8>, Vec<u8>)>);

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact(&self.config.url))
            .field("key_prefix", &self.config.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Check `cfg` and read the files it names (relative to `base`). Errors
    /// name the field under `state.redis`.
    pub fn from_config(cfg: &RedisConfig, base: &Path) -> Result<RedisSettings, (String, String)> {
        let err = |field: &str, msg: String| (field.to_string(), msg);
        let info = cfg.url.as_str().into_connection_info().map_err(|e| {
            err(
                "url",
                format!("not a Redis URL ({e}); expected redis://host:port[/db] or rediss://"),
            )
        })?;
        let is_tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        for (field, ms) in [
            ("connect_timeout_ms", cfg.connect_timeout_ms),
            ("timeout_ms", cfg.timeout_ms),
            ("probe_interval_ms", cfg.probe_interval_ms),
        ] {
            if ms == 0 {
                return Err(err(field, "must be at least 1".into()));
            }
        }
        if cfg.database.is_some_and(|d| d < 0) {
            return Err(err("database", "must be 0 or more".into()));
        }
        let read = |field: &str, name: &str| {
            std::fs::read(base.join(name))
                .map_err(|e| err(field, format!("cannot read {name}: {e}")))
        };
        let password = match &cfg.password_file {
            None => None,
            Some(name) => {
                let bytes = read("password_file", name)?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| err("password_file", format!("{name} is not UTF-8")))?;
                let first = text.lines().next().unwrap_or("").trim_end().to_string();
                if first.is_empty() {
                    return Err(err("password_file", format!("{name} holds no password")));
                }
                Some(first)
            }
        };
        let tls = match &cfg.tls {
            None => None,
            Some(_) if !is_tls => {
                return Err(err(
                    "tls",
                    "TLS files need a rediss:// url (redis:// is cleartext)".into(),
                ))
            }
            Some(t) => {
                let ca = t
                    .ca_file
                    .as_deref()
                    .map(|f| read("tls.ca_file", f))
                    .transpose()?;
                let client = match (&t.cert_file, &t.key_file) {
                    (None, None) => None,
                    (Some(c), Some(k)) => {
                        Some((read("tls.cert_file", c)?, read("tls.key_file", k)?))
                    }
                    _ => return Err(err("tls", "cert_file and key_file go together".into())),
                };
                Some((ca, client))
            }
        };
        Ok(RedisSettings {
            config: cfg.clone(),
            password,
            tls,
        })
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        let mut info = self.config.url.as_str().into_connection_info()?;
        let mut redis_info = info.redis_settings().clone();
        if let Some(p) = &self.password {
            redis_info = redis_info.set_password(p);
        }
        if let Some(db) = self.config.database {
            redis_info = redis_info.set_db(db);
        }
        info = info.set_redis_settings(redis_info);
        match &self.tls {
            None => redis::Client::open(info),
            Some((ca, client)) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
                        client_cert: cert.clone(),
                        client_key: key.clone(),
                    }),
                    root_cert: ca.clone(),
                },
            ),
        }
    }
}

/// Why a Redis call did not answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Redis answered no: this is the plugin's error.
    Refused(StateError),
    /// Redis could not be reached, or not in time: the plugin's
    /// `on_unavailable` decides.
    Unreachable,
}

/// One Redis server as a state backend, with its connection and health.
pub struct RedisStore {
    settings: RedisSettings,
    /// Built on first start, in the runtime that serves.
    conn: std::sync::OnceLock<Result<ConnectionManager, String>>,
    scripts: Scripts,
    up: AtomicBool,
    started: AtomicBool,
    /// When health last changed, Unix ms.
    since_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Rate limit on per-call error logs, Unix ms of the last.
    last_warned_ms: AtomicU64,
    fallback: MemoryStore,
    metrics: StateMetrics,
    timeout: Duration,
}

struct Scripts {
    set: redis::Script,
    cas: redis::Script,
    increment: redis::Script,
    take: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("settings", &self.settings)
            .field("up", &self.up)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `settings`, not yet connected: [`RedisStore::start`]
    /// connects, so validating a configuration never touches Redis.
    pub fn new(settings: RedisSettings, metrics: Arc<Metrics>) -> Arc<RedisStore> {
        let timeout = Duration::from_millis(settings.config.timeout_ms);
        let metrics = metrics.state_metrics("redis");
        metrics.up.set(0);
        Arc::new(RedisStore {
            settings,
            conn: std::sync::OnceLock::new(),
            scripts: Scripts {
                set: redis::Script::new(SET),
                cas: redis::Script::new(CAS),
                increment: redis::Script::new(INCREMENT),
                take: redis::Script::new(TAKE),
            },
            up: AtomicBool::new(false),
            started: AtomicBool::new(false),
            since_ms: AtomicU64::new(now_ms()),
            last_error: Mutex::new(Some("not connected yet".into())),
            last_warned_ms: AtomicU64::new(0),
            fallback: MemoryStore::new(Clock::system(), FALLBACK_FIRST_VERSION),
            metrics,
            timeout,
        })
    }

    /// Its settings, to tell whether a new configuration changes them.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// Whether calls go to Redis now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Connect, probe once (within the connect timeout), and keep probing
    /// every `probe_interval_ms` for as long as the store is in use. Once.
    pub async fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let conn = self.conn.get_or_init(|| {
            let cfg = &self.settings.config;
            let manager = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)))
                .set_response_timeout(Some(
                    self.timeout
                        .max(Duration::from_millis(cfg.connect_timeout_ms)),
                ))
                // Reconnecting is retried by the probe, at its own pace.
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(cfg.probe_interval_ms));
            self.settings
                .client()
                .and_then(|c| ConnectionManager::new_lazy_with_config(c, manager))
                .map_err(|e| e.to_string())
        });
        if let Err(e) = conn {
            tracing::error!(url = %redact(&self.settings.config.url), error = %e, "cannot set up the Redis state backend; plugins on it follow their on_unavailable");
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
            return;
        }
        self.probe().await;
        if !self.is_up() {
            tracing::warn!(
                url = %redact(&self.settings.config.url),
                error = self.last_error().unwrap_or_default(),
                "Redis state backend unreachable at start; plugins on it follow their on_unavailable until it answers"
            );
        }
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.settings.config.probe_interval_ms);
        tokio::spawn(probe_loop(weak, every));
    }

    /// One health check: PING, within the connect timeout.
    async fn probe(&self) {
        let Some(Ok(conn)) = self.conn.get() else {
            return;
        };
        let mut conn = conn.clone();
        let wait = Duration::from_millis(self.settings.config.connect_timeout_ms);
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<Value>(&mut conn);
        match tokio::time::timeout(wait, ping).await {
            Ok(Ok(_)) => self.mark_up(),
            Ok(Err(e)) => self.mark_down(&e.to_string()),
            Err(_) => self.mark_down(&format!("no answer to PING within {} ms", wait.as_millis())),
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            self.since_ms.store(now_ms(), Ordering::Relaxed);
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            // What the fallback held was this gateway's alone; Redis holds
            // the fleet's, and is authoritative again.
            self.fallback.clear();
            self.metrics.up.set(1);
            self.metrics.to_up.inc();
            tracing::info!(url = %redact(&self.settings.config.url), "Redis state backend up");
        }
    }

    fn mark_down(&self, why: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
        if self.up.swap(false, Ordering::SeqCst) {
            self.since_ms.store(now_ms(), Ordering::Relaxed);
            self.metrics.up.set(0);
            self.metrics.to_down.inc();
            tracing::warn!(url = %redact(&self.settings.config.url), error = why, "Redis state backend down; plugins on it follow their on_unavailable until it answers");
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// For `/status`.
    pub fn status(&self) -> serde_json::Value {
        let cfg = &self.settings.config;
        serde_json::json!({
            "url": redact(&cfg.url),
            "key_prefix": cfg.key_prefix,
            "up": self.is_up(),
            "since_ms": self.since_ms.load(Ordering::Relaxed),
            "last_error": self.last_error(),
            "timeout_ms": cfg.timeout_ms,
            "fallback_entries": self.fallback.len(),
        })
    }

    /// A call refused because Redis is down and the plugin wants an error.
    pub(crate) fn count_unavailable(&self) {
        self.metrics.unavailable.inc();
    }

    /// Serve `op` from this gateway's memory while Redis is away.
    pub(crate) fn fallback(&self, ns: &Arc<str>, op: Op<'_>) -> Result<Reply, StateError> {
        self.metrics.fallback.inc();
        self.fallback.exec(ns, op)
    }

    /// Run `op` on Redis, cut at `deadline` or the backend timeout,
    /// whichever comes first.
    pub(crate) async fn exec(
        &self,
        ns: &str,
        op: &Op<'_>,
        deadline: Option<Instant>,
    ) -> Result<Reply, Failure> {
        let Some(Ok(conn)) = self.conn.get() else {
            return Err(Failure::Unreachable);
        };
        let started = Instant::now();
        let own = started + self.timeout;
        let (cut, ours) = match deadline {
            Some(d) if d < own => (d, false),
            _ => (own, true),
        };
        let result = tokio::time::timeout_at(cut, self.run(conn.clone(), ns, op)).await;
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(Ok(reply))) => {
                self.metrics.ok.inc();
                Ok(reply)
            }
            Ok(Ok(Err(refused))) => {
                self.metrics.ok.inc();
                Err(Failure::Refused(refused))
            }
            Ok(Err(e)) => {
                self.metrics.failed.inc();
                Err(self.classify(e))
            }
            Err(_) => {
                self.metrics.failed.inc();
                // Cut by the hook's own deadline, Redis may be fine: only
                // its own timeout says it is not.
                if ours {
                    self.mark_down(&format!("no answer within {} ms", self.timeout.as_millis()));
                }
                Err(Failure::Unreachable)
            }
        }
    }

    fn classify(&self, e: redis::RedisError) -> Failure {
        // Redis refuses writes past `maxmemory` with an OOM error: the
        // store is full, as `too-large` says for memory.
        if e.code() == Some("OOM") {
            return Failure::Refused(StateError::TooLarge);
        }
        if matches!(
            e.kind(),
            redis::ErrorKind::Server(_)
                | redis::ErrorKind::Extension
                | redis::ErrorKind::UnexpectedReturnType
        ) {
            // The server is there but said no (a read-only replica, missing
            // ACL permission): an error for this call, not an outage.
            let now = now_ms();
            let last = self.last_warned_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1_000
                && self
                    .last_warned_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(error = %e, "Redis refused a state operation");
            }
            return Failure::Refused(StateError::Unavailable);
        }
        self.mark_down(&e.to_string());
        Failure::Unreachable
    }

    async fn run(
        &self,
        mut conn: ConnectionManager,
        ns: &str,
        op: &Op<'_>,
    ) -> redis::RedisResult<Result<Reply, StateError>> {
        let prefix = &self.settings.config.key_prefix;
        let key = |k: &str| {
            let mut s = String::with_capacity(prefix.len() + ns.len() + k.len() + 3);
            s.push_str(prefix);
            s.push('{');
            s.push_str(ns);
            s.push_str("}:");
            s.push_str(k);
            s
        };
        let version_key = || format!("{prefix}{{{ns}}}#version");
        let ttl = |t: Option<u64>| t.map(|t| t.min(MAX_TTL_MS).to_string()).unwrap_or_default();
        match op {
            Op::Get(k) => {
                let reply: Value = redis::cmd("HMGET")
                    .arg(key(k))
                    .arg("v")
                    .arg("n")
                    .query_async(&mut conn)
                    .await?;
                let [value, version] = pair(reply)?;
                Ok(Ok(Reply::Entry(entry(value, version)?)))
            }
            Op::Set {
                key: k,
                value,
                ttl_ms,
            } => {
                let n: u64 = self
                    .scripts
                    .set
                    .key(key(k))
                    .key(version_key())
                    .arg(value.as_slice())
                    .arg(ttl(*ttl_ms))
                    .invoke_async(&mut conn)
                    .await?;
                Ok(Ok(Reply::Version(n)))
            }
            Op::Cas {
                key: k,
                expected,
                value,
                ttl_ms,
            } => {
                let reply: Vec<Value> = self
                    .scripts
                    .cas
                    .key(key(k))
                    .key(version_key())
                    .arg(expected.map(|v| v.to_string()).unwrap_or_default())
                    .arg(value.as_slice())
                    .arg(ttl(*ttl_ms))
                    .invoke_async(&mut conn)
                    .await?;
                let mut it = reply.into_iter();
                match (it.next(), it.next(), it.next()) {
                    (Some(Value::Int(1)), Some(Value::Int(n)), None) => {
                        Ok(Ok(Reply::Cas(CasOutcome::Swapped(n as u64))))
                    }
                    (Some(Value::Int(0)), value, version) => {
                        Ok(Ok(Reply::Cas(CasOutcome::Conflict(entry(
                            value.unwrap_or(Value::Nil),
                            version.unwrap_or(Value::Nil),
                        )?))))
                    }
                    _ => Err(unexpected("compare-and-swap")),
                }
            }
            Op::Increment {
                key: k,
                delta,
                ttl_ms,
            } => {
                let bits = *delta as u64;
                let reply: Vec<Value> = self
                    .scripts
                    .increment
                    .key(key(k))
                    .key(version_key())
                    .arg(bits & 0xffff_ffff)
                    .arg(bits >> 32)
                    .arg(ttl(*ttl_ms))
                    .invoke_async(&mut conn)
                    .await?;
                let mut it = reply.into_iter();
                match (it.next(), it.next(), it.next()) {
                    (Some(Value::Int(0)), None, None) => Ok(Err(StateError::NotACounter)),
                    (Some(Value::Int(1)), Some(Value::BulkString(v)), Some(Value::Int(pttl))) => {
                        let bytes: [u8; 8] = v
                            .as_slice()
                            .try_into()
                            .map_err(|_| unexpected("increment"))?;
                        // -1: no expiry; -2: already gone (a TTL of 0).
                        let left = match pttl {
                            -1 => None,
                            n => Some(n.max(0) as u64),
                        };
                        Ok(Ok(Reply::Counter(i64::from_le_bytes(bytes), left)))
                    }
                    _ => Err(unexpected("increment")),
                }
            }
            Op::Delete(k) => {
                let n: i64 = redis::cmd("DEL").arg(key(k)).query_async(&mut conn).await?;
                Ok(Ok(Reply::Deleted(n > 0)))
            }
            Op::TakeTokens {
                key: k,
                limit,
                cost,
            } => {
                let reply: Vec<i64> = self
                    .scripts
                    .take
                    .key(key(k))
                    .key(version_key())
                    .arg(limit.rate())
                    .arg(limit.period_ms())
                    .arg(limit.burst())
                    .arg(*cost)
                    .invoke_async(&mut conn)
                    .await?;
                match reply.as_slice() {
                    &[taken @ (0 | 1), remaining, reset_ms, retry_after_ms] => {
                        Ok(Ok(Reply::Bucket(super::bucket::Taken {
                            taken: taken == 1,
                            remaining: remaining.max(0) as u64,
                            reset_ms: reset_ms.max(0) as u64,
                            retry_after_ms: retry_after_ms.max(0) as u64,
                        })))
                    }
                    _ => Err(unexpected("take-tokens")),
                }
            }
        }
    }
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply to a state script",
        what.to_string(),
    ))
}

fn pair(reply: Value) -> redis::RedisResult<[Value; 2]> {
    match reply {
        Value::Array(items) => items.try_into().map_err(|_| unexpected("get")),
        _ => Err(unexpected("get")),
    }
}

fn entry(value: Value, version: Value) -> redis::RedisResult<Option<Entry>> {
    match (value, version) {
        (Value::Nil, Value::Nil) => Ok(None),
        (Value::BulkString(value), Value::BulkString(n)) => {
            let version = std::str::from_utf8(&n)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| unexpected("version"))?;
            Ok(Some(Entry { value, version }))
        }
        _ => Err(unexpected("entry")),
    }
}

async fn probe_loop(store: Weak<RedisStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        // The store's last user (a replaced configuration) is gone: stop.
        let Some(store) = store.upgrade() else { return };
        store.probe().await;
    }
}

/// `url` without its password, for logs and `/status`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        None => url.to_string(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact("rediss://u:p@ss@h"), "rediss://u:***@h");
        assert_eq!(redact("redis://token@h"), "redis://***@h");
    }
}
