//! Active health checks: every endpoint probed on an interval (HTTP, or a
//! TCP — and TLS — connect), taken out of rotation after
//! `unhealthy_threshold` failing probes in a row and put back after
//! `healthy_threshold` passing ones.
//!
//! One task per upstream, holding only a weak reference: it ends when the
//! upstream is dropped (a reload that changed it, or removed it).

use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::BodyExt;

use super::endpoint::Endpoint;
use super::Upstream;
use crate::config::HealthCheckConfig;

/// A validated health check.
#[derive(Debug)]
pub(crate) struct Check {
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    jitter: Duration,
    healthy: u32,
    unhealthy: u32,
}

#[derive(Debug)]
enum Probe {
    Tcp,
    Http {
        method: http::Method,
        path: http::uri::PathAndQuery,
        host: Option<http::HeaderValue>,
        /// Inclusive ranges of passing statuses.
        expected: Vec<(u16, u16)>,
    },
}

/// The most of a probe's answer that is read (so its connection can be
/// reused); a longer body is dropped with its connection.
const MAX_PROBE_BODY: usize = 64 * 1024;

impl Check {
    /// From config; `Err` names the field.
    pub(crate) fn new(cfg: &HealthCheckConfig) -> Result<Check, (String, String)> {
        let err = |f: &str, m: String| Err((format!("health_check.{f}"), m));
        let probe = match (&cfg.http, &cfg.tcp) {
            (Some(_), Some(_)) | (None, None) => {
                return err("http", "set exactly one of http and tcp".into())
            }
            (None, Some(_)) => Probe::Tcp,
            (Some(h), None) => {
                let method = match http::Method::from_bytes(h.method.as_bytes()) {
                    Ok(m) if h.method.bytes().all(|b| b.is_ascii_uppercase()) => m,
                    _ => return err("http.method", format!("{:?} is not a method", h.method)),
                };
                let path = match http::uri::PathAndQuery::try_from(h.path.as_str()) {
                    Ok(p) if h.path.starts_with('/') => p,
                    _ => {
                        return err(
                            "http.path",
                            format!("{:?} is not a path starting with /", h.path),
                        )
                    }
                };
                let host = match &h.host {
                    None => None,
                    Some(host) => match http::HeaderValue::from_str(host) {
                        Ok(v) if !host.is_empty() => Some(v),
                        _ => return err("http.host", format!("{host:?} is not a host")),
                    },
                };
                let mut expected = Vec::new();
                for (i, s) in h.expected_statuses.iter().enumerate() {
                    let range = match s.split_once('-') {
                        None => s.parse().ok().map(|c| (c, c)),
                        Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
                    };
                    match range {
                        Some((a, b)) if (100..600).contains(&a) && (a..600).contains(&b) => {
                            expected.push((a, b))
                        }
                        _ => {
                            return err(
                                &format!("http.expected_statuses[{i}]"),
                                format!("{s:?} is not a status (200) or range (200-299)"),
                            )
                        }
                    }
                }
                if expected.is_empty() {
                    return err("http.expected_statuses", "must list at least one".into());
                }
                Probe::Http {
                    method,
                    path,
                    host,
                    expected,
                }
            }
        };
        for (f, v) in [
            ("interval_ms", cfg.interval_ms),
            ("timeout_ms", cfg.timeout_ms),
        ] {
            if v == 0 {
                return err(f, "must be at least 1".into());
            }
        }
        if cfg.timeout_ms > cfg.interval_ms {
            return err("timeout_ms", "must be at most interval_ms".into());
        }
        for (f, v) in [
            ("healthy_threshold", cfg.healthy_threshold),
            ("unhealthy_threshold", cfg.unhealthy_threshold),
        ] {
            if v == 0 {
                return err(f, "must be at least 1".into());
            }
        }
        Ok(Check {
            probe,
            interval: Duration::from_millis(cfg.interval_ms),
            timeout: Duration::from_millis(cfg.timeout_ms),
            jitter: Duration::from_millis(cfg.jitter_ms),
            healthy: cfg.healthy_threshold,
            unhealthy: cfg.unhealthy_threshold,
        })
    }
}

/// Probe the upstream's endpoints until it is dropped.
pub(crate) async fn run(upstream: Weak<Upstream>) {
    loop {
        let Some(up) = upstream.upgrade() else { return };
        let Some(check) = up.check.as_ref() else {
            return;
        };
        let wait = check.interval
            + if check.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_millis(rand::random_range(0..=check.jitter.as_millis() as u64))
            };
        let endpoints = up.live.load().endpoints.clone();
        let mut probes = tokio::task::JoinSet::new();
        for e in endpoints {
            let up = up.clone();
            probes.spawn(async move {
                let check = up.check.as_ref().expect("checked above");
                let passed = probe(check, &e).await;
                if let Some(healthy) = e.probed(passed, check.healthy, check.unhealthy) {
                    up.health_changed(&e, healthy);
                }
            });
        }
        drop(up);
        while probes.join_next().await.is_some() {}
        tokio::time::sleep(wait).await;
    }
}

async fn probe(check: &Check, e: &Arc<Endpoint>) -> bool {
    let addr = e.addr();
    let result = match &check.probe {
        Probe::Tcp => match tokio::time::timeout(check.timeout, e.pool.open()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kind)) => Err(kind.to_string()),
            Err(_) => Err("timed out".to_string()),
        },
        Probe::Http {
            method,
            path,
            host,
            expected,
        } => match tokio::time::timeout(check.timeout, http_probe(e, method, path, host)).await {
            Ok(Ok(status)) if expected.iter().any(|&(a, b)| (a..=b).contains(&status)) => Ok(()),
            Ok(Ok(status)) => Err(format!("status {status}")),
            Ok(Err(kind)) => Err(kind.to_string()),
            Err(_) => Err("timed out".to_string()),
        },
    };
    match result {
        Ok(()) => true,
        Err(why) => {
            tracing::debug!(endpoint = %addr, why, "health probe failed");
            false
        }
    }
}

/// Send the probe and read its answer (so its connection goes back to the
/// pool): the status.
async fn http_probe(
    e: &Arc<Endpoint>,
    method: &http::Method,
    path: &http::uri::PathAndQuery,
    host: &Option<http::HeaderValue>,
) -> Result<u16, super::UpstreamErrorKind> {
    let mut req = http::Request::new(crate::body::empty());
    *req.method_mut() = method.clone();
    *req.uri_mut() = http::Uri::from(path.clone());
    let host = match host {
        Some(h) => h.clone(),
        None => http::HeaderValue::from_str(&e.addr().to_string()).expect("an address is a value"),
    };
    req.headers_mut().insert(http::header::HOST, host);
    req.headers_mut().insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static("wicket-health-check"),
    );
    let resp = match e.pool.send(req).await {
        Ok(r) => r,
        Err(failed) => return Err(failed.kind),
    };
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut read = 0;
    while read <= MAX_PROBE_BODY {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    Ok(status)
}
