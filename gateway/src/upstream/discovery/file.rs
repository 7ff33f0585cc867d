//! Endpoints from a watched file:
//!
//! ```yaml
//! services:
//!   api:
//!     - 10.0.0.1:8080
//!     - { address: 10.0.0.2:8080, weight: 2 }
//! ```
//!
//! The same safe-reload rules as the configuration: the directory is
//! watched (editors and Kubernetes rename files into place), only events
//! that can change content count, a burst of writes is waited out, and the
//! file must read the same twice, a quiet period apart, before it is
//! applied — a half-written file is never applied. A file that does not
//! parse, or lacks the service, keeps the last good list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

use notify::Watcher as _;

use super::{Entry, Found, MAX_ENDPOINTS};
use crate::upstream::{Slot, Upstream};

/// How long the file must stay quiet before it is read.
const QUIET: Duration = Duration::from_millis(200);
/// Read again this often even without an event (a watch can miss changes
/// on some filesystems).
const POLL: Duration = Duration::from_secs(30);
/// The largest file read.
const MAX_BYTES: u64 = 4 * 1024 * 1024;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Registry {
    services: BTreeMap<String, Vec<Entry>>,
}

/// Read and check the file; `Err` says what is wrong and where. At build
/// time a wrong file is a configuration error (there is no last good list
/// to keep).
pub(crate) fn read(path: &Path, service: &str) -> Result<Found, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.len() > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    let registry: Registry = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        format!("at {at}: {}", e.into_inner())
    })?;
    let entries = registry
        .services
        .get(service)
        .ok_or_else(|| format!("no service {service:?}"))?;
    if entries.len() > MAX_ENDPOINTS {
        return Err(format!("more than {MAX_ENDPOINTS} endpoints"));
    }
    let mut found = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        found.push(
            e.endpoint()
                .map_err(|m| format!("at services.{service}[{i}]: {m}"))?,
        );
    }
    found.sort();
    found.dedup_by_key(|e| e.0);
    Ok(found)
}

/// Read the file once it reads the same twice, a quiet period apart.
async fn read_settled(path: &Path, service: &str) -> Result<Found, String> {
    loop {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
        if meta.len() > MAX_BYTES {
            return Err(format!("larger than {MAX_BYTES} bytes"));
        }
        let first = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        tokio::time::sleep(QUIET).await;
        let second = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        if first == second {
            return read(path, service);
        }
    }
}

/// Watch the file and hand each good version to the upstream until it is
/// dropped.
pub(crate) async fn run(upstream: Weak<Upstream>, path: PathBuf, service: String) {
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let path = std::path::absolute(&path).unwrap_or(path);
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let watched = dir.clone();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if crate::reload::changes_content(&event.kind)
                // Anything in its directory: the file, or a Kubernetes
                // `..data` swap renaming it into place.
                && event.paths.iter().any(|p| p.parent() == Some(watched.as_path()))
            {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot watch the endpoints file; reading it every 30 s");
            None
        }
    };
    if let Some(w) = watcher.as_mut() {
        if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the endpoints file's directory; reading it every 30 s");
        }
    }
    loop {
        // Without a watch (its sender gone), every POLL; never a busy loop.
        if let Ok(None) = tokio::time::timeout(POLL, events.recv()).await {
            tokio::time::sleep(POLL).await;
        }
        // Wait out a burst of writes.
        while let Ok(Some(())) = tokio::time::timeout(QUIET, events.recv()).await {}
        let Some(up) = upstream.upgrade() else { return };
        match read_settled(&path, &service).await {
            Ok(found) => up.update(Slot::Registry, found),
            Err(why) => {
                tracing::warn!(upstream = up.name(), path = %path.display(), error = %why, "endpoints file refused; keeping the last good list")
            }
        }
    }
}
