//! The host side of the contract's imports: the request and response handles,
//! log, clock, metrics and state, as seen by one plugin instance. Each
//! instance's store carries a [`HostState`].

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, clock, context, gateway, log, metrics, span, state, types};
use super::RequestInfo;
use crate::clock::Clock;
use crate::metrics::{Metrics, SeriesCache};
use crate::state::{CasOutcome, SharedState, StateError};
use crate::upstream::Upstream;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

/// What every instance of a plugin shares.
#[derive(Clone)]
pub(crate) struct HostContext {
    /// The plugin's configured name; also its state namespace.
    pub(crate) plugin: Arc<str>,
    pub(crate) clock: Clock,
    pub(crate) state: SharedState,
    pub(crate) metrics: Arc<Metrics>,
}

/// The data of one instance's store.
pub(crate) struct HostState {
    pub(crate) ctx: HostContext,
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryCap,
    /// The guest's stdout and stderr, assembled into lines.
    pub(crate) output: GuestOutput,
    /// Epoch ticks this call may still run before it is stopped.
    pub(crate) ticks_left: u64,
    /// The deadline of the call in progress, for its error.
    pub(crate) deadline_ms: u64,
    /// When the call in progress must end (wall clock).
    pub(crate) deadline_at: tokio::time::Instant,
    /// When its state calls must have answered: a little before
    /// `deadline_at`, so the plugin can still act on `unavailable`.
    pub(crate) state_deadline: tokio::time::Instant,
    /// What the running hook may read; `None` between calls.
    pub(crate) call: Option<Call>,
    /// The configuration's upstream names, sorted, for `gateway.upstreams`.
    pub(crate) upstreams: Arc<[String]>,
    /// Handles to the metric series this instance reports.
    pub(crate) counters: SeriesCache<Counter>,
    pub(crate) histograms: SeriesCache<Histogram>,
}

/// The request (and, for `on-response`, the response head) of the hook call
/// in progress. The head is moved into the store for the call and back out
/// after it, so a guest reads it in place and nothing is copied until it
/// asks.
pub(crate) struct Call {
    pub(crate) parts: http::request::Parts,
    pub(crate) info: Arc<RequestInfo>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) response: Option<(StatusCode, HeaderMap)>,
    /// Tries the upstream call made (0 before it).
    pub(crate) attempts: u32,
    /// The calling plugin's context for this request.
    pub(crate) context: Context,
}

/// What one plugin keeps for one request through the contract's `context`
/// interface: set in `on-request`, read in `on-response`. Small and bounded,
/// and it never leaves the gateway. It also carries, through one hook call,
/// what the plugin adds to that call's span (when the call is recorded).
#[derive(Debug, Default)]
pub struct Context {
    entries: Vec<(String, Vec<u8>)>,
    span: Option<SpanNotes>,
}

/// What a plugin added to its hook call's span through the contract's
/// `span` interface, bounded as the contract says.
#[derive(Debug, Default)]
pub struct SpanNotes {
    /// Attributes, in the order first set.
    pub attributes: Vec<(String, String)>,
    /// Events: name, attributes, when.
    pub events: Vec<SpanEvent>,
}

/// One event a plugin recorded on its span.
#[derive(Debug)]
pub struct SpanEvent {
    /// Its name.
    pub name: String,
    /// Its attributes.
    pub attributes: Vec<(String, String)>,
    /// When it was recorded.
    pub time: std::time::SystemTime,
}

/// Most attributes a plugin sets on one hook call's span.
const SPAN_ATTRIBUTES: usize = 16;
/// Most events a plugin records on one hook call's span.
const SPAN_EVENTS: usize = 8;
/// Most attributes on one event.
const EVENT_ATTRIBUTES: usize = 8;
/// Longest key or event name, in bytes.
const SPAN_KEY_BYTES: usize = 64;
/// Longest attribute value, in bytes (longer ones are cut).
const SPAN_VALUE_BYTES: usize = 256;

