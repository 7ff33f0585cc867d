//! Upstreams: named groups of endpoints, how one is picked, and the pooled
//! keep-alive client that sends requests to them with deadlines.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::Body;
use crate::config::{Balance, UpstreamConfig};

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
    /// The answer was not valid HTTP.
    #[error("protocol error")]
    Protocol,
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
        }
    }
}

/// A named upstream, ready to send requests.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    endpoints: Vec<SocketAddr>,
    /// Endpoint indices in pick order; one full cycle honours the weights.
    schedule: Vec<usize>,
    next: AtomicUsize,
    client: Client<HttpConnector, Body>,
    request_timeout: Duration,
    config: UpstreamConfig,
}

impl Upstream {
    /// Build from config; `Err` names the offending field.
    pub fn new(name: &str, cfg: &UpstreamConfig) -> Result<Upstream, (String, String)> {
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
        let connect_timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.max_idle_per_endpoint)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Upstream {
            name: name.to_string(),
            endpoints: cfg.endpoints.iter().map(|e| e.address).collect(),
            schedule: smooth_weighted_schedule(&weights),
            next: AtomicUsize::new(0),
            client,
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
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.endpoints[self.schedule[n % self.schedule.len()]])
    }

    /// Send `req` (whose URI carries path and query only) to `endpoint`, with
    /// the connect and response-head deadlines.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamErrorKind> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri: http::Uri = format!("http://{endpoint}{pq}")
            .parse()
            .map_err(|_| UpstreamErrorKind::Protocol)?;
        *req.uri_mut() = uri;
        // The connect deadline is enforced by the connector; this one bounds
        // the whole wait for the response head, connect included.
        match tokio::time::timeout(self.request_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamErrorKind::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamErrorKind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut timed_out = false;
    let mut hyper_err = None;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            hyper_err = Some(h);
        }
        source = s.source();
    }
    if timed_out {
        return UpstreamErrorKind::Timeout;
    }
    if e.is_connect() {
        return UpstreamErrorKind::ConnectFailed;
    }
    match hyper_err {
        Some(h) if h.is_parse() || h.is_parse_status() => UpstreamErrorKind::Protocol,
        _ => UpstreamErrorKind::Reset,
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
