//! The configuration file's format: what serde reads, nothing more.
//!
//! Config flows one way: file → [`parse`] (serde, unknown fields rejected, errors
//! located by path) → [`crate::snapshot::Snapshot::build`] (validation, plugins
//! compiled and initialised) → an immutable snapshot. Field names are
//! snake_case; enumerated values are kebab-case.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway accepts client traffic.
    pub listeners: Vec<Listener>,
    /// The admin listener (metrics, status, reload). Off when absent.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Engine-wide settings of the plugin runtime.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// One line per request: `true` (the default: text on stdout), `false`,
    /// or [`AccessLogConfig`]'s fields.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// How each request is named in logs, error replies and upstream calls.
    #[serde(default)]
    pub request_id: RequestIdConfig,
    /// Traces of every request, exported over OTLP/HTTP. Off when absent.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Add `x-wicket-generation: <n>` to every response, naming the
    /// configuration generation that served it.
    #[serde(default)]
    pub expose_generation: bool,
    /// How long the watched files must stay quiet before a reload, in ms.
    #[serde(default = "default_debounce_ms")]
    pub watch_debounce_ms: u64,
    /// After SIGTERM/SIGINT, how long in-flight requests may take to finish
    /// before the remaining connections are cut, in ms.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Where plugins keep their shared state: this process's memory (the
    /// default) or a Redis every gateway of a fleet shares.
    #[serde(default)]
    pub state: StateConfig,
    /// Plugins by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Upstreams by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes, tried by host then path; order matters only for error messages.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn yes() -> bool {
    true
}

/// The access log: one line per request, written off the request path.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// Whether requests are logged at all.
    pub enabled: bool,
    /// `text` for people, `json` (one object per line) for machines.
    pub format: AccessLogFormat,
    /// A file to append to, relative to the config file; stdout when absent.
    /// Reopened on SIGUSR1, so logrotate can move it away.
    pub path: Option<String>,
    /// Share of successful requests (status below 400) logged, 0 to 1;
    /// every failed one is logged.
    pub sample_success: f64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            format: AccessLogFormat::Text,
            path: None,
            sample_success: 1.0,
        }
    }
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLogFormat {
    /// One human-readable line, nginx-like.
    #[default]
    Text,
    /// One JSON object per line, with a stable field set.
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessLogFields {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    format: AccessLogFormat,
    #[serde(default)]
    path: Option<String>,
    #[serde(default = "one")]
    sample_success: f64,
}

fn one() -> f64 {
    1.0
}

// `access_log: true|false` stays valid beside the map form; a map goes
// through a derived struct so unknown fields are still located errors.
impl<'de> Deserialize<'de> for AccessLogConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = AccessLogConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, or a map of enabled, format, path, sample_success")
            }
            fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<Self::Value, E> {
                Ok(AccessLogConfig {
                    enabled,
                    ..AccessLogConfig::default()
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let f = AccessLogFields::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(AccessLogConfig {
                    enabled: f.enabled,
                    format: f.format,
                    path: f.path,
                    sample_success: f.sample_success,
                })
            }
        }
        d.deserialize_any(Either)
    }
}

/// Request ids.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// The header that carries the id: read from the client (when
    /// `accept_inbound`), sent upstream, returned to the client.
    #[serde(default = "default_request_id_header")]
    pub header: String,
    /// Keep a well-formed id the client sent (1–128 characters of letters,
    /// digits and `-_.:+/=@`) instead of making one, so a request can be
    /// followed across systems. A malformed one is replaced.
    #[serde(default = "yes")]
    pub accept_inbound: bool,
}

impl Default for RequestIdConfig {
    fn default() -> Self {
        RequestIdConfig {
            header: default_request_id_header(),
            accept_inbound: true,
        }
    }
}

fn default_request_id_header() -> String {
    "x-request-id".into()
}

/// Traces: a span per request, per plugin hook call and per upstream call,
/// batched off the request path and exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where spans go.
    pub otlp: OtlpConfig,
    /// Share of new traces recorded, 0 to 1 (by trace id, so every gateway
    /// keeps the same traces).
    #[serde(default = "one")]
    pub sampling_ratio: f64,
    /// Follow the caller's decision when a `traceparent` carries one: a
    /// sampled parent is recorded, an unsampled one is not, whatever the
    /// ratio. When false, the ratio decides for every request.
    #[serde(default = "yes")]
    pub parent_based: bool,
    /// `service.name` of the resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes (`deployment.environment`, `host.name`, …).
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Finished spans waiting to be exported; past this, new ones are
    /// dropped (and counted) rather than held.
    #[serde(default = "default_trace_queue")]
    pub max_queue_spans: usize,
    /// Spans per export request.
    #[serde(default = "default_trace_batch")]
    pub max_batch_spans: usize,
    /// How long a partial batch may wait before it is sent, in ms.
    #[serde(default = "default_trace_flush_ms")]
    pub flush_interval_ms: u64,
}