/// A key the plugin may use: not empty, short, not the host's own.
fn span_key_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= SPAN_KEY_BYTES && !key.starts_with("wicket.")
}

/// `value` cut to the bound at a character boundary.
fn span_value(mut value: String) -> String {
    if value.len() > SPAN_VALUE_BYTES {
        let mut end = SPAN_VALUE_BYTES;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

impl SpanNotes {
    fn set(&mut self, key: String, value: String) {
        if !span_key_ok(&key) {
            return;
        }
        let value = span_value(value);
        let full = self.attributes.len() >= SPAN_ATTRIBUTES;
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None if !full => self.attributes.push((key, value)),
            None => {}
        }
    }

    fn event(&mut self, name: String, attributes: Vec<(String, String)>) {
        if self.events.len() >= SPAN_EVENTS || name.is_empty() || name.len() > SPAN_KEY_BYTES {
            return;
        }
        let attributes = attributes
            .into_iter()
            .filter(|(k, _)| span_key_ok(k))
            .take(EVENT_ATTRIBUTES)
            .map(|(k, v)| (k, span_value(v)))
            .collect();
        self.events.push(SpanEvent {
            name,
            attributes,
            time: std::time::SystemTime::now(),
        });
    }
}

/// Most keys in one plugin's context for one request.
const CONTEXT_KEYS: usize = 16;
/// Most bytes (keys and values) in one plugin's context for one request.
const CONTEXT_BYTES: usize = 4096;

impl Context {
    /// Whether nothing was set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Let the next hook call add to its span (it is recorded).
    pub fn record_span(&mut self) {
        self.span = Some(SpanNotes::default());
    }

    /// What the last hook call added to its span, if it was recorded.
    pub fn take_span(&mut self) -> Option<SpanNotes> {
        self.span.take()
    }

    fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// Store `value`, unless that would pass the bounds.
    fn set(&mut self, key: String, value: Vec<u8>) -> bool {
        let others = self.entries.iter().filter(|(k, _)| *k != key);
        let bytes: usize = others.clone().map(|(k, v)| k.len() + v.len()).sum();
        if others.count() + 1 > CONTEXT_KEYS || bytes + key.len() + value.len() > CONTEXT_BYTES {
            return false;
        }
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((key, value)),
        }
        true
    }
}

/// The host side of `types.request`. There is one request per call, held in
/// [`HostState::call`], so the handle carries nothing.
#[allow(unreachable_pub)] // bindgen re-exports `with` types as `pub`
pub struct RequestHandle;

/// The host side of `types.response-head`; see [`RequestHandle`].
#[allow(unreachable_pub)] // as above
pub struct ResponseHandle;

impl HostState {
    fn current(&self) -> wasmtime::Result<&Call> {
        self.call
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("request handle used outside a hook call"))
    }

    fn response(&self) -> wasmtime::Result<(StatusCode, &HeaderMap)> {
        match &self.current()?.response {
            Some((status, headers)) => Ok((*status, headers)),
            None => Err(wasmtime::Error::msg(
                "response handle used outside on-response",
            )),
        }
    }
}

fn first_value(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|v| v.as_bytes().to_vec())
}

