//! The plugin runtime: compiles components, keeps pools of initialised
//! instances, and runs hooks under each plugin's limits.
//!
//! Lifecycle, per plugin:
//! - load: the component is compiled once (or loaded from the precompiled
//!   cache) and linked into an `InstancePre`, so per-request work is at most an
//!   instantiation;
//! - validate: one instance per (plugin, route config) is created and `init`ed
//!   while the configuration is validated, so a bad config is refused before it
//!   is applied, and that instance seeds the pool;
//! - serve: hooks run on pooled instances; an instance that traps, hits its
//!   deadline or memory cap, or returns invalid output is dropped, never reused.

mod bindings;
mod cache;
pub mod conformance;
mod host;
pub mod scaffold;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use crate::clock::Clock;
use crate::config::{FailurePolicy, Isolation, Limits, PluginConfig};
use crate::metrics::Metrics;
use crate::router::Params;
use crate::state::SharedState;
use crate::upstream::{Upstream, UpstreamErrorKind};
use bindings::{Exports, Funcs};
use host::{Call, GuestOutput, HostContext, HostState, MemoryCap, MemoryCapExceeded};

pub use host::{Context, SpanEvent, SpanNotes};

/// The version of the plugin contract this build hosts (`wicket:plugin@…`),
/// read from the one copy of the WIT the bindings are generated from.
pub fn contract_version() -> &'static str {
    const WIT: &str = include_str!("../../../wit/plugin.wit");
    WIT.lines()
        .find_map(|l| l.trim().strip_prefix("package wicket:plugin@"))
        .map_or("unknown", |v| v.trim_end_matches(';'))
}

/// How often the epoch advances; the resolution of plugin deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Why a plugin could not do its work.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// The guest trapped (panic, unreachable, out-of-bounds...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past the plugin's deadline.
    #[error("deadline of {0} ms exceeded")]
    Deadline(u64),
    /// The guest asked for more memory than its cap.
    #[error("{0}")]
    MemoryCap(String),
    /// The guest returned something the host refuses to use.
    #[error("invalid output: {0}")]
    InvalidOutput(String),
    /// `init` refused the configuration.
    #[error("init rejected the config: {0}")]
    Init(String),
    /// The component could not be instantiated.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// Every instance stayed busy for the whole queue timeout.
    #[error("no free instance within {0} ms (all {1} busy)")]
    Busy(u64, u32),
}

impl PluginError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Trap(_) => "trap",
            PluginError::Deadline(_) => "deadline",
            PluginError::MemoryCap(_) => "memory",
            PluginError::InvalidOutput(_) => "invalid_output",
            PluginError::Init(_) => "init",
            PluginError::Instantiate(_) => "instantiate",
            PluginError::Busy(..) => "busy",
        }
    }
}

/// The language a component was written in, told from the marks its
/// toolchain leaves; it picks the default memory cap, since a guest that
/// carries its interpreter needs several times what a compiled one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Built with componentize-py: CPython and the plugin's modules.
    Python,
    /// Built with componentize-js: StarlingMonkey (SpiderMonkey) and the
    /// plugin's script.
    JavaScript,
    /// Anything else: Rust, C, Go... compiled to wasm directly.
    Compiled,
}

impl Language {
    /// Tell the language of a component from its bytes: componentize-js
    /// names itself in the `producers` section; componentize-py links a
    /// runtime library whose name is in the module.
    pub fn of(bytes: &[u8]) -> Language {
        let has = |needle: &[u8]| memchr::memmem::find(bytes, needle).is_some();
        if has(b"\x0eComponentizeJS") || has(b"\x08language\x01\x0aJavaScript") {
            Language::JavaScript
        } else if has(b"libcomponentize_py_runtime.so") {
            Language::Python
        } else {
            Language::Compiled
        }
    }

