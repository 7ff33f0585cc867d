//! A running gateway: the current snapshot behind an atomic pointer, the
//! listeners serving it, the admin listener, and graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::config::{self, ConfigErrors};
use crate::metrics::Metrics;
use crate::plugin::{Runtime, RuntimeOptions};
use crate::proxy;
use crate::server;
use crate::snapshot::Snapshot;
use crate::state::SharedState;

/// Options for starting a gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file.
    pub config_path: PathBuf,
    /// The clock plugins and state use (manual in tests).
    pub clock: Clock,
    /// Override `runtime.module_cache` (tests share one cache directory).
    pub module_cache: Option<PathBuf>,
    /// Reload when the config file or a plugin module changes.
    pub watch: bool,
}

impl Options {
    /// Options for a config file with the system clock.
    pub fn new(config_path: impl Into<PathBuf>) -> Options {
        Options {
            config_path: config_path.into(),
            clock: Clock::system(),
            module_cache: None,
            watch: true,
        }
    }
}

/// What the admin page reports about the applied configuration.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Unix ms when the current generation was applied.
    pub applied_at_ms: u64,
    /// How long the last applied reload took, from reading the file to the
    /// swap, in µs (0 for the first generation).
    pub last_apply_us: u64,
    /// The last failed reload's errors, cleared by a successful one.
    pub last_error: Option<String>,
}

/// Shared between the listeners, the admin API and the [`Gateway`] handle.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    runtime: Arc<Runtime>,
    config_path: PathBuf,
    next_generation: AtomicU64,
    status: std::sync::Mutex<ReloadStatus>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The snapshot serving requests now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The configuration file being served.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Status of the last reload.
    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-read the config file, validate it fully, and swap it in; on any
    /// error keep the current generation. Reloads are serialised. Returns the
    /// generation now serving, which is the current one when nothing changed.
    pub async fn reload(&self) -> Result<u64, ConfigErrors> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.current();
        let started = std::time::Instant::now();
        match self.build_next(&current).await {
            Ok(None) => {
                tracing::debug!(generation = current.generation, "configuration unchanged");
                Ok(current.generation)
            }
            Ok(Some(snapshot)) => {
                let generation = snapshot.generation;
                self.runtime.state().apply(snapshot.state.clone()).await;
                self.next_generation.fetch_add(1, Ordering::SeqCst);
                self.snapshot.store(Arc::new(snapshot));
                drop(current);
                self.runtime
                    .retain_modules(&self.current().module_digests());
                self.current().publish_tls();
                let apply_us = started.elapsed().as_micros() as u64;
                let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
                status.applied_at_ms = now_ms();
                status.last_apply_us = apply_us;
                status.last_error = None;
                self.runtime.metrics().reload("ok");
                tracing::info!(generation, apply_us, "configuration applied");
                Ok(generation)
            }
            Err(errors) => {
                self.runtime.metrics().reload("error");
                self.runtime
                    .metrics()
                    .recent_errors
                    .push(crate::telemetry::recent::RecentError {
                        time: crate::telemetry::access_log::rfc3339(std::time::SystemTime::now()),
                        source: "reload",
                        request_id: None,
                        route: None,
                        status: None,
                        code: "config_rejected".into(),
                        message: errors.to_string(),
                    });
                tracing::error!(errors = %errors, "configuration rejected; keeping generation {}", current.generation);
                self.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_error = Some(errors.to_string());
                Err(errors)
            }
        }
    }

    /// The next snapshot, or `None` when the file and its modules are exactly
    /// what `current` already runs.
    async fn build_next(&self, current: &Snapshot) -> Result<Option<Snapshot>, ConfigErrors> {
        let quiet = Duration::from_millis(current.watch_debounce_ms);
        let (text, cfg) = load(&self.config_path, quiet).await?;
        let base = base_dir(&self.config_path);
        // A changed token file is a change too: a reload rotates the token.
        let token = cfg
            .admin
            .as_ref()
            .and_then(|a| config::admin_token(a, base).ok().flatten());
        if unchanged(current, &text, &cfg, base)
            && token.as_deref() == current.admin_token.as_deref()
            && crate::server::tls::files_unchanged(current.tls_files())
        {
            return Ok(None);
        }
        let mut fixed = Vec::new();
        if !cfg
            .listeners
            .iter()
            .map(|l| l.address)
            .eq(current.listener_addrs.iter().copied())
        {
            fixed.push(config::ConfigError::at(
                "listeners",
                "listener addresses changed: that needs a restart",
            ));
        }
        if cfg.admin.as_ref().map(|a| a.address) != current.admin.as_ref().map(|a| a.address) {
            fixed.push(config::ConfigError::at(
                "admin.address",
                "the admin address changed: that needs a restart",
            ));
        }
        if !fixed.is_empty() {
            return Err(ConfigErrors(fixed));
        }
        let generation = self.next_generation.load(Ordering::SeqCst);
        Snapshot::build(cfg, &text, base, &self.runtime, generation, Some(current))
            .await
            .map(Some)
    }
}

