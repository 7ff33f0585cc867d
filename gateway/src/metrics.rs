//! The gateway's Prometheus metrics, including those plugins report through the
//! `metrics` import. Served as text on the admin listener's `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::upstream::status::{EndpointStatus, UpstreamStatus};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Most distinct plugin metric names, so a plugin cannot grow the registry
/// without bound.
const MAX_PLUGIN_METRICS: usize = 256;
/// Most label sets all plugin metrics may hold together: a plugin that puts
/// request data into label values must not grow the registry without bound.
const MAX_PLUGIN_SERIES: usize = 10_000;
/// Most labels per plugin observation.
const MAX_LABELS: usize = 8;
/// The gateway's own families under `plugin_`, which no plugin metric may
/// take.
const GATEWAY_PLUGIN_FAMILIES: [&str; 3] = [
    "plugin_failures",
    "plugin_instances_recycled",
    "plugin_hook_duration_seconds",
];

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// All metrics of one gateway process.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<Labels, Counter>,
    duration: HistogramFamily,
    plugin_failures: Family<Labels, Counter>,
    plugin_recycled: Family<Labels, Counter>,
    reloads: Family<Labels, Counter>,
    cert_expiry: Family<Labels, Gauge>,
    tunnels_open: Family<Labels, Gauge>,
    tunnels: Family<Labels, Counter>,
    tunnel_bytes: Family<Labels, Counter>,
    plugin_counters: RwLock<HashMap<String, Family<Labels, Counter>>>,
    plugin_histograms: RwLock<HashMap<String, HistogramFamily>>,
    /// Every `plugin_*` family name taken, by the gateway or a plugin of
    /// either kind: a second family of one name would make the exposition
    /// invalid and fail the whole scrape.
    plugin_names: Mutex<std::collections::HashSet<String>>,
    /// Label sets plugin metrics hold, against [`MAX_PLUGIN_SERIES`].
    plugin_series: std::sync::atomic::AtomicUsize,
    series_full_warned: std::sync::atomic::AtomicBool,
    upstreams: Arc<UpstreamCollector>,
    state_up: Family<Labels, Gauge>,
    state_transitions: Family<Labels, Counter>,
    state_operations: Family<Labels, Counter>,
    state_duration: HistogramFamily,
    access_log_lines: Family<Labels, Counter>,
    trace_spans: Family<Labels, Counter>,
    connections_open: Family<Labels, Gauge>,
    connections: Family<Labels, Counter>,
    connections_refused: Family<Labels, Counter>,
    connections_shed: Family<Labels, Counter>,
    tls_handshakes: Family<Labels, Counter>,
    hooks: Arc<HookCollector>,
    /// The last errors, for the admin page.
    pub recent_errors: crate::telemetry::recent::RecentErrors,
}

/// Handles to one state backend's series, taken once so a state call
/// allocates no label sets.
#[derive(Clone, Debug)]
pub struct StateMetrics {
    /// 1 while the backend answers.
    pub up: Gauge,
    /// Health changes to up.
    pub to_up: Counter,
    /// Health changes to down.
    pub to_down: Counter,
    /// Operations the backend answered.
    pub ok: Counter,
    /// Operations that failed on the backend (error or timeout).
    pub failed: Counter,
    /// Operations refused at once because the backend was down.
    pub unavailable: Counter,
    /// Operations served from the gateway's memory while it was down.
    pub fallback: Counter,
    /// Round-trip time of each operation.
    pub duration: Histogram,
}

/// Handles to one listener's connection series, taken once when it starts.
/// The default is detached (counts nothing anyone reads), for tests and
/// tools that serve without a registry.
#[derive(Clone, Debug, Default)]
pub struct ConnMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections that began HTTP/1.1.
    pub http1: Counter,
    /// Connections that began HTTP/2.
    pub http2: Counter,
    /// Connections closed at once: at the cap with none idle to shed.
    pub refused: Counter,
    /// Idle connections closed to make room (the cap, or out of file
    /// descriptors).
    pub shed: Counter,
    /// TLS handshakes completed.
    pub tls_ok: Counter,
    /// TLS handshakes the client failed.
    pub tls_failed: Counter,
    /// TLS handshakes not done within the handshake timeout.
    pub tls_timeout: Counter,
}