    /// The memory cap per instance when the config sets none, in MiB.
    /// Measured (`docs/plugins/memory.md`): an empty Python plugin holds
    /// 12.3 MiB after `init`, an empty JavaScript one 9.1 MiB; both grow
    /// while serving, and an instance is recycled once it has used half of
    /// its headroom, so the cap sets how often that happens.
    pub fn default_memory_mb(self) -> u32 {
        match self {
            Language::Python | Language::JavaScript => 64,
            Language::Compiled => 32,
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
            Language::Compiled => "compiled modules",
        })
    }
}

/// Engine-wide runtime: one per gateway process, shared by every generation.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<cache::Cache>,
    clock: Clock,
    state: SharedState,
    metrics: Arc<Metrics>,
    /// Compiled components by module digest, so a reload that keeps a module
    /// does not compile it again; pruned by [`Runtime::retain_modules`].
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    /// Compiles that may run at once: one per core. Each uses several
    /// hundred MiB for a Python or JavaScript module, so more would only
    /// raise peak memory.
    compile_slots: (Mutex<usize>, std::sync::Condvar),
    max_memory_bytes: usize,
    ticker_stop: Arc<AtomicBool>,
}

/// Settings fixed for the life of a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Directory of precompiled modules; `None` disables the cache.
    pub module_cache: Option<PathBuf>,
    /// Total instances across all plugins.
    pub instance_slots: u32,
    /// Largest memory cap a plugin may have.
    pub max_memory_bytes: usize,
    /// Most bytes the module cache may hold.
    pub module_cache_bytes: u64,
    /// How modules are compiled.
    pub compiler: crate::config::Compiler,
}

impl RuntimeOptions {
    /// Options from the config file's `runtime` section.
    pub fn from_config(cfg: &crate::config::RuntimeConfig) -> RuntimeOptions {
        let module_cache = if cfg.no_module_cache {
            None
        } else {
            cfg.module_cache
                .as_ref()
                .map(PathBuf::from)
                .or_else(cache::default_dir)
        };
        RuntimeOptions {
            module_cache,
            instance_slots: cfg.instance_slots,
            max_memory_bytes: cfg.max_memory_mb as usize * 1024 * 1024,
            module_cache_bytes: cfg.module_cache_mb.saturating_mul(1024 * 1024),
            compiler: cfg.compiler,
        }
    }
}