/// The one loader, for start, reload and `validate` alike: read the file,
/// read it again `quiet` later and insist on the same bytes (an in-place
/// write that paused is not applied half-done), insist on a final newline (a
/// cut write almost never ends at one), and parse. A reload waits the
/// running generation's debounce; start and `validate`, the default one.
pub async fn load(path: &Path, quiet: Duration) -> Result<(String, config::Config), ConfigErrors> {
    let mut text = read_config(path)?;
    let mut attempts = 0;
    loop {
        tokio::time::sleep(quiet).await;
        let again = read_config(path)?;
        if again == text {
            break;
        }
        attempts += 1;
        if attempts >= 10 {
            return Err(config::ConfigError::at(
                "<file>",
                "the file kept changing while it was read; refusing it until it is stable",
            )
            .into());
        }
        text = again;
    }
    // A syntax error says more than the missing newline; a cut file that
    // happens to parse is refused all the same.
    let cfg = config::parse(&text)?;
    if !text.ends_with('\n') {
        return Err(config::ConfigError::at(
            "<file>",
            "does not end with a newline; refusing what may be an incomplete write",
        )
        .into());
    }
    Ok((text, cfg))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        config::ConfigError::at("<file>", format!("cannot read {}: {e}", path.display())).into()
    })
}

/// Whether `text` and the modules it names are exactly what `current` runs.
fn unchanged(current: &Snapshot, text: &str, cfg: &config::Config, base: &Path) -> bool {
    use sha2::{Digest, Sha256};
    if crate::snapshot::hex(&Sha256::digest(text.as_bytes())) != current.digest {
        return false;
    }
    let mut digests: Vec<[u8; 32]> = Vec::new();
    for p in cfg.plugins.values() {
        match std::fs::read(base.join(&p.module)) {
            Ok(bytes) => digests.push(Sha256::digest(&bytes).into()),
            Err(_) => return false,
        }
    }
    let mut running = current.module_digests();
    digests.sort();
    running.sort();
    digests == running
}

fn base_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Validate a config file without serving it: parse, build, compile and
/// `init` every plugin.
pub async fn validate(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let (text, cfg) = load(path, config::DEFAULT_DEBOUNCE).await?;
    let clock = Clock::system();
    let runtime = Runtime::new(
        RuntimeOptions::from_config(&cfg.runtime),
        clock.clone(),
        SharedState::in_memory(clock),
        Arc::new(Metrics::new()),
    )
    .map_err(|e| config::ConfigError::at("runtime", e.to_string()))?;
    Snapshot::build(cfg, &text, base_dir(path), &Arc::new(runtime), 1, None).await
}

/// What `wicket compile` did with one plugin.
#[derive(Debug)]
pub struct Compiled {
    /// The plugin's configured name.
    pub plugin: String,
    /// Its language, or why it could not be compiled.
    pub result: Result<(crate::plugin::Language, bool), String>,
    /// Time to compile (or load) it.
    pub elapsed: std::time::Duration,
}