fn all_values(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fn all_headers(headers: &HeaderMap) -> Vec<types::Header> {
    headers
        .iter()
        .map(|(n, v)| bindings::header(n, v))
        .collect()
}

/// The W3C trace context of `headers`: `traceparent` version `00` (or a
/// later version's first four fields, as the spec asks), with ids that are
/// lower-case hex and not all zeros; anything else is no trace context.
fn trace_context(headers: &HeaderMap) -> Option<types::TraceContext> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?.to_str().ok()?.trim();
    if values.next().is_some() {
        return None;
    }
    let fields: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let (version, trace, parent, flags) = match fields.as_slice() {
        [v, t, p, f] => (*v, *t, *p, *f),
        [v, t, p, f, ..] if *v != "00" => (*v, *t, *p, *f),
        _ => return None,
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    if !hex(version, 2)
        || version == "ff"
        || !hex(trace, 32)
        || !hex(parent, 16)
        || !hex(flags, 2)
        || zero(trace)
        || zero(parent)
    {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let trace_state = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    Some(types::TraceContext {
        trace_id: trace.to_string(),
        parent_id: parent.to_string(),
        sampled: flags & 1 == 1,
        trace_state: (!trace_state.is_empty()).then_some(trace_state),
    })
}

fn params(info: &RequestInfo) -> Vec<types::RouteParam> {
    info.params
        .iter(&info.path)
        .map(|(name, value)| types::RouteParam {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The memory cap of one instance, and what it has used.
pub(crate) struct MemoryCap {
    pub(crate) max_bytes: usize,
    /// Bytes of linear memory (all memories) the instance holds now. Linear
    /// memory never shrinks, so this is also its high-water mark.
    used: usize,
    /// What the instance held when `init` returned.
    baseline: usize,
    /// Set when a grow past the cap was refused during the current call.
    pub(crate) refused: Option<usize>,
}

/// Headroom an instance must have above what it holds after `init`, as a
/// fraction of that: a quarter, and at least 1 MiB.
fn headroom(baseline: usize) -> usize {
    (baseline / 4).max(1024 * 1024)
}

impl MemoryCap {
    pub(crate) fn new(max_bytes: usize) -> MemoryCap {
        MemoryCap {
            max_bytes,
            used: 0,
            baseline: 0,
            refused: None,
        }
    }

    /// Mark the end of `init`: what the instance holds now is its baseline.
    pub(crate) fn settle(&mut self) {
        self.baseline = self.used;
    }

    /// Whether the cap leaves the instance room to work: refused at
    /// validation, so a cap that would fail under traffic never serves.
    pub(crate) fn check_headroom(&self) -> Result<(), super::PluginError> {
        let need = self.baseline + headroom(self.baseline);
        if need <= self.max_bytes {
            return Ok(());
        }
        const MIB: f64 = 1024.0 * 1024.0;
        Err(super::PluginError::MemoryCap(format!(
            "limits.memory_mb {} is too small: the module holds {:.1} MiB after init and needs {:.1} MiB \
             with headroom; set limits.memory_mb to at least {}",
            self.max_bytes / (1024 * 1024),
            self.baseline as f64 / MIB,
            need as f64 / MIB,
            need.div_ceil(1024 * 1024)
        )))
    }

    /// Whether the instance has used half the room it had after `init`, and
    /// should be replaced before it runs out.
    pub(crate) fn worn(&self) -> bool {
        let room = self.max_bytes.saturating_sub(self.baseline);
        self.used > self.baseline + room / 2
    }
}

/// Raised (as a trap) when a guest asks for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory cap of {} MiB (limits.memory_mb) exceeded: the instance asked for {:.1} MiB",
    cap / (1024 * 1024),
    *desired as f64 / (1024.0 * 1024.0)
)]
pub(crate) struct MemoryCapExceeded {
    pub(crate) cap: usize,
    pub(crate) desired: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Refuse with -1 rather than trap: a garbage-collected guest
        // (JavaScript, Python) collects and carries on, or raises an error
        // it can handle. A guest that aborts instead traps, and `refused`
        // names the cap as the reason.
        let total = self.used - current.min(self.used) + desired;
        if total > self.max_bytes {
            self.refused = Some(total);
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for HostState {}

impl types::HostRequest for HostState {
    fn method(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.parts.method.as_str().to_string())
    }

    fn scheme(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.info.scheme.to_string())
    }

    fn authority(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.info.authority.clone())
    }

    fn path(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.parts.uri.path().to_string())
    }

    fn query(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.current()?.parts.uri.query().map(str::to_string))
    }

    fn header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(first_value(&self.current()?.parts.headers, &name))
    }

    fn header_values(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(all_values(&self.current()?.parts.headers, &name))
    }

    fn headers(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(all_headers(&self.current()?.parts.headers))
    }

    fn client_addr(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.info.client.to_string())
    }

    fn route(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.info.route.to_string())
    }

    fn param(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        let info = &self.current()?.info;
        Ok(info.params.get(&info.path, &name).map(str::to_string))
    }

    fn params(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Vec<types::RouteParam>> {
        Ok(params(&self.current()?.info))
    }

    fn upstream(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.upstream.name().to_string())
    }

    fn tls(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<types::TlsInfo>> {
        Ok(self
            .current()?
            .info
            .tls
            .as_deref()
            .map(super::bindings::tls_info))
    }

    fn client_ip(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.info.client.ip().to_string())
    }

    fn client_port(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<u16> {
        Ok(self.current()?.info.client.port())
    }

    fn request_id(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.current()?.info.request_id.to_string())
    }

    fn upstream_attempts(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<u32> {
        Ok(self.current()?.attempts)
    }

    fn trace_context(
        &mut self,
        _: Resource<RequestHandle>,
    ) -> wasmtime::Result<Option<types::TraceContext>> {
        let headers = &self.current()?.parts.headers;
        Ok(trace_context(headers))
    }

    fn head(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<types::RequestHead> {
        let call = self.current()?;
        let (parts, info) = (&call.parts, &call.info);
        Ok(types::RequestHead {
            method: parts.method.as_str().to_string(),
            scheme: info.scheme.to_string(),
            authority: info.authority.clone(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: all_headers(&parts.headers),
            client_addr: info.client.to_string(),
            route: info.route.to_string(),
            params: params(info),
            upstream: call.upstream.name().to_string(),
        })
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        // Hooks only ever lend the handle; there is nothing to free.
        Ok(())
    }
}

impl types::HostResponseHead for HostState {
    fn status(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<u16> {
        Ok(self.response()?.0.as_u16())
    }

    fn header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(first_value(self.response()?.1, &name))
    }

    fn header_values(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(all_values(self.response()?.1, &name))
    }

    fn headers(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(all_headers(self.response()?.1))
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        let plugin = &*self.ctx.plugin;
        match level {
            log::Level::Trace => tracing::trace!(target: "wicket::plugin", plugin, "{message}"),
            log::Level::Debug => tracing::debug!(target: "wicket::plugin", plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "wicket::plugin", plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "wicket::plugin", plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "wicket::plugin", plugin, "{message}"),
        }
    }
}

impl context::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let call = self
            .call
            .as_ref()
            .ok_or_else(|| wasmtime::Error::msg("context used outside a hook call"))?;
        Ok(call.context.get(&key).map(<[u8]>::to_vec))
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<bool> {
        let call = self
            .call
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("context used outside a hook call"))?;
        Ok(call.context.set(key, value))
    }
}