impl Runtime {
    /// Build the engine (pooling allocator, epoch interruption) and linker.
    pub fn new(
        options: RuntimeOptions,
        clock: Clock,
        state: SharedState,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Runtime> {
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        let slots = options.instance_slots.max(1);
        pool.total_component_instances(slots)
            .total_core_instances(slots.saturating_mul(4))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            .total_stacks(slots)
            .max_memory_size(options.max_memory_bytes);
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        match options.compiler {
            crate::config::Compiler::Cranelift => {
                config.strategy(wasmtime::Strategy::Cranelift);
            }
            crate::config::Compiler::CraneliftUnoptimized => {
                config
                    .strategy(wasmtime::Strategy::Cranelift)
                    .cranelift_opt_level(wasmtime::OptLevel::None);
            }
            crate::config::Compiler::Winch => {
                config.strategy(wasmtime::Strategy::Winch);
            }
        }
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        bindings::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;

        // A plain thread, not a tokio task: the deadline must keep ticking even
        // when every runtime worker is busy running guests.
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.weak();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("wicket-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engine.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })?;
        }

        Ok(Runtime {
            engine,
            linker,
            cache: options.module_cache.map(|dir| cache::Cache {
                dir,
                max_bytes: options.module_cache_bytes,
            }),
            clock,
            state,
            metrics,
            compiled: Mutex::new(HashMap::new()),
            compile_slots: (
                Mutex::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
                std::sync::Condvar::new(),
            ),
            max_memory_bytes: options.max_memory_bytes,
            ticker_stop,
        })
    }

    /// The gateway's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The shared plugin state.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Load and link a plugin's component. `base` resolves a relative module path.
    pub fn load(
        self: &Arc<Self>,
        name: &str,
        cfg: &PluginConfig,
        base: &Path,
    ) -> Result<Arc<Plugin>, String> {
        if cfg.limits.instances == 0 {
            return Err("limits.instances must be at least 1".into());
        }
        if cfg.limits.deadline_ms == 0 {
            return Err("limits.deadline_ms must be at least 1".into());
        }
        if cfg.limits.init_deadline_ms == 0 {
            return Err("limits.init_deadline_ms must be at least 1".into());
        }
        let path = base.join(&cfg.module);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("module: cannot read {}: {e}", path.display()))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let language = Language::of(&bytes);
        let memory_mb = cfg
            .limits
            .memory_mb
            .unwrap_or_else(|| language.default_memory_mb());
        if memory_mb as usize * 1024 * 1024 > self.max_memory_bytes {
            return Err(format!(
                "limits.memory_mb {memory_mb}{} exceeds runtime.max_memory_mb {}",
                if cfg.limits.memory_mb.is_none() {
                    format!(" (the default for {language})")
                } else {
                    String::new()
                },
                self.max_memory_bytes / (1024 * 1024)
            ));
        }
        let component = self
            .component(&digest, &bytes)
            .map_err(|e| format!("module: {} is not a usable component: {e}", path.display()))?;
        let misfit = |e: &dyn std::fmt::Display| {
            format!(
                "module: {} does not fit the wicket:plugin contract: {e}",
                path.display()
            )
        };
        let exports = Exports::new(&component).map_err(|e| misfit(&e))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| misfit(&e))?;
        Ok(Arc::new(Plugin {
            name: Arc::from(name),
            digest,
            pre,
            exports,
            language,
            memory_bytes: memory_mb as usize * 1024 * 1024,
            limits: cfg.limits.clone(),
            failure: cfg.failure,
            isolation: cfg.isolation,
            config: cfg.clone(),
            runtime: self.clone(),
        }))
    }

    fn component(&self, digest: &[u8; 32], bytes: &[u8]) -> wasmtime::Result<Component> {
        let known = |compiled: &HashMap<[u8; 32], Component>| compiled.get(digest).cloned();
        if let Some(c) = known(&self.compiled.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(c);
        }
        // Compile without the lock, so modules compile side by side, one
        // per core.
        let component = {
            let (slots, freed) = &self.compile_slots;
            let mut free = slots.lock().unwrap_or_else(|p| p.into_inner());
            while *free == 0 {
                free = freed.wait(free).unwrap_or_else(|p| p.into_inner());
            }
            *free -= 1;
            drop(free);
            let result = cache::load_or_compile(&self.engine, self.cache.as_ref(), digest, bytes);
            *slots.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            freed.notify_one();
            result?
        };
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        Ok(compiled.entry(*digest).or_insert(component).clone())
    }

    /// Compile (or load from the cache) the module at `path` and say
    /// whether it came from the cache: what `wicket compile` does for each
    /// plugin of a configuration, so an image ships with its cache filled.
    pub fn precompile(&self, path: &Path) -> Result<(Language, bool), String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let cached = self
            .cache
            .as_ref()
            .is_some_and(|c| c.has(&self.engine, &digest));
        self.component(&digest, &bytes)
            .map_err(|e| format!("{} is not a usable component: {e}", path.display()))?;
        Ok((Language::of(&bytes), cached))
    }

    /// Forget compiled modules whose digests are not in `keep`; called after a
    /// reload so memory returns to its level.
    pub fn retain_modules(&self, keep: &[[u8; 32]]) {
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        compiled.retain(|d, _| keep.contains(d));
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A loaded plugin: its compiled, linked component and how it is run.
pub struct Plugin {
    name: Arc<str>,
    digest: [u8; 32],
    pre: InstancePre<HostState>,
    exports: Exports,
    language: Language,
    /// The memory cap per instance: `limits.memory_mb` or the language's
    /// default.
    memory_bytes: usize,
    limits: Limits,
    failure: FailurePolicy,
    isolation: Isolation,
    config: PluginConfig,
    runtime: Arc<Runtime>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).finish()
    }
}

impl Plugin {
    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its name, shared (for records that outlive the call).
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// The SHA-256 of the module's bytes.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Whether `other` runs the same module with the same settings, so that
    /// a reload can keep this plugin and its initialised instances.
    pub fn same_as(&self, other: &Plugin) -> bool {
        self.digest == other.digest && self.config == other.config
    }

