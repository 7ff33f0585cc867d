//! The request path, top to bottom.
//!
//! ```text
//!  client ──▶ 1. route ──▶ 2. prepare ──▶ 3. plugins on-request ──┐
//!                                         (in order; one may respond)
//!                                                                 ▼
//!  client ◀── 7. log ◀── 6. finish ◀── 5. plugins on-response ◀── 4. upstream
//!                                      (reverse order; may replace)   (skipped if a
//!                                                                      plugin responded)
//! ```
//!
//! Each request reads the current [`Snapshot`] once (the caller passes it) and
//! is served wholly by it. Every failure becomes a [`ProxyError`] with one
//! status and one JSON body; `on-response` still runs after an upstream
//! failure so plugins can replace the gateway's error reply.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::chain;
use crate::error::ProxyError;
use crate::plugin::{OutcomeResult, RequestInfo, UpstreamOutcome};
use crate::router::Lookup;
use crate::snapshot::Snapshot;

/// What the server knows of the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The client's address.
    pub client: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
}

/// Serve one request with `snapshot`.
pub async fn handle(snapshot: Arc<Snapshot>, req: Request<Incoming>, conn: Conn) -> Response<Body> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let authority = authority(&parts);
    let method = parts.method.clone();
    let path = parts.uri.path().to_string();

    // 1. Route: host, path, method → route and path parameters.
    let (route, params) = match route(&snapshot, &authority, &parts) {
        Ok(found) => found,
        Err(e) => return finish_early(&snapshot, e, &method, &path, started),
    };
    // 2. Prepare the upstream request head: hop-by-hop headers out, forwarding headers in.
    prepare_request(&mut parts, &conn, &authority);
    let info = Arc::new(RequestInfo {
        scheme: conn.scheme,
        authority,
        client_addr: conn.client.to_string(),
        route: route.name.clone(),
        path,
        params,
    });
    // 3. Plugins, on-request, in chain order.
    let mut pass = chain::on_request(&snapshot, route, &mut parts, &info).await;
    // 4. Upstream, unless a plugin already answered.
    let (outcome, resp) = match pass.short_circuit.take() {
        Some(resp) => (skipped(), resp),
        None => {
            // The head is moved, not copied, into the upstream request unless
            // an `on-response` hook will still read it.
            let headers = if pass.runs_on_response(route) {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            call_upstream(&pass.upstream, &parts, headers, body).await
        }
    };
    // 5. Plugins, on-response, in reverse order.
    let mut resp = chain::on_response(route, &pass, &mut parts, &info, &outcome, resp).await;
    // 6. Finish: plugins' response headers, hop-by-hop headers out.
    finish_response(&snapshot, &mut resp, pass.response_headers);
    // 7. Log and count.
    record(
        &snapshot,
        Some(route),
        pass.upstream.name(),
        &method,
        &info.path,
        &resp,
        &outcome,
        started,
    );
    resp
}

fn route<'s>(
    snapshot: &'s Snapshot,
    authority: &str,
    parts: &http::request::Parts,
) -> Result<(&'s crate::snapshot::Route, crate::router::Params), ProxyError> {
    snapshot
        .lookup(authority, &parts.method, parts.uri.path())
        .map_err(|lookup| match lookup {
            Lookup::MethodNotAllowed(allow) => ProxyError::MethodNotAllowed {
                method: parts.method.to_string(),
                allow: allow
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            _ => ProxyError::NoRoute {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
            },
        })
}

/// HTTP/1.1 carries the host in `Host`; HTTP/2 in `:authority`.
fn authority(parts: &http::request::Parts) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the `Connection` header nominates are hop-by-hop too.
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in nominated.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
}

fn prepare_request(parts: &mut http::request::Parts, conn: &Conn, authority: &str) {
    strip_hop_by_hop(&mut parts.headers);
    // Upstreams speak HTTP/1.1 whatever the client used; the path and query
    // are all the upstream URI keeps (the endpoint is chosen later).
    parts.version = Version::HTTP_11;
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = http::Uri::from(pq);
    }
    if !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(authority) {
            parts.headers.insert(header::HOST, v);
        }
    }
    // Append to X-Forwarded-For (as nginx's $proxy_add_x_forwarded_for does);
    // set Proto and Host to what this hop saw.
    let ip = conn.client.ip().to_string();
    let xff = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        parts.headers.insert("x-forwarded-for", v);
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static(conn.scheme));
    if let Ok(v) = HeaderValue::from_str(authority) {
        parts.headers.insert("x-forwarded-host", v);
    }
}

