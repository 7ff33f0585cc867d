//! Traces: a server span per request, a child span per plugin hook call and
//! one per upstream call, exported over OTLP/HTTP in batches off the
//! request path.
//!
//! A traced request's spans are plain fields of one record, filled in as the
//! request goes with the times and names the request path already holds: one
//! allocation and a few uncontended locks per traced request, nothing per
//! span. When the server span ends, the record is written as OTLP protobuf
//! ([`super::otlp`]) into the batch being filled — while it is still in the
//! cache: encoding records later, cold, cost more than the encoding itself —
//! and freed. An export task on tokio sends the batches; a bound on what
//! waits drops (and counts) what a slow or dead collector cannot take, so
//! tracing never blocks a worker.
//!
//! The W3C trace context (`traceparent`, `tracestate`) is read and written
//! here, and sampling is the OpenTelemetry SDK's parent-based trace-id ratio,
//! so gateways and the services behind them agree on which traces are kept.
//! Why not the SDK's spans: measured side by side (`bench/run`'s
//! `wicket-3t`), building, ending and queueing them — a lock per attribute,
//! an owned string per value, a channel message per span — cost a traced
//! request ≈ 25 µs of a gateway core, 26 % of its throughput, against a
//! budget of 10 %.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Notify;

use crate::body::{Body, BodyError};
use crate::config::TracingConfig;
use crate::plugin::{OutcomeResult, SpanNotes, UpstreamOutcome};
use crate::request::{Conn, RequestId};
use crate::telemetry::otlp::{self, Batch, Kind};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The tracer of one tracing configuration. Kept across reloads that do
/// not change it, so spans already queued are not lost.
pub struct Tracing {
    config: TracingConfig,
    queue: Arc<Queue>,
    /// A new trace is kept when the top 63 bits of its id's low half are
    /// below this (the SDK's `TraceIdRatioBased`); `u64::MAX`: always.
    ratio_bound: u64,
    /// The export task, awaited at shutdown.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("endpoint", &self.config.otlp.endpoint)
            .finish()
    }
}

/// What happened to finished spans, for `wicket_trace_spans_total`.
#[derive(Clone, Debug)]
pub struct SpanCounters {
    /// Accepted by the collector.
    pub exported: Counter,
    /// Turned away because the export queue was full.
    pub dropped: Counter,
    /// In a batch the collector refused, or that failed or timed out.
    pub failed: Counter,
}