impl span::Host for HostState {
    fn recording(&mut self) -> wasmtime::Result<bool> {
        Ok(self.span_notes()?.is_some())
    }

    fn set_attribute(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        if let Some(notes) = self.span_notes()? {
            notes.set(key, value);
        }
        Ok(())
    }

    fn add_event(
        &mut self,
        name: String,
        attributes: Vec<span::Attribute>,
    ) -> wasmtime::Result<()> {
        if let Some(notes) = self.span_notes()? {
            notes.event(
                name,
                attributes.into_iter().map(|a| (a.key, a.value)).collect(),
            );
        }
        Ok(())
    }
}

impl HostState {
    /// The span notes of the hook call in progress (`None`: not recorded);
    /// an error outside a hook call, which traps.
    fn span_notes(&mut self) -> wasmtime::Result<Option<&mut SpanNotes>> {
        let call = self
            .call
            .as_mut()
            .ok_or_else(|| wasmtime::Error::msg("span used outside a hook call"))?;
        Ok(call.context.span.as_mut())
    }
}

impl gateway::Host for HostState {
    fn upstreams(&mut self) -> Vec<String> {
        self.upstreams.to_vec()
    }
}

impl clock::Host for HostState {
    fn now_ms(&mut self) -> u64 {
        self.ctx.clock.now_ms()
    }

