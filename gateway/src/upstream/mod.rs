//! Upstreams: named groups of endpoints, and the upstream phase of a
//! request as one call, [`Upstream::call`]:
//!
//! ```text
//!   pick ──▶ send ──▶ classify ──▶ retry? ──▶ outcome
//!   (balance,  (pool,    (passive      (policy, budget,
//!    health)    deadline) ejection)     backoff, another endpoint)
//! ```
//!
//! Beside it: [`balance`] (round-robin, weighted, least-request, consistent
//! hashing), [`endpoint`] (an endpoint's connections and health),
//! [`health`] (active probes), [`retry`] (conditions, backoff, budget),
//! [`discovery`] (DNS, file, etcd) and [`pool`] (connections).
//!
//! The endpoint set is the one part of a snapshot that changes while the
//! snapshot is live: discovery publishes a new set (an endpoint that stays
//! keeps its connections and health), and health and ejection change who
//! is in rotation. Everything else about an upstream is fixed by its
//! configuration; a reload that leaves that unchanged keeps the upstream.

mod balance;
mod discovery;
mod endpoint;
mod health;
mod pool;
mod retry;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderMap;

use crate::body::Body;
use crate::config::{Balance, EndpointAddress, OutlierConfig, UpstreamConfig, UpstreamProtocol};
use balance::{EndpointSet, HashOn};
use discovery::Found;
use endpoint::{Endpoint, Observed, Source};
use pool::EndpointPool;

/// How an upstream call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamErrorKind {
    /// No endpoint accepted the connection.
    #[error("connect failed")]
    ConnectFailed,
    /// The connect or response deadline passed.
    #[error("timed out")]
    Timeout,
    /// The connection broke before a complete response head.
    #[error("connection reset")]
    Reset,
    /// Nothing to send to.
    #[error("no endpoint")]
    NoEndpoint,
    /// The answer was not valid HTTP (or TLS failed for a reason other
    /// than the certificate).
    #[error("protocol error")]
    Protocol,
    /// The endpoint's TLS certificate was refused: untrusted, expired, or
    /// not for the server name.
    #[error("certificate refused")]
    Certificate,
    /// The endpoint refused the HTTP/2 stream unprocessed (REFUSED_STREAM,
    /// or a GOAWAY before it), again on a new connection.
    #[error("stream refused")]
    Refused,
}

impl UpstreamErrorKind {
    /// How many kinds there are.
    pub(crate) const COUNT: usize = 7;
    /// Every kind, in declaration order.
    pub(crate) const ALL: [UpstreamErrorKind; Self::COUNT] = [
        UpstreamErrorKind::ConnectFailed,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Reset,
        UpstreamErrorKind::NoEndpoint,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::Certificate,
        UpstreamErrorKind::Refused,
    ];

    /// Stable code for JSON bodies and metrics.
    pub fn code(self) -> &'static str {
        match self {
            UpstreamErrorKind::ConnectFailed => "upstream_connect_failed",
            UpstreamErrorKind::Timeout => "upstream_timeout",
            UpstreamErrorKind::Reset => "upstream_reset",
            UpstreamErrorKind::NoEndpoint => "upstream_no_endpoint",
            UpstreamErrorKind::Protocol => "upstream_protocol_error",
            UpstreamErrorKind::Certificate => "upstream_certificate_invalid",
            UpstreamErrorKind::Refused => "upstream_refused_stream",
        }
    }

    /// Short name for metric labels and `/status`.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamErrorKind::ConnectFailed => "connect-failure",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::NoEndpoint => "no-endpoint",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Certificate => "certificate",
            UpstreamErrorKind::Refused => "refused-stream",
        }
    }
}

/// Which source an endpoint list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The `i`th DNS name among the configured endpoints.
    Name(usize),
    /// The discovery registry.
    Registry,
}

#[derive(Debug, Default)]
struct Sources {
    statics: Found,
    names: Vec<Found>,
    registry: Found,
}

