//! A validated, immutable generation of the configuration: routes, upstreams
//! and initialised plugin chains. Each request reads one snapshot once and is
//! served wholly by it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Method;
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::metrics::{Metrics, RouteMetrics};
use crate::plugin::{Plugin, Pool, Runtime};
use crate::request::Rules;
use crate::router::{Lookup, Params, RouteKey, Router};
use crate::server::tls::{self, ListenerTls};
use crate::upstream::Upstream;

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Configured name.
    pub name: Arc<str>,
    /// Default upstream.
    pub upstream: Arc<Upstream>,
    /// Plugin pools in `on-request` order.
    pub chain: Vec<Arc<Pool>>,
    /// Its request counter and latency histogram.
    pub metrics: RouteMetrics,
    /// Its own request body limit, if it has one.
    pub max_body_bytes: Option<u64>,
    /// WebSocket upgrades allowed, with this tunnel idle timeout.
    pub websocket: Option<std::time::Duration>,
    /// What it matches, as configured.
    pub matcher: crate::config::MatchConfig,
}

/// An immutable, validated configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with each applied configuration.
    pub generation: u64,
    /// SHA-256 (hex) of the configuration text.
    pub digest: String,
    /// Where each request's line goes; `None`: not logged.
    pub access_log: Option<Arc<crate::telemetry::access_log::AccessLog>>,
    /// Where each request's spans go; `None`: not traced.
    pub tracing: Option<Arc<crate::telemetry::trace::Tracing>>,
    /// The header that carries request ids.
    pub request_id_header: http::HeaderName,
    /// Whether a client's well-formed request id is kept.
    pub accept_request_id: bool,
    /// Whether responses carry `x-wicket-generation`.
    pub expose_generation: bool,
    /// Quiet period before a file change is applied.
    pub watch_debounce_ms: u64,
    /// Every plugin module file, for the watcher.
    pub module_paths: Vec<PathBuf>,
    /// How long a drain may take.
    pub drain_timeout: std::time::Duration,
    /// The listeners' configured addresses (fixed at start).
    pub listener_addrs: Vec<std::net::SocketAddr>,
    /// The admin listener as configured.
    pub admin: Option<crate::config::Admin>,
    /// The admin bearer token, read when this generation was built (so a
    /// reload rotates it).
    pub admin_token: Option<Arc<str>>,
    /// Where each plugin's shared state lives; applied to the runtime's
    /// store when this generation starts serving.
    pub state: Arc<crate::state::Routes>,
    listeners: Vec<Rules>,
    tls: Vec<Option<Arc<ListenerTls>>>,
    routes: Vec<Route>,
    router: Router,
    upstreams: HashMap<String, Arc<Upstream>>,
    plugins: HashMap<String, Arc<Plugin>>,
    pools: HashMap<(String, String), Arc<Pool>>,
    metrics: Arc<Metrics>,
}

impl Snapshot {
    /// Validate `config` fully and build a snapshot from it: routes indexed,
    /// upstreams built, every plugin compiled and `init`ed with each route's
    /// config. `base` is the config file's directory. All problems are
    /// reported, each with its location.
    ///
    /// Whatever is unchanged from `previous` is reused rather than rebuilt:
    /// upstreams (with their pooled connections), plugins and their pools of
    /// initialised instances.
    pub async fn build(
        config: Config,
        text: &str,
        base: &Path,
        runtime: &Arc<Runtime>,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        let mut errors = Vec::new();
        if config.listeners.is_empty() {
            errors.push(ConfigError::at(
                "listeners",
                "at least one listener is required",
            ));
        }

        let mut upstreams = HashMap::new();
        let mut starting = tokio::task::JoinSet::new();
        for (name, u) in &config.upstreams {
            if let Some(prev) = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|p| p.config() == u)
                .filter(|p| crate::server::tls::files_unchanged(p.tls_files()))
            {
                upstreams.insert(name.clone(), prev.clone());
                continue;
            }
            match Upstream::new(name, u, base) {
                Ok(up) => {
                    // A new upstream resolves its names and reads its
                    // registry before the snapshot serves (all side by
                    // side, below), then keeps them current.
                    starting.spawn(async move { (up.start().await, up) });
                }
                Err((field, msg)) => {
                    errors.push(ConfigError::at(format!("upstreams.{name}.{field}"), msg))
                }
            }
        }
        while let Some(started) = starting.join_next().await {
            let Ok((result, up)) = started else { continue };
            match result {
                Ok(()) => {
                    upstreams.insert(up.name().to_string(), up);
                }
                Err((field, msg)) => errors.push(ConfigError::at(
                    format!("upstreams.{}.{field}", up.name()),
                    msg,
                )),
            }
        }