impl Tracing {
    /// The tracer for `cfg` (`None`: tracing is off): `previous` when its
    /// configuration is the same, else a new exporter. An error names the
    /// field and what is wrong with it. Starts the export task on the
    /// current tokio runtime.
    pub fn build(
        cfg: Option<&TracingConfig>,
        previous: Option<&Arc<Tracing>>,
        counters: SpanCounters,
    ) -> Result<Option<Arc<Tracing>>, (String, String)> {
        let Some(cfg) = cfg else {
            return Ok(None);
        };
        check(cfg)?;
        if let Some(prev) = previous.filter(|p| p.config == *cfg) {
            return Ok(Some(prev.clone()));
        }
        let endpoint = cfg
            .otlp
            .endpoint
            .parse::<http::Uri>()
            .map_err(|e| ("tracing.otlp.endpoint".to_string(), e.to_string()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &cfg.otlp.headers {
            // `check` has made sure each parses.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.append(n, v);
            }
        }
        let sender = otlp::Sender::new(
            endpoint,
            headers,
            Duration::from_millis(cfg.otlp.timeout_ms),
        );
        let version = env!("CARGO_PKG_VERSION");
        let resource = otlp::resource(
            [("service.name", cfg.service_name.as_str())]
                .into_iter()
                .chain(cfg.resource.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .chain([
                    ("service.version", version),
                    ("telemetry.sdk.name", "wicket"),
                    ("telemetry.sdk.language", "rust"),
                    ("telemetry.sdk.version", version),
                ]),
        );
        let queue = Arc::new(Queue {
            filling: Mutex::new(None),
            resource,
            full: Mutex::new(std::collections::VecDeque::new()),
            spare: Mutex::new(Vec::new()),
            spans: AtomicUsize::new(0),
            max_spans: cfg.max_queue_spans,
            batch_spans: cfg.max_batch_spans,
            ready: Notify::new(),
            stop: AtomicBool::new(false),
            counters,
        });
        let task = tokio::spawn(export(
            queue.clone(),
            sender,
            Duration::from_millis(cfg.flush_interval_ms),
        ));
        let ratio_bound = if cfg.sampling_ratio >= 1.0 {
            u64::MAX
        } else {
            (cfg.sampling_ratio.max(0.0) * (1u64 << 63) as f64) as u64
        };
        Ok(Some(Arc::new(Tracing {
            config: cfg.clone(),
            queue,
            ratio_bound,
            task: Mutex::new(Some(task)),
        })))
    }

    /// Start the trace of a request that arrived at `time`: the child of the
    /// caller's `traceparent` when it sent a valid one, else a new trace;
    /// recorded or not as the sampler decides.
    pub fn start(
        self: &Arc<Self>,
        headers: &HeaderMap,
        method: &http::Method,
        time: SystemTime,
    ) -> RequestTrace {
        let parent = super::traceparent(headers);
        let trace_id = match &parent {
            Some(p) => p.trace_id,
            None => new_trace_id(),
        };
        let sampled = match &parent {
            Some(p) if self.config.parent_based => p.sampled,
            _ => self.keeps(&trace_id),
        };
        let state = parent.as_ref().and_then(|_| trace_state(headers));
        let inner = sampled.then(|| {
            Arc::new(Inner {
                trace_id,
                span_id: new_span_id(),
                parent: parent.as_ref().map(|p| p.span_id),
                state: state.clone(),
                queue: self.queue.clone(),
                record: Mutex::new(Record {
                    start: nanos(time),
                    method: method.clone(),
                    ..Record::default()
                }),
            })
        });
        RequestTrace {
            trace_id,
            state,
            inner,
        }
    }

    /// The ratio sampler's decision for a new trace.
    fn keeps(&self, trace_id: &[u8; 16]) -> bool {
        if self.ratio_bound == u64::MAX {
            return true;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.ratio_bound
    }

    /// Send what is queued and stop, waiting at most for one export.
    pub async fn shutdown(&self) {
        self.queue.stop.store(true, Ordering::SeqCst);
        self.queue.ready.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let bound = Duration::from_millis(self.config.otlp.timeout_ms + 1000);
            let _ = tokio::time::timeout(bound, task).await;
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Replaced by a reload or gone at exit: the task sends what is
        // queued, each send bounded by the export timeout, and ends.
        self.queue.stop.store(true, Ordering::SeqCst);
        self.queue.ready.notify_one();
    }
}

/// Checks no type can express.
fn check(cfg: &TracingConfig) -> Result<(), (String, String)> {
    let at = |field: &str, msg: String| Err((format!("tracing.{field}"), msg));
    if !(0.0..=1.0).contains(&cfg.sampling_ratio) {
        return at(
            "sampling_ratio",
            format!("must be between 0 and 1, not {}", cfg.sampling_ratio),
        );
    }
    match cfg.otlp.endpoint.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
        Ok(uri) if uri.scheme_str() == Some("https") => {
            return at(
                "otlp.endpoint",
                "https is not supported for the exporter: send spans over http to a collector beside the gateway".into(),
            )
        }
        _ => {
            return at(
                "otlp.endpoint",
                format!(
                    "must be an http:// URL such as http://127.0.0.1:4318/v1/traces, not {:?}",
                    cfg.otlp.endpoint
                ),
            )
        }
    }
    if cfg.otlp.timeout_ms == 0 {
        return at("otlp.timeout_ms", "must be at least 1".into());
    }
    for (name, value) in &cfg.otlp.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value).is_err()
        {
            return at(
                &format!("otlp.headers.{name}"),
                "is not a valid header name and value".into(),
            );
        }
    }
    if cfg.max_queue_spans == 0 || cfg.max_queue_spans > 1 << 20 {
        return at(
            "max_queue_spans",
            format!("must be between 1 and 1048576, not {}", cfg.max_queue_spans),
        );
    }
    if cfg.max_batch_spans == 0 || cfg.max_batch_spans > cfg.max_queue_spans {
        return at(
            "max_batch_spans",
            format!(
                "must be between 1 and max_queue_spans ({}), not {}",
                cfg.max_queue_spans, cfg.max_batch_spans
            ),
        );
    }
    if cfg.flush_interval_ms == 0 {
        return at("flush_interval_ms", "must be at least 1".into());
    }
    if cfg.service_name.is_empty() {
        return at("service_name", "must not be empty".into());
    }
    Ok(())
}