#[derive(Debug)]
enum Registry {
    File { path: PathBuf, service: String },
    Etcd(discovery::etcd::Etcd),
}

/// Upstream-wide counters.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    panics: AtomicU64,
    ejections_capped: AtomicU64,
}

/// A named upstream, ready to send requests.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    config: UpstreamConfig,
    hash_on: Option<HashOn>,
    /// The endpoints requests go to now.
    live: ArcSwap<EndpointSet>,
    cursor: AtomicUsize,
    sources: Mutex<Sources>,
    request_timeout: Duration,
    connect_timeout: Duration,
    tls: Option<tls::Connector>,
    check: Option<health::Check>,
    retry: Option<retry::RetryPolicy>,
    dns: Option<discovery::dns::Dns>,
    registry: Option<Registry>,
    /// The upstream's clock: milliseconds since it was built, on tokio's
    /// clock.
    epoch: tokio::time::Instant,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    counters: Counters,
    /// Held while an ejection is checked against the cap and recorded.
    ejecting: Mutex<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// A request ready for the upstream: origin-form URI, `Host` set.
#[derive(Debug)]
pub struct Outgoing {
    /// Method.
    pub method: http::Method,
    /// Path and query.
    pub uri: http::Uri,
    /// Headers, hop-by-hop ones already removed.
    pub headers: HeaderMap,
    /// The body.
    pub body: Body,
    /// The whole body, kept so the request can be sent again (see
    /// [`Upstream::keeps_body`]); `None` when it streams.
    pub replay: Option<Bytes>,
    /// The consistent-hash key ([`Upstream::key`]).
    pub key: u64,
    /// A deadline of the request's own (gRPC's `grpc-timeout`), if sooner
    /// than the upstream's.
    pub deadline: Option<Duration>,
    /// A WebSocket upgrade, on a connection of its own.
    pub upgrade: bool,
    /// Where a streamed body records that the client broke it off or
    /// overran it: a failure then is the client's, not the endpoint's.
    pub client_fault: Option<Arc<std::sync::OnceLock<crate::request::Refusal>>>,
}

/// What the upstream phase produced.
#[derive(Debug)]
pub struct Answer {
    /// The response (head received), or the last try's failure.
    pub result: Result<http::Response<Body>, UpstreamErrorKind>,
    /// The endpoint of the last try.
    pub endpoint: Option<SocketAddr>,
    /// Tries made (0 when there was no endpoint to try).
    pub attempts: u32,
    /// From the first try to the response head (or the failure).
    pub elapsed: Duration,
}