fn skipped() -> UpstreamOutcome {
    UpstreamOutcome {
        result: OutcomeResult::Skipped,
        latency_us: 0,
        endpoint: None,
    }
}

async fn call_upstream(
    upstream: &crate::upstream::Upstream,
    parts: &http::request::Parts,
    headers: HeaderMap,
    body: Incoming,
) -> (UpstreamOutcome, Response<Body>) {
    let Some(endpoint) = upstream.pick() else {
        let kind = crate::upstream::UpstreamErrorKind::NoEndpoint;
        let e = ProxyError::Upstream {
            upstream: upstream.name().to_string(),
            kind,
        };
        return (
            UpstreamOutcome {
                result: OutcomeResult::Error(kind),
                latency_us: 0,
                endpoint: None,
            },
            e.to_response(),
        );
    };
    let mut req = Request::new(body::boxed(body));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = headers;
    let sent = Instant::now();
    let result = upstream.send(endpoint, req).await;
    let latency_us = sent.elapsed().as_micros() as u64;
    let endpoint = Some(endpoint.to_string());
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let mut resp = resp.map(body::boxed);
            strip_hop_by_hop(resp.headers_mut());
            (
                UpstreamOutcome {
                    result: OutcomeResult::Status(status),
                    latency_us,
                    endpoint,
                },
                resp,
            )
        }
        Err(kind) => {
            tracing::warn!(upstream = upstream.name(), endpoint = ?endpoint, error = %kind, "upstream call failed");
            let e = ProxyError::Upstream {
                upstream: upstream.name().to_string(),
                kind,
            };
            (
                UpstreamOutcome {
                    result: OutcomeResult::Error(kind),
                    latency_us,
                    endpoint,
                },
                e.to_response(),
            )
        }
    }
}

fn finish_response(snapshot: &Snapshot, resp: &mut Response<Body>, extra: HeaderMap) {
    // Hop-by-hop headers a plugin may have added must not reach the client.
    strip_hop_by_hop(resp.headers_mut());
    for (name, value) in extra {
        if let Some(name) = name {
            resp.headers_mut().append(name, value);
        }
    }
    stamp_generation(snapshot, resp);
}

fn stamp_generation(snapshot: &Snapshot, resp: &mut Response<Body>) {
    if snapshot.expose_generation {
        resp.headers_mut().insert(
            "x-wicket-generation",
            HeaderValue::from(snapshot.generation),
        );
    }
}

fn finish_early(
    snapshot: &Snapshot,
    e: ProxyError,
    method: &http::Method,
    path: &str,
    started: Instant,
) -> Response<Body> {
    let mut resp = e.to_response();
    stamp_generation(snapshot, &mut resp);
    record(snapshot, None, "", method, path, &resp, &skipped(), started);
    resp
}

#[allow(clippy::too_many_arguments)]
fn record(
    snapshot: &Snapshot,
    route: Option<&crate::snapshot::Route>,
    upstream: &str,
    method: &http::Method,
    path: &str,
    resp: &Response<Body>,
    outcome: &UpstreamOutcome,
    started: Instant,
) {
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    let route = match route {
        Some(r) => {
            r.metrics.request(status, elapsed.as_secs_f64());
            &*r.name
        }
        None => {
            snapshot
                .metrics()
                .request("", status, elapsed.as_secs_f64());
            ""
        }
    };
    if snapshot.access_log {
        tracing::info!(
            target: "wicket::access",
            %method,
            path,
            status,
            route,
            upstream,
            endpoint = outcome.endpoint.as_deref().unwrap_or("-"),
            upstream_us = outcome.latency_us,
            total_us = elapsed.as_micros() as u64,
            generation = snapshot.generation,
        );
    }
}