/// Finished requests' spans waiting to be exported, already encoded.
struct Queue {
    /// The batch being filled: each request's spans are written into it when
    /// its server span ends, while they are still in the cache, and the
    /// record is freed at once.
    filling: Mutex<Option<Batch>>,
    resource: Vec<u8>,
    /// Batches ready to be sent, with their span counts.
    full: Mutex<std::collections::VecDeque<(Bytes, usize)>>,
    /// Buffers of sent batches, emptied, for the next ones (at most
    /// `SPARE_BUFFERS`).
    spare: Mutex<Vec<Vec<u8>>>,
    /// Spans in `filling` and `full`, bounded by `max_spans`.
    spans: AtomicUsize,
    max_spans: usize,
    batch_spans: usize,
    /// A batch is full, or the tracer is stopping.
    ready: Notify,
    stop: AtomicBool,
    counters: SpanCounters,
}

impl Queue {
    /// Queue a finished request's spans (`r`, its record), or drop them all
    /// if they do not fit.
    fn push(&self, trace: &Inner, r: &Record) {
        let spans = r.spans();
        let before = self.spans.fetch_add(spans, Ordering::Relaxed);
        if before + spans > self.max_spans {
            self.spans.fetch_sub(spans, Ordering::Relaxed);
            self.counters.dropped.inc_by(spans as u64);
            return;
        }
        let mut filling = self.filling.lock().unwrap_or_else(|p| p.into_inner());
        let batch = filling.get_or_insert_with(|| {
            let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
            Batch::new(&self.resource, self.batch_spans, spare)
        });
        trace.encode(r, batch);
        if batch.spans() >= self.batch_spans {
            let full = filling.take();
            drop(filling);
            self.seal(full);
            self.ready.notify_one();
        }
    }

    /// Move the batch being filled, if any, to the ready ones.
    fn seal(&self, batch: Option<Batch>) {
        if let Some(batch) = batch {
            let n = batch.spans();
            self.full
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((batch.finish(), n));
        }
    }

    /// Seal what is being filled, even if it is not full.
    fn seal_partial(&self) {
        let partial = self
            .filling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.seal(partial);
    }

    /// Keep the buffer of a batch that has been sent for a later batch.
    fn recycle(&self, sent: Bytes) {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_BUFFERS {
            spare.extend(otlp::reclaim(sent));
        }
    }

    /// The next batch to send; its spans no longer count against the bound.
    fn take(&self) -> Option<(Bytes, usize)> {
        let next = self
            .full
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()?;
        self.spans.fetch_sub(next.1, Ordering::Relaxed);
        Some(next)
    }
}

/// Batch buffers kept for reuse: one being filled while one is sent.
const SPARE_BUFFERS: usize = 2;

/// Send batches when one is full, what is queued at each flush interval, and
/// once more when stopping.
async fn export(queue: Arc<Queue>, sender: otlp::Sender, flush: Duration) {
    let mut tick = tokio::time::interval(flush);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // Whether the last export failed: one log line per outage.
    let mut failing = false;
    loop {
        let flush = tokio::select! {
            _ = tick.tick() => true,
            _ = queue.ready.notified() => false,
        };
        let stopping = queue.stop.load(Ordering::SeqCst);
        if flush || stopping {
            queue.seal_partial();
        }
        while let Some((body, n)) = queue.take() {
            let sent = body.clone();
            let result = sender.send(body).await;
            queue.recycle(sent);
            match result {
                Ok(()) => {
                    queue.counters.exported.inc_by(n as u64);
                    if std::mem::take(&mut failing) {
                        tracing::info!("trace export works again");
                    }
                }
                Err(e) => {
                    queue.counters.failed.inc_by(n as u64);
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(spans = n, error = %e, "trace export failed; its spans are dropped (counted in wicket_trace_spans_total) until the collector answers");
                    }
                }
            }
        }
        if stopping {
            break;
        }
    }
}

/// One recorded request: its ids, and its spans as they were filled in.
struct Inner {
    trace_id: [u8; 16],
    /// The server span's id.
    span_id: [u8; 8],
    /// The caller's span, when the request came with a trace context.
    parent: Option<[u8; 8]>,
    state: Option<HeaderValue>,
    queue: Arc<Queue>,
    record: Mutex<Record>,
}

