//! Upstreams: named groups of endpoints, how one is picked, and sending a
//! request to one with deadlines over its pooled keep-alive connections
//! ([`pool`]).

mod pool;
mod tls;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::body::Body;
use crate::config::{Balance, UpstreamConfig, UpstreamProtocol};
use pool::EndpointPool;

/// How an upstream call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamErrorKind {
    /// No endpoint accepted the connection.
    #[error("connect failed")]
    ConnectFailed,
    /// The connect or response deadline passed.
    #[error("timed out")]
    Timeout,
    /// The connection broke before a complete response head.
    #[error("connection reset")]
    Reset,
    /// Nothing to send to.
    #[error("no endpoint")]
    NoEndpoint,
    /// The answer was not valid HTTP (or TLS failed for a reason other
    /// than the certificate).
    #[error("protocol error")]
    Protocol,
    /// The endpoint's TLS certificate was refused: untrusted, expired, or
    /// not for the server name.
    #[error("certificate refused")]
    Certificate,
}

impl UpstreamErrorKind {
    /// Stable code for JSON bodies and metrics.
    pub fn code(self) -> &'static str {
        match self {
            UpstreamErrorKind::ConnectFailed => "upstream_connect_failed",
            UpstreamErrorKind::Timeout => "upstream_timeout",
            UpstreamErrorKind::Reset => "upstream_reset",
            UpstreamErrorKind::NoEndpoint => "upstream_no_endpoint",
            UpstreamErrorKind::Protocol => "upstream_protocol_error",
            UpstreamErrorKind::Certificate => "upstream_certificate_invalid",
        }
    }
}

/// A named upstream, ready to send requests.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    endpoints: Vec<Arc<EndpointPool>>,
    /// Endpoint indices in pick order; one full cycle honours the weights.
    schedule: Vec<usize>,
    next: AtomicUsize,
    request_timeout: Duration,
    config: UpstreamConfig,
}

impl Upstream {
    /// Build from config; `Err` names the offending field.
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        base: &std::path::Path,
    ) -> Result<Upstream, (String, String)> {
        if cfg.endpoints.is_empty() {
            return Err((
                "endpoints".into(),
                "at least one endpoint is required".into(),
            ));
        }
        for (i, e) in cfg.endpoints.iter().enumerate() {
            if e.weight == 0 {
                return Err((
                    format!("endpoints[{i}].weight"),
                    "must be at least 1".into(),
                ));
            }
            if e.weight > 1000 {
                return Err((
                    format!("endpoints[{i}].weight"),
                    "must be at most 1000".into(),
                ));
            }
        }
        if cfg.connect_timeout_ms == 0 {
            return Err(("connect_timeout_ms".into(), "must be at least 1".into()));
        }
        if cfg.request_timeout_ms == 0 {
            return Err(("request_timeout_ms".into(), "must be at least 1".into()));
        }
        let weights: Vec<u32> = match cfg.balance {
            Balance::RoundRobin => vec![1; cfg.endpoints.len()],
            Balance::Weighted => cfg.endpoints.iter().map(|e| e.weight).collect(),
        };
        match (cfg.protocol, &cfg.tls) {
            (UpstreamProtocol::H2, None) => {
                return Err((
                    "protocol".into(),
                    "h2 is HTTP/2 over TLS: set tls, or use h2c for cleartext".into(),
                ))
            }
            (UpstreamProtocol::H2c, Some(_)) => {
                return Err((
                    "protocol".into(),
                    "h2c is cleartext HTTP/2: use h2 with tls".into(),
                ))
            }
            _ => {}
        }
        let tls = match &cfg.tls {
            Some(t) => Some(tls::Connector::new(t, cfg.protocol, base)?),
            None => None,
        };
        let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let endpoints = cfg
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(EndpointPool::new(
                    e.address,
                    cfg.max_idle_per_endpoint,
                    connect_timeout,
                    cfg.protocol,
                    tls.clone(),
                ))
            })
            .collect();
        Ok(Upstream {
            name: name.to_string(),
            endpoints,
            schedule: smooth_weighted_schedule(&weights),
            next: AtomicUsize::new(0),
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            config: cfg.clone(),
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration it was built from (a reload reuses an upstream, and
    /// its pooled connections, when this is unchanged).
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Pick the next endpoint.
    pub fn pick(&self) -> Option<Endpoint<'_>> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(Endpoint(
            &self.endpoints[self.schedule[n % self.schedule.len()]],
        ))
    }

    /// Send `req` (origin-form URI: path and query; `Host` set) to `endpoint`
    /// and wait for the response head, within the request deadline or
    /// `limit` if that is sooner (connect included; the connect deadline
    /// also applies on its own).
    pub async fn send(
        &self,
        endpoint: Endpoint<'_>,
        req: http::Request<Body>,
        limit: Option<Duration>,
    ) -> Result<http::Response<Body>, UpstreamErrorKind> {
        let deadline = limit.map_or(self.request_timeout, |l| l.min(self.request_timeout));
        match tokio::time::timeout(deadline, endpoint.0.send(req)).await {
            Err(_) => Err(UpstreamErrorKind::Timeout),
            Ok(result) => result,
        }
    }
}

impl Upstream {
    /// Whether it speaks HTTP/1.1 (so upgrades can go through).
    pub fn is_http1(&self) -> bool {
        self.config.protocol == UpstreamProtocol::Http1
    }

    /// Send an upgrade request (WebSocket) on a connection of its own and
    /// wait for the response head within the request deadline. On a 101 the
    /// response carries the upgraded connection (`hyper::upgrade::on`).
    pub async fn upgrade(
        &self,
        endpoint: Endpoint<'_>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Body>, UpstreamErrorKind> {
        match tokio::time::timeout(self.request_timeout, endpoint.0.upgrade(req)).await {
            Err(_) => Err(UpstreamErrorKind::Timeout),
            Ok(result) => result,
        }
    }
}

/// One endpoint of an upstream, as [`Upstream::pick`] chose it.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'u>(&'u Arc<EndpointPool>);

impl Endpoint<'_> {
    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

/// nginx's smooth weighted round-robin, unrolled into one cycle so picking is
/// a single atomic increment. Weights {5, 1, 1} give a, a, b, a, c, a, a —
/// spread out rather than five a's in a row.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let gcd = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| (w / gcd) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .expect("at least one endpoint");
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_weights_and_interleaves() {
        let s = smooth_weighted_schedule(&[5, 1, 1]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_weighted_schedule(&[3, 1]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn schedule_reduces_common_factors() {
        assert_eq!(smooth_weighted_schedule(&[200, 100]).len(), 3);
        assert_eq!(smooth_weighted_schedule(&[1, 1, 1]), vec![0, 1, 2]);
    }
}