        let state = match crate::state::Routes::build(
            &config,
            base,
            previous.map(|p| &*p.state),
            runtime.metrics(),
        ) {
            Ok(routes) => Arc::new(routes),
            Err(errs) => {
                errors.extend(
                    errs.into_iter()
                        .map(|(field, msg)| ConfigError::at(field, msg)),
                );
                Arc::default()
            }
        };

        // Compilation is CPU-heavy; keep it off the async workers so a reload
        // does not stall traffic, and compile the modules side by side (an
        // unchanged module is not compiled again: it is in memory or in the
        // module cache).
        let mut plugins = HashMap::new();
        let mut names: Vec<&String> = config.plugins.keys().collect();
        names.sort();
        let loading: Vec<_> = names
            .into_iter()
            .map(|name| {
                let p = &config.plugins[name];
                let (rt, name2, p2, base2) =
                    (runtime.clone(), name.clone(), p.clone(), base.to_path_buf());
                let task = tokio::task::spawn_blocking(move || rt.load(&name2, &p2, &base2));
                (name, task)
            })
            .collect();
        for (name, task) in loading {
            let loaded = task
                .await
                .unwrap_or_else(|e| Err(format!("loading panicked: {e}")));
            match loaded {
                Ok(plugin) => {
                    let plugin = match previous.and_then(|p| p.plugins.get(name)) {
                        Some(prev) if prev.same_as(&plugin) => prev.clone(),
                        _ => plugin,
                    };
                    plugins.insert(name.clone(), plugin);
                }
                Err(msg) => {
                    let (field, msg) = split_field(&msg);
                    errors.push(ConfigError::at(format!("plugins.{name}{field}"), msg));
                }
            }
        }