    /// The language the module was written in, as far as the host can tell.
    pub fn language(&self) -> Language {
        self.language
    }

    /// What a failure of this plugin does to the request.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.failure
    }

    /// Its settings as configured.
    pub fn settings(&self) -> &PluginConfig {
        &self.config
    }

    /// Most live instances per pool.
    pub fn instances_limit(&self) -> u32 {
        self.limits.instances
    }

    /// Create a pool for one route's configuration of this plugin, and prove
    /// the configuration by initialising its first instance. `upstreams` are
    /// the configuration's upstream names, which `init` may check against.
    pub async fn pool(
        self: &Arc<Self>,
        config_json: String,
        upstreams: Arc<[String]>,
    ) -> Result<Arc<Pool>, PluginError> {
        let mut pool = Pool {
            plugin: self.clone(),
            config: config_json,
            upstreams,
            hooks: Hooks::default(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(self.limits.instances as usize)),
            stats: Default::default(),
        };
        let (first, hooks) = pool.fresh_instance().await?;
        first.store.data().limiter.check_headroom()?;
        pool.hooks = hooks;
        if self.isolation == Isolation::Pooled {
            pool.put(first);
        }
        Ok(Arc::new(pool))
    }

    fn new_store(&self, upstreams: &Arc<[String]>) -> Store<HostState> {
        let mut wasi = WasiCtxBuilder::new();
        // Deny by default: no preopened directories, environment, arguments or
        // network. Guest output goes to the log.
        let out = GuestOutput::new(self.name.clone());
        wasi.stdout(out.clone())
            .stderr(out.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let rt = &self.runtime;
        let state = HostState {
            ctx: HostContext {
                plugin: self.name.clone(),
                clock: rt.clock.clone(),
                state: rt.state.clone(),
                metrics: rt.metrics.clone(),
            },
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryCap::new(self.memory_bytes),
            output: out,
            ticks_left: 0,
            deadline_ms: 0,
            deadline_at: tokio::time::Instant::now(),
            state_deadline: tokio::time::Instant::now(),
            call: None,
            upstreams: upstreams.clone(),
            counters: Default::default(),
            histograms: Default::default(),
        };
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| {
            let data = ctx.data_mut();
            if data.ticks_left == 0 {
                return Err(wasmtime::Error::new(DeadlineExceeded(data.deadline_ms)));
            }
            data.ticks_left -= 1;
            // Yield at every tick so a busy guest never holds a worker thread
            // for longer than one tick.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    fn arm_deadline(&self, store: &mut Store<HostState>) {
        self.arm(store, self.limits.deadline_ms);
    }

    /// Arm the epoch deadline of the next call at `ms`.
    fn arm(&self, store: &mut Store<HostState>, ms: u64) {
        let ticks = ms.div_ceil(EPOCH_TICK.as_millis() as u64);
        let data = store.data_mut();
        data.ticks_left = ticks;
        data.deadline_ms = ms;
        // The one clock read of a call: the wall-clock bound below and the
        // state calls' cut-off both come from it. State calls must finish a
        // fifth of the deadline early, so a plugin told `unavailable` still
        // has time to answer with its own error.
        let at = tokio::time::Instant::now() + Duration::from_millis(ms);
        data.deadline_at = at;
        data.state_deadline = at - Duration::from_millis(ms / 5);
        data.limiter.refused = None;
        store.set_epoch_deadline(1);
    }

    /// Bound a hook call by the deadline in wall-clock time. The epoch
    /// deadline only counts time spent running guest code; this one also
    /// counts the host calls the guest awaits (state, I/O). When it passes,
    /// the call's future is dropped — the guest is stopped where it was — and
    /// the store is left for the caller to take the request head back from
    /// and then discard.
    /// `at` is the instant [`Plugin::arm`] computed for a deadline of `ms`.
    async fn wall_clock<T>(
        &self,
        at: tokio::time::Instant,
        ms: u64,
        call: impl std::future::Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        match tokio::time::timeout_at(at, call).await {
            Ok(result) => result,
            Err(_) => Err(wasmtime::Error::new(DeadlineExceeded(ms))),
        }
    }

    /// Name what stopped a call. `data` is the instance's store, which
    /// knows whether a memory request was just refused and what the guest
    /// last wrote to stderr — a Python traceback or a JavaScript exception
    /// says more than the wasm backtrace of the `abort` it ended in.
    fn classify(&self, err: wasmtime::Error, data: &HostState) -> PluginError {
        if let Some(DeadlineExceeded(ms)) = err.downcast_ref::<DeadlineExceeded>() {
            return PluginError::Deadline(*ms);
        }
        if let Some(desired) = data.limiter.refused {
            // The guest was told "no" (memory.grow returned -1) and then
            // trapped rather than recover: the cap is why.
            let cap = MemoryCapExceeded {
                cap: data.limiter.max_bytes,
                desired,
            };
            return PluginError::MemoryCap(with_guest_output(cap.to_string(), data));
        }
        tracing::debug!(
            plugin = &*self.name,
            error = format!("{err:#}"),
            "guest trapped"
        );
        PluginError::Trap(trap_message(&err, data))
    }
}

/// A call ran past its deadline of this many milliseconds.
#[derive(Debug, thiserror::Error)]
#[error("deadline of {0} ms exceeded")]
struct DeadlineExceeded(u64);

/// `message`, followed by what the guest last wrote to stderr, if anything.
fn with_guest_output(message: String, data: &HostState) -> String {
    match data.output.recent() {
        Some(said) => format!("{message}; guest output: {said}"),
        None => message,
    }
}

/// A trap as a plugin author reads it: what the guest said before it
/// stopped (a Python traceback, a JavaScript exception, a Rust panic)
/// first, with the trap's cause; the wasm backtrace only when the guest said
/// nothing, since it is all there is then.
fn trap_message(err: &wasmtime::Error, data: &HostState) -> String {
    match data.output.recent() {
        Some(said) => format!("{said} [{}]", err.root_cause()),
        None => format!("{err:#}"),
    }
}

/// An initialised instance.
struct Instance {
    store: Store<HostState>,
    funcs: Funcs,
}

/// The hooks a plugin declared in `init`; the chain skips the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks {
    /// Call `on-request`.
    pub on_request: bool,
    /// Call `on-response`.
    pub on_response: bool,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            on_request: true,
            on_response: true,
        }
    }
}