    fn monotonic_ns(&mut self) -> u64 {
        self.ctx.clock.monotonic_ns()
    }
}

impl metrics::Host for HostState {
    fn counter_add(&mut self, name: String, labels: Vec<metrics::Label>, value: u64) {
        let labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
        let (registry, plugin) = (&self.ctx.metrics, &self.ctx.plugin);
        let counter = self.counters.get(name, labels, |name, labels| {
            registry.plugin_counter(plugin, name, labels)
        });
        if let Some(c) = counter {
            c.inc_by(value);
        }
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<metrics::Label>, value: f64) {
        let labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
        let (registry, plugin) = (&self.ctx.metrics, &self.ctx.plugin);
        let histogram = self.histograms.get(name, labels, |name, labels| {
            registry.plugin_histogram(plugin, name, labels)
        });
        if let Some(h) = histogram {
            h.observe(value);
        }
    }
}

fn state_error(e: StateError) -> state::StateError {
    match e {
        StateError::Unavailable => state::StateError::Unavailable,
        StateError::TooLarge => state::StateError::TooLarge,
        StateError::NotACounter => state::StateError::NotACounter,
    }
}

fn entry(e: crate::state::Entry) -> state::Entry {
    state::Entry {
        value: e.value,
        version: e.version,
    }
}