/// What the server span and its children say; times are Unix nanoseconds.
#[derive(Default)]
struct Record {
    start: u64,
    /// Zero until the server span ends.
    end: u64,
    method: http::Method,
    route: Option<Arc<str>>,
    request_id: Option<RequestId>,
    admitted: Option<Admitted>,
    status: Option<u16>,
    upstream: Option<String>,
    endpoint: Option<String>,
    retries: u32,
    error: Option<&'static str>,
    aborted: bool,
    hooks: Vec<HookSpan>,
    upstream_call: Option<UpstreamCall>,
}

impl Record {
    /// Its spans: the server span, each hook call, the upstream call.
    fn spans(&self) -> usize {
        1 + self.hooks.len() + usize::from(self.upstream_call.is_some())
    }
}

/// What is known once the request is admitted.
struct Admitted {
    authority: String,
    path: String,
    scheme: &'static str,
    version: &'static str,
    client: IpAddr,
}

struct HookSpan {
    span_id: [u8; 8],
    plugin: Arc<str>,
    hook: &'static str,
    decision: &'static str,
    failure: Option<&'static str>,
    start: u64,
    end: u64,
    notes: Option<SpanNotes>,
}

struct UpstreamCall {
    span_id: [u8; 8],
    name: String,
    start: u64,
    end: u64,
    endpoint: Option<String>,
    attempts: u32,
    result: OutcomeResult,
}

impl Inner {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write its spans (`r`, its record) into `batch`.
    fn encode(&self, r: &Record, batch: &mut Batch) {
        let state = self
            .state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let method = r.method.as_str();
        let route = r.route.as_deref();
        let name: &[&str] = match route {
            Some(route) => &[method, " ", route],
            None => &[method],
        };
        let server_error = r
            .status
            .filter(|s| *s >= 500)
            .map(|_| r.error.unwrap_or("server error"));
        batch.span(
            &otlp::Span {
                trace_id: self.trace_id,
                span_id: self.span_id,
                parent: self.parent,
                parent_remote: self.parent.is_some(),
                trace_state: state,
                sampled: true,
                name,
                kind: Kind::Server,
                start: r.start,
                end: r.end,
                error: server_error,
            },
            |a| {
                a.str("http.request.method", method);
                if let Some(adm) = &r.admitted {
                    a.str("server.address", &adm.authority);
                    a.str("url.path", &adm.path);
                    a.str("url.scheme", adm.scheme);
                    a.str("network.protocol.version", adm.version);
                    a.display("client.address", adm.client);
                }
                if let Some(route) = route {
                    a.str("http.route", route);
                }
                if let Some(id) = &r.request_id {
                    a.str("wicket.request_id", id.as_str());
                }
                if let Some(status) = r.status {
                    a.int("http.response.status_code", i64::from(status));
                }
                if let Some(u) = &r.upstream {
                    a.str("wicket.upstream", u);
                }
                let endpoint = r
                    .endpoint
                    .as_ref()
                    .or(r.upstream_call.as_ref().and_then(|u| u.endpoint.as_ref()));
                if let Some(e) = endpoint {
                    a.str("wicket.endpoint", e);
                }
                if r.retries > 0 {
                    a.int("wicket.retries", i64::from(r.retries));
                }
                if let Some(code) = r.error {
                    a.str("error.type", code);
                }
                if r.aborted {
                    a.bool("wicket.aborted", true);
                }
            },
        );
        for h in &r.hooks {
            let name = [&*h.plugin, " ", h.hook];
            batch.span(
                &self.child(
                    state,
                    h.span_id,
                    &name,
                    Kind::Internal,
                    (h.start, h.end),
                    h.failure,
                ),
                |a| {
                    a.str("wicket.plugin", &h.plugin);
                    a.str("wicket.hook", h.hook);
                    a.str("wicket.decision", h.decision);
                    if let Some(kind) = h.failure {
                        a.str("error.type", kind);
                    }
                    if let Some(notes) = &h.notes {
                        for (k, v) in &notes.attributes {
                            a.str(k, v);
                        }
                        for e in &notes.events {
                            let attributes =
                                e.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                            a.event(&e.name, nanos(e.time), attributes);
                        }
                    }
                },
            );
        }
        if let Some(u) = &r.upstream_call {
            let error = match u.result {
                OutcomeResult::Status(s) if s >= 500 => Some("upstream answered 5xx"),
                OutcomeResult::Error(kind) => Some(kind.label()),
                _ => None,
            };
            let name = ["upstream ", u.name.as_str()];
            batch.span(
                &self.child(
                    state,
                    u.span_id,
                    &name,
                    Kind::Client,
                    (u.start, u.end),
                    error,
                ),
                |a| {
                    a.str("wicket.upstream", &u.name);
                    if let Some(e) = &u.endpoint {
                        a.str("server.address", e);
                    }
                    a.int("wicket.attempts", i64::from(u.attempts));
                    match u.result {
                        OutcomeResult::Status(s) => {
                            a.int("http.response.status_code", i64::from(s))
                        }
                        OutcomeResult::Error(kind) => a.str("error.type", kind.label()),
                        OutcomeResult::Skipped => {}
                    }
                },
            );
        }
    }
}