/// The instances of one plugin with one route configuration.
pub struct Pool {
    plugin: Arc<Plugin>,
    config: String,
    /// The upstream names its instances' `init` saw.
    upstreams: Arc<[String]>,
    /// What the first instance's `init` declared. Every instance of a pool
    /// runs the same module with the same config, and `init` must be
    /// deterministic, so one answer holds for all.
    hooks: Hooks,
    idle: Mutex<Vec<Instance>>,
    /// Bounds live instances (idle + in use) to `limits.instances`.
    permits: Arc<Semaphore>,
    /// Its hook calls, counted for the admin page.
    stats: crate::telemetry::hooks::HookStats,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("plugin", &self.plugin.name)
            .field("config", &self.config)
            .finish()
    }
}

/// A borrowed instance; goes back to the pool only if the call succeeded.
struct Lease<'a> {
    pool: &'a Pool,
    instance: Option<Instance>,
    /// False from the start of a call until it completes. A caller may drop
    /// the call's future half-way (the client went away, a timeout fired):
    /// the guest is then stopped inside its code and wasmtime refuses to
    /// enter that instance again, so it must not go back to the pool.
    settled: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Lease<'_> {
    /// The instance, for a call that is about to start.
    fn begin_call(&mut self) -> &mut Instance {
        self.settled = false;
        self.instance.as_mut().expect("a lease holds an instance")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.settled {
            return;
        }
        if let Some(instance) = self.instance.take() {
            if self.pool.plugin.isolation != Isolation::Pooled {
                return;
            }
            if instance.store.data().limiter.worn() {
                // Linear memory never shrinks: an instance whose heap has
                // crept up (a garbage-collected runtime's slow growth, a
                // fragmented allocator) is replaced before it meets its cap
                // mid-request. The next lease initialises a fresh one.
                self.pool
                    .plugin
                    .runtime
                    .metrics
                    .plugin_instance_recycled(&self.pool.plugin.name);
                return;
            }
            self.pool.put(instance);
        }
    }
}