        let mut keys = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, r) in config.routes.iter().enumerate() {
            let at = |f: &str| format!("routes[{i}].{f}");
            if r.name.is_empty() {
                errors.push(ConfigError::at(at("name"), "must not be empty"));
            } else if let Some(first) = names.insert(&r.name, i) {
                errors.push(ConfigError::at(
                    at("name"),
                    format!("duplicate of routes[{first}].name {:?}", r.name),
                ));
            }
            if !upstreams.contains_key(&r.upstream) && !config.upstreams.contains_key(&r.upstream) {
                errors.push(ConfigError::at(
                    at("upstream"),
                    format!("no upstream named {:?}", r.upstream),
                ));
            }
            if !r.matcher.path.starts_with('/') {
                errors.push(ConfigError::at(at("match.path"), "must start with '/'"));
            }
            let methods = match &r.matcher.methods {
                None => None,
                Some(ms) => {
                    let mut parsed = Vec::new();
                    for (j, m) in ms.iter().enumerate() {
                        match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                            Ok(m) => parsed.push(m),
                            Err(_) => errors.push(ConfigError::at(
                                at(&format!("match.methods[{j}]")),
                                format!("invalid method {m:?}"),
                            )),
                        }
                    }
                    Some(parsed)
                }
            };
            keys.push(RouteKey {
                host: r.matcher.host.clone(),
                path: r.matcher.path.clone(),
                methods,
            });
        }
        let router = match Router::build(&keys) {
            Ok(r) => Some(r),
            Err(errs) => {
                errors.extend(
                    errs.into_iter()
                        .map(|(i, m)| ConfigError::at(format!("routes[{i}].match.path"), m)),
                );
                None
            }
        };

        // One pool per (plugin, config) pair: routes with the same plugin
        // configuration share instances.
        let mut upstream_names: Vec<String> = config.upstreams.keys().cloned().collect();
        upstream_names.sort();
        let upstream_names: Arc<[String]> = upstream_names.into();
        let mut pools: HashMap<(String, String), Arc<Pool>> = HashMap::new();
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let mut chain = Vec::new();
            for (j, entry) in r.plugins.iter().enumerate() {
                let at = format!("routes[{i}].plugins[{j}]");
                let Some(plugin) = plugins.get(&entry.name) else {
                    if !config.plugins.contains_key(&entry.name) {
                        errors.push(ConfigError::at(
                            format!("{at}.name"),
                            format!("no plugin named {:?}", entry.name),
                        ));
                    }
                    continue;
                };
                let json = entry
                    .config
                    .as_ref()
                    .map_or_else(|| "{}".to_string(), |v| v.to_string());
                let key = (entry.name.clone(), json.clone());
                if let Some(pool) = pools.get(&key) {
                    chain.push(pool.clone());
                    continue;
                }
                // An unchanged plugin with an unchanged config keeps its
                // initialised instances across a reload — unless the set of
                // upstreams changed, which `init` may have checked against.
                let kept = previous
                    .and_then(|p| p.pools.get(&key))
                    .filter(|pool| Arc::ptr_eq(pool.plugin(), plugin))
                    .filter(|pool| pool.upstreams() == &upstream_names[..]);
                if let Some(pool) = kept {
                    pools.insert(key, pool.clone());
                    chain.push(pool.clone());
                    continue;
                }
                match plugin.pool(json, upstream_names.clone()).await {
                    Ok(pool) => {
                        pools.insert(key, pool.clone());
                        chain.push(pool);
                    }
                    // Too little memory is the plugin's setting, not this
                    // route's config.
                    Err(e @ crate::plugin::PluginError::MemoryCap(_)) => {
                        errors.push(ConfigError::at(
                            format!("plugins.{}.limits.memory_mb", entry.name),
                            format!("{e} (initialising {at})"),
                        ))
                    }
                    Err(e) => errors.push(ConfigError::at(format!("{at}.config"), e.to_string())),
                }
            }
            if let Some(w) = &r.websocket {
                if w.idle_timeout_ms == 0 {
                    errors.push(ConfigError::at(
                        format!("routes[{i}].websocket.idle_timeout_ms"),
                        "must be at least 1",
                    ));
                }
                if upstreams.get(&r.upstream).is_some_and(|u| !u.is_http1()) {
                    errors.push(ConfigError::at(
                        format!("routes[{i}].websocket"),
                        "WebSocket upgrades need an http1 upstream",
                    ));
                }
            }
            if let Some(up) = upstreams.get(&r.upstream) {
                routes.push(Route {
                    name: Arc::from(r.name.as_str()),
                    upstream: up.clone(),
                    chain,
                    matcher: r.matcher.clone(),
                    metrics: runtime.metrics().route(&r.name),
                    max_body_bytes: r.max_body_bytes,
                    websocket: r
                        .websocket
                        .as_ref()
                        .map(|w| std::time::Duration::from_millis(w.idle_timeout_ms)),
                });
            }
        }

        // TLS is rebuilt only when its settings or files changed: a kept
        // configuration keeps its session tickets valid across reloads.
        let mut listener_tls = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(cfg) = &l.tls else {
                listener_tls.push(None);
                continue;
            };
            let kept = previous
                .and_then(|p| p.tls.get(i).cloned().flatten())
                .filter(|prev| prev.source == *cfg && tls::files_unchanged(&prev.files));
            if let Some(prev) = kept {
                listener_tls.push(Some(prev));
                continue;
            }
            match tls::load(cfg, base, &format!("listeners[{i}].tls")) {
                Ok(t) => listener_tls.push(Some(Arc::new(t))),
                Err(e) => {
                    errors.extend(e);
                    listener_tls.push(None);
                }
            }
        }

        let admin_token =
            crate::config::validate_serving(&config, base, &mut errors).map(Arc::<str>::from);
        let request_id_header = request_id_header(&config.request_id.header)
            .map_err(|msg| errors.push(ConfigError::at("request_id.header", msg)))
            .ok();
        let access_log = crate::telemetry::access_log::AccessLog::build(
            &config.access_log,
            base,
            previous.and_then(|p| p.access_log.as_deref()),
            runtime.metrics(),
        )
        .map_err(|(at, msg)| errors.push(ConfigError::at(at, msg)))
        .ok()
        .flatten();
        let tracing = crate::telemetry::trace::Tracing::build(
            config.tracing.as_ref(),
            previous.and_then(|p| p.tracing.as_ref()),
            runtime.metrics().span_counters(),
        )
        .map_err(|(at, msg)| errors.push(ConfigError::at(at, msg)))
        .ok()
        .flatten();

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Snapshot {
            drain_timeout: std::time::Duration::from_millis(config.drain_timeout_ms),
            listeners: config.listeners.iter().map(Rules::from_config).collect(),
            tls: listener_tls,
            listener_addrs: config.listeners.iter().map(|l| l.address).collect(),
            admin: config.admin.clone(),
            admin_token,
            state,
            generation,
            digest: hex(&Sha256::digest(text.as_bytes())),
            access_log,
            tracing,
            request_id_header: request_id_header.expect("no errors means the header was valid"),
            accept_request_id: config.request_id.accept_inbound,
            expose_generation: config.expose_generation,
            watch_debounce_ms: config.watch_debounce_ms,
            module_paths: config
                .plugins
                .values()
                .map(|p| base.join(&p.module))
                .collect(),
            pools,
            routes,
            router: router.expect("no errors means the router was built"),
            upstreams,
            plugins,
            metrics: runtime.metrics().clone(),
        })
    }

    /// Find the route for a request.
    pub fn lookup(
        &self,
        host: &str,
        method: &Method,
        path: &str,
    ) -> Result<(&Route, Params), Lookup> {
        match self.router.lookup(host, method, path) {
            Lookup::Found(i, params) => Ok((&self.routes[i], params)),
            other => Err(other),
        }
    }

    /// The request rules of listener `index` (the defaults for an index
    /// this generation does not have, which a reload never produces: the
    /// listeners are fixed at start).
    pub fn listener(&self, index: usize) -> &Rules {
        static DEFAULT: std::sync::OnceLock<Rules> = std::sync::OnceLock::new();
        self.listeners
            .get(index)
            .unwrap_or_else(|| DEFAULT.get_or_init(Rules::default))
    }

    /// The TLS of listener `index`, when it terminates TLS.
    pub fn listener_tls(&self, index: usize) -> Option<Arc<ListenerTls>> {
        self.tls.get(index).cloned().flatten()
    }

    /// Every certificate, key and CA file the listeners and the upstreams
    /// read, with the digest of what was read: the watcher watches them, and
    /// a reload that finds one changed rebuilds what read it.
    pub fn tls_files(&self) -> impl Iterator<Item = &(PathBuf, [u8; 32])> {
        self.tls
            .iter()
            .flatten()
            .flat_map(|t| t.files.iter())
            .chain(self.upstreams.values().flat_map(|u| u.tls_files().iter()))
    }

    /// Publish this generation's certificates (expiry metric).
    pub fn publish_tls(&self) {
        self.metrics
            .tls_certificates(self.tls.iter().enumerate().flat_map(|(i, t)| {
                let listener = self.listener_addrs[i].to_string();
                t.iter().flat_map(move |t| {
                    let listener = listener.clone();
                    t.certificates().iter().map(move |c| {
                        (
                            listener.clone(),
                            c.label.as_str(),
                            c.file.as_str(),
                            c.not_after,
                        )
                    })
                })
            }));
    }

    /// The certificates each TLS listener serves, for `/status`.
    pub fn tls_status(&self) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let listeners: Vec<serde_json::Value> = self
            .tls
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let t = t.as_ref()?;
                let certs: Vec<serde_json::Value> = t
                    .certificates()
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "name": c.label,
                            "file": c.file,
                            "not_after": c.not_after,
                            "days_left": (c.not_after - now) / 86_400,
                            "expires_soon": c.not_after - now < tls::EXPIRY_WARNING_SECS,
                        })
                    })
                    .collect();
                Some(serde_json::json!({
                    "listener": self.listener_addrs[i].to_string(),
                    "certificates": certs,
                }))
            })
            .collect();
        serde_json::Value::Array(listeners)
    }

    /// Whether the configuration declares a plugin of this name.
    pub fn has_plugin(&self, name: &str) -> bool {
        self.plugins.contains_key(name)
    }

    /// An upstream by name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }

    /// Every upstream's live state, by name.
    pub fn upstream_statuses(&self) -> Vec<crate::upstream::status::UpstreamStatus> {
        let mut all: Vec<_> = self.upstreams.values().map(|u| u.status()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Digests of every module this snapshot uses.
    pub fn module_digests(&self) -> Vec<[u8; 32]> {
        self.plugins.values().map(|p| p.digest()).collect()
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The process's metrics, shared (for tasks that outlive a request).
    pub fn metrics_arc(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Number of routes.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Each pool's hook calls, for the Prometheus histogram: labelled by the
    /// plugin and the first 8 hex digits of the SHA-256 of the pool's
    /// per-route config (stable across reloads that keep it); hooks never
    /// called are left out.
    pub fn hook_series(&self) -> Vec<crate::metrics::HookSeries> {
        use crate::telemetry::hooks::{Hook, HookSummary};
        use sha2::Digest;
        let mut pools: Vec<_> = self.pools.iter().collect();
        pools.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = Vec::new();
        for ((plugin, config), pool) in pools {
            let digest = sha2::Sha256::digest(config.as_bytes());
            let id = hex(&digest[..4]);
            for hook in [Hook::Request, Hook::Response] {
                let mut sum = HookSummary::default();
                pool.stats().add_to(hook, &mut sum);
                if sum.calls > 0 {
                    out.push((plugin.clone(), id.clone(), hook, sum));
                }
            }
        }
        out
    }

    /// Routes with their chains, and plugins with their pools and calls, for
    /// the admin page (`/api/overview`).
    pub fn overview(&self) -> (serde_json::Value, serde_json::Value) {
        use crate::telemetry::hooks::{Hook, HookSummary};
        let routes: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": &*r.name,
                    "host": r.matcher.host,
                    "path": r.matcher.path,
                    "methods": r.matcher.methods,
                    "upstream": r.upstream.name(),
                    "plugins": r.chain.iter().map(|p| p.plugin().name()).collect::<Vec<_>>(),
                    "websocket": r.websocket.is_some(),
                })
            })
            .collect();
        let mut names: Vec<&String> = self.plugins.keys().collect();
        names.sort();
        let plugins: Vec<serde_json::Value> = names
            .into_iter()
            .map(|name| {
                let plugin = &self.plugins[name];
                let pools: Vec<&Arc<Pool>> = self
                    .pools
                    .iter()
                    .filter(|((p, _), _)| p == name)
                    .map(|(_, pool)| pool)
                    .collect();
                let summary = |hook| {
                    let mut sum = HookSummary::default();
                    for pool in &pools {
                        pool.stats().add_to(hook, &mut sum);
                    }
                    sum.finish()
                };
                let settings = plugin.settings();
                serde_json::json!({
                    "name": name,
                    "module": settings.module,
                    "language": format!("{:?}", plugin.language()).to_lowercase(),
                    "failure": match plugin.failure_policy() {
                        crate::config::FailurePolicy::FailOpen => "fail-open",
                        crate::config::FailurePolicy::FailClosed => "fail-closed",
                    },
                    "deadline_ms": settings.limits.deadline_ms,
                    "pools": pools.len(),
                    "instances_per_pool": plugin.instances_limit(),
                    "idle_instances": pools.iter().map(|p| p.idle_instances()).sum::<usize>(),
                    "on_request": summary(Hook::Request),
                    "on_response": summary(Hook::Response),
                })
            })
            .collect();
        (
            serde_json::Value::from(routes),
            serde_json::Value::from(plugins),
        )
    }
}

/// `load` errors may start with `field: `; turn that into a location suffix.
fn split_field(msg: &str) -> (String, String) {
    for field in [
        "module",
        "limits.memory_mb",
        "limits.instances",
        "limits.deadline_ms",
        "limits.init_deadline_ms",
    ] {
        if let Some(rest) = msg.strip_prefix(&format!("{field}: ")) {
            return (format!(".{field}"), rest.to_string());
        }
        if msg.starts_with(&format!("{field} ")) {
            return (format!(".{field}"), msg.to_string());
        }
    }
    (String::new(), msg.to_string())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request id header must be a header a client and an origin can carry
/// end to end: a valid name, and none the gateway itself frames or
/// rewrites.
fn request_id_header(name: &str) -> Result<http::HeaderName, String> {
    let h = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    const RESERVED: &[&str] = &[
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "cookie",
        "set-cookie",
        "authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "traceparent",
        "tracestate",
    ];
    if RESERVED.contains(&h.as_str()) {
        return Err(format!(
            "{name:?} is a header the gateway frames or rewrites; use e.g. x-request-id"
        ));
    }
    Ok(h)
}
