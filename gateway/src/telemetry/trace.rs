//! Traces: a server span per request, a child span per plugin hook call and
//! one per upstream call, exported over OTLP/HTTP in batches off the
//! request path.
//!
//! Spans are made with the OpenTelemetry SDK directly, with the times the
//! request path already measures, rather than through `tracing` spans: a
//! hook span then costs one SDK span, and nothing at all when the request
//! is not sampled. The SDK's async-runtime batch processor runs on tokio;
//! in front of it, [`Admit`] bounds what waits to be exported and counts
//! what it turns away, and [`Counted`] counts what the collector took or
//! refused, so a slow or dead collector costs dropped spans, never a
//! blocked worker.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    span_processor_with_async_runtime::BatchSpanProcessor, BatchConfigBuilder, Sampler, SdkTracer,
    SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;

use crate::body::{Body, BodyError};
use crate::config::TracingConfig;
use crate::plugin::{OutcomeResult, SpanNotes, UpstreamOutcome};
use crate::request::Conn;
use crate::telemetry::otlp::OtlpExporter;

/// The W3C trace context headers of a request, as the propagator reads them.
struct Extract<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The upstream request's headers, as the propagator writes them.
struct Inject<'a>(&'a mut HeaderMap);

impl opentelemetry::propagation::Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The tracer of one tracing configuration. Kept across reloads that do
/// not change it, so spans already queued are not lost.
pub struct Tracing {
    config: TracingConfig,
    tracer: SdkTracer,
    /// Taken on drop, to be shut down off the async workers.
    provider: Option<SdkTracerProvider>,
    propagator: TraceContextPropagator,
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
    /// field and what is wrong with it.
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
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.append(n, v);
            }
        }
        let exporter = OtlpExporter::new(
            endpoint,
            headers,
            Duration::from_millis(cfg.otlp.timeout_ms),
        );
        let pending = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            pending: pending.clone(),
            counters: counters.clone(),
            failing: std::sync::atomic::AtomicBool::new(false),
        };
        let batch = BatchConfigBuilder::default()
            // `Admit` keeps the queue within `max_queue_spans`; the SDK's
            // own bound only has to be no smaller.
            .with_max_queue_size(cfg.max_queue_spans)
            .with_max_export_batch_size(cfg.max_batch_spans)
            .with_scheduled_delay(Duration::from_millis(cfg.flush_interval_ms))
            // Past the client's own timeout, so a slow export is cut (and
            // counted) by the client rather than abandoned by the SDK.
            .with_max_export_timeout(Duration::from_millis(cfg.otlp.timeout_ms + 1000))
            .build();
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(batch)
            .build();
        let processor = Admit {
            inner: processor,
            pending,
            max: cfg.max_queue_spans,
            dropped: counters.dropped,
        };
        let ratio = Sampler::TraceIdRatioBased(cfg.sampling_ratio);
        let sampler = if cfg.parent_based {
            Sampler::ParentBased(Box::new(ratio))
        } else {
            ratio
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .with_attributes(
                cfg.resource
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
            )
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("wicket");
        Ok(Some(Arc::new(Tracing {
            config: cfg.clone(),
            tracer,
            provider: Some(provider),
            propagator: TraceContextPropagator::new(),
        })))
    }

    /// Start the server span of a request that arrived at `time`, as the
    /// child of the caller's `traceparent` when it sent a valid one.
    pub fn start(
        self: &Arc<Self>,
        headers: &HeaderMap,
        method: &http::Method,
        time: SystemTime,
    ) -> RequestTrace {
        let parent = self.propagator.extract(&Extract(headers));
        let span = self.tracer.build_with_context(
            self.tracer
                .span_builder(method.to_string())
                .with_kind(SpanKind::Server)
                .with_start_time(time)
                .with_attributes([KeyValue::new(
                    "http.request.method",
                    method.as_str().to_string(),
                )]),
            &parent,
        );
        RequestTrace {
            recording: span.is_recording(),
            cx: parent.with_span(span),
            tracing: self.clone(),
        }
    }

    /// Flush what is queued and stop, waiting at most for one export.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider {
            let _ = p.shutdown();
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // The SDK's shutdown blocks until the batch task answers: never on
        // an async worker, which may be the one that task needs.
        if let Some(provider) = self.provider.take() {
            let _ = std::thread::Builder::new()
                .name("wicket-trace-shutdown".into())
                .spawn(move || {
                    let _ = provider.shutdown();
                });
        }
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

/// One request's trace: the context that holds its server span.
#[derive(Clone)]
pub struct RequestTrace {
    cx: Context,
    tracing: Arc<Tracing>,
    /// The sampling decision, read once: it does not change for the
    /// request, and asking the span each time takes its lock.
    recording: bool,
}