/// The OTLP/HTTP collector.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The full URL spans are POSTed to, e.g.
    /// `http://127.0.0.1:4318/v1/traces` (plain HTTP: a collector beside
    /// the gateway).
    pub endpoint: String,
    /// How long one export request may take, in ms.
    #[serde(default = "default_otlp_timeout_ms")]
    pub timeout_ms: u64,
    /// Headers sent with every export request (an API key, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_service_name() -> String {
    "wicket".into()
}

fn default_trace_queue() -> usize {
    8192
}

fn default_trace_batch() -> usize {
    512
}

fn default_trace_flush_ms() -> u64 {
    1000
}

fn default_otlp_timeout_ms() -> u64 {
    5000
}

/// The quiet period when the configuration sets none; also how far apart
/// start-up and `validate` read the file twice.
pub const DEFAULT_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(200);

fn default_debounce_ms() -> u64 {
    DEFAULT_DEBOUNCE.as_millis() as u64
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

/// A client-facing listener: HTTP/1.1 and HTTP/2 on one port, in cleartext
/// or over TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `ip:port`; port 0 picks a free port.
    pub address: SocketAddr,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Answer every request with a redirect to HTTPS instead of routing it.
    #[serde(default)]
    pub redirect_https: Option<RedirectHttps>,
    /// Size limits on what clients send.
    #[serde(default)]
    pub limits: ListenerLimits,
    /// How long a connection may take at each stage.
    #[serde(default)]
    pub timeouts: ListenerTimeouts,
    /// How request paths are normalised.
    #[serde(default)]
    pub paths: PathConfig,
}

/// TLS termination on a listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificates served, chosen by the client's SNI; at least one.
    pub certificates: Vec<CertificateConfig>,
    /// The oldest protocol version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Protocols offered in ALPN, in preference order: `h2` and `http/1.1`.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Ask clients for a certificate and verify it against a CA bundle.
    #[serde(default)]
    pub client_auth: Option<ClientAuthConfig>,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

/// One certificate and its key, PEM files relative to the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The certificate chain, leaf first.
    pub cert: String,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// The host names it serves (exact or `*.` wildcard); by default the
    /// DNS names and IP addresses in its subjectAltName.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Served to clients whose SNI matches no certificate (or who send
    /// none). At most one certificate is the default; without one, the
    /// first is.
    #[serde(default)]
    pub default: bool,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[default]
    Tls12,
    /// TLS 1.3.
    Tls13,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML reads an unquoted `1.2` as a number; take it as meant.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"1.2\" or \"1.3\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsVersion, E> {
                match v {
                    "1.2" => Ok(TlsVersion::Tls12),
                    "1.3" => Ok(TlsVersion::Tls13),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                if v == 1.2 {
                    Ok(TlsVersion::Tls12)
                } else if v == 1.3 {
                    Ok(TlsVersion::Tls13)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Client certificates (mutual TLS) on a listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// PEM bundle of the CAs whose client certificates are accepted.
    pub ca: String,
    /// `required` (default): no certificate, no connection. `optional`: a
    /// client may present none (plugins see whether it did), but one it
    /// presents must verify.
    #[serde(default)]
    pub mode: ClientAuthMode,
}

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthMode {
    /// Every client presents a valid certificate.
    #[default]
    Required,
    /// A client may present none.
    Optional,
}

/// A cleartext listener that only redirects to HTTPS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedirectHttps {
    /// The HTTPS port named in the redirect (443 is left out of the URL).
    #[serde(default = "default_https_port")]
    pub port: u16,
}

fn default_https_port() -> u16 {
    443
}

/// Client-facing size limits; the defaults are nginx's and Envoy's edge
/// defaults, whichever is stricter.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// Longest request target (path and query), in bytes: 414 past it.
    #[serde(default = "default_max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Longest single header (name and value), in bytes: 431 past it.
    #[serde(default = "default_max_header_bytes_one")]
    pub max_header_bytes: usize,
    /// Most header fields in a request: 431 past it.
    #[serde(default = "default_max_request_headers")]
    pub max_headers: usize,
    /// All header fields together, in bytes (HTTP/2: the header list): 431 past it.
    #[serde(default = "default_max_headers_bytes")]
    pub max_headers_bytes: usize,
    /// Largest request body, in bytes, unless the route sets its own: 413
    /// past it (before reading when `Content-Length` says so).
    #[serde(default = "default_max_body_bytes_request")]
    pub max_body_bytes: u64,
    /// Most open client connections; past it the oldest idle one is closed
    /// to make room, or the new one is refused when none is idle.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2: most concurrent streams per connection, which also bounds
    /// the upstream requests one client connection can have in flight.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2: most requests of one connection handled at once (from the
    /// plugin chain to the response head); its other streams wait their
    /// turn, so one client's many slow requests cannot take every worker's
    /// time and the upstreams' connections from the others.
    #[serde(default = "default_max_requests_in_flight")]
    pub max_requests_in_flight: u32,
}