/// Fill the module cache with every plugin of the config at `path`, side
/// by side, so a gateway started later (in a container image built with the
/// cache) compiles nothing. Plugins are not initialised.
pub async fn compile(path: &Path) -> Result<Vec<Compiled>, ConfigErrors> {
    let (_, cfg) = load(path, config::DEFAULT_DEBOUNCE).await?;
    let options = RuntimeOptions::from_config(&cfg.runtime);
    if options.module_cache.is_none() {
        return Err(ConfigErrors(vec![config::ConfigError::at(
            "runtime.no_module_cache",
            "the module cache is off: there is nothing to fill",
        )]));
    }
    let clock = Clock::system();
    let runtime = Arc::new(
        Runtime::new(
            options,
            clock.clone(),
            SharedState::in_memory(clock),
            Arc::new(Metrics::new()),
        )
        .map_err(|e| ConfigErrors(vec![config::ConfigError::at("runtime", e.to_string())]))?,
    );
    let base = base_dir(path).to_path_buf();
    let mut names: Vec<&String> = cfg.plugins.keys().collect();
    names.sort();
    let tasks: Vec<_> = names
        .into_iter()
        .map(|name| {
            let (rt, module, name) = (
                runtime.clone(),
                base.join(&cfg.plugins[name].module),
                name.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let result = rt.precompile(&module);
                Compiled {
                    plugin: name,
                    result,
                    elapsed: started.elapsed(),
                }
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.map_err(|e| {
            ConfigErrors(vec![config::ConfigError::at(
                "plugins",
                format!("compiling panicked: {e}"),
            )])
        })?);
    }
    Ok(done)
}

/// A started gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Gateway {
    /// Load the configuration, bind every listener and start serving.
    pub async fn start(options: Options) -> anyhow::Result<Gateway> {
        crate::server::raise_fd_limit();
        let (text, cfg) = load(&options.config_path, config::DEFAULT_DEBOUNCE).await?;
        let mut runtime_opts = RuntimeOptions::from_config(&cfg.runtime);
        // An override only redirects the cache; a config that turns the cache
        // off keeps it off.
        if options.module_cache.is_some() && runtime_opts.module_cache.is_some() {
            runtime_opts.module_cache = options.module_cache.clone();
        }
        let runtime = Arc::new(Runtime::new(
            runtime_opts,
            options.clock.clone(),
            SharedState::in_memory(options.clock.clone()),
            Arc::new(Metrics::new()),
        )?);
        let snapshot = Snapshot::build(
            cfg.clone(),
            &text,
            base_dir(&options.config_path),
            &runtime,
            1,
            None,
        )
        .await?;
        snapshot.publish_tls();
        runtime.state().apply(snapshot.state.clone()).await;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            runtime,
            config_path: options.config_path.clone(),
            next_generation: AtomicU64::new(2),
            status: std::sync::Mutex::new(ReloadStatus {
                applied_at_ms: now_ms(),
                last_apply_us: 0,
                last_error: None,
            }),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        let weak = Arc::downgrade(&shared);
        let metrics = shared.runtime().metrics().clone();
        metrics.read_upstreams_from(move || {
            weak.upgrade()
                .map(|s| s.current().upstream_statuses())
                .unwrap_or_default()
        });
        let weak = Arc::downgrade(&shared);
        metrics.read_hooks_from(move || {
            weak.upgrade()
                .map(|s| s.current().hook_series())
                .unwrap_or_default()
        });

        let (shutdown, watch_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        let drain = shared.current().drain_timeout;
        for (i, l) in cfg.listeners.iter().enumerate() {
            let listener = TcpListener::bind(l.address)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", l.address))?;
            let addr = listener.local_addr()?;
            addrs.push(addr);
            let mut settings = server::Settings::for_listener(l);
            settings.metrics = metrics.connections(&addr.to_string(), settings.role);
            tasks.spawn(server::serve(
                listener,
                i,
                settings,
                ProxyHandler(shared.clone()),
                watch_rx.clone(),
                drain,
            ));
        }
        let admin_addr = match &cfg.admin {
            Some(a) => {
                let listener = TcpListener::bind(a.address)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", a.address))?;
                let addr = listener.local_addr()?;
                let mut settings = server::Settings::for_admin(a);
                settings.metrics = metrics.connections(&addr.to_string(), settings.role);
                tasks.spawn(server::serve(
                    listener,
                    0,
                    settings,
                    crate::admin::AdminHandler::new(shared.clone(), addr),
                    watch_rx.clone(),
                    drain,
                ));
                Some(addr)
            }
            None => None,
        };
        if options.watch {
            let watcher = crate::reload::Watcher::start(shared.clone()).map_err(|e| {
                anyhow::anyhow!("cannot watch {}: {e}", options.config_path.display())
            })?;
            tasks.spawn(watcher.run(watch_rx.clone()));
        }
        tracing::info!(listeners = ?addrs, admin = ?admin_addr, "wicket started");
        Ok(Gateway {
            shared,
            addrs,
            admin_addr,
            shutdown,
            tasks,
        })
    }

    /// The bound client listener addresses, in config order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound admin address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The shared state of the running gateway.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stop accepting, let in-flight requests finish (up to a deadline), and
    /// return when every connection is closed.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        // The spans of the last requests are sent before the process ends.
        if let Some(tracing) = self.shared.current().tracing.clone() {
            tracing.shutdown().await;
        }
    }
}

/// Client listeners serve each request with the snapshot current when it
/// arrives.
#[derive(Clone)]
struct ProxyHandler(Arc<Shared>);

impl server::Handler for ProxyHandler {
    fn call(
        self,
        req: http::Request<hyper::body::Incoming>,
        conn: crate::request::Conn,
    ) -> impl std::future::Future<Output = http::Response<crate::body::Body>> + Send + 'static {
        // Boxed: the request's whole state (≈ 4 KB) is otherwise moved by
        // value into hyper's per-stream task and its connection state.
        Box::pin(proxy::handle(self.0.current(), req, conn))
    }

    fn tls(&self, index: usize) -> Option<Arc<crate::server::tls::ListenerTls>> {
        self.0.current().listener_tls(index)
    }
}
