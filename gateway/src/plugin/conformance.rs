//! The conformance kit: loads any plugin component without sockets and runs
//! the contract checks, then a behaviour spec written once as data, so the
//! same policy in Rust, Python and JavaScript is held to the same cases.
//!
//! Contract checks (every component, spec or not):
//! - it fits the contract (exports `init` and at least one hook, imports
//!   nothing the host does not provide);
//! - `init` accepts the spec's config, declares only hooks it exports, and
//!   declares the same hooks on a second instance (it must be deterministic);
//! - `init` refuses each of the spec's invalid configs with an error message
//!   (an exception or a trap is not a refusal) that names what is wrong;
//! - every hook output is validated as the gateway validates it, within the
//!   plugin's deadline and memory cap.
//!
//! Behaviour cases run in order against one pool and one state store, on a
//! clock that moves only when a case says `advance_ms`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::{
    OutcomeResult, Pool, RequestDecision, RequestInfo, ResponseDecision, Runtime, RuntimeOptions,
    UpstreamOutcome,
};
use crate::config::{PluginConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::state::SharedState;
use crate::upstream::{Upstream, UpstreamErrorKind};
use crate::Clock;

/// A behaviour spec, as written in `spec.yaml` beside a plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The plugin's configuration for every case (`{}` when absent).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// The hooks `init` must declare, if the spec pins them.
    #[serde(default)]
    pub hooks: Option<Vec<HookName>>,
    /// Upstream names the configuration holds (`gateway.upstreams`); the
    /// first is the route's. Default: `[default]`.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Configs `init` must refuse.
    #[serde(default)]
    pub invalid_configs: Vec<InvalidConfig>,
    /// The cases, run in order.
    #[serde(default)]
    pub cases: Vec<Case>,
}

/// A hook, by its contract name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookName {
    /// `on-request`.
    OnRequest,
    /// `on-response`.
    OnResponse,
}

/// A configuration `init` must refuse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidConfig {
    /// The configuration.
    pub config: serde_json::Value,
    /// Text the error message must contain (the field it names).
    pub error_contains: String,
}

/// One request through the plugin.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case shows.
    pub name: String,
    /// Move the clock forward this much before the case.
    #[serde(default)]
    pub advance_ms: u64,
    /// The request.
    #[serde(default)]
    pub request: CaseRequest,
    /// What the upstream does if the request reaches it: a status (200 by
    /// default), or an error.
    #[serde(default)]
    pub upstream: CaseUpstream,
    /// What must come out.
    pub expect: Expect,
}

/// The request of a case; every field has a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    /// Default `GET`.
    pub method: Option<String>,
    /// Default `/`.
    pub path: Option<String>,
    /// Without the `?`.
    pub query: Option<String>,
    /// Default `example.test`.
    pub authority: Option<String>,
    /// Header name to value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Default `203.0.113.7:40000`.
    pub client: Option<std::net::SocketAddr>,
    /// Route parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// What the connection's TLS handshake negotiated; absent: cleartext.
    pub tls: Option<CaseTls>,
}

/// The TLS of a case's connection, as a plugin's `tls()` sees it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseTls {
    /// The SNI the client sent.
    pub server_name: Option<String>,
    /// The ALPN protocol negotiated.
    pub alpn: Option<String>,
    /// `TLSv1.2` or `TLSv1.3` (the default).
    pub version: Option<String>,
    /// The client certificate (already verified, as on a real listener).
    pub client_certificate: Option<CaseCertificate>,
}

/// A verified client certificate in a case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseCertificate {
    /// RFC 4514 subject, e.g. `O=Example,CN=svc-a`.
    #[serde(default)]
    pub subject: String,
    /// subjectAltName entries as text.
    #[serde(default)]
    pub sans: Vec<String>,
    /// SHA-256 fingerprint, lower-case hex.
    #[serde(default)]
    pub sha256: String,
}

