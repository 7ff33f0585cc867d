//! The admin listener: `GET /metrics` (Prometheus), `GET /status` (the applied
//! generation and the last reload error), `POST /reload`,
//! `GET`/`PUT`/`DELETE /plugins/{plugin}/state/{key}` (a plugin's shared
//! state, e.g. the manual switch of `degradation`), `GET /livez`, and a
//! read-only page at `GET /` over `GET /api/overview`.
//!
//! It runs on the same accept loop as client listeners (its own caps and
//! timeouts), so a flood of client traffic cannot starve it of connections.
//! Every endpoint but `/livez` and the page's files requires the bearer token when one is
//! configured (required beyond loopback), and every request's `Host` and
//! `Origin` must name this listener, loopback or an allowed host, so a page
//! in a browser cannot reach it through DNS rebinding.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::error::{json_error, json_response};
use crate::gateway::Shared;
use crate::request::Conn;

mod page;

/// Largest value the admin API writes into plugin state: switches and
/// flags, not bulk data.
pub const MAX_ADMIN_VALUE_BYTES: usize = 4 * 1024;
/// Most keys the admin API may create per plugin.
pub const MAX_ADMIN_KEYS_PER_PLUGIN: usize = 1024;

/// Serves the admin API.
#[derive(Clone)]
pub struct AdminHandler {
    shared: Arc<Shared>,
    guard: Arc<Guard>,
}

struct Guard {
    local: SocketAddr,
    /// Keys the admin API has written, per plugin, to bound how many it adds.
    written: Mutex<HashMap<String, HashSet<String>>>,
}