/// What a plugin hook call was, for its span.
pub struct HookCall<'a> {
    /// The plugin's name.
    pub plugin: &'a str,
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
        self.recording
    }

    /// The trace id, as 32 lower-case hex digits.
    pub fn trace_id(&self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let id = self.cx.span().span_context().trace_id().to_bytes();
        let mut out = [0u8; 32];
        for (i, b) in id.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        out
    }

    /// The request was routed: the span takes the route's name.
    pub fn routed(&self, method: &http::Method, route: &str, request_id: &str) {
        if !self.recording() {
            return;
        }
        let span = self.cx.span();
        span.update_name(format!("{method} {route}"));
        span.set_attributes([
            KeyValue::new("http.route", route.to_string()),
            KeyValue::new("wicket.request_id", request_id.to_string()),
        ]);
    }

    /// A hook call that has just ended, as a child span, with what the
    /// plugin added to it.
    pub fn hook(&self, call: HookCall<'_>, notes: Option<SpanNotes>) {
        if !self.recording() {
            return;
        }
        let end = SystemTime::now();
        let notes = notes.unwrap_or_default();
        let mut attributes = Vec::with_capacity(4 + notes.attributes.len());
        attributes.push(KeyValue::new("wicket.plugin", call.plugin.to_string()));
        attributes.push(KeyValue::new("wicket.hook", call.hook));
        attributes.push(KeyValue::new("wicket.decision", call.decision));
        if let Some(kind) = call.failure {
            attributes.push(KeyValue::new("error.type", kind));
        }
        attributes.extend(
            notes
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v)),
        );
        let events = notes
            .events
            .into_iter()
            .map(|e| {
                let attributes = e
                    .attributes
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect();
                opentelemetry::trace::Event::new(e.name, e.time, attributes, 0)
            })
            .collect();
        let tracer = self.tracer();
        let mut span = tracer.build_with_context(
            tracer
                .span_builder(format!("{} {}", call.plugin, call.hook))
                .with_kind(SpanKind::Internal)
                .with_start_time(end.checked_sub(call.took).unwrap_or(end))
                .with_attributes(attributes)
                .with_events(events),
            &self.cx,
        );
        if let Some(kind) = call.failure {
            span.set_status(Status::error(kind));
        }
        span.end_with_timestamp(end);
    }

    /// Start the upstream call's span and write its context into the
    /// upstream request's `traceparent` (and `tracestate`), replacing the
    /// caller's.
    pub fn upstream(&self, upstream: &str, headers: &mut HeaderMap) -> UpstreamSpan {
        let tracer = self.tracer();
        let span = tracer.build_with_context(
            tracer
                .span_builder(format!("upstream {upstream}"))
                .with_kind(SpanKind::Client)
                .with_attributes([KeyValue::new("wicket.upstream", upstream.to_string())]),
            &self.cx,
        );
        let cx = self.cx.with_span(span);
        headers.remove("tracestate");
        self.tracing
            .propagator
            .inject_context(&cx, &mut Inject(headers));
        UpstreamSpan { cx }
    }

    /// The response head is known: what the server span reports.
    pub fn answered(
        &self,
        status: u16,
        upstream: Option<&str>,
        outcome: &UpstreamOutcome,
        error: Option<&'static str>,
    ) {
        if !self.recording() {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(u) = upstream {
            span.set_attribute(KeyValue::new("wicket.upstream", u.to_string()));
        }
        if let Some(e) = &outcome.endpoint {
            span.set_attribute(KeyValue::new("wicket.endpoint", e.clone()));
        }
        if outcome.attempts > 1 {
            span.set_attribute(KeyValue::new(
                "wicket.retries",
                i64::from(outcome.attempts - 1),
            ));
        }
        if let Some(code) = error {
            span.set_attribute(KeyValue::new("error.type", code));
        }
        // A server span is an error for a 5xx only (the semantic
        // conventions leave a client's 4xx unset on the server side).
        if status >= 500 {
            span.set_status(Status::error(error.unwrap_or("server error")));
        }
    }

    /// What is known once the request is admitted: its authority, path,
    /// scheme, protocol and client.
    pub fn request(&self, authority: &str, path: &str, version: http::Version, conn: &Conn) {
        if !self.recording() {
            return;
        }
        let version = match version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_11 => "1.1",
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_3 => "3",
            _ => "0.9",
        };
        self.cx.span().set_attributes([
            KeyValue::new("server.address", authority.to_string()),
            KeyValue::new("url.path", path.to_string()),
            KeyValue::new("url.scheme", conn.scheme),
            KeyValue::new("network.protocol.version", version),
            KeyValue::new("client.address", conn.client.ip().to_string()),
        ]);
    }

    /// End the server span now.
    pub fn end(&self) {
        self.cx.span().end();
    }

    fn tracer(&self) -> &SdkTracer {
        &self.tracing.tracer
    }
}

/// An upstream call's span, ended with what came back.
pub struct UpstreamSpan {
    cx: Context,
}

impl UpstreamSpan {
    /// The call's head came back, or it failed (or a plugin answered and
    /// it was never made).
    pub fn end(self, outcome: &UpstreamOutcome) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        if let Some(e) = &outcome.endpoint {
            span.set_attribute(KeyValue::new("server.address", e.clone()));
        }
        span.set_attribute(KeyValue::new(
            "wicket.attempts",
            i64::from(outcome.attempts),
        ));
        match outcome.result {
            OutcomeResult::Status(s) => {
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
                if s >= 500 {
                    span.set_status(Status::error(Cow::Borrowed("upstream answered 5xx")));
                }
            }
            OutcomeResult::Error(kind) => {
                span.set_attribute(KeyValue::new("error.type", kind.label()));
                span.set_status(Status::error(kind.label()));
            }
            OutcomeResult::Skipped => {}
        }
        span.end();
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
            t.cx.span()
                .set_attribute(KeyValue::new("wicket.aborted", true));
            t.end();
        }
    }
}

/// In front of the batch processor: a span is queued only while fewer than
/// `max` wait to be exported; any other is dropped here, and counted.
#[derive(Debug)]
struct Admit<P> {
    inner: P,
    pending: Arc<AtomicUsize>,
    max: usize,
    dropped: Counter,
}

impl<P: SpanProcessor> SpanProcessor for Admit<P> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what each batch came to.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    counters: SpanCounters,
    /// Whether the last export failed: one log line per outage.
    failing: std::sync::atomic::AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        self.pending.fetch_sub(batch.len(), Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.counters.exported.inc_by(n);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("trace export works again");
                }
            }
            Err(e) => {
                self.counters.failed.inc_by(n);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(spans = n, error = %e, "trace export failed; its spans are dropped (counted in wicket_trace_spans_total) until the collector answers");
                }
            }
        };
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}
