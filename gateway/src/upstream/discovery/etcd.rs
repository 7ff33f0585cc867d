//! Endpoints from etcd v3, through its JSON gateway (`/v3/kv/range`,
//! `/v3/watch`) on a plain HTTP/1.1 client: no gRPC, no protoc.
//!
//! Every key under the prefix is one endpoint; its value is `ip:port` or
//! `{"address": "ip:port", "weight": 2}`. The task reads the whole prefix,
//! then watches it from the next revision, applying each event. When etcd
//! is unreachable, the watch breaks or the revision was compacted, it keeps
//! the last good list and starts again (with backoff, trying the next
//! client URL each time).

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::{Backoff, Entry, Found, MAX_ENDPOINTS};
use crate::config::EtcdDiscoveryConfig;
use crate::upstream::{Slot, Upstream};

/// The largest range answer read.
const MAX_RANGE_BYTES: usize = 16 * 1024 * 1024;
/// How long a watch may go without a message: past etcd's progress
/// notifications (every ten minutes) the connection is presumed dead.
const WATCH_SILENCE: Duration = Duration::from_secs(11 * 60);
/// The largest single watch message.
const MAX_WATCH_MESSAGE: usize = 4 * 1024 * 1024;

/// A validated etcd source.
#[derive(Debug, Clone)]
pub(crate) struct Etcd {
    /// `host:port` of each client URL.
    authorities: Vec<http::uri::Authority>,
    prefix: Vec<u8>,
    timeout: Duration,
}

impl Etcd {
    /// From config; `Err` names the field.
    pub(crate) fn new(cfg: &EtcdDiscoveryConfig) -> Result<Etcd, (String, String)> {
        let at = |f: String| format!("discovery.etcd.{f}");
        if cfg.endpoints.is_empty() {
            return Err((at("endpoints".into()), "list at least one etcd URL".into()));
        }
        let mut authorities = Vec::new();
        for (i, u) in cfg.endpoints.iter().enumerate() {
            let uri: http::Uri = u
                .parse()
                .map_err(|_| (at(format!("endpoints[{i}]")), format!("{u:?} is not a URL")))?;
            match (uri.scheme_str(), uri.authority(), uri.path()) {
                (Some("http"), Some(a), "/" | "") if a.port_u16().is_some() => {
                    authorities.push(a.clone())
                }
                _ => {
                    return Err((
                        at(format!("endpoints[{i}]")),
                        format!("{u:?} must be http://host:port (etcd's client URL)"),
                    ))
                }
            }
        }
        if cfg.prefix.is_empty() {
            return Err((at("prefix".into()), "must not be empty".into()));
        }
        if cfg.timeout_ms == 0 {
            return Err((at("timeout_ms".into()), "must be at least 1".into()));
        }
        Ok(Etcd {
            authorities,
            prefix: cfg.prefix.as_bytes().to_vec(),
            timeout: Duration::from_millis(cfg.timeout_ms),
        })
    }

    /// The key range of the prefix: [prefix, prefix with its last byte
    /// incremented).
    fn range(&self) -> serde_json::Value {
        let mut end = self.prefix.clone();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                break;
            }
        }
        // An all-0xff prefix has no end: `\0` means "to the end of keys".
        if end.is_empty() {
            end.push(0);
        }
        serde_json::json!({"key": B64.encode(&self.prefix), "range_end": B64.encode(end)})
    }
}

#[derive(Deserialize)]
struct RangeAnswer {
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct Header {
    // The gateway writes 64-bit numbers as strings.
    revision: String,
}

#[derive(Deserialize, Clone)]
struct Kv {
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct WatchMessage {
    #[serde(default)]
    result: Option<WatchResult>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    compact_revision: Option<String>,
}

#[derive(Deserialize)]
struct Event {
    /// Absent for a PUT (the gateway leaves out default values).
    #[serde(default, rename = "type")]
    kind: Option<String>,
    kv: Kv,
}

/// The keys under the prefix and their endpoints.
#[derive(Default)]
struct Keys(BTreeMap<String, (std::net::SocketAddr, u32)>);

impl Keys {
    fn apply(&mut self, kv: &Kv, delete: bool) {
        if delete {
            self.0.remove(&kv.key);
            return;
        }
        let parsed = B64
            .decode(&kv.value)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                serde_json::from_slice::<Entry>(&v)
                    .or_else(|_| {
                        // A bare `ip:port` that is not JSON.
                        std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.trim().parse().ok())
                            .map(Entry::Address)
                            .ok_or(())
                    })
                    .map_err(|()| "neither ip:port nor {address, weight}".to_string())
            })
            .and_then(|e| e.endpoint());
        match parsed {
            Ok(endpoint) if self.0.len() < MAX_ENDPOINTS || self.0.contains_key(&kv.key) => {
                self.0.insert(kv.key.clone(), endpoint);
            }
            Ok(_) => {
                tracing::warn!(key = %key_text(&kv.key), "etcd: too many endpoints; key ignored")
            }
            Err(why) => {
                // A bad value removes what the key said before: the key
                // no longer names a usable endpoint.
                self.0.remove(&kv.key);
                tracing::warn!(key = %key_text(&kv.key), error = %why, "etcd: endpoint value refused");
            }
        }
    }

    fn found(&self) -> Found {
        let mut found: Found = self.0.values().copied().collect();
        found.sort();
        found.dedup_by_key(|e| e.0);
        found
    }
}