fn default_max_uri_bytes() -> usize {
    8 * 1024
}
fn default_max_header_bytes_one() -> usize {
    8 * 1024
}
fn default_max_request_headers() -> usize {
    100
}
fn default_max_headers_bytes() -> usize {
    32 * 1024
}
fn default_max_body_bytes_request() -> u64 {
    1024 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_max_requests_in_flight() -> u32 {
    16
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_uri_bytes: default_max_uri_bytes(),
            max_header_bytes: default_max_header_bytes_one(),
            max_headers: default_max_request_headers(),
            max_headers_bytes: default_max_headers_bytes(),
            max_body_bytes: default_max_body_bytes_request(),
            max_connections: default_max_connections(),
            max_concurrent_streams: default_max_concurrent_streams(),
            max_requests_in_flight: default_max_requests_in_flight(),
        }
    }
}

/// Connection timeouts, in milliseconds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTimeouts {
    /// From accept to the first byte, and to the end of the HTTP/2 preface.
    #[serde(default = "default_handshake_ms")]
    pub handshake_ms: u64,
    /// To read a whole HTTP/1.1 request head. hyper starts this clock as soon
    /// as it waits for the next request, so it also bounds how long an
    /// HTTP/1.1 keep-alive connection may sit idle.
    #[serde(default = "default_header_ms")]
    pub header_ms: u64,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2 with GOAWAY).
    #[serde(default = "default_idle_ms")]
    pub idle_ms: u64,
    /// Longest gap between two pieces of a request body: 408 past it.
    #[serde(default = "default_body_idle_ms")]
    pub body_idle_ms: u64,
}

fn default_handshake_ms() -> u64 {
    10_000
}
fn default_header_ms() -> u64 {
    10_000
}
fn default_idle_ms() -> u64 {
    60_000
}
fn default_body_idle_ms() -> u64 {
    30_000
}

impl Default for ListenerTimeouts {
    fn default() -> Self {
        ListenerTimeouts {
            handshake_ms: default_handshake_ms(),
            header_ms: default_header_ms(),
            idle_ms: default_idle_ms(),
            body_idle_ms: default_body_idle_ms(),
        }
    }
}

/// Path normalisation settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PathConfig {
    /// Collapse repeated slashes, as nginx does by default.
    #[serde(default = "yes")]
    pub merge_slashes: bool,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            merge_slashes: true,
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `ip:port`. Beyond loopback a token is required.
    pub address: SocketAddr,
    /// A file holding the bearer token every endpoint but `/livez` requires
    /// (relative to the config file's directory; surrounding whitespace is
    /// ignored).
    #[serde(default)]
    pub token_file: Option<String>,
    /// An environment variable holding the token, instead of a file.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Host names, besides the listener's own address and loopback names,
    /// that the `Host` and `Origin` headers may carry (DNS-rebinding guard).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Timeouts and connection cap, as for client listeners.
    #[serde(default)]
    pub timeouts: ListenerTimeouts,
    /// Most open admin connections.
    #[serde(default = "default_admin_connections")]
    pub max_connections: usize,
}

fn default_admin_connections() -> usize {
    64
}

/// Engine-wide plugin runtime settings. Changing these needs a restart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Directory for precompiled modules; `~/.cache/wicket` when absent.
    #[serde(default)]
    pub module_cache: Option<String>,
    /// Disable the precompiled-module cache.
    #[serde(default)]
    pub no_module_cache: bool,
    /// Total plugin instances the engine can hold at once, all plugins and
    /// generations together.
    #[serde(default = "default_instance_slots")]
    pub instance_slots: u32,
    /// The largest memory cap any plugin may ask for, in MiB.
    #[serde(default = "default_max_memory_mb")]
    pub max_memory_mb: u32,
    /// Most MiB the module cache may hold; least recently used entries go
    /// first when a new one is written.
    #[serde(default = "default_module_cache_mb")]
    pub module_cache_mb: u64,
    /// How plugins are compiled to machine code.
    #[serde(default)]
    pub compiler: Compiler,
}

/// The compiler wasmtime uses for plugins; see `docs/writing-plugins.md`
/// for what each costs.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Compiler {
    /// Cranelift, optimising for speed: the fastest code.
    #[default]
    Cranelift,
    /// Cranelift without optimisation: faster to compile, slower to run.
    CraneliftUnoptimized,
    /// Winch, the single-pass baseline compiler: fastest to compile.
    Winch,
}

fn default_module_cache_mb() -> u64 {
    1024
}

fn default_instance_slots() -> u32 {
    1000
}
fn default_max_memory_mb() -> u32 {
    256
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            module_cache: None,
            no_module_cache: false,
            instance_slots: default_instance_slots(),
            max_memory_mb: default_max_memory_mb(),
            module_cache_mb: default_module_cache_mb(),
            compiler: Compiler::default(),
        }
    }
}

/// One plugin: a component file and how it is run.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to the `.wasm` component, relative to the config file's directory.
    pub module: String,
    /// Resource limits per instance.
    #[serde(default)]
    pub limits: Limits,
    /// What happens to a request when this plugin fails.
    #[serde(default)]
    pub failure: FailurePolicy,
    /// Whether instances are reused across requests.
    #[serde(default)]
    pub isolation: Isolation,
    /// Where this plugin's shared state lives, when not where `state` says.
    #[serde(default)]
    pub state: PluginStateConfig,
}