impl Pool {
    /// The plugin this pool runs.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The JSON configuration its instances were initialised with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The upstream names its instances were initialised with.
    pub fn upstreams(&self) -> &[String] {
        &self.upstreams
    }

    /// Its hook calls so far.
    pub fn stats(&self) -> &crate::telemetry::hooks::HookStats {
        &self.stats
    }

    /// Instances initialised and waiting for a request.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn put(&self, instance: Instance) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(instance);
    }

    /// The hooks this pool's plugin implements.
    pub fn hooks(&self) -> Hooks {
        self.hooks
    }

    async fn fresh_instance(&self) -> Result<(Instance, Hooks), PluginError> {
        let plugin = &self.plugin;
        let mut store = plugin.new_store(&self.upstreams);
        // Instantiation and `init` have a deadline of their own: a Python or
        // JavaScript guest starts its interpreter there, which takes longer
        // than a hook. (A new store's deadline starts at zero and would trap
        // at once otherwise.)
        let init_ms = plugin.limits.init_deadline_ms;
        plugin.arm(&mut store, init_ms);
        let instantiated = match plugin.pre.instantiate_async(&mut store).await {
            Ok(instance) => plugin.exports.funcs(&mut store, &instance),
            Err(e) => Err(e),
        };
        let funcs = instantiated.map_err(|e| match plugin.classify(e, store.data()) {
            PluginError::Trap(m) => PluginError::Instantiate(m),
            other => other,
        })?;
        plugin.arm(&mut store, init_ms);
        let at = store.data().deadline_at;
        let hooks = match plugin
            .wall_clock(at, init_ms, funcs.init(&mut store, &self.config))
            .await
        {
            Ok(Ok(hooks)) => hooks,
            Ok(Err(message)) => return Err(PluginError::Init(message)),
            Err(e) => {
                return Err(match plugin.classify(e, store.data()) {
                    // An exception `init` did not turn into `err` is still
                    // the guest refusing to start: report it as init's.
                    PluginError::Trap(m) => PluginError::Init(format!("init trapped: {m}")),
                    other => other,
                });
            }
        };
        funcs.exports(hooks).map_err(PluginError::Init)?;
        store.data_mut().limiter.settle();
        Ok((Instance { store, funcs }, hooks))
    }

    async fn lease(&self) -> Result<Lease<'_>, PluginError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_permit().await?,
        };
        let idle = if self.plugin.isolation == Isolation::Pooled {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
        } else {
            None
        };
        let instance = match idle {
            Some(i) => i,
            None => self.fresh_instance().await?.0,
        };
        Ok(Lease {
            pool: self,
            instance: Some(instance),
            settled: true,
            _permit: permit,
        })
    }

    /// Wait a bounded time for an instance to come free: an unbounded queue
    /// behind a slow plugin would hold requests (and their memory) forever.
    async fn wait_for_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PluginError> {
        let limits = &self.plugin.limits;
        let wait = Duration::from_millis(limits.queue_timeout_ms);
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(permit) => Ok(permit.expect("pool semaphores are never closed")),
            Err(_) => {
                let err = PluginError::Busy(limits.queue_timeout_ms, limits.instances);
                self.plugin
                    .runtime
                    .metrics
                    .plugin_failure(&self.plugin.name, err.kind());
                Err(err)
            }
        }
    }

    /// Run `on-request` on the request head `parts`, which the guest reads
    /// in place: it is moved into the instance's store for the call and back
    /// after it.
    pub async fn on_request(
        &self,
        parts: &mut http::request::Parts,
        info: &Arc<RequestInfo>,
        upstream: &Arc<Upstream>,
        context: &mut Context,
    ) -> Result<RequestDecision, PluginError> {
        let mut lease = self.lease().await?;
        let plugin = &self.plugin;
        let result = {
            let inst = lease.begin_call();
            plugin.arm_deadline(&mut inst.store);
            let call = lend(parts, info, upstream, None, 0, context);
            inst.store.data_mut().call = Some(call);
            let (at, ms) = (inst.store.data().deadline_at, plugin.limits.deadline_ms);
            let result = plugin
                .wall_clock(at, ms, inst.funcs.on_request(&mut inst.store))
                .await;
            restore(&mut inst.store, parts, None, context);
            result
        };
        self.finish(&mut lease, result)
            .and_then(|a| bindings::request_decision(a, &plugin.limits))
    }

    /// Run `on-response`. The request head and the response head are lent to
    /// the guest as in [`Pool::on_request`].
    pub async fn on_response(
        &self,
        parts: &mut http::request::Parts,
        info: &Arc<RequestInfo>,
        upstream: &Arc<Upstream>,
        outcome: &UpstreamOutcome,
        resp: &mut http::response::Parts,
        context: &mut Context,
    ) -> Result<ResponseDecision, PluginError> {
        let attempts = outcome.attempts;
        let outcome = bindings::outcome(outcome);
        let mut lease = self.lease().await?;
        let plugin = &self.plugin;
        let result = {
            let inst = lease.begin_call();
            plugin.arm_deadline(&mut inst.store);
            let response = (resp.status, std::mem::take(&mut resp.headers));
            let call = lend(parts, info, upstream, Some(response), attempts, context);
            inst.store.data_mut().call = Some(call);
            let (at, ms) = (inst.store.data().deadline_at, plugin.limits.deadline_ms);
            let result = plugin
                .wall_clock(at, ms, inst.funcs.on_response(&mut inst.store, outcome))
                .await;
            restore(&mut inst.store, parts, Some(&mut resp.headers), context);
            result
        };
        self.finish(&mut lease, result)
            .and_then(|a| bindings::response_decision(a, &plugin.limits))
    }

    /// Discard the instance on failure so a broken one is never reused.
    fn finish<T>(
        &self,
        lease: &mut Lease<'_>,
        result: wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        lease.settled = true;
        result.map_err(|e| {
            let err = match lease.instance.take() {
                Some(instance) => self.plugin.classify(e, instance.store.data()),
                None => PluginError::Trap(format!("{e:#}")),
            };
            self.plugin
                .runtime
                .metrics
                .plugin_failure(&self.plugin.name, err.kind());
            err
        })
    }

    /// Idle instances held (for tests and the admin page).
    pub fn idle_len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// What routing decided about a request: the facts every hook call of the