impl AdminHandler {
    /// A handler for the admin listener bound at `local`.
    pub fn new(shared: Arc<Shared>, local: SocketAddr) -> AdminHandler {
        AdminHandler {
            shared,
            guard: Arc::new(Guard {
                local,
                written: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl crate::server::Handler for AdminHandler {
    async fn call(self, req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let resp = self.handle(req).await;
        let status = resp.status().as_u16();
        if status >= 400 {
            tracing::warn!(target: "wicket::admin", client = %conn.client, %method, path, status, "admin request refused");
        } else if method != Method::GET {
            tracing::info!(target: "wicket::admin", client = %conn.client, %method, path, status, "admin request");
        }
        resp
    }
}

impl AdminHandler {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        if req.uri().path() == "/livez" && req.method() == Method::GET {
            return json_response(StatusCode::OK, r#"{"status":"ok"}"#.to_string());
        }
        let snapshot = self.shared.current();
        let allowed = snapshot
            .admin
            .as_ref()
            .map(|a| a.allowed_hosts.as_slice())
            .unwrap_or(&[]);
        if let Err(why) = self.check_origin(&req, allowed) {
            return json_error(StatusCode::FORBIDDEN, "host_not_allowed", why);
        }
        // The page's files hold no data (it reads `/api/overview`, which
        // needs the token): a browser cannot send a bearer token when it
        // navigates, so they are served without one, and the page asks.
        if req.method() == Method::GET {
            if let Some(asset) = page::Asset::at(req.uri().path()) {
                return page::asset(asset);
            }
        }
        if let Some(token) = &snapshot.admin_token {
            if !bearer_matches(&req, token) {
                let mut resp = json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the admin API needs `Authorization: Bearer <token>`",
                );
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
                return resp;
            }
        }
        drop(snapshot);
        handle(&self.shared, &self.guard, req).await
    }

    /// The request's one authority (the proxy's own rule: present, single,
    /// agreeing) must name this listener; an `Origin`, when sent, must too.
    fn check_origin(
        &self,
        req: &Request<Incoming>,
        allowed: &[String],
    ) -> Result<(), &'static str> {
        let host = crate::request::authority(req.uri(), req.headers())
            .map_err(|_| "the request names no single, well-formed host")?;
        if !self.host_allowed(&host, allowed) {
            return Err("the Host header does not name this admin listener");
        }
        if let Some(origin) = req.headers().get(http::header::ORIGIN) {
            let origin = origin.to_str().map_err(|_| "malformed Origin")?;
            let allowed_origin = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .and_then(|rest| crate::request::parse_authority(rest).ok())
                .is_some_and(|a| self.host_allowed(&a, allowed));
            if !allowed_origin {
                return Err("the Origin is not this admin listener");
            }
        }
        Ok(())
    }

    fn host_allowed(&self, authority: &crate::request::Authority, allowed: &[String]) -> bool {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host == "localhost" || allowed.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return true;
        }
        match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.guard.local.ip(),
            Err(_) => false,
        }
    }
}

/// Compare the presented bearer token with `token` in constant time (the
/// digests are compared, so neither length nor content leaks through timing).
fn bearer_matches(req: &Request<Incoming>, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    let Some(presented) = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let a = Sha256::digest(presented.trim().as_bytes());
    let b = Sha256::digest(token.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

const ENDPOINTS: &str =
    "GET / (the admin page), GET /api/overview, GET /livez, GET /metrics, GET /status, POST /reload, GET|PUT|DELETE /plugins/{plugin}/state/{key}";

async fn handle(shared: &Shared, guard: &Guard, req: Request<Incoming>) -> Response<Body> {
    if let Some(rest) = req.uri().path().strip_prefix("/plugins/") {
        let rest = rest.to_string();
        return plugin_state(shared, guard, req, &rest).await;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(body::full(shared.runtime().metrics().encode()));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::GET, "/status") => {
            let snap = shared.current();
            let status = shared.status();
            let json = serde_json::json!({
                "generation": snap.generation,
                "applied_at_ms": status.applied_at_ms,
                "last_apply_us": status.last_apply_us,
                "config_digest": snap.digest,
                "routes": snap.route_count(),
                "last_reload_error": status.last_error,
                "tls": snap.tls_status(),
                "upstreams": snap.upstream_statuses(),
                "state": shared.runtime().state().status(),
                "reloads_ok": shared.runtime().metrics().reload_count("ok"),
                "reloads_failed": shared.runtime().metrics().reload_count("error"),
            });
            json_response(StatusCode::OK, json.to_string())
        }
        (&Method::GET, "/api/overview") => {
            let snap = shared.current();
            let status = shared.status();
            let (routes, plugins) = snap.overview();
            let metrics = shared.runtime().metrics();
            let json = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "generation": snap.generation,
                "applied_at_ms": status.applied_at_ms,
                "config_digest": snap.digest,
                "last_reload_error": status.last_error,
                "reloads_ok": metrics.reload_count("ok"),
                "reloads_failed": metrics.reload_count("error"),
                "routes": routes,
                "plugins": plugins,
                "upstreams": snap.upstream_statuses(),
                "state": shared.runtime().state().status(),
                "recent_errors": metrics.recent_errors.list(),
            });
            json_response(StatusCode::OK, json.to_string())
        }
        (&Method::POST, "/reload") => match shared.reload().await {
            Ok(generation) => json_response(
                StatusCode::OK,
                serde_json::json!({ "applied": true, "generation": generation }).to_string(),
            ),
            Err(errors) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "applied": false,
                    "generation": shared.current().generation,
                    "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                })
                .to_string(),
            ),
        },
        _ => not_found(&format!("admin endpoints: {ENDPOINTS}")),
    }
}

fn not_found(message: &str) -> Response<Body> {
    json_error(StatusCode::NOT_FOUND, "not_found", message)
}