/// The gateway's plugin state backend.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The backend of every plugin that names none itself.
    #[serde(default)]
    pub backend: StateBackendKind,
    /// The Redis server, for `backend: redis` or any plugin that asks for it.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
}

/// A plugin state backend.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackendKind {
    /// This process's memory: exact, but per gateway.
    #[default]
    Memory,
    /// A Redis server shared by every gateway that names it.
    Redis,
}

/// How the gateway reaches Redis.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host[:port][/db]`, or `rediss://` for TLS.
    pub url: String,
    /// A file holding the password (its first line), so it stays out of the
    /// configuration; overrides one in `url`.
    #[serde(default)]
    pub password_file: Option<String>,
    /// The database number; overrides one in `url`.
    #[serde(default)]
    pub database: Option<i64>,
    /// Prepended to every key the gateway writes, so several fleets (or
    /// other users) can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Longest one connection attempt may take, in ms.
    #[serde(default = "default_redis_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest one state operation may take, in ms (a hook's own deadline
    /// may cut it sooner).
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// How often the connection is checked, in ms: a lost Redis is noticed
    /// by the first failed operation, a returned one by this probe.
    #[serde(default = "default_redis_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// TLS files for `rediss://`.
    #[serde(default)]
    pub tls: Option<RedisTlsConfig>,
}

fn default_key_prefix() -> String {
    "wicket:".into()
}
fn default_redis_connect_timeout_ms() -> u64 {
    1_000
}
fn default_redis_timeout_ms() -> u64 {
    100
}
fn default_redis_probe_interval_ms() -> u64 {
    500
}

/// Certificates for a TLS connection to Redis.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM CA certificates the server's certificate must chain to; the
    /// system's roots when absent.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate, for a server that asks for one.
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<String>,
}

/// One plugin's state settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginStateConfig {
    /// `memory` or `redis`; unset, the gateway's `state.backend`.
    #[serde(default)]
    pub backend: Option<StateBackendKind>,
    /// What the plugin's state calls do while Redis is unreachable.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

/// What a plugin's state calls do while its Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnavailable {
    /// Fail with `unavailable`; the plugin's own error path decides
    /// (fail closed or open, e.g. the limiter's `on_state_error`).
    #[default]
    Error,
    /// Serve from this gateway's memory until Redis is back: the plugin keeps
    /// working, with state per gateway meanwhile.
    Memory,
}

impl OnUnavailable {
    /// The configuration's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Error => "error",
            OnUnavailable::Memory => "memory",
        }
    }
}

/// Per-instance limits.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory cap per instance, in MiB. Unset: a default for the
    /// language the module was written in (see [`crate::plugin::Language`]).
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// Wall-clock deadline for one hook call, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Deadline for creating an instance (instantiation and `init`), in
    /// milliseconds: an interpreter-carrying guest (Python, JavaScript)
    /// starts in tens of milliseconds, more on a busy machine.
    #[serde(default = "default_init_deadline_ms")]
    pub init_deadline_ms: u64,
    /// Most instances alive at once per (plugin, route config); requests wait
    /// for a free one.
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Longest a request waits for a free instance, in milliseconds; then the
    /// plugin counts as failed (`busy`: 503 when fail-closed). 0: never wait.
    #[serde(default = "default_queue_timeout_ms")]
    pub queue_timeout_ms: u64,
    /// Most headers a hook may return in one list.
    #[serde(default = "default_max_headers")]
    pub max_headers: u32,
    /// Most bytes of header names and values a hook may return.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    /// Largest response body a hook may return, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u32,
}

fn default_deadline_ms() -> u64 {
    50
}
fn default_init_deadline_ms() -> u64 {
    1_000
}
fn default_instances() -> u32 {
    16
}
fn default_queue_timeout_ms() -> u64 {
    1_000
}
fn default_max_headers() -> u32 {
    64
}
fn default_max_header_bytes() -> u32 {
    32 * 1024
}
fn default_max_body_bytes() -> u32 {
    1024 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: None,
            deadline_ms: default_deadline_ms(),
            init_deadline_ms: default_init_deadline_ms(),
            instances: default_instances(),
            queue_timeout_ms: default_queue_timeout_ms(),
            max_headers: default_max_headers(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

/// What a plugin failure (trap, deadline, memory cap, invalid output) does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Answer the client with a 500 JSON error. The default, because a failed
    /// auth or rate-limit plugin must never silently let traffic through.
    #[default]
    FailClosed,
    /// Skip the plugin, log and count the failure, and go on.
    FailOpen,
}

/// Instance reuse.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Initialised instances are reused across requests (fast).
    #[default]
    Pooled,
    /// Every hook call gets a fresh instance, initialised with its config.
    PerRequest,
}

