//! The host side of the contract's imports: log, clock, metrics and state, as
//! seen by one plugin instance. Each instance's store carries a [`HostState`].

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{clock, log, metrics, state, types};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::state::{CasOutcome, SharedState, StateError};

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
        self.ctx
            .metrics
            .plugin_counter_add(&self.ctx.plugin, &name, labels, value);
    }

    fn histogram_observe(&mut self, name: String, labels: Vec<metrics::Label>, value: f64) {
        let labels = labels.into_iter().map(|l| (l.name, l.value)).collect();
        self.ctx
            .metrics
            .plugin_histogram_observe(&self.ctx.plugin, &name, labels, value);
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