/// `/plugins/{plugin}/state/{key}`: read, write or delete one key of a
/// plugin's shared state, exactly as the plugin's own `state` calls would.
/// `PUT` takes the raw value as the body and an optional `?ttl_ms=N`; `GET`
/// answers with the raw value and its version in `x-wicket-state-version`.
async fn plugin_state(
    shared: &Shared,
    guard: &Guard,
    req: Request<Incoming>,
    rest: &str,
) -> Response<Body> {
    let Some((plugin, key)) = rest.split_once("/state/") else {
        return not_found(&format!("admin endpoints: {ENDPOINTS}"));
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
    };
    let (Ok(plugin), Ok(key)) = (decode(plugin), decode(key)) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "plugin and key must be percent-encoded UTF-8",
        );
    };
    if !shared.current().has_plugin(&plugin) {
        return not_found(&format!(
            "no plugin `{plugin}` in the applied configuration"
        ));
    }
    let state = shared.runtime().state();
    let ns: Arc<str> = Arc::from(plugin.as_str());
    let result = match req.method().clone() {
        Method::GET => match state.get(&ns, &key, None).await {
            Ok(Some(entry)) => {
                let mut resp = Response::new(body::full(Bytes::from(entry.value)));
                resp.headers_mut().insert(
                    "x-wicket-state-version",
                    http::HeaderValue::from(entry.version),
                );
                return resp;
            }
            Ok(None) => return not_found(&format!("no key `{key}` in `{plugin}`'s state")),
            Err(e) => Err(e),
        },
        Method::PUT => {
            let ttl_ms = match ttl_param(req.uri().query()) {
                Ok(ttl) => ttl,
                Err(message) => {
                    return json_error(StatusCode::BAD_REQUEST, "bad_request", &message)
                }
            };
            let value = match read_value(shared, req).await {
                Ok(value) => value,
                Err(resp) => return resp,
            };
            {
                let mut written = guard.written.lock().unwrap_or_else(|p| p.into_inner());
                let keys = written.entry(plugin.clone()).or_default();
                if !keys.contains(&key) && keys.len() >= MAX_ADMIN_KEYS_PER_PLUGIN {
                    return json_error(
                        StatusCode::INSUFFICIENT_STORAGE,
                        "too_many_keys",
                        &format!("the admin API writes at most {MAX_ADMIN_KEYS_PER_PLUGIN} keys per plugin; delete some first"),
                    );
                }
                keys.insert(key.clone());
            }
            state
                .set(&ns, &key, value, ttl_ms, None)
                .await
                .map(|version| serde_json::json!({ "version": version }))
        }
        Method::DELETE => {
            if let Some(keys) = guard
                .written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&plugin)
            {
                keys.remove(&key);
            }
            state
                .delete(&ns, &key, None)
                .await
                .map(|existed| serde_json::json!({ "deleted": existed }))
        }
        _ => {
            return json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "plugin state takes GET, PUT or DELETE",
            )
        }
    };
    match result {
        Ok(json) => {
            tracing::info!(
                plugin = &*ns,
                key,
                "plugin state changed through the admin API"
            );
            json_response(StatusCode::OK, json.to_string())
        }
        Err(crate::state::StateError::TooLarge) => json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the key or value is larger than the state store allows",
        ),
        Err(e) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "state_unavailable",
            &e.to_string(),
        ),
    }
}

/// A `PUT` body, bounded in size and in the time between its pieces by the
/// same body reader the proxy uses.
async fn read_value(shared: &Shared, req: Request<Incoming>) -> Result<Vec<u8>, Response<Body>> {
    use crate::request::{Refusal, RequestBody};
    let idle = shared.current().admin.as_ref().map_or(
        crate::config::ListenerTimeouts::default().body_idle_ms,
        |a| a.timeouts.body_idle_ms,
    );
    let (parts, body) = req.into_parts();
    let refused = |r: Refusal| match r {
        Refusal::BodyTooLarge(_) => json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("a state value written here is at most {MAX_ADMIN_VALUE_BYTES} bytes"),
        ),
        other => json_error(other.status(), other.code(), &other.to_string()),
    };
    let body = RequestBody::new(
        body,
        &parts.headers,
        MAX_ADMIN_VALUE_BYTES as u64,
        std::time::Duration::from_millis(idle),
    )
    .map_err(refused)?;
    let verdict = body.verdict();
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(_) => Err(refused(
            verdict
                .and_then(|v| v.get().copied())
                .unwrap_or(Refusal::BodyIncomplete),
        )),
    }
}

/// `ttl_ms=N` from the query, if present.
fn ttl_param(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("ttl_ms", v)) => {
                return v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("ttl_ms: expected milliseconds, got {v:?}"))
            }
            _ if pair.is_empty() => {}
            _ => return Err(format!("unknown query parameter {pair:?} (only ttl_ms)")),
        }
    }
    Ok(None)
}