impl state::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<state::Entry>, state::StateError> {
        let ctx = &self.ctx;
        ctx.state
            .get(&ctx.plugin, &key, Some(self.state_deadline))
            .await
            .map(|e| e.map(entry))
            .map_err(state_error)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<u64, state::StateError> {
        let ctx = &self.ctx;
        ctx.state
            .set(&ctx.plugin, &key, value, ttl_ms, Some(self.state_deadline))
            .await
            .map_err(state_error)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<state::CasResult, state::StateError> {
        let ctx = &self.ctx;
        match ctx
            .state
            .compare_and_swap(
                &ctx.plugin,
                &key,
                expected,
                value,
                ttl_ms,
                Some(self.state_deadline),
            )
            .await
        {
            Ok(CasOutcome::Swapped(v)) => Ok(state::CasResult::Swapped(v)),
            Ok(CasOutcome::Conflict(e)) => Ok(state::CasResult::Conflict(e.map(entry))),
            Err(e) => Err(state_error(e)),
        }
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, state::StateError> {
        let ctx = &self.ctx;
        ctx.state
            .increment(&ctx.plugin, &key, delta, ttl_ms, Some(self.state_deadline))
            .await
            .map(|(value, _)| value)
            .map_err(state_error)
    }

    async fn increment_with_ttl(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<state::Counter, state::StateError> {
        let ctx = &self.ctx;
        ctx.state
            .increment(&ctx.plugin, &key, delta, ttl_ms, Some(self.state_deadline))
            .await
            .map(|(value, ttl_ms)| state::Counter { value, ttl_ms })
            .map_err(state_error)
    }

    async fn delete(&mut self, key: String) -> Result<bool, state::StateError> {
        let ctx = &self.ctx;
        ctx.state
            .delete(&ctx.plugin, &key, Some(self.state_deadline))
            .await
            .map_err(state_error)
    }

    async fn take_tokens(
        &mut self,
        key: String,
        rate: u64,
        period_ms: u64,
        burst: u64,
        cost: u64,
    ) -> Result<state::Bucket, state::StateError> {
        let ctx = &self.ctx;
        ctx.state
            .take_tokens(
                &ctx.plugin,
                &key,
                rate,
                period_ms,
                burst,
                cost,
                Some(self.state_deadline),
            )
            .await
            .map(|t| state::Bucket {
                taken: t.taken,
                remaining: t.remaining,
                reset_ms: t.reset_ms,
                retry_after_ms: t.retry_after_ms,
            })
            .map_err(state_error)
    }
}

/// Guest stderr (and stdout), shared by every stream the instance opens:
/// guests open a new stream per write (Python, JavaScript), so a line is
/// assembled here across writes, and each whole line goes to the log at
/// `warn`, attributed to the plugin. The last few lines are kept, so an error
/// can quote what the guest said before it failed.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    plugin: Arc<str>,
    lines: Arc<std::sync::Mutex<Lines>>,
}

#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    recent: std::collections::VecDeque<String>,
}

/// Longest line kept from guest output; the rest of a longer line is dropped so
/// a guest cannot grow host memory by printing without newlines.
const MAX_LINE: usize = 4096;
/// Lines kept for error messages, and their most bytes in all.
const RECENT_LINES: usize = 12;
const RECENT_BYTES: usize = 2048;

impl GuestOutput {
    pub(crate) fn new(plugin: Arc<str>) -> GuestOutput {
        GuestOutput {
            plugin,
            lines: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, buf: &[u8]) {
        let mut lines = self.lock();
        for &b in buf {
            if b == b'\n' {
                self.emit(&mut lines);
            } else if lines.partial.len() < MAX_LINE {
                lines.partial.push(b);
            }
        }
    }

    fn emit(&self, lines: &mut Lines) {
        let text = String::from_utf8_lossy(&lines.partial)
            .trim_end()
            .to_string();
        lines.partial.clear();
        if text.is_empty() {
            return;
        }
        tracing::warn!(target: "wicket::plugin", plugin = &*self.plugin, "guest output: {text}");
        lines.recent.push_back(text);
        while lines.recent.len() > RECENT_LINES
            || lines.recent.iter().map(String::len).sum::<usize>() > RECENT_BYTES
        {
            lines.recent.pop_front();
        }
    }

    /// What the guest wrote most recently (a partial last line included),
    /// lines joined with ` | `; `None` if it wrote nothing. Taken, so one
    /// error does not quote what an earlier one already did.
    pub(crate) fn recent(&self) -> Option<String> {
        let mut lines = self.lock();
        if !lines.partial.is_empty() {
            self.emit(&mut lines);
        }
        let said: Vec<String> = lines.recent.drain(..).collect();
        (!said.is_empty()).then(|| said.join(" | "))
    }
}

impl Drop for GuestOutput {
    fn drop(&mut self) {
        // The instance's last handle: a final line without a newline is
        // still said.
        if Arc::strong_count(&self.lines) == 1 {
            let mut lines = self.lock();
            if !lines.partial.is_empty() {
                self.emit(&mut lines);
            }
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.write(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // A flush is not a line end: guests flush after every partial write.
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_notes_stay_within_their_bounds() {
        let mut n = SpanNotes::default();
        for i in 0..40 {
            n.set(format!("k{i}"), "v".into());
        }
        assert_eq!(n.attributes.len(), SPAN_ATTRIBUTES);
        n.set("k0".into(), "again".into());
        assert_eq!(
            n.attributes[0],
            ("k0".into(), "again".into()),
            "a key set again is replaced"
        );
        let mut n = SpanNotes::default();
        n.set("wicket.decision".into(), "forged".into());
        n.set(String::new(), "x".into());
        n.set("k".repeat(65), "x".into());
        assert!(
            n.attributes.is_empty(),
            "host keys, empty and long keys dropped"
        );
        n.set("long".into(), "é".repeat(200));
        assert!(n.attributes[0].1.len() <= SPAN_VALUE_BYTES);
        assert!(
            n.attributes[0].1.chars().all(|c| c == 'é'),
            "cut at a character boundary"
        );
        for i in 0..20 {
            let attrs = (0..20).map(|j| (format!("a{j}"), "v".into())).collect();
            n.event(format!("e{i}"), attrs);
        }
        assert_eq!(n.events.len(), SPAN_EVENTS);
        assert!(n
            .events
            .iter()
            .all(|e| e.attributes.len() == EVENT_ATTRIBUTES));
        n.event("x".repeat(65), Vec::new());
        assert_eq!(n.events.len(), SPAN_EVENTS);
    }
}