/// A named group of endpoints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Endpoints by address (`ip:port`) or DNS name (`name:port`). May be
    /// empty only when `discovery` supplies them.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// How endpoints are picked.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance: consistent-hash`: what the hash is taken of —
    /// `header:<name>`, `cookie:<name>`, `client-ip` or `path`. A request
    /// without the header or cookie hashes its client IP.
    #[serde(default)]
    pub hash_on: Option<String>,
    /// TCP connect deadline in milliseconds (504 when it passes).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Deadline for the response head in milliseconds, connect and every
    /// retry included (504 when it passes).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "default_max_idle")]
    pub max_idle_per_endpoint: usize,
    /// The protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Connect to the endpoints over TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Active health checks: off when absent.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier ejection, on by default.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// When fewer than this percentage of endpoints are healthy, requests
    /// go to all of them, healthy or not (0 turns this off: with no
    /// healthy endpoint the answer is 503).
    #[serde(default = "default_panic_threshold")]
    pub panic_threshold_percent: u32,
    /// Retries on another endpoint: off when absent.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// How endpoint names are resolved.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Where further endpoints come from: a watched file or etcd.
    #[serde(default)]
    pub discovery: Option<DiscoveryConfig>,
}

impl UpstreamConfig {
    /// One endpoint, every other setting its default.
    pub fn single(address: SocketAddr) -> UpstreamConfig {
        UpstreamConfig {
            endpoints: vec![EndpointConfig {
                address: EndpointAddress::Socket(address),
                weight: 1,
            }],
            balance: Balance::default(),
            hash_on: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            max_idle_per_endpoint: default_max_idle(),
            protocol: UpstreamProtocol::default(),
            tls: None,
            health_check: None,
            outlier: OutlierConfig::default(),
            panic_threshold_percent: default_panic_threshold(),
            retry: None,
            dns: DnsConfig::default(),
            discovery: None,
        }
    }
}

/// The protocol spoken to an upstream's endpoints.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections (over TLS with `tls`).
    #[default]
    Http1,
    /// HTTP/2 over TLS, agreed with ALPN: needs `tls`.
    H2,
    /// HTTP/2 in cleartext with prior knowledge: no `tls`.
    H2c,
}

/// TLS to an upstream's endpoints.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The name sent in SNI and verified against the endpoint's
    /// certificate; the endpoint's IP address when absent.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM bundle of the CAs to trust; the system's roots when absent.
    #[serde(default)]
    pub ca: Option<String>,
    /// Verify the endpoint's certificate (on by default; turning it off
    /// is logged as a warning on every load).
    #[serde(default = "yes")]
    pub verify: bool,
    /// A client certificate to present (mutual TLS).
    #[serde(default)]
    pub client_certificate: Option<ClientCertificateConfig>,
}

/// A certificate and key presented to an upstream.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// The certificate chain, PEM, leaf first.
    pub cert: String,
    /// The private key, PEM.
    pub key: String,
}

fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_max_idle() -> usize {
    64
}
fn default_panic_threshold() -> u32 {
    50
}

/// One endpoint of an upstream.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `ip:port`, or `name:port` for a DNS name resolved to every address
    /// it has (each an endpoint of this weight).
    pub address: EndpointAddress,
    /// Relative share of traffic (weighted balancing); 1 when absent.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Where an endpoint is: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum EndpointAddress {
    /// `ip:port`.
    Socket(SocketAddr),
    /// `name:port`, resolved through DNS.
    Name {
        /// The DNS name.
        host: String,
        /// The port every resolved address is given.
        port: u16,
    },
}

impl TryFrom<String> for EndpointAddress {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(EndpointAddress::Socket(addr));
        }
        let bad = || format!("{s:?} is neither ip:port nor name:port");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if port == 0 || name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(EndpointAddress::Name {
            host: name.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddress::Socket(a) => write!(f, "{a}"),
            EndpointAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Endpoint selection.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each endpoint in turn; weights are ignored.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin: shares follow the weights, interleaved.
    Weighted,
    /// The less busy of two endpoints drawn at random (power of two
    /// choices), by requests in flight divided by weight.
    LeastRequest,
    /// A ring of points per endpoint (more for heavier weights) keyed by
    /// `hash_on`: the same key goes to the same endpoint, and an endpoint
    /// joining or leaving moves only its share of keys.
    ConsistentHash,
}

/// Active health checks: probes sent to every endpoint on an interval.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Probe with an HTTP request (exactly one of `http` and `tcp`).
    #[serde(default)]
    pub http: Option<HttpCheckConfig>,
    /// Probe by opening a TCP connection (and TLS, with the upstream's
    /// `tls`).
    #[serde(default)]
    pub tcp: Option<TcpCheckConfig>,
    /// Time between probes of one endpoint, in ms.
    #[serde(default = "default_check_interval_ms")]
    pub interval_ms: u64,
    /// A probe without an answer for this long failed, in ms.
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Up to this many ms added at random to each interval, so probes of
    /// many gateways do not arrive together.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Consecutive passing probes that bring an unhealthy endpoint back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failing probes that take an endpoint out of rotation.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
}