/// request shares besides the head itself.
#[derive(Debug)]
pub struct RequestInfo {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Host as the client sent it.
    pub authority: String,
    /// The client's address (formatted only when a plugin asks).
    pub client: std::net::SocketAddr,
    /// Matched route name.
    pub route: Arc<str>,
    /// The path the route matched, as the client sent it; `params` are
    /// ranges of it.
    pub path: String,
    /// Captured path parameters.
    pub params: Params,
    /// The request's id, for log lines and error replies.
    pub request_id: crate::request::RequestId,
    /// What the connection's TLS handshake negotiated, if it had one.
    pub tls: Option<Arc<crate::server::tls::TlsInfo>>,
}

/// Move the request head (and response head) into a [`Call`], leaving an
/// empty head behind until [`restore`] puts it back.
fn lend(
    parts: &mut http::request::Parts,
    info: &Arc<RequestInfo>,
    upstream: &Arc<Upstream>,
    response: Option<(StatusCode, http::HeaderMap)>,
    attempts: u32,
    context: &mut Context,
) -> Call {
    let empty = http::Request::new(()).into_parts().0;
    Call {
        parts: std::mem::replace(parts, empty),
        info: info.clone(),
        upstream: upstream.clone(),
        response,
        attempts,
        context: std::mem::take(context),
    }
}