/// Handles to the access log's series.
#[derive(Clone, Debug)]
pub struct AccessLogCounters {
    /// Lines written.
    pub written: Counter,
    /// Lines dropped because the writer's queue was full.
    pub dropped: Counter,
    /// Lines whose write failed.
    pub failed: Counter,
}

fn state_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 14))
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with the gateway's own metrics.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wicket");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Requests served, by route and status",
            requests.clone(),
        );
        let duration = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by route",
            duration.clone(),
        );
        let plugin_failures = Family::<Labels, Counter>::default();
        registry.register(
            "plugin_failures",
            "Plugin calls that failed, by plugin and kind",
            plugin_failures.clone(),
        );
        let plugin_recycled = Family::<Labels, Counter>::default();
        registry.register(
            "plugin_instances_recycled",
            "Pooled instances replaced because their memory grew past half their headroom, by plugin",
            plugin_recycled.clone(),
        );
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reload attempts, by result",
            reloads.clone(),
        );
        let cert_expiry = Family::<Labels, Gauge>::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (Unix seconds), by listener and certificate",
            cert_expiry.clone(),
        );
        let tunnels_open = Family::<Labels, Gauge>::default();
        registry.register(
            "websocket_tunnels_open",
            "WebSocket tunnels open now, by route",
            tunnels_open.clone(),
        );
        let tunnels = Family::<Labels, Counter>::default();
        registry.register(
            "websocket_tunnels",
            "WebSocket tunnels closed, by route and how they ended (closed, idle, drain, error)",
            tunnels.clone(),
        );
        let tunnel_bytes = Family::<Labels, Counter>::default();
        registry.register(
            "websocket_bytes",
            "Bytes carried by WebSocket tunnels, by route and direction (upstream, downstream)",
            tunnel_bytes.clone(),
        );
        let upstreams = Arc::new(UpstreamCollector::default());
        registry.register_collector(Box::new(upstreams.clone()));
        let state_up = Family::<Labels, Gauge>::default();
        registry.register(
            "state_backend_up",
            "Whether a shared state backend answers (1) or not (0), by backend",
            state_up.clone(),
        );
        let state_transitions = Family::<Labels, Counter>::default();
        registry.register(
            "state_backend_transitions",
            "Health changes of a shared state backend, by backend and new health (up, down)",
            state_transitions.clone(),
        );
        let state_operations = Family::<Labels, Counter>::default();
        registry.register(
            "state_operations",
            "Plugin state operations on a remote backend, by backend and result (ok, failed, unavailable, fallback)",
            state_operations.clone(),
        );
        let state_duration = HistogramFamily::new_with_constructor(state_histogram);
        registry.register(
            "state_operation_duration_seconds",
            "Round-trip time of plugin state operations on a remote backend, by backend",
            state_duration.clone(),
        );
        let access_log_lines = Family::<Labels, Counter>::default();
        registry.register(
            "access_log_lines",
            "Access log lines, by result (written, dropped: the writer's queue was full, failed: the write failed)",
            access_log_lines.clone(),
        );
        let trace_spans = Family::<Labels, Counter>::default();
        registry.register(
            "trace_spans",
            "Finished spans of sampled requests, by result (exported, dropped: the export queue was full, failed: the collector refused them or did not answer in time)",
            trace_spans.clone(),
        );
        let connections_open = Family::<Labels, Gauge>::default();
        registry.register(
            "connections_open",
            "Client connections open now, by listener and role (proxy, admin)",
            connections_open.clone(),
        );
        let connections = Family::<Labels, Counter>::default();
        registry.register(
            "connections",
            "Client connections that began a protocol, by listener, role and protocol (http1, http2)",
            connections.clone(),
        );
        let connections_refused = Family::<Labels, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections closed at accept: the listener was at its cap and none was idle",
            connections_refused.clone(),
        );
        let connections_shed = Family::<Labels, Counter>::default();
        registry.register(
            "connections_shed",
            "Idle client connections closed to make room (at the cap, or out of file descriptors)",
            connections_shed.clone(),
        );
        let tls_handshakes = Family::<Labels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes with clients, by listener and result (ok, failed, timeout)",
            tls_handshakes.clone(),
        );
        let hooks = Arc::new(HookCollector::default());
        registry.register_collector(Box::new(hooks.clone()));
        registry.register(
            "build",
            "The running build: gateway version and plugin contract version",
            prometheus_client::metrics::info::Info::new(vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                (
                    "contract".to_string(),
                    crate::plugin::contract_version().to_string(),
                ),
            ]),
        );
        Metrics {
            connections_open,
            connections,
            connections_refused,
            connections_shed,
            tls_handshakes,
            hooks,
            recent_errors: Default::default(),
            access_log_lines,
            trace_spans,
            state_up,
            state_transitions,
            state_operations,
            state_duration,
            upstreams,
            registry: Mutex::new(registry),
            cert_expiry,
            tunnels_open,
            tunnels,
            tunnel_bytes,
            requests,
            duration,
            plugin_failures,
            plugin_recycled,
            reloads,
            plugin_counters: RwLock::new(HashMap::new()),
            plugin_histograms: RwLock::new(HashMap::new()),
            plugin_names: Mutex::new(
                GATEWAY_PLUGIN_FAMILIES
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
            ),
            plugin_series: Default::default(),
            series_full_warned: Default::default(),
        }
    }

    /// Handles for one route's request metrics, so serving a request on it
    /// allocates no label sets.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let duration = self
            .duration
            .get_or_create(&vec![("route".to_string(), route.to_string())])
            .clone();
        RouteMetrics {
            route: route.to_string(),
            duration,
            requests: self.requests.clone(),
            by_status: RwLock::new(Vec::new()),
        }
    }

    /// Count one served request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let route = route.to_string();
        self.requests
            .get_or_create(&vec![
                ("route".to_string(), route.clone()),
                ("status".to_string(), status.to_string()),
            ])
            .inc();
        self.duration
            .get_or_create(&vec![("route".to_string(), route)])
            .observe(seconds);
    }

    /// Count one plugin failure.
    pub fn plugin_failure(&self, plugin: &str, kind: &str) {
        self.plugin_failures
            .get_or_create(&vec![
                ("plugin".to_string(), plugin.to_string()),
                ("kind".to_string(), kind.to_string()),
            ])
            .inc();
    }

    /// Count one instance retired for its memory growth.
    pub fn plugin_instance_recycled(&self, plugin: &str) {
        self.plugin_recycled
            .get_or_create(&vec![("plugin".to_string(), plugin.to_string())])
            .inc();
    }

    /// Publish the served certificates' expiry, replacing what an earlier
    /// generation published: `(listener, certificate name, file, not_after)`.
    pub fn tls_certificates<'a>(
        &self,
        certs: impl IntoIterator<Item = (String, &'a str, &'a str, i64)>,
    ) {
        self.cert_expiry.clear();
        for (listener, name, file, not_after) in certs {
            self.cert_expiry
                .get_or_create(&vec![
                    ("listener".to_string(), listener),
                    ("certificate".to_string(), name.to_string()),
                    ("file".to_string(), file.to_string()),
                ])
                .set(not_after);
        }
    }

    /// A WebSocket tunnel opened on `route`.
    pub fn tunnel_opened(&self, route: &str) {
        self.tunnels_open
            .get_or_create(&vec![("route".to_string(), route.to_string())])
            .inc();
    }

    /// A WebSocket tunnel on `route` ended, having carried `up` bytes from
    /// the client and `down` to it.
    pub fn tunnel_closed(&self, route: &str, end: &str, up: u64, down: u64) {
        let r = ("route".to_string(), route.to_string());
        self.tunnels_open.get_or_create(&vec![r.clone()]).dec();
        self.tunnels
            .get_or_create(&vec![r.clone(), ("end".to_string(), end.to_string())])
            .inc();
        for (direction, n) in [("upstream", up), ("downstream", down)] {
            self.tunnel_bytes
                .get_or_create(&vec![
                    r.clone(),
                    ("direction".to_string(), direction.to_string()),
                ])
                .inc_by(n);
        }
    }

    /// The series of the state backend `backend`.
    pub fn state_metrics(&self, backend: &str) -> StateMetrics {
        let b = || ("backend".to_string(), backend.to_string());
        let with = |name: &str, value: &str| vec![b(), (name.to_string(), value.to_string())];
        // One statement per series: a family's read guard lives to the end
        // of its statement, and creating the next series of the same family
        // needs its write lock.
        let counter = |family: &Family<Labels, Counter>, labels: Labels| {
            let c = family.get_or_create(&labels).clone();
            c
        };
        let op = |result: &str| counter(&self.state_operations, with("result", result));
        let up = self.state_up.get_or_create(&vec![b()]).clone();
        let to_up = counter(&self.state_transitions, with("to", "up"));
        let to_down = counter(&self.state_transitions, with("to", "down"));
        let (ok, failed) = (op("ok"), op("failed"));
        let (unavailable, fallback) = (op("unavailable"), op("fallback"));
        let duration = self.state_duration.get_or_create(&vec![b()]).clone();
        StateMetrics {
            up,
            to_up,
            to_down,
            ok,
            failed,
            unavailable,
            fallback,
            duration,
        }
    }

    /// The access log's series.
    pub fn access_log_counters(&self) -> AccessLogCounters {
        let line = |result: &str| {
            let c = self
                .access_log_lines
                .get_or_create(&vec![("result".to_string(), result.to_string())])
                .clone();
            c
        };
        AccessLogCounters {
            written: line("written"),
            dropped: line("dropped"),
            failed: line("failed"),
        }
    }

    /// The trace exporter's series.
    pub fn span_counters(&self) -> crate::telemetry::trace::SpanCounters {
        let result = |result: &str| {
            self.trace_spans
                .get_or_create(&vec![("result".to_string(), result.to_string())])
                .clone()
        };
        crate::telemetry::trace::SpanCounters {
            exported: result("exported"),
            dropped: result("dropped"),
            failed: result("failed"),
        }
    }

    /// The connection series of the listener at `listener` serving `role`.
    pub fn connections(&self, listener: &str, role: &str) -> ConnMetrics {
        let base = || {
            vec![
                ("listener".to_string(), listener.to_string()),
                ("role".to_string(), role.to_string()),
            ]
        };
        let with = |name: &str, value: &str| {
            let mut l = base();
            l.push((name.to_string(), value.to_string()));
            l
        };
        // One statement per series: see `state_metrics`.
        let counter = |family: &Family<Labels, Counter>, labels: Labels| {
            let c = family.get_or_create(&labels).clone();
            c
        };
        let open = self.connections_open.get_or_create(&base()).clone();
        let http1 = counter(&self.connections, with("protocol", "http1"));
        let http2 = counter(&self.connections, with("protocol", "http2"));
        let refused = counter(&self.connections_refused, base());
        let shed = counter(&self.connections_shed, base());
        let tls = |result: &str| counter(&self.tls_handshakes, with("result", result));
        let (tls_ok, tls_failed, tls_timeout) = (tls("ok"), tls("failed"), tls("timeout"));
        ConnMetrics {
            open,
            http1,
            http2,
            refused,
            shed,
            tls_ok,
            tls_failed,
            tls_timeout,
        }
    }

    /// Count one reload attempt; `result` is `ok` or `error`.
    pub fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    /// Value of a reload counter (for tests and the admin page).
    pub fn reload_count(&self, result: &str) -> u64 {
        self.reloads
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .get()
    }

    /// The counter a plugin's `counter-add` with this name and these labels
    /// feeds, registered on first use; `None` when the name or labels are
    /// invalid or the registry is full (the observation is dropped).
    pub fn plugin_counter(&self, plugin: &str, name: &str, labels: Labels) -> Option<Counter> {
        // The exposition format adds `_total` to counters; don't double it.
        let base = name.strip_suffix("_total").unwrap_or(name);
        let family = self.plugin_family(&self.plugin_counters, plugin, base, Family::default)?;
        self.plugin_series(&family, plugin, name, labels)
    }

    /// The histogram a plugin's `histogram-observe` feeds; see
    /// [`Metrics::plugin_counter`].
    pub fn plugin_histogram(&self, plugin: &str, name: &str, labels: Labels) -> Option<Histogram> {
        let new = || HistogramFamily::new_with_constructor(latency_histogram);
        let family = self.plugin_family(&self.plugin_histograms, plugin, name, new)?;
        self.plugin_series(&family, plugin, name, labels)
    }

    /// The series of `family` for `labels` (with the `plugin` label added),
    /// created when the registry still has room for a new one.
    fn plugin_series<M, C>(
        &self,
        family: &Family<Labels, M, C>,
        plugin: &str,
        name: &str,
        labels: Labels,
    ) -> Option<M>
    where
        M: Clone,
        C: prometheus_client::metrics::family::MetricConstructor<M>,
    {
        let labels = plugin_labels(plugin, name, labels)?;
        if let Some(m) = family.get(&labels) {
            return Some(m.clone());
        }
        self.admit_series(plugin, name)?;
        let m = family.get_or_create(&labels).clone();
        Some(m)
    }

    /// Count one new plugin series; `None` once the registry holds
    /// [`MAX_PLUGIN_SERIES`] (warned about once).
    fn admit_series(&self, plugin: &str, name: &str) -> Option<()> {
        use std::sync::atomic::Ordering;
        if self.plugin_series.fetch_add(1, Ordering::Relaxed) < MAX_PLUGIN_SERIES {
            return Some(());
        }
        self.plugin_series.fetch_sub(1, Ordering::Relaxed);
        if !self.series_full_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                plugin,
                name,
                max = MAX_PLUGIN_SERIES,
                "too many plugin metric series; new label sets are dropped"
            );
        }
        None
    }

    /// The family `plugin_<name>` in `families`, registered on first use;
    /// `None` once the registry holds as many plugin metrics as it allows.
    fn plugin_family<M>(
        &self,
        families: &RwLock<HashMap<String, M>>,
        plugin: &str,
        name: &str,
        new: impl FnOnce() -> M,
    ) -> Option<M>
    where
        M: prometheus_client::registry::Metric + Clone,
    {
        let full = format!("plugin_{name}");
        if let Some(f) = families
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&full)
        {
            return Some(f.clone());
        }
        let mut map = families.write().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(&full) {
            return Some(f.clone());
        }
        if map.len() >= MAX_PLUGIN_METRICS {
            tracing::warn!(plugin, name, "too many plugin metrics; observation dropped");
            return None;
        }
        if !self
            .plugin_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(full.clone())
        {
            tracing::warn!(
                plugin,
                name,
                "plugin metric name taken by the gateway or by a metric of another kind; observation dropped"
            );
            return None;
        }
        let f = new();
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(full.clone(), "Reported by a plugin", f.clone());
        map.insert(full, f.clone());
        Some(f)
    }

    /// Where the upstream metrics are read from at each scrape: the live
    /// upstreams of the current snapshot (set once, when the gateway starts).
    pub fn read_upstreams_from(
        &self,
        source: impl Fn() -> Vec<UpstreamStatus> + Send + Sync + 'static,
    ) {
        self.upstreams.source.set(source);
    }

    /// Where the plugin hook histograms are read from at each scrape: the
    /// pools of the current snapshot (set once, when the gateway starts).
    pub fn read_hooks_from(&self, source: impl Fn() -> Vec<HookSeries> + Send + Sync + 'static) {
        self.hooks.source.set(source);
    }

    /// Everything in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// One pool's calls of one hook: the plugin, the pool (a digest of its