/// An HTTP health probe.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckConfig {
    /// The path (and query) requested.
    #[serde(default = "default_check_path")]
    pub path: String,
    /// The method.
    #[serde(default = "default_check_method")]
    pub method: String,
    /// The `Host` sent; the endpoint's address when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses that pass: codes (`200`) or ranges (`200-299`).
    #[serde(default = "default_expected_statuses")]
    pub expected_statuses: Vec<String>,
}

/// A TCP health probe (no settings).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TcpCheckConfig {}

fn default_check_interval_ms() -> u64 {
    5_000
}
fn default_check_timeout_ms() -> u64 {
    1_000
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_check_path() -> String {
    "/".into()
}
fn default_check_method() -> String {
    "GET".into()
}
fn default_expected_statuses() -> Vec<String> {
    vec!["200-399".into()]
}

/// Passive outlier ejection: endpoints that keep failing real requests
/// are taken out of rotation for a while.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive connect failures, resets and timeouts that eject an
    /// endpoint (0: never).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// Consecutive 5xx answers (and failures) that eject an endpoint (0:
    /// never, the default: a 5xx may be the request's fault).
    #[serde(default)]
    pub consecutive_5xx: u32,
    /// The first ejection lasts this long, in ms; each further ejection of
    /// the same endpoint doubles it, up to `max_ejection_ms`.
    #[serde(default = "default_base_ejection_ms")]
    pub base_ejection_ms: u64,
    /// The longest ejection, in ms. An endpoint that goes this long without
    /// being ejected starts again from `base_ejection_ms`.
    #[serde(default = "default_max_ejection_ms")]
    pub max_ejection_ms: u64,
    /// At most this percentage of endpoints is ejected at once (at least
    /// one endpoint always may be).
    #[serde(default = "default_max_ejected_percent")]
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: default_consecutive_failures(),
            consecutive_5xx: 0,
            base_ejection_ms: default_base_ejection_ms(),
            max_ejection_ms: default_max_ejection_ms(),
            max_ejected_percent: default_max_ejected_percent(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection_ms() -> u64 {
    30_000
}
fn default_max_ejection_ms() -> u64 {
    300_000
}
fn default_max_ejected_percent() -> u32 {
    50
}

/// Retrying a failed request on another endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries in all, the first included (2 to 10).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// What is retried: `connect-failure`, `reset`, `refused-stream`,
    /// `timeout`, and status codes (`503`).
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Deadline for one try's response head, in ms; the request deadline
    /// still bounds them all.
    #[serde(default)]
    pub per_try_timeout_ms: Option<u64>,
    /// Backoff before the second try, in ms, doubled for each further try
    /// up to `backoff_max_ms`; each wait is drawn at random up to that.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// The longest backoff, in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// A request body up to this size is kept so the request can be sent
    /// again; a larger one is retried only if it was never sent.
    #[serde(default = "default_retry_body_bytes")]
    pub max_body_bytes: u64,
    /// Requests with non-idempotent methods (POST, PATCH) are retried only
    /// when they were never sent, unless this is on.
    #[serde(default)]
    pub non_idempotent: bool,
    /// How many retries the upstream may make.
    #[serde(default)]
    pub budget: RetryBudgetConfig,
}

/// The retry budget: retries at most `ratio` of the requests of the last
/// `window_ms`, plus `min_per_second`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries as a fraction of requests (0 to 1).
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    /// Retries always allowed per second, however few the requests.
    #[serde(default = "default_budget_min")]
    pub min_per_second: u32,
    /// The window requests and retries are counted over, in ms.
    #[serde(default = "default_budget_window_ms")]
    pub window_ms: u64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_min(),
            window_ms: default_budget_window_ms(),
        }
    }
}

fn default_attempts() -> u32 {
    3
}
fn default_retry_on() -> Vec<String> {
    ["connect-failure", "refused-stream", "reset", "timeout"]
        .map(String::from)
        .to_vec()
}
fn default_backoff_base_ms() -> u64 {
    25
}
fn default_backoff_max_ms() -> u64 {
    250
}
fn default_retry_body_bytes() -> u64 {
    64 * 1024
}
fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_min() -> u32 {
    10
}
fn default_budget_window_ms() -> u64 {
    10_000
}

/// Resolving endpoint names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers (`ip:port`); the system's (`/etc/resolv.conf`) when
    /// empty.
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// An answer is kept at least this long, whatever its TTL, in ms.
    #[serde(default = "default_min_ttl_ms")]
    pub min_ttl_ms: u64,
    /// An answer is kept at most this long, whatever its TTL, in ms.
    #[serde(default = "default_max_ttl_ms")]
    pub max_ttl_ms: u64,
    /// A lookup without an answer for this long failed, in ms.
    #[serde(default = "default_dns_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            min_ttl_ms: default_min_ttl_ms(),
            max_ttl_ms: default_max_ttl_ms(),
            timeout_ms: default_dns_timeout_ms(),
        }
    }
}