fn key_text(b64: &str) -> String {
    B64.decode(b64)
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .unwrap_or_else(|_| b64.to_string())
}

/// A POST of `body` to `path` on `authority`, within the timeout for the
/// connect and the response head.
async fn post(
    etcd: &Etcd,
    authority: &http::uri::Authority,
    path: &str,
    body: serde_json::Value,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let open = async {
        let tcp = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::post(format!("http://{authority}{path}"))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{path} answered {}", resp.status()));
        }
        Ok(resp)
    };
    tokio::time::timeout(etcd.timeout, open)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Read every key under the prefix: the keys, and the revision read at.
async fn read_all(etcd: &Etcd, authority: &http::uri::Authority) -> Result<(Keys, i64), String> {
    let resp = post(etcd, authority, "/v3/kv/range", etcd.range()).await?;
    let body = tokio::time::timeout(
        etcd.timeout,
        http_body_util::Limited::new(resp.into_body(), MAX_RANGE_BYTES).collect(),
    )
    .await
    .map_err(|_| "range timed out".to_string())?
    .map_err(|e| format!("range: {e}"))?
    .to_bytes();
    let answer: RangeAnswer =
        serde_json::from_slice(&body).map_err(|e| format!("range answer: {e}"))?;
    let revision = answer
        .header
        .revision
        .parse()
        .map_err(|_| "range answer: bad revision".to_string())?;
    let mut keys = Keys::default();
    for kv in &answer.kvs {
        keys.apply(kv, false);
    }
    Ok((keys, revision))
}

/// The first read, at build time: its endpoints, or nothing (logged) when
/// etcd cannot be reached — the task keeps trying.
pub(crate) async fn first(up: &Arc<Upstream>, etcd: &Etcd) -> Found {
    for authority in &etcd.authorities {
        match read_all(etcd, authority).await {
            Ok((keys, _)) => return keys.found(),
            Err(why) => {
                tracing::warn!(upstream = up.name(), etcd = %authority, error = %why, "etcd unreachable; the upstream has no registry endpoints until it answers")
            }
        }
    }
    Vec::new()
}

/// Read and watch the prefix until the upstream is dropped.
pub(crate) async fn run(upstream: Weak<Upstream>, etcd: Etcd) {
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut turn = 0usize;
    loop {
        let authority = &etcd.authorities[turn % etcd.authorities.len()];
        let result = watch(&upstream, &etcd, authority, &mut backoff).await;
        let Some(up) = upstream.upgrade() else { return };
        let wait = backoff.failed();
        match result {
            Ok(()) => {
                tracing::info!(upstream = up.name(), etcd = %authority, "etcd watch ended; reading again")
            }
            Err(why) => {
                tracing::warn!(upstream = up.name(), etcd = %authority, error = %why, retry_ms = wait.as_millis() as u64, "etcd unreachable; keeping the last good endpoints")
            }
        }
        drop(up);
        turn += 1;
        tokio::time::sleep(wait).await;
    }
}

/// One session: read all, publish, then apply watch events until the
/// stream ends. `Ok` when etcd ended it (compaction, cancel).
async fn watch(
    upstream: &Weak<Upstream>,
    etcd: &Etcd,
    authority: &http::uri::Authority,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let (mut keys, revision) = read_all(etcd, authority).await?;
    let Some(up) = upstream.upgrade() else {
        return Ok(());
    };
    up.update(Slot::Registry, keys.found());
    drop(up);
    let mut create = etcd.range();
    create["start_revision"] = serde_json::json!((revision + 1).to_string());
    // etcd then speaks at least every ten minutes, so a connection that
    // went silent (half open) is noticed.
    create["progress_notify"] = serde_json::json!(true);
    let resp = post(
        etcd,
        authority,
        "/v3/watch",
        serde_json::json!({ "create_request": create }),
    )
    .await?;
    backoff.succeeded();
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    while let Some(frame) = tokio::time::timeout(WATCH_SILENCE, body.frame())
        .await
        .map_err(|_| "watch silent past etcd's progress interval".to_string())?
    {
        let frame = frame.map_err(|e| format!("watch: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        // The gateway streams one JSON object per message; take every
        // complete one.
        let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<WatchMessage>();
        let mut consumed = 0;
        let mut changed = false;
        loop {
            match stream.next() {
                Some(Ok(msg)) => {
                    consumed = stream.byte_offset();
                    if let Some(e) = msg.error {
                        return Err(format!("watch error: {e}"));
                    }
                    let Some(result) = msg.result else { continue };
                    if result.canceled
                        || result.compact_revision.as_deref().is_some_and(|r| r != "0")
                    {
                        return Ok(());
                    }
                    for ev in &result.events {
                        keys.apply(&ev.kv, ev.kind.as_deref() == Some("DELETE"));
                        changed = true;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(format!("watch message: {e}")),
                None => break,
            }
        }
        buf.advance(consumed);
        if buf.len() > MAX_WATCH_MESSAGE {
            return Err("watch message too large".into());
        }
        if changed {
            let Some(up) = upstream.upgrade() else {
                return Ok(());
            };
            up.update(Slot::Registry, keys.found());
        }
    }
    Ok(())
}
