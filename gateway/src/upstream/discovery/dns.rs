//! DNS names as endpoints: each name resolved to all its addresses, again
//! when its answer's TTL runs out (bounded by `min_ttl_ms` and
//! `max_ttl_ms`). A failed lookup keeps the last good answer.

use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;

use super::{Backoff, Found, MAX_ENDPOINTS};
use crate::config::DnsConfig;
use crate::upstream::Upstream;

/// A resolver built from an upstream's `dns` settings.
pub(crate) struct Dns {
    resolver: Resolver<TokioRuntimeProvider>,
    min_ttl: Duration,
    max_ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").finish_non_exhaustive()
    }
}

impl Dns {
    /// From config; `Err` names the field.
    pub(crate) fn new(cfg: &DnsConfig) -> Result<Dns, (String, String)> {
        let err = |f: &str, m: String| Err((format!("dns.{f}"), m));
        if cfg.min_ttl_ms == 0 {
            return err("min_ttl_ms", "must be at least 1".into());
        }
        if cfg.max_ttl_ms < cfg.min_ttl_ms {
            return err("max_ttl_ms", "must be at least min_ttl_ms".into());
        }
        if cfg.timeout_ms == 0 {
            return err("timeout_ms", "must be at least 1".into());
        }
        let builder = if cfg.nameservers.is_empty() {
            match Resolver::builder_tokio() {
                Ok(b) => b,
                Err(e) => {
                    return err(
                        "nameservers",
                        format!(
                        "the system's resolver configuration is unusable ({e}): list nameservers"
                    ),
                    )
                }
            }
        } else {
            let servers = cfg
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::new(ProtocolConfig::Udp);
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::new(ProtocolConfig::Tcp);
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let mut builder = builder;
        let opts = builder.options_mut();
        opts.timeout = Duration::from_millis(cfg.timeout_ms);
        opts.attempts = 2;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = match builder.build() {
            Ok(r) => r,
            Err(e) => return err("nameservers", format!("cannot build a resolver: {e}")),
        };
        Ok(Dns {
            resolver,
            min_ttl: Duration::from_millis(cfg.min_ttl_ms),
            max_ttl: Duration::from_millis(cfg.max_ttl_ms),
            timeout: Duration::from_millis(cfg.timeout_ms),
        })
    }

    /// The name's addresses and how long they may be kept.
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
        weight: u32,
    ) -> Result<(Found, Duration), String> {
        // A trailing dot: the name is absolute, never tried under the
        // search domains.
        let fqdn = format!("{host}.");
        let lookup = tokio::time::timeout(self.timeout * 2, self.resolver.lookup_ip(fqdn.as_str()))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(std::time::Instant::now())
            .clamp(self.min_ttl, self.max_ttl);
        let mut found: Found = lookup
            .iter()
            .take(MAX_ENDPOINTS)
            .map(|ip| (std::net::SocketAddr::new(ip, port), weight))
            .collect();
        found.sort();
        found.dedup();
        if found.is_empty() {
            return Err("no addresses".into());
        }
        Ok((found, ttl))
    }
}

/// Keep `slot` of `upstream` resolved until the upstream is dropped. The
/// first answer is awaited by the caller ([`first`]); this loop starts after.
pub(crate) async fn run(
    upstream: Weak<Upstream>,
    slot: usize,
    host: String,
    port: u16,
    weight: u32,
    mut wait: Duration,
) {
    let mut backoff: Option<Backoff> = None;
    loop {
        tokio::time::sleep(wait).await;
        let Some(up) = upstream.upgrade() else { return };
        let Some(dns) = up.dns.as_ref() else { return };
        wait = match dns.resolve(&host, port, weight).await {
            Ok((found, ttl)) => {
                backoff = None;
                up.update(super::super::Slot::Name(slot), found);
                ttl
            }
            Err(why) => {
                let b = backoff.get_or_insert_with(|| {
                    Backoff::new(dns.min_ttl, dns.max_ttl.min(Duration::from_secs(30)))
                });
                let retry = b.failed();
                tracing::warn!(upstream = up.name(), name = %host, error = %why, retry_ms = retry.as_millis() as u64, "DNS lookup failed; keeping the last answer");
                retry
            }
        };
    }
}

/// The first lookup of a name: its endpoints and when to look again.
pub(crate) async fn first(
    up: &Arc<Upstream>,
    host: &str,
    port: u16,
    weight: u32,
) -> (Found, Duration) {
    let Some(dns) = up.dns.as_ref() else {
        return (Vec::new(), Duration::from_secs(1));
    };
    match dns.resolve(host, port, weight).await {
        Ok(r) => r,
        Err(why) => {
            tracing::warn!(upstream = up.name(), name = %host, error = %why, "DNS lookup failed; the name has no endpoints until one succeeds");
            (Vec::new(), dns.min_ttl)
        }
    }
}