fn default_min_ttl_ms() -> u64 {
    1_000
}
fn default_max_ttl_ms() -> u64 {
    300_000
}
fn default_dns_timeout_ms() -> u64 {
    2_000
}

/// A registry the upstream's endpoints come from (exactly one of `file`
/// and `etcd`), beside any in `endpoints`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// A watched YAML or JSON file of endpoints per service.
    #[serde(default)]
    pub file: Option<FileDiscoveryConfig>,
    /// Keys under a prefix in etcd v3.
    #[serde(default)]
    pub etcd: Option<EtcdDiscoveryConfig>,
}

/// Endpoints from a watched file: `{ services: { <name>: [{address, weight}] } }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileDiscoveryConfig {
    /// The file, relative to the configuration file's directory.
    pub path: String,
    /// The service to read; the upstream's name when absent.
    #[serde(default)]
    pub service: Option<String>,
}

/// Endpoints from etcd v3, through its JSON gateway: every key under
/// `prefix` is an endpoint, its value `ip:port` or
/// `{"address": "ip:port", "weight": 2}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdDiscoveryConfig {
    /// etcd client URLs (`http://127.0.0.1:2379`), tried in turn.
    pub endpoints: Vec<String>,
    /// The key prefix (`/services/api/`).
    pub prefix: String,
    /// Deadline for connecting and for each read, in ms.
    #[serde(default = "default_etcd_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_etcd_timeout_ms() -> u64 {
    2_000
}

/// A route: what it matches, where it goes, which plugins run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name, shown to plugins and in logs and metrics.
    pub name: String,
    /// What requests it takes.
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    /// The upstream's name.
    pub upstream: String,
    /// The plugin chain, in `on-request` order.
    #[serde(default)]
    pub plugins: Vec<ChainEntryConfig>,
    /// Largest request body for this route, in bytes; the listener's
    /// `limits.max_body_bytes` when absent.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Let WebSocket upgrades through (refused upgrades are forwarded as
    /// plain requests, without `Upgrade`).
    #[serde(default)]
    pub websocket: Option<WebSocketConfig>,
}

/// WebSocket upgrades on a route.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// A tunnel with no bytes either way for this long is closed.
    #[serde(default = "default_websocket_idle_ms")]
    pub idle_timeout_ms: u64,
}

fn default_websocket_idle_ms() -> u64 {
    60_000
}

/// A route's request matcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`); any host
    /// when absent. The port is ignored.
    #[serde(default)]
    pub host: Option<String>,
    /// Path pattern: `/users/{id}`, `/static/{*rest}`.
    pub path: String,
    /// Accepted methods; all when absent.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

/// One plugin in a route's chain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainEntryConfig {
    /// The plugin's name under `plugins`.
    pub name: String,
    /// The plugin's configuration for this route, handed to `init` as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// One problem in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// A path into the file such as `routes[2].plugins[0].config`, or the
    /// file's line and column for syntax errors.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    /// An error at `location`.
    pub fn at(location: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            location: location.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// All the problems found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// Check the listener, admin and drain settings, adding every problem
/// (located) to `errors`. Returns the admin token, which this reads (once).
pub fn validate_serving(
    cfg: &Config,
    base: &std::path::Path,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    for (i, l) in cfg.listeners.iter().enumerate() {
        let at = |f: &str| format!("listeners[{i}].{f}");
        if l.tls.is_some() && l.redirect_https.is_some() {
            errors.push(ConfigError::at(
                at("redirect_https"),
                "a TLS listener cannot redirect to HTTPS; redirect from a cleartext listener",
            ));
        }
        if l.redirect_https.as_ref().is_some_and(|r| r.port == 0) {
            errors.push(ConfigError::at(
                at("redirect_https.port"),
                "must be at least 1",
            ));
        }
    }
    let mut positive = |at: String, v: u64| {
        if v == 0 {
            errors.push(ConfigError::at(at, "must be at least 1"));
        }
    };
    for (i, l) in cfg.listeners.iter().enumerate() {
        let at = |f: &str| format!("listeners[{i}].{f}");
        positive(at("limits.max_uri_bytes"), l.limits.max_uri_bytes as u64);
        positive(
            at("limits.max_header_bytes"),
            l.limits.max_header_bytes as u64,
        );
        positive(at("limits.max_headers"), l.limits.max_headers as u64);
        positive(
            at("limits.max_headers_bytes"),
            l.limits.max_headers_bytes as u64,
        );
        positive(
            at("limits.max_connections"),
            l.limits.max_connections as u64,
        );
        positive(at("limits.max_body_bytes"), l.limits.max_body_bytes);
        positive(
            at("limits.max_concurrent_streams"),
            l.limits.max_concurrent_streams as u64,
        );
        positive(
            at("limits.max_requests_in_flight"),
            l.limits.max_requests_in_flight as u64,
        );
        for (f, v) in [
            ("timeouts.handshake_ms", l.timeouts.handshake_ms),
            ("timeouts.header_ms", l.timeouts.header_ms),
            ("timeouts.idle_ms", l.timeouts.idle_ms),
            ("timeouts.body_idle_ms", l.timeouts.body_idle_ms),
        ] {
            positive(at(f), v);
        }
    }
    positive("drain_timeout_ms".into(), cfg.drain_timeout_ms);
    for (i, r) in cfg.routes.iter().enumerate() {
        if r.max_body_bytes == Some(0) {
            // 0 would refuse every body, even an empty chunked one; say so
            // rather than guess.
            errors.push(ConfigError::at(
                format!("routes[{i}].max_body_bytes"),
                "must be at least 1",
            ));
        }
    }
    if let Some(admin) = &cfg.admin {
        for (f, v) in [
            ("admin.timeouts.handshake_ms", admin.timeouts.handshake_ms),
            ("admin.timeouts.header_ms", admin.timeouts.header_ms),
            ("admin.timeouts.idle_ms", admin.timeouts.idle_ms),
            ("admin.max_connections", admin.max_connections as u64),
        ] {
            if v == 0 {
                errors.push(ConfigError::at(f, "must be at least 1"));
            }
        }
        return match admin_token(admin, base) {
            Ok(None) if !admin.address.ip().is_loopback() => {
                errors.push(ConfigError::at(
                    "admin.address",
                    format!(
                        "{} is beyond loopback: set admin.token_file or admin.token_env",
                        admin.address
                    ),
                ));
                None
            }
            Ok(token) => token,
            Err(e) => {
                errors.push(e);
                None
            }
        };
    }
    None
}

/// The admin bearer token, from `token_file` or `token_env`.
pub fn admin_token(admin: &Admin, base: &std::path::Path) -> Result<Option<String>, ConfigError> {
    let token = match (&admin.token_file, &admin.token_env) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::at(
                "admin.token_env",
                "set token_file or token_env, not both",
            ))
        }
        (Some(file), None) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::at(
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            ("admin.token_file", text.trim().to_string())
        }
        (None, Some(var)) => {
            let value = std::env::var(var).map_err(|_| {
                ConfigError::at(
                    "admin.token_env",
                    format!("the environment variable {var} is not set"),
                )
            })?;
            ("admin.token_env", value.trim().to_string())
        }
        (None, None) => return Ok(None),
    };
    let (at, token) = token;
    // Short tokens can be guessed; the printable-ASCII rule keeps the token
    // usable in a header.
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::at(
            at,
            "the token must be at least 16 printable ASCII characters",
        ));
    }
    Ok(Some(token))
}