impl CaseTls {
    fn info(&self, authority: &str) -> Result<crate::server::tls::TlsInfo, String> {
        use crate::server::tls::{Certificate, ClientCert, TlsInfo};
        let version = match self.version.as_deref() {
            None | Some("TLSv1.3") => "TLSv1.3",
            Some("TLSv1.2") => "TLSv1.2",
            Some(other) => return Err(format!("tls.version: {other:?} is not TLSv1.2 or TLSv1.3")),
        };
        Ok(TlsInfo {
            sni: self.server_name.as_ref().map(|n| n.to_ascii_lowercase()),
            alpn: self.alpn.clone(),
            version,
            served: Arc::new(Certificate::covering(authority)),
            client: self.client_certificate.as_ref().map(|c| ClientCert {
                subject: c.subject.clone(),
                sans: c.sans.clone(),
                sha256: c.sha256.clone(),
            }),
        })
    }
}

/// The upstream's part in a case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseUpstream {
    /// The status it answers with (default 200).
    pub status: Option<u16>,
    /// Headers on its response.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Instead of answering: `connect-failed`, `timeout`, `reset`,
    /// `no-endpoint` or `protocol`.
    pub error: Option<String>,
}

/// What a case must produce. Unset fields are not checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// What `on-request` decided: `continue` or `respond`.
    pub action: Option<String>,
    /// The status the client receives.
    pub status: Option<u16>,
    /// Headers the client receives; `null` means absent.
    #[serde(default)]
    pub headers: BTreeMap<String, Option<String>>,
    /// Headers the upstream request carries; `null` means absent.
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, Option<String>>,
    /// The upstream the request is sent to.
    pub upstream: Option<String>,
    /// The upstream request's path (with `?query` when there is one).
    pub path: Option<String>,
    /// The client's body, exactly, as text.
    pub body: Option<String>,
    /// Fields the client's body, as JSON, must contain (recursively).
    pub body_json: Option<serde_json::Value>,
}

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// `None` when it held, else why not.
    pub failure: Option<String>,
}

/// Everything the kit found about one component.
#[derive(Debug, Default)]
pub struct Report {
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    fn record(&mut self, name: impl Into<String>, result: Result<(), String>) {
        self.checks.push(Check {
            name: name.into(),
            failure: result.err(),
        });
    }

    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.failure.is_none())
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.failure.is_some())
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.checks {
            match &c.failure {
                None => writeln!(f, "ok    {}", c.name)?,
                Some(why) => writeln!(f, "FAIL  {}: {why}", c.name)?,
            }
        }
        let failed = self.failures().count();
        write!(f, "{} checks, {} failed", self.checks.len(), failed)
    }
}

