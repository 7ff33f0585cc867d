//! A running gateway: the current snapshot behind an atomic pointer, the
//! listeners serving it, the admin listener, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::config::{self, ConfigErrors};
use crate::metrics::Metrics;
use crate::plugin::{Runtime, RuntimeOptions};
use crate::proxy::{self, Conn};
use crate::snapshot::Snapshot;
use crate::state::SharedState;

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
                self.next_generation.fetch_add(1, Ordering::SeqCst);
                self.snapshot.store(Arc::new(snapshot));
                drop(current);
                self.runtime
                    .retain_modules(&self.current().module_digests());
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
        let text = read_config(&self.config_path)?;
        // A write cut short almost never ends exactly at a line break; refusing
        // such a file keeps a truncated config from being applied as a valid
        // smaller one.
        if !text.ends_with('\n') {
            return Err(config::ConfigError::at(
                "<file>",
                "does not end with a newline; refusing what may be an incomplete write",
            )
            .into());
        }
        let cfg = config::parse(&text)?;
        let base = base_dir(&self.config_path);
        if unchanged(current, &text, &cfg, base) {
            return Ok(None);
        }
        let generation = self.next_generation.load(Ordering::SeqCst);
        Snapshot::build(cfg, &text, base, &self.runtime, generation, Some(current))
            .await
            .map(Some)
    }
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
    let text = read_config(path)?;
    let cfg = config::parse(&text)?;
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
        let text = std::fs::read_to_string(&options.config_path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", options.config_path.display()))?;
        let cfg = config::parse(&text).map_err(ConfigErrors::from)?;
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

        let (shutdown, watch_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for l in &cfg.listeners {
            let listener = TcpListener::bind(l.address)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", l.address))?;
            addrs.push(listener.local_addr()?);
            tasks.spawn(serve(listener, shared.clone(), watch_rx.clone()));
        }
        let admin_addr = match &cfg.admin {
            Some(a) => {
                let listener = TcpListener::bind(a.address)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", a.address))?;
                let addr = listener.local_addr()?;
                tasks.spawn(crate::admin::serve(
                    listener,
                    shared.clone(),
                    watch_rx.clone(),
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
    }
}

/// Accept connections and serve them with the current snapshot until shutdown.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Conn { client: peer, scheme: "http" };
                let shared = shared.clone();
                let service = service_fn(move |req| {
                    let snapshot = shared.current();
                    async move { Ok::<_, Infallible>(proxy::handle(snapshot, req, conn).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let watched = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = watched.await {
                        tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain deadline passed; closing remaining connections"),
    }
}