/// Parse YAML text into a [`Config`], naming the location of any error.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError::at("<file>", "the file is empty"));
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let position = inner
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        let location = if path == "." || path.is_empty() {
            "<file>".to_string()
        } else {
            path
        };
        let message = inner.to_string();
        let message = strip_path(strip_position(&message), &location);
        ConfigError::at(location, format!("{message}{position}"))
    })
}

/// serde_yaml_ng appends "at line L column C" to its messages; the position is
/// reported separately, so drop the duplicate.
fn strip_position(message: &str) -> &str {
    match message.find(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

/// serde_yaml_ng prefixes nested errors with its own path; the location is
/// reported separately, so drop that prefix too.
fn strip_path<'a>(message: &'a str, location: &str) -> &'a str {
    match message.split_once(": ") {
        Some((prefix, rest)) if location.starts_with(prefix) => rest,
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listeners: [{ address: "127.0.0.1:0" }]
upstreams:
  b: { endpoints: [{ address: "127.0.0.1:9" }] }
routes:
  - name: r
    match: { path: "/" }
    upstream: b
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.routes[0].name, "r");
        assert_eq!(cfg.upstreams["b"].balance, Balance::RoundRobin);
        assert!(cfg.access_log.enabled);
        assert_eq!(cfg.access_log.format, AccessLogFormat::Text);
        assert_eq!(cfg.request_id.header, "x-request-id");
        let off = parse(&format!("{MINIMAL}access_log: false\n")).unwrap();
        assert!(!off.access_log.enabled);
        let json = parse(&format!(
            "{MINIMAL}access_log: {{ format: json, sample_success: 0.5 }}\n"
        ))
        .unwrap();
        assert_eq!(json.access_log.format, AccessLogFormat::Json);
        assert_eq!(json.access_log.sample_success, 0.5);
        let err = parse(&format!("{MINIMAL}access_log: {{ colour: red }}\n")).unwrap_err();
        assert_eq!(err.location, "access_log.colour", "{err}");
    }

    #[test]
    fn unknown_field_is_located() {
        let text = MINIMAL.replace("upstream: b", "upstream: b\n    colour: red");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.location, "routes[0].colour");
        assert!(err.message.starts_with("unknown field"), "{err}");
        assert!(err.message.contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn wrong_type_is_located() {
        let text = MINIMAL.replace("\"127.0.0.1:9\"", "nowhere");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.location, "upstreams.b.endpoints[0].address");
    }

    #[test]
    fn empty_file_is_an_error() {
        assert_eq!(parse("  \n").unwrap_err().location, "<file>");
    }
}