/// per-route config), the hook, the counts.
pub type HookSeries = (
    String,
    String,
    crate::telemetry::hooks::Hook,
    crate::telemetry::hooks::HookSummary,
);

/// Where a collector reads its values at each scrape, set once when the
/// gateway starts; until then it reads nothing.
struct ScrapeSource<T>(OnceLock<Box<dyn Fn() -> Vec<T> + Send + Sync>>);

impl<T> Default for ScrapeSource<T> {
    fn default() -> Self {
        ScrapeSource(OnceLock::new())
    }
}

impl<T> std::fmt::Debug for ScrapeSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "ScrapeSource(set)"
        } else {
            "ScrapeSource(unset)"
        })
    }
}

impl<T> ScrapeSource<T> {
    fn set(&self, source: impl Fn() -> Vec<T> + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(source));
    }

    fn read(&self) -> Vec<T> {
        self.0.get().map(|f| f()).unwrap_or_default()
    }
}

/// Plugin hook durations as a Prometheus histogram, read at each scrape from
/// the counters the admin page shows: a hook call adds to a few atomics and
/// allocates nothing for its metric. One series per pool, so a pool a reload
/// rebuilds starts its own series again from zero (a true counter reset)
/// instead of lowering a sum over pools, which Prometheus would misread.
#[derive(Debug, Default)]
struct HookCollector {
    source: ScrapeSource<HookSeries>,
}