impl Upstream {
    /// Build from config, validated; `Err` names the offending field. The
    /// static endpoints are in rotation at once; [`Upstream::start`] adds
    /// the discovered ones and starts the background tasks.
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        base: &Path,
    ) -> Result<Arc<Upstream>, (String, String)> {
        let err = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        if cfg.endpoints.is_empty() && cfg.discovery.is_none() {
            return err(
                "endpoints",
                "at least one endpoint is required (or discovery)",
            );
        }
        for (i, e) in cfg.endpoints.iter().enumerate() {
            if !(1..=1000).contains(&e.weight) {
                return Err((format!("endpoints[{i}].weight"), "must be 1 to 1000".into()));
            }
        }
        if cfg.connect_timeout_ms == 0 {
            return err("connect_timeout_ms", "must be at least 1");
        }
        if cfg.request_timeout_ms == 0 {
            return err("request_timeout_ms", "must be at least 1");
        }
        let hash_on = match (cfg.balance, &cfg.hash_on) {
            (Balance::ConsistentHash, None) => return err(
                "hash_on",
                "consistent-hash needs hash_on: header:<name>, cookie:<name>, client-ip or path",
            ),
            (Balance::ConsistentHash, Some(h)) => {
                Some(HashOn::parse(h).map_err(|m| ("hash_on".to_string(), m))?)
            }
            (_, Some(_)) => return err("hash_on", "only balance: consistent-hash uses hash_on"),
            (_, None) => None,
        };
        if cfg.panic_threshold_percent > 100 {
            return err("panic_threshold_percent", "must be 0 to 100");
        }
        validate_outlier(&cfg.outlier)?;
        match (cfg.protocol, &cfg.tls) {
            (UpstreamProtocol::H2, None) => {
                return err(
                    "protocol",
                    "h2 is HTTP/2 over TLS: set tls, or use h2c for cleartext",
                )
            }
            (UpstreamProtocol::H2c, Some(_)) => {
                return err("protocol", "h2c is cleartext HTTP/2: use h2 with tls")
            }
            _ => {}
        }
        let tls = match &cfg.tls {
            Some(t) => Some(tls::Connector::new(t, cfg.protocol, base)?),
            None => None,
        };
        let check = cfg
            .health_check
            .as_ref()
            .map(health::Check::new)
            .transpose()?;
        let retry = cfg
            .retry
            .as_ref()
            .map(retry::RetryPolicy::new)
            .transpose()?;
        let has_names = cfg
            .endpoints
            .iter()
            .any(|e| matches!(e.address, EndpointAddress::Name { .. }));
        let dns = if has_names {
            Some(discovery::dns::Dns::new(&cfg.dns)?)
        } else {
            None
        };
        let registry = match &cfg.discovery {
            None => None,
            Some(d) => match (&d.file, &d.etcd) {
                (Some(f), None) => Some(Registry::File {
                    path: base.join(&f.path),
                    service: f.service.clone().unwrap_or_else(|| name.to_string()),
                }),
                (None, Some(e)) => Some(Registry::Etcd(discovery::etcd::Etcd::new(e)?)),
                _ => return err("discovery", "set exactly one of file and etcd"),
            },
        };
        let mut sources = Sources::default();
        for e in &cfg.endpoints {
            match &e.address {
                EndpointAddress::Socket(a) => sources.statics.push((*a, e.weight)),
                EndpointAddress::Name { .. } => sources.names.push(Vec::new()),
            }
        }
        let up = Arc::new(Upstream {
            name: name.to_string(),
            config: cfg.clone(),
            hash_on,
            live: ArcSwap::from_pointee(EndpointSet::default()),
            cursor: AtomicUsize::new(0),
            sources: Mutex::new(sources),
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            tls,
            check,
            retry,
            dns,
            registry,
            epoch: tokio::time::Instant::now(),
            tasks: Mutex::default(),
            counters: Counters::default(),
            ejecting: Mutex::new(()),
        });
        up.publish(&up.sources());
        Ok(up)
    }

    /// Resolve the names and read the registry once (so the first requests
    /// find their endpoints), then start what keeps them current and the
    /// health checks. A registry file that cannot be read is an error here,
    /// naming its field; etcd or DNS that do not answer are logged and
    /// retried.
    pub async fn start(self: &Arc<Self>) -> Result<(), (String, String)> {
        let names: Vec<(usize, String, u16, u32)> = self
            .config
            .endpoints
            .iter()
            .filter_map(|e| match &e.address {
                EndpointAddress::Name { host, port } => Some((host.clone(), *port, e.weight)),
                EndpointAddress::Socket(_) => None,
            })
            .enumerate()
            .map(|(i, (h, p, w))| (i, h, p, w))
            .collect();
        let mut lookups = tokio::task::JoinSet::new();
        for (i, host, port, weight) in names.iter().cloned() {
            let up = self.clone();
            lookups.spawn(async move {
                let (found, ttl) = discovery::dns::first(&up, &host, port, weight).await;
                (i, host, port, weight, found, ttl)
            });
        }
        let mut follow = Vec::new();
        while let Some(done) = lookups.join_next().await {
            let Ok((i, host, port, weight, found, ttl)) = done else {
                continue;
            };
            self.update(Slot::Name(i), found);
            follow.push((i, host, port, weight, ttl));
        }
        match &self.registry {
            None => {}
            Some(Registry::File { path, service }) => {
                let found = discovery::file::read(path, service).map_err(|m| {
                    (
                        "discovery.file.path".to_string(),
                        format!("{}: {m}", path.display()),
                    )
                })?;
                self.update(Slot::Registry, found);
            }
            Some(Registry::Etcd(etcd)) => {
                let found = discovery::etcd::first(self, etcd).await;
                self.update(Slot::Registry, found);
            }
        }
        let weak = Arc::downgrade(self);
        let mut tasks = Vec::new();
        for (i, host, port, weight, ttl) in follow {
            tasks.push(
                tokio::spawn(discovery::dns::run(
                    weak.clone(),
                    i,
                    host,
                    port,
                    weight,
                    ttl,
                ))
                .abort_handle(),
            );
        }
        match &self.registry {
            None => {}
            Some(Registry::File { path, service }) => tasks.push(
                tokio::spawn(discovery::file::run(
                    weak.clone(),
                    path.clone(),
                    service.clone(),
                ))
                .abort_handle(),
            ),
            Some(Registry::Etcd(etcd)) => tasks.push(
                tokio::spawn(discovery::etcd::run(weak.clone(), etcd.clone())).abort_handle(),
            ),
        }
        if self.check.is_some() {
            tasks.push(tokio::spawn(health::run(weak)).abort_handle());
        }
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tasks);
        Ok(())
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration it was built from (a reload reuses an upstream, and
    /// its pooled connections, when this is unchanged).
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// The TLS files (CA bundle, client certificate and key) it was built
    /// from, with their SHA-256.
    pub fn tls_files(&self) -> &[(std::path::PathBuf, [u8; 32])] {
        self.tls.as_ref().map_or(&[], |t| t.files())
    }

    /// Whether it speaks HTTP/1.1 (so upgrades can go through).
    pub fn is_http1(&self) -> bool {
        self.config.protocol == UpstreamProtocol::Http1
    }

    /// The consistent-hash key of a request (0 when the upstream does not
    /// hash).
    pub fn key(&self, headers: &HeaderMap, path: &str, client: std::net::IpAddr) -> u64 {
        self.hash_on
            .as_ref()
            .map_or(0, |h| h.key(headers, path, client))
    }

    /// How large a body of a request with `method` is kept whole so the
    /// request can be sent again (0: none; the request is retried only when
    /// it was never sent).
    pub fn keeps_body(&self, method: &http::Method) -> u64 {
        match &self.retry {
            Some(r) if r.resends(method) => r.max_body_bytes,
            _ => 0,
        }
    }

    /// Milliseconds on the upstream's clock.
    fn now_ms(&self) -> u64 {
        self.ms_at(tokio::time::Instant::now())
    }

    /// `at` on the upstream's clock. (The request path reads the clock as
    /// few times as it can: on some virtual machines every read is a
    /// system call.)
    fn ms_at(&self, at: tokio::time::Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A source's whole current list; a change publishes a new endpoint set.
    pub(crate) fn update(&self, slot: Slot, found: Found) {
        let mut sources = self.sources();
        let list = match slot {
            Slot::Name(i) => match sources.names.get_mut(i) {
                Some(l) => l,
                None => return,
            },
            Slot::Registry => &mut sources.registry,
        };
        if *list == found {
            return;
        }
        *list = found;
        self.publish(&sources);
    }

    /// Build and swap in the endpoint set of `sources` (called with the
    /// sources locked, so sets are published in order). An address already
    /// in rotation with the same weight keeps its endpoint: connections,
    /// health and counters.
    fn publish(&self, sources: &Sources) {
        let current = self.live.load();
        let kept: std::collections::HashMap<SocketAddr, &Arc<Endpoint>> =
            current.endpoints.iter().map(|e| (e.addr(), e)).collect();
        let tagged = sources
            .statics
            .iter()
            .map(|e| (e, Source::Static))
            .chain(sources.names.iter().flatten().map(|e| (e, Source::Dns)))
            .chain(sources.registry.iter().map(|e| (e, Source::Registry)));
        let mut seen = std::collections::HashSet::new();
        let mut endpoints = Vec::new();
        for (&(addr, weight), source) in tagged {
            if !seen.insert(addr) {
                continue;
            }
            let same = kept
                .get(&addr)
                .filter(|e| e.weight == weight && e.source == source);
            endpoints.push(match same {
                Some(e) => (*e).clone(),
                None => Arc::new(Endpoint::new(
                    Arc::new(EndpointPool::new(
                        addr,
                        self.config.max_idle_per_endpoint,
                        self.connect_timeout,
                        self.config.protocol,
                        self.tls.clone(),
                    )),
                    weight,
                    source,
                )),
            });
        }
        let before = current.endpoints.len();
        drop(kept);
        drop(current);
        if before > 0 || !endpoints.is_empty() {
            tracing::info!(upstream = %self.name, endpoints = endpoints.len(), before, "upstream endpoints changed");
        }
        self.live
            .store(Arc::new(EndpointSet::new(endpoints, self.config.balance)));
    }

    /// An active probe moved an endpoint in or out of rotation.
    fn health_changed(&self, e: &Endpoint, healthy: bool) {
        if healthy {
            tracing::info!(upstream = %self.name, endpoint = %e.addr(), "endpoint passed its health checks: back in rotation");
        } else {
            tracing::warn!(upstream = %self.name, endpoint = %e.addr(), "endpoint failed its health checks: out of rotation");
        }
    }

    fn pick(&self, key: u64, tried: &[SocketAddr], now: u64) -> Option<Arc<Endpoint>> {
        let picked = self.live.load().pick(
            self.config.balance,
            &self.cursor,
            key,
            tried,
            now,
            self.config.panic_threshold_percent,
        )?;
        if picked.panic {
            self.counters.panics.fetch_add(1, Ordering::Relaxed);
        }
        Some(picked.endpoint)
    }

    /// Record a try at `e`, ejecting it when it keeps failing.
    fn observe(&self, e: &Endpoint, seen: Observed, now: u64) {
        let cfg: &OutlierConfig = &self.config.outlier;
        e.observe(seen, now, cfg, || {
            // Counting and ejecting under one lock: two endpoints tripping
            // at once cannot both pass the cap. Taken only on a trip.
            let guard = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
            let set = self.live.load();
            let ejected = set.endpoints.iter().filter(|e| e.ejected(now)).count();
            let cap = (set.endpoints.len() * cfg.max_ejected_percent as usize / 100).max(1);
            if ejected < cap {
                Some(guard)
            } else {
                self.counters
                    .ejections_capped
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        });
    }

    /// The upstream phase: pick an endpoint, send, classify what came back,
    /// and retry on another endpoint while the policy, the budget and the
    /// deadline allow.
    pub async fn call(&self, req: Outgoing) -> Answer {
        let started = tokio::time::Instant::now();
        let limit = req
            .deadline
            .map_or(self.request_timeout, |d| d.min(self.request_timeout));
        let deadline = started + limit;
        let mut now = self.ms_at(started);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let retry = self.retry.as_ref().filter(|_| !req.upgrade);
        if let Some(r) = retry {
            r.budget.deposit(now);
        }
        let max = retry.map_or(1, |r| r.attempts);
        let Outgoing {
            mut method,
            mut uri,
            headers,
            body,
            replay,
            key,
            upgrade,
            deadline: own_deadline,
            client_fault,
        } = req;
        // A deadline the client set shorter than the upstream's: a timeout
        // then says nothing about the endpoint.
        let clients_deadline = own_deadline.is_some_and(|d| d < self.request_timeout);
        let resends = retry.is_some_and(|r| r.resends(&method));
        let mut body = Some(body);
        let mut headers = Some(headers);
        // Only a request that may be retried keeps a list (one try needs
        // none, and allocates nothing for it).
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0;
        let mut left = limit;
        let mut last: Option<(Result<http::Response<Body>, UpstreamErrorKind>, SocketAddr)> = None;
        let (result, endpoint, attempts) = loop {
            attempt += 1;
            let Some(endpoint) = self.pick(key, &tried, now) else {
                // Nothing (more) to try: the last try's answer stands.
                break match last {
                    Some((r, a)) => (r, Some(a), attempt - 1),
                    None => (Err(UpstreamErrorKind::NoEndpoint), None, 0),
                };
            };
            let last_try = attempt >= max;
            if !last_try {
                tried.push(endpoint.addr());
            }
            let this_body = match body.take() {
                Some(b) => b,
                None => crate::body::full(replay.clone().unwrap_or_default()),
            };
            let mut r = http::Request::new(this_body);
            // The last possible try takes the head; an earlier one copies it.
            if last_try {
                *r.method_mut() = std::mem::take(&mut method);
                *r.uri_mut() = std::mem::take(&mut uri);
                *r.headers_mut() = headers.take().unwrap_or_default();
            } else {
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri.clone();
                *r.headers_mut() = headers.clone().unwrap_or_default();
            }
            let this_try = retry.and_then(|p| p.per_try).map_or(left, |t| t.min(left));
            let in_flight = endpoint.start();
            let sent = if upgrade {
                tokio::time::timeout(this_try, endpoint.pool.upgrade(r)).await
            } else {
                tokio::time::timeout(this_try, endpoint.pool.send(r)).await
            };
            drop(in_flight);
            let (result, unsent) = match sent {
                Err(_) => (Err(UpstreamErrorKind::Timeout), false),
                Ok(Ok(resp)) => (Ok(resp), false),
                Ok(Err(failed)) => {
                    let unsent = failed.unsent.map(|r| body = Some(r.into_body())).is_some();
                    (Err(failed.kind), unsent)
                }
            };
            let seen = match &result {
                Ok(resp) => Some(Observed::Status(resp.status().as_u16())),
                // The client's own short deadline, or its broken body: not
                // the endpoint's failure.
                Err(UpstreamErrorKind::Timeout) if clients_deadline => None,
                Err(_) if client_fault.as_ref().is_some_and(|v| v.get().is_some()) => None,
                Err(kind) => Some(Observed::Failure(*kind)),
            };
            match seen {
                // A good answer changes nothing that depends on time.
                Some(s @ Observed::Status(200..=499)) => self.observe(&endpoint, s, now),
                // A failure may eject: from now, not from when the try began.
                Some(s) => self.observe(&endpoint, s, self.now_ms()),
                None => {}
            }
            // Sent once, a request goes again only if its method allows it
            // and its body was kept.
            let can_send_again = unsent || (resends && replay.is_some());
            let policy = match retry {
                Some(p) if !last_try && can_send_again && p.wants(&result, unsent) => p,
                _ => break (result, Some(endpoint.addr()), attempt),
            };
            let t = tokio::time::Instant::now();
            now = self.ms_at(t);
            left = deadline.saturating_duration_since(t);
            if left.is_zero() {
                break (result, Some(endpoint.addr()), attempt);
            }
            if !policy.budget.withdraw(now) {
                self.counters
                    .budget_exhausted
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(upstream = %self.name, "retry budget spent; not retrying");
                break (result, Some(endpoint.addr()), attempt);
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            endpoint.retried();
            tracing::debug!(upstream = %self.name, endpoint = %endpoint.addr(), attempt, outcome = ?result.as_ref().map(|r| r.status()), "retrying on another endpoint");
            tokio::time::sleep(policy.backoff(attempt).min(left)).await;
            left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                // No time left for another try: this answer stands.
                break (result, Some(endpoint.addr()), attempt);
            }
            last = Some((result, endpoint.addr()));
        };
        Answer {
            result,
            endpoint,
            attempts,
            elapsed: started.elapsed(),
        }
    }
}

fn validate_outlier(o: &OutlierConfig) -> Result<(), (String, String)> {
    let err = |f: &str, m: &str| Err((format!("outlier.{f}"), m.to_string()));
    if o.base_ejection_ms == 0 {
        return err("base_ejection_ms", "must be at least 1");
    }
    if o.max_ejection_ms < o.base_ejection_ms {
        return err("max_ejection_ms", "must be at least base_ejection_ms");
    }
    if o.max_ejected_percent > 100 {
        return err("max_ejected_percent", "must be 0 to 100");
    }
    Ok(())
}

/// What `/status` and `/metrics` show of an upstream.
pub mod status {
    use super::*;

    /// One endpoint, as it stands.
    #[derive(Debug, serde::Serialize)]
    pub struct EndpointStatus {
        /// `ip:port`.
        pub address: String,
        /// Its weight.
        pub weight: u32,
        /// `static`, `dns` or `registry`.
        pub source: &'static str,
        /// In rotation: passing its probes and not ejected.
        pub healthy: bool,
        /// Failing its active probes.
        pub failing_checks: bool,
        /// Ejected by outlier detection now.
        pub ejected: bool,
        /// Requests in flight.
        pub active_requests: u64,
        /// Tries sent to it.
        pub requests: u64,
        /// Tries here that failed and were retried on another endpoint.
        pub retried: u64,
        /// Ejections so far.
        pub ejections: u64,
        /// Failed tries by kind.
        pub failures: std::collections::BTreeMap<&'static str, u64>,
    }

    /// One upstream, as it stands.
    #[derive(Debug, serde::Serialize)]
    pub struct UpstreamStatus {
        /// Its name.
        pub name: String,
        /// Its balancing.
        pub balance: &'static str,
        /// Requests through it.
        pub requests: u64,
        /// Retries made.
        pub retries: u64,
        /// Retries refused by the budget.
        pub retry_budget_exhausted: u64,
        /// Picks made in panic mode (too few healthy endpoints).
        pub panic_picks: u64,
        /// Ejections refused by `max_ejected_percent`.
        pub ejections_capped: u64,
        /// The live endpoints.
        pub endpoints: Vec<EndpointStatus>,
    }

    impl Upstream {
        /// Its live state.
        pub fn status(&self) -> UpstreamStatus {
            let now = self.now_ms();
            let c = &self.counters;
            let endpoints = self
                .live
                .load()
                .endpoints
                .iter()
                .map(|e| {
                    let t = e.totals();
                    EndpointStatus {
                        address: e.addr().to_string(),
                        weight: e.weight,
                        source: e.source.as_str(),
                        healthy: e.available(now),
                        failing_checks: e.checked_down(),
                        ejected: e.ejected(now),
                        active_requests: e.active(),
                        requests: t.requests,
                        retried: t.retried,
                        ejections: t.ejections,
                        failures: t
                            .failures
                            .iter()
                            .filter(|(_, n)| *n > 0)
                            .map(|(k, n)| (k.label(), *n))
                            .collect(),
                    }
                })
                .collect();
            UpstreamStatus {
                name: self.name.clone(),
                balance: match self.config.balance {
                    Balance::RoundRobin => "round-robin",
                    Balance::Weighted => "weighted",
                    Balance::LeastRequest => "least-request",
                    Balance::ConsistentHash => "consistent-hash",
                },
                requests: c.requests.load(Ordering::Relaxed),
                retries: c.retries.load(Ordering::Relaxed),
                retry_budget_exhausted: c.budget_exhausted.load(Ordering::Relaxed),
                panic_picks: c.panics.load(Ordering::Relaxed),
                ejections_capped: c.ejections_capped.load(Ordering::Relaxed),
                endpoints,
            }
        }
    }
}