/// Take back what [`lend`] moved into the store. Runs whether the call
/// succeeded or failed, so a fail-open plugin leaves the request intact. (If
/// the call's future is dropped half-way, the request is being abandoned and
/// the head goes with the discarded instance.)
fn restore(
    store: &mut Store<HostState>,
    parts: &mut http::request::Parts,
    response_headers: Option<&mut http::HeaderMap>,
    context: &mut Context,
) {
    if let Some(call) = store.data_mut().call.take() {
        *parts = call.parts;
        *context = call.context;
        if let (Some(out), Some((_, headers))) = (response_headers, call.response) {
            *out = headers;
        }
    }
}

/// What `on-request` decided.
#[derive(Debug)]
pub enum RequestDecision {
    /// Go on, with these changes.
    Continue(RequestPatch),
    /// Answer the client with this.
    Respond(PluginResponse),
}

/// Validated changes to the upstream request.
#[derive(Debug, Default)]
pub struct RequestPatch {
    /// Set (replace) these headers.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Remove these headers first.
    pub remove_headers: Vec<HeaderName>,
    /// New path.
    pub path: Option<String>,
    /// New query (empty: none).
    pub query: Option<String>,
    /// Another upstream.
    pub upstream: Option<String>,
    /// Added to the client's final response.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
}

impl RequestPatch {
    /// Apply the changes to the request head — headers (removals first),
    /// path and query — taking them out of the patch; `upstream` and
    /// `response_headers` stay for the caller. Fails only on a path and
    /// query that together are not a URI.
    pub fn apply_to_head(
        &mut self,
        parts: &mut http::request::Parts,
    ) -> Result<(), http::uri::InvalidUri> {
        for name in &self.remove_headers {
            parts.headers.remove(name);
        }
        for (name, value) in std::mem::take(&mut self.set_headers) {
            parts.headers.insert(name, value);
        }
        if self.path.is_some() || self.query.is_some() {
            let path = self
                .path
                .take()
                .unwrap_or_else(|| parts.uri.path().to_string());
            let query = match self.query.take() {
                Some(q) => (!q.is_empty()).then_some(q),
                None => parts.uri.query().map(str::to_string),
            };
            let pq = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            parts.uri = pq.parse()?;
        }
        Ok(())
    }
}

impl ResponsePatch {
    /// Apply the changes to a response head: status, then removals, then
    /// headers set.
    pub fn apply(self, head: &mut http::response::Parts) {
        if let Some(s) = self.status {
            head.status = s;
        }
        for name in &self.remove_headers {
            head.headers.remove(name);
        }
        for (name, value) in self.set_headers {
            head.headers.insert(name, value);
        }
    }
}

/// A complete response from a plugin.
#[derive(Debug)]
pub struct PluginResponse {
    /// 200–599.
    pub status: StatusCode,
    /// Headers, validated.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
}

/// What `on-response` decided.
#[derive(Debug)]
pub enum ResponseDecision {
    /// Keep the response with these changes.
    Continue(ResponsePatch),
    /// Send this instead.
    Replace(PluginResponse),
}

/// Validated changes to the response head.
#[derive(Debug, Default)]
pub struct ResponsePatch {
    /// New status.
    pub status: Option<StatusCode>,
    /// Set (replace) these headers.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Remove these headers first.
    pub remove_headers: Vec<HeaderName>,
}

/// What happened upstream, as `on-response` sees it.
#[derive(Debug, Clone)]
pub struct UpstreamOutcome {
    /// Status, error or skipped.
    pub result: OutcomeResult,
    /// Microseconds until the response head or the failure.
    pub latency_us: u64,
    /// The endpoint of the last try.
    pub endpoint: Option<String>,
    /// Tries made: 1 unless the upstream retried; 0 when none was made.
    pub attempts: u32,
}

/// The upstream call's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeResult {
    /// It answered with this status.
    Status(u16),
    /// It failed.
    Error(UpstreamErrorKind),
    /// A plugin responded; the upstream was not called.
    Skipped,
}