/// Read a spec file; errors name the file and the field.
pub fn read_spec(path: &Path) -> Result<Spec, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Run the contract checks and `spec`'s cases against `module`, with the
/// plugin's `limits` (defaults when `None`).
pub async fn run(
    module: &Path,
    spec: &Spec,
    cache: Option<std::path::PathBuf>,
    limits: Option<crate::config::Limits>,
) -> Report {
    let mut report = Report::default();
    let clock = Clock::manual(1_700_000_000_000);
    let state = SharedState::in_memory(clock.clone());
    let options = RuntimeOptions {
        module_cache: cache,
        instance_slots: 8,
        max_memory_bytes: 256 * 1024 * 1024,
        ..RuntimeOptions::from_config(&Default::default())
    };
    let runtime = match Runtime::new(options, clock.clone(), state, Arc::new(Metrics::new())) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            report.record("runtime starts", Err(e.to_string()));
            return report;
        }
    };
    let cfg = PluginConfig {
        module: module.display().to_string(),
        limits: limits.unwrap_or_default(),
        failure: Default::default(),
        isolation: Default::default(),
        state: Default::default(),
    };
    let plugin = match runtime.load("spec", &cfg, Path::new(".")) {
        Ok(p) => {
            report.record(format!("loads ({})", p.language()), Ok(()));
            p
        }
        Err(e) => {
            report.record("loads", Err(e));
            return report;
        }
    };

    let mut names = if spec.upstreams.is_empty() {
        vec!["default".to_string()]
    } else {
        spec.upstreams.clone()
    };
    let route_upstream = names[0].clone();
    names.sort();
    let upstreams: BTreeMap<String, Arc<Upstream>> =
        names.iter().map(|n| (n.clone(), stand_in(n))).collect();
    let names: Arc<[String]> = names.into();

    let config = spec
        .config
        .as_ref()
        .map_or_else(|| "{}".to_string(), |c| c.to_string());
    let pool = match plugin.pool(config.clone(), names.clone()).await {
        Ok(p) => {
            report.record("init accepts the config", Ok(()));
            p
        }
        Err(e) => {
            report.record("init accepts the config", Err(e.to_string()));
            return report;
        }
    };
    let hooks = pool.hooks();
    if let Some(expected) = &spec.hooks {
        let declared: Vec<HookName> = [
            (hooks.on_request, HookName::OnRequest),
            (hooks.on_response, HookName::OnResponse),
        ]
        .into_iter()
        .filter_map(|(on, h)| on.then_some(h))
        .collect();
        let mut expected = expected.clone();
        expected.sort_by_key(|h| *h as u8);
        report.record(
            "init declares the hooks the spec names",
            if declared == expected {
                Ok(())
            } else {
                Err(format!("declared {declared:?}, spec names {expected:?}"))
            },
        );
    }
    let again = plugin.pool(config, names.clone()).await;
    report.record(
        "init is deterministic",
        match again {
            Ok(p) if p.hooks() == hooks => Ok(()),
            Ok(p) => Err(format!(
                "a second instance declared {:?}, the first {hooks:?}",
                p.hooks()
            )),
            Err(e) => Err(format!("a second instance failed: {e}")),
        },
    );
    for (i, bad) in spec.invalid_configs.iter().enumerate() {
        let result = plugin.pool(bad.config.to_string(), names.clone()).await;
        report.record(
            format!("init refuses invalid config {i} ({})", bad.config),
            match result {
                Err(super::PluginError::Init(m)) if m.contains(&bad.error_contains) => Ok(()),
                Err(super::PluginError::Init(m)) => Err(format!(
                    "refused, but the message does not name {:?}: {m}",
                    bad.error_contains
                )),
                Err(other) => Err(format!(
                    "failed instead of refusing with a message: {other}"
                )),
                Ok(_) => Err("accepted".into()),
            },
        );
    }

    for case in &spec.cases {
        if case.advance_ms > 0 {
            clock.advance(Duration::from_millis(case.advance_ms));
        }
        let result = run_case(&pool, case, &route_upstream, &upstreams).await;
        report.record(format!("case: {}", case.name), result);
    }
    report
}

/// An upstream that is never called: cases say what it answers.
fn stand_in(name: &str) -> Arc<Upstream> {
    let cfg = UpstreamConfig {
        max_idle_per_endpoint: 1,
        ..UpstreamConfig::single("127.0.0.1:9".parse().expect("a literal address"))
    };
    Upstream::new(name, &cfg, Path::new(".")).expect("a literal upstream")
}

/// What a case ended with, to compare with its expectations.
struct Outcome {
    action: &'static str,
    status: StatusCode,
    headers: HeaderMap,
    upstream_headers: HeaderMap,
    upstream: String,
    path: String,
    body: Vec<u8>,
}