impl Collector for HookCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = self.source.read();
        let mut m = encoder.encode_descriptor(
            "plugin_hook_duration_seconds",
            "Plugin hook calls by plugin and hook (on-request, on-response): how long each took, failures included",
            None,
            MetricType::Histogram,
        )?;
        for (plugin, pool, hook, summary) in &series {
            let labels = vec![
                ("plugin".to_string(), plugin.clone()),
                ("pool".to_string(), pool.clone()),
                ("hook".to_string(), hook.name().to_string()),
            ];
            let (sum, count, buckets) = summary.histogram();
            m.encode_family(&labels)?
                .encode_histogram::<Labels>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// A metric read from a status value: name, help, value.
type Series<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Upstream and endpoint metrics, read from the live endpoint state at each
/// scrape: an endpoint that discovery removed leaves no stale series, and a
/// request pays nothing for them beyond the atomics it updates anyway.
#[derive(Debug, Default)]
struct UpstreamCollector {
    source: ScrapeSource<UpstreamStatus>,
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let upstreams = self.source.read();
        let up = |u: &UpstreamStatus| vec![("upstream".to_string(), u.name.clone())];
        let per_upstream: [Series<UpstreamStatus>; 4] = [
            ("upstream_retries", "Retries made, by upstream", |u| {
                u.retries
            }),
            (
                "upstream_retry_budget_exhausted",
                "Retries the retry budget refused, by upstream",
                |u| u.retry_budget_exhausted,
            ),
            (
                "upstream_panic_picks",
                "Endpoints picked while too few were healthy (health ignored), by upstream",
                |u| u.panic_picks,
            ),
            (
                "upstream_ejections_capped",
                "Ejections refused by max_ejected_percent, by upstream",
                |u| u.ejections_capped,
            ),
        ];
        for (name, help, value) in per_upstream {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for u in &upstreams {
                ConstCounter::new(value(u)).encode(m.encode_family(&up(u))?)?;
            }
        }
        let ep = |u: &UpstreamStatus, e: &EndpointStatus| {
            vec![
                ("upstream".to_string(), u.name.clone()),
                ("endpoint".to_string(), e.address.clone()),
            ]
        };
        let per_endpoint: [(MetricType, Series<EndpointStatus>); 6] = [
            (
                MetricType::Gauge,
                (
                    "upstream_endpoint_healthy",
                    "1 when the endpoint is in rotation (passing its health checks, not ejected)",
                    |e| e.healthy as u64,
                ),
            ),
            (
                MetricType::Gauge,
                (
                    "upstream_endpoint_ejected",
                    "1 while outlier detection has the endpoint ejected",
                    |e| e.ejected as u64,
                ),
            ),
            (
                MetricType::Gauge,
                (
                    "upstream_endpoint_active_requests",
                    "Requests in flight at the endpoint",
                    |e| e.active_requests,
                ),
            ),
            (
                MetricType::Counter,
                (
                    "upstream_endpoint_requests",
                    "Tries sent to the endpoint",
                    |e| e.requests,
                ),
            ),
            (
                MetricType::Counter,
                (
                    "upstream_endpoint_retried",
                    "Tries at the endpoint that failed and were retried on another",
                    |e| e.retried,
                ),
            ),
            (
                MetricType::Counter,
                (
                    "upstream_endpoint_ejections",
                    "Times outlier detection ejected the endpoint",
                    |e| e.ejections,
                ),
            ),
        ];
        for (kind, (name, help, value)) in per_endpoint {
            let mut m = encoder.encode_descriptor(name, help, None, kind)?;
            for u in &upstreams {
                for e in &u.endpoints {
                    let labels = ep(u, e);
                    let family = m.encode_family(&labels)?;
                    match kind {
                        MetricType::Gauge => ConstGauge::new(value(e) as i64).encode(family)?,
                        _ => ConstCounter::new(value(e)).encode(family)?,
                    }
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "upstream_endpoint_failures",
            "Failed tries at the endpoint, by kind",
            None,
            MetricType::Counter,
        )?;
        for u in &upstreams {
            for e in &u.endpoints {
                for (kind, n) in &e.failures {
                    let mut labels = ep(u, e);
                    labels.push(("kind".to_string(), kind.to_string()));
                    ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// Validate a plugin's metric name and labels, adding the `plugin` label.
fn plugin_labels(plugin: &str, name: &str, mut labels: Labels) -> Option<Labels> {
    let ident = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .enumerate()
                .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()))
    };
    if !ident(name)
        || labels.len() > MAX_LABELS
        || !labels
            .iter()
            .all(|(k, v)| ident(k) && k != "plugin" && v.len() <= 128)
    {
        tracing::warn!(
            plugin,
            name,
            "invalid plugin metric name or labels; observation dropped"
        );
        return None;
    }
    labels.push(("plugin".to_string(), plugin.to_string()));
    Some(labels)
}

/// One instance's handles to the plugin series it has reported, keyed by name
/// and labels as the guest passed them: a repeated observation is one hash
/// lookup instead of the registry's locks, name formatting and label copies.
/// A refused series (bad name or labels, registry full) is remembered as
/// `None`, so it is warned about once per instance. Bounded; past the bound
/// observations take the registry's path uncached.
pub struct SeriesCache<M> {
    series: HashMap<(String, Labels), Option<M>>,
}

/// Series one instance keeps handles to.
const MAX_CACHED_SERIES: usize = 256;

impl<M: Clone> SeriesCache<M> {
    /// An empty cache.
    pub fn new() -> SeriesCache<M> {
        SeriesCache {
            series: HashMap::new(),
        }
    }

    /// The series for `name` and `labels`, from the cache or from `lookup`
    /// (the registry) on a miss.
    pub fn get(
        &mut self,
        name: String,
        labels: Labels,
        lookup: impl FnOnce(&str, Labels) -> Option<M>,
    ) -> Option<M> {
        let key = (name, labels);
        if let Some(m) = self.series.get(&key) {
            return m.clone();
        }
        let (name, labels) = key;
        if self.series.len() >= MAX_CACHED_SERIES {
            return lookup(&name, labels);
        }
        let m = lookup(&name, labels.clone());
        self.series.insert((name, labels), m.clone());
        m
    }
}

impl<M: Clone> Default for SeriesCache<M> {
    fn default() -> Self {
        SeriesCache::new()
    }
}

/// One route's request counter and latency histogram, as handles into the
/// registry's families (the same series a reload's new snapshot gets).
pub struct RouteMetrics {
    route: String,
    duration: Histogram,
    requests: Family<Labels, Counter>,
    /// Counters by status seen so far: a route serves only a few statuses.
    by_status: RwLock<Vec<(u16, Counter)>>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("route", &self.route)
            .finish()
    }
}

impl RouteMetrics {
    /// Count one request served with `status` in `seconds`.
    pub fn request(&self, status: u16, seconds: f64) {
        self.duration.observe(seconds);
        let known = self
            .by_status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, c)| c.clone());
        let counter = match known {
            Some(c) => c,
            None => {
                let labels = vec![
                    ("route".to_string(), self.route.clone()),
                    ("status".to_string(), status.to_string()),
                ];
                let c = self.requests.get_or_create(&labels).clone();
                let mut cache = self.by_status.write().unwrap_or_else(|p| p.into_inner());
                if !cache.iter().any(|(s, _)| *s == status) {
                    cache.push((status, c.clone()));
                }
                c
            }
        };
        counter.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_handles_count_into_the_shared_series() {
        let metrics = Metrics::new();
        let first = metrics.route("api");
        first.request(200, 0.001);
        first.request(200, 0.001);
        first.request(503, 0.002);
        // A reload builds new handles for the same route: same series.
        let second = metrics.route("api");
        second.request(200, 0.004);
        metrics.request("", 404, 0.0001);

        let text = metrics.encode();
        for line in [
            r#"wicket_requests_total{route="api",status="200"} 3"#,
            r#"wicket_requests_total{route="api",status="503"} 1"#,
            r#"wicket_requests_total{route="",status="404"} 1"#,
            r#"wicket_request_duration_seconds_count{route="api"} 4"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn a_plugin_metric_cannot_take_a_name_already_taken() {
        let metrics = Metrics::new();
        let none = || Vec::new();
        // The gateway's own families.
        assert!(metrics.plugin_counter("p", "failures", none()).is_none());
        assert!(metrics
            .plugin_counter("p", "failures_total", none())
            .is_none());
        let hist = "hook_duration_seconds";
        assert!(metrics.plugin_histogram("p", hist, none()).is_none());
        // A counter's name is not also a histogram's, whichever came first.
        metrics.plugin_counter("p", "hits", none()).unwrap().inc();
        assert!(metrics.plugin_histogram("q", "hits", none()).is_none());
        metrics
            .plugin_histogram("q", "took", none())
            .unwrap()
            .observe(0.1);
        assert!(metrics.plugin_counter("p", "took", none()).is_none());
        let text = metrics.encode();
        assert_eq!(
            text.matches("# TYPE wicket_plugin_hits ").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE wicket_plugin_took ").count(),
            1,
            "{text}"
        );
        assert!(
            text.matches("# TYPE wicket_plugin_failures ").count() <= 1,
            "{text}"
        );
    }

    #[test]
    fn cached_series_count_into_the_registry_and_refusals_stay_refused() {
        let metrics = Metrics::new();
        let mut cache = SeriesCache::new();
        let labels = || vec![("outcome".to_string(), "allowed".to_string())];
        let mut lookups = 0;
        for _ in 0..3 {
            let c = cache.get("decisions".into(), labels(), |name, l| {
                lookups += 1;
                metrics.plugin_counter("auth", name, l)
            });
            c.expect("a valid series").inc();
        }
        assert_eq!(lookups, 1, "the registry is asked once per series");
        // An invalid name is refused once and then answered from the cache.
        for _ in 0..2 {
            let c = cache.get("Bad-Name".into(), vec![], |name, l| {
                lookups += 1;
                metrics.plugin_counter("auth", name, l)
            });
            assert!(c.is_none());
        }
        assert_eq!(lookups, 2);
        let text = metrics.encode();
        let line = r#"plugin_decisions_total{outcome="allowed",plugin="auth"} 3"#;
        assert!(text.contains(line), "{line} in\n{text}");
    }

    #[test]
    fn the_series_cache_is_bounded() {
        let metrics = Metrics::new();
        let mut cache = SeriesCache::new();
        for i in 0..MAX_CACHED_SERIES + 10 {
            let labels = vec![("n".to_string(), i.to_string())];
            let c = cache.get("many".into(), labels, |name, l| {
                metrics.plugin_counter("p", name, l)
            });
            c.expect("counted past the bound too").inc();
        }
        assert_eq!(cache.series.len(), MAX_CACHED_SERIES);
    }

    #[test]
    fn plugin_series_are_bounded() {
        let metrics = Metrics::new();
        let series = |i: usize| vec![("n".to_string(), i.to_string())];
        for i in 0..MAX_PLUGIN_SERIES {
            assert!(metrics.plugin_counter("p", "many", series(i)).is_some());
        }
        assert!(metrics
            .plugin_counter("p", "many", series(MAX_PLUGIN_SERIES))
            .is_none());
        assert!(metrics.plugin_histogram("p", "lat", series(0)).is_none());
        // Series already held keep counting.
        assert!(metrics.plugin_counter("p", "many", series(7)).is_some());
    }
}