impl Inner {
    /// A child of the server span.
    fn child<'a>(
        &self,
        trace_state: &'a str,
        span_id: [u8; 8],
        name: &'a [&'a str],
        kind: Kind,
        (start, end): (u64, u64),
        error: Option<&'a str>,
    ) -> otlp::Span<'a> {
        otlp::Span {
            trace_id: self.trace_id,
            span_id,
            parent: Some(self.span_id),
            parent_remote: false,
            trace_state,
            sampled: true,
            name,
            kind,
            start,
            end,
            error,
        }
    }
}

/// One request's trace: its ids, and its record when it is sampled.
#[derive(Clone)]
pub struct RequestTrace {
    trace_id: [u8; 16],
    /// The caller's `tracestate`, passed on upstream.
    state: Option<HeaderValue>,
    inner: Option<Arc<Inner>>,
}

/// What a plugin hook call was, for its span.
pub struct HookCall<'a> {
    /// The plugin's name.
    pub plugin: &'a Arc<str>,
    /// `on-request` or `on-response`.
    pub hook: &'static str,
    /// continue, respond, replace, skipped (fail-open) or refused
    /// (fail-closed).
    pub decision: &'static str,
    /// What went wrong, when the call failed.
    pub failure: Option<&'static str>,
    /// How long it took, ending now.
    pub took: Duration,
}

impl RequestTrace {
    /// Whether this request's spans are recorded (it was sampled).
    pub fn recording(&self) -> bool {
        self.inner.is_some()
    }

    /// The trace id, as 32 lower-case hex digits.
    pub fn trace_id(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex(&self.trace_id, &mut out);
        out
    }