async fn run_case(
    pool: &Arc<Pool>,
    case: &Case,
    route_upstream: &str,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
) -> Result<(), String> {
    let req = &case.request;
    let path = req.path.clone().unwrap_or_else(|| "/".into());
    let uri = match &req.query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let mut builder = http::Request::builder()
        .method(req.method.as_deref().unwrap_or("GET"))
        .uri(&uri);
    for (name, value) in &req.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let mut parts = builder
        .body(())
        .map_err(|e| format!("the case's request is not valid HTTP: {e}"))?
        .into_parts()
        .0;
    let (params_path, params) = params(&req.params);
    let authority = req
        .authority
        .clone()
        .unwrap_or_else(|| "example.test".into());
    let tls = match &req.tls {
        Some(tls) => Some(Arc::new(tls.info(&authority)?)),
        None => None,
    };
    let info = Arc::new(RequestInfo {
        scheme: if tls.is_some() { "https" } else { "http" },
        authority,
        client: req
            .client
            .unwrap_or_else(|| "203.0.113.7:40000".parse().expect("a literal address")),
        route: Arc::from("spec"),
        path: params_path,
        params,
        request_id: crate::request::RequestId::next(),
        tls,
    });
    let mut upstream = upstreams[route_upstream].clone();
    let mut context = super::Context::default();
    let mut client_headers = HeaderMap::new();
    let hooks = pool.hooks();

    if hooks.on_request {
        match pool
            .on_request(&mut parts, &info, &upstream, &mut context)
            .await
            .map_err(|e| format!("on-request failed: {e}"))?
        {
            RequestDecision::Respond(r) => {
                let mut headers: HeaderMap = r.headers.into_iter().collect();
                headers.insert(
                    http::header::CONTENT_LENGTH,
                    HeaderValue::from(r.body.len()),
                );
                return compare(
                    &case.expect,
                    Outcome {
                        action: "respond",
                        status: r.status,
                        headers,
                        upstream_headers: HeaderMap::new(),
                        upstream: String::new(),
                        path: String::new(),
                        body: r.body.to_vec(),
                    },
                );
            }
            RequestDecision::Continue(mut patch) => {
                patch
                    .apply_to_head(&mut parts)
                    .map_err(|e| format!("the patched path is not a URI: {e}"))?;
                if let Some(name) = patch.upstream {
                    upstream = upstreams.get(&name).cloned().ok_or_else(|| {
                        format!("chose upstream {name:?}, which the spec does not list")
                    })?;
                }
                for (name, value) in patch.response_headers {
                    client_headers.append(name, value);
                }
            }
        }
    }

    let (status, result) = match case.upstream.error.as_deref() {
        None => {
            let s = case.upstream.status.unwrap_or(200);
            (
                StatusCode::from_u16(s).map_err(|e| e.to_string())?,
                OutcomeResult::Status(s),
            )
        }
        Some(e) => {
            let kind = match e {
                "connect-failed" => UpstreamErrorKind::ConnectFailed,
                "timeout" => UpstreamErrorKind::Timeout,
                "reset" => UpstreamErrorKind::Reset,
                "no-endpoint" => UpstreamErrorKind::NoEndpoint,
                "protocol" => UpstreamErrorKind::Protocol,
                other => return Err(format!("unknown upstream error {other:?} in the spec")),
            };
            let status = if kind == UpstreamErrorKind::Timeout {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            (status, OutcomeResult::Error(kind))
        }
    };
    let mut response = http::Response::builder().status(status);
    for (name, value) in &case.upstream.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    let (mut head, ()) = response
        .body(())
        .map_err(|e| format!("the case's upstream response is not valid: {e}"))?
        .into_parts();
    let mut body = Vec::new();
    if hooks.on_response {
        let outcome = UpstreamOutcome {
            result,
            latency_us: 1_000,
            endpoint: Some("127.0.0.1:9".into()),
            attempts: 1,
        };
        match pool
            .on_response(
                &mut parts,
                &info,
                &upstream,
                &outcome,
                &mut head,
                &mut context,
            )
            .await
            .map_err(|e| format!("on-response failed: {e}"))?
        {
            ResponseDecision::Continue(patch) => patch.apply(&mut head),
            ResponseDecision::Replace(r) => {
                head.status = r.status;
                head.headers = r.headers.into_iter().collect();
                body = r.body.to_vec();
            }
        }
    }
    let mut headers = head.headers;
    for (name, value) in client_headers.iter() {
        headers.append(name, value.clone());
    }
    compare(
        &case.expect,
        Outcome {
            action: "continue",
            status: head.status,
            headers,
            upstream_headers: parts.headers,
            upstream: upstream.name().to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
            body,
        },
    )
}

/// Route parameters as the router records them: a path that holds the
/// values, and their ranges in it.
fn params(map: &BTreeMap<String, String>) -> (String, crate::router::Params) {
    let pairs: Vec<(String, String)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    crate::router::Params::from_pairs(&pairs)
}

fn compare(expect: &Expect, got: Outcome) -> Result<(), String> {
    let mut wrong = Vec::new();
    if let Some(a) = &expect.action {
        if a != got.action {
            wrong.push(format!("action: expected {a}, got {}", got.action));
        }
    }
    if let Some(s) = expect.status {
        if s != got.status.as_u16() {
            wrong.push(format!("status: expected {s}, got {}", got.status.as_u16()));
        }
    }
    headers_match("header", &expect.headers, &got.headers, &mut wrong);
    headers_match(
        "upstream header",
        &expect.upstream_headers,
        &got.upstream_headers,
        &mut wrong,
    );
    if let Some(u) = &expect.upstream {
        if *u != got.upstream {
            wrong.push(format!("upstream: expected {u}, got {}", got.upstream));
        }
    }
    if let Some(p) = &expect.path {
        if *p != got.path {
            wrong.push(format!("path: expected {p}, got {}", got.path));
        }
    }
    if let Some(b) = &expect.body {
        if b.as_bytes() != got.body.as_slice() {
            wrong.push(format!(
                "body: expected {b:?}, got {:?}",
                String::from_utf8_lossy(&got.body)
            ));
        }
    }
    if let Some(want) = &expect.body_json {
        match serde_json::from_slice::<serde_json::Value>(&got.body) {
            Ok(v) if contains(&v, want) => {}
            Ok(v) => wrong.push(format!("body: expected to contain {want}, got {v}")),
            Err(e) => wrong.push(format!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&got.body)
            )),
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

fn headers_match(
    what: &str,
    expect: &BTreeMap<String, Option<String>>,
    got: &HeaderMap,
    wrong: &mut Vec<String>,
) {
    for (name, want) in expect {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            wrong.push(format!("{what} {name:?} is not a header name"));
            continue;
        };
        let have: Vec<&str> = got
            .get_all(&name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<not text>"))
            .collect();
        match want {
            None if !have.is_empty() => {
                wrong.push(format!("{what} {name}: expected absent, got {have:?}"));
            }
            Some(w) if !have.iter().any(|h| h == w) => {
                wrong.push(format!("{what} {name}: expected {w:?}, got {have:?}"));
            }
            _ => {}
        }
    }
}

/// Whether `have` holds everything in `want`: objects by key, recursively;
/// anything else equal.
fn contains(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (have, want) {
        (serde_json::Value::Object(h), serde_json::Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv))),
        _ => have == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_containment_is_by_key_and_recursive() {
        let have = serde_json::json!({"error": "denied", "detail": {"a": 1, "b": 2}});
        assert!(contains(&have, &serde_json::json!({"detail": {"a": 1}})));
        assert!(!contains(&have, &serde_json::json!({"detail": {"a": 2}})));
        assert!(!contains(&have, &serde_json::json!({"missing": 1})));
    }

    #[test]
    fn specs_reject_unknown_fields() {
        let err = serde_yaml_ng::from_str::<Spec>("cases: [{name: x, expect: {stauts: 200}}]")
            .expect_err("a typo is refused");
        assert!(err.to_string().contains("stauts"), "{err}");
    }
}
