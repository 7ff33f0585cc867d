//! The host side of the contract's imports: the request and response handles,
//! log, clock, metrics and state, as seen by one plugin instance. Each
//! instance's store carries a [`HostState`].

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, clock, gateway, log, metrics, state, types};
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
    /// Epoch ticks this call may still run before it is stopped.
    pub(crate) ticks_left: u64,
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

/// The memory cap of one instance.
pub(crate) struct MemoryCap {
    pub(crate) max_bytes: usize,
}

/// Raised (as a trap) when a guest asks for more memory than its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded (asked for {desired})")]
pub(crate) struct MemoryCapExceeded {
    pub(crate) cap: usize,
    pub(crate) desired: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Trap rather than return -1: Rust and most guest runtimes abort on a
        // failed grow anyway, and a trap carries a reason the log can name.
        if desired > self.max_bytes {
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                cap: self.max_bytes,
                desired,
            }));
        }
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
            .get(&ctx.plugin, &key)
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
            .set(&ctx.plugin, &key, value, ttl_ms)
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
            .compare_and_swap(&ctx.plugin, &key, expected, value, ttl_ms)
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
            .increment(&ctx.plugin, &key, delta, ttl_ms)
            .await
            .map_err(state_error)
    }

    async fn delete(&mut self, key: String) -> Result<bool, state::StateError> {
        let ctx = &self.ctx;
        ctx.state
            .delete(&ctx.plugin, &key)
            .await
            .map_err(state_error)
    }
}

/// Guest stderr (and stdout): each line goes to the log at `warn`, attributed
/// to the plugin, so a panic message is never lost.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    pub(crate) plugin: Arc<str>,
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            plugin: self.plugin.clone(),
            line: Vec::new(),
        })
    }
}

struct LineLogger {
    plugin: Arc<str>,
    line: Vec<u8>,
}

/// Longest line kept from guest output; the rest of a longer line is dropped so
/// a guest cannot grow host memory by printing without newlines.
const MAX_LINE: usize = 4096;

impl LineLogger {
    fn flush_line(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line);
            tracing::warn!(target: "wicket::plugin", plugin = &*self.plugin, "guest output: {}", text.trim_end());
            self.line.clear();
        }
    }
}

impl tokio::io::AsyncWrite for LineLogger {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        for &b in buf {
            if b == b'\n' {
                self.flush_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.flush_line();
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.flush_line();
    }
}