    /// What is known once the request is admitted: its authority, path,
    /// scheme, protocol and client.
    pub fn request(&self, authority: &str, path: &str, version: http::Version, conn: &Conn) {
        let Some(inner) = &self.inner else {
            return;
        };
        let version = match version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_11 => "1.1",
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_3 => "3",
            _ => "0.9",
        };
        inner.record().admitted = Some(Admitted {
            authority: authority.to_string(),
            path: path.to_string(),
            scheme: conn.scheme,
            version,
            client: conn.client.ip(),
        });
    }

    /// The request was routed: the span takes the route's name.
    pub fn routed(&self, route: &Arc<str>, request_id: &RequestId) {
        if let Some(inner) = &self.inner {
            let mut r = inner.record();
            r.route = Some(route.clone());
            r.request_id = Some(request_id.clone());
        }
    }

    /// A hook call that has just ended, as a child span, with what the
    /// plugin added to it.
    pub fn hook(&self, call: HookCall<'_>, notes: Option<SpanNotes>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let end = nanos(SystemTime::now());
        let mut r = inner.record();
        if r.hooks.capacity() == 0 {
            // Most chains are short: one allocation for them.
            r.hooks.reserve(6);
        }
        r.hooks.push(HookSpan {
            span_id: new_span_id(),
            plugin: call.plugin.clone(),
            hook: call.hook,
            decision: call.decision,
            failure: call.failure,
            start: end.saturating_sub(call.took.as_nanos() as u64),
            end,
            notes,
        });
    }

    /// Start the upstream call's span and write its context into the
    /// upstream request's `traceparent` (and the caller's `tracestate`),
    /// replacing the caller's.
    pub fn upstream(&self, upstream: &str, headers: &mut HeaderMap) -> UpstreamSpan {
        let span_id = new_span_id();
        let mut tp = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex(&self.trace_id, &mut tp[3..35]);
        hex(&span_id, &mut tp[36..52]);
        if self.inner.is_some() {
            tp[54] = b'1';
        }
        // Hex digits and dashes: always a valid header value.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&tp)) {
            headers.insert(TRACEPARENT, v);
        }
        match &self.state {
            Some(state) => headers.insert(TRACESTATE, state.clone()),
            None => headers.remove(TRACESTATE),
        };
        match &self.inner {
            Some(inner) => UpstreamSpan {
                trace: Some(inner.clone()),
                span_id,
                name: upstream.to_string(),
                start: nanos(SystemTime::now()),
            },
            None => UpstreamSpan {
                trace: None,
                span_id,
                name: String::new(),
                start: 0,
            },
        }
    }

    /// The response head is known: what the server span reports.
    pub fn answered(
        &self,
        status: u16,
        upstream: Option<&str>,
        outcome: &UpstreamOutcome,
        error: Option<&'static str>,
    ) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut r = inner.record();
        r.status = Some(status);
        r.upstream = upstream.map(str::to_string);
        // Usually the upstream span's endpoint already: not kept twice.
        let known = r.upstream_call.as_ref().map(|u| &u.endpoint);
        if outcome.endpoint.is_some() && known != Some(&outcome.endpoint) {
            r.endpoint = outcome.endpoint.clone();
        }
        r.retries = outcome.attempts.saturating_sub(1);
        r.error = error;
    }

    /// End the server span now and hand the request's spans to the
    /// exporter (once; later calls do nothing).
    pub fn end(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut r = inner.record();
        if r.end != 0 {
            return;
        }
        r.end = nanos(SystemTime::now()).max(r.start);
        // Counted and written under the record's lock: what the bound
        // counted is what is sent.
        inner.queue.push(inner, &r);
    }

    fn aborted(&self) {
        if let Some(inner) = &self.inner {
            inner.record().aborted = true;
        }
    }
}

/// An upstream call's span, ended with what came back.
pub struct UpstreamSpan {
    trace: Option<Arc<Inner>>,
    span_id: [u8; 8],
    name: String,
    start: u64,
}

impl UpstreamSpan {
    /// The call's head came back, or it failed (or a plugin answered and
    /// it was never made).
    pub fn end(self, outcome: &UpstreamOutcome) {
        let Some(inner) = self.trace else {
            return;
        };
        let end = nanos(SystemTime::now()).max(self.start);
        inner.record().upstream_call = Some(UpstreamCall {
            span_id: self.span_id,
            name: self.name,
            start: self.start,
            end,
            endpoint: outcome.endpoint.clone(),
            attempts: outcome.attempts,
            result: outcome.result,
        });
    }
}

/// The response body; the server span ends when it has been sent (or the
/// client went away).
pub struct Traced {
    inner: Body,
    trace: Option<RequestTrace>,
}

impl Traced {
    /// Wrap `body`, ending `trace`'s server span with it.
    pub fn wrap(body: Body, trace: RequestTrace) -> Body {
        crate::body::boxed(Traced {
            inner: body,
            trace: Some(trace),
        })
    }
}

impl http_body::Body for Traced {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if done {
            if let Some(t) = this.trace.take() {
                t.end();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(t) = self.trace.take() {
            // A body with nothing left to send (a HEAD answer, an empty
            // body) is dropped unpolled: the answer was whole.
            if !http_body::Body::is_end_stream(&self.inner) {
                t.aborted();
            }
            t.end();
        }
    }
}

/// The caller's `tracestate`, when it is one well-formed list of at most 32
/// `key=value` members (W3C Trace Context §3.3); anything else is not
/// passed on.
fn trace_state(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(TRACESTATE).iter();
    let v = values.next()?;
    if values.next().is_some() || v.len() > 512 {
        return None;
    }
    let text = v.to_str().ok()?;
    let mut members = 0;
    for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (key, value) = member.split_once('=')?;
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key
                .bytes()
                .all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'));
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && value
                .bytes()
                .all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=');
        if !key_ok || !value_ok {
            return None;
        }
        members += 1;
    }
    (1..=32).contains(&members).then(|| v.clone())
}

/// A random id that is not all zeros (which W3C Trace Context reserves).
fn new_trace_id() -> [u8; 16] {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `bytes` as lower-case hex into `out` (twice as long).
fn hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}
