//! The precompiled-module cache: compiled components on disk, keyed by the
//! module's digest and the engine's compatibility hash, so a restart loads in
//! a fraction of a millisecond instead of recompiling. Bounded in size: when
//! an entry is written, the least recently used ones go until the cache fits
//! (an entry's modification time is its last use; a load refreshes it).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// `$XDG_CACHE_HOME/wicket`, else `$HOME/.cache/wicket`.
pub(super) fn default_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("wicket"))
}

/// Where compiled modules are kept, and how much room they may take.
#[derive(Debug, Clone)]
pub(super) struct Cache {
    pub(super) dir: PathBuf,
    pub(super) max_bytes: u64,
}

impl Cache {
    /// Whether a compatible entry for `digest` is on disk.
    pub(super) fn has(&self, engine: &Engine, digest: &[u8; 32]) -> bool {
        self.dir.join(entry_name(engine, digest)).exists()
    }
}

/// The compiled component for `bytes`, from the cache when a compatible entry
/// exists, else compiled now and written back (best effort).
pub(super) fn load_or_compile(
    engine: &Engine,
    cache: Option<&Cache>,
    digest: &[u8; 32],
    bytes: &[u8],
) -> wasmtime::Result<Component> {
    let Some(cache) = cache else {
        return Component::from_binary(engine, bytes);
    };
    let dir = &cache.dir;
    let path = dir.join(entry_name(engine, digest));
    if path.exists() {
        // SAFETY: the file is only ever written by `store` below from
        // `Component::serialize` of this engine configuration (the name carries
        // the engine's compatibility hash), and wasmtime checks the header
        // again on load. A corrupt or foreign file is rejected, not run.
        #[allow(unsafe_code)]
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => {
                touch(&path);
                return Ok(c);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable precompiled module");
            }
        }
    }
    let component = Component::from_binary(engine, bytes)?;
    if let Err(e) = store(&component, dir, &path) {
        tracing::warn!(path = %path.display(), error = %e, "could not write precompiled module");
    }
    prune(dir, cache.max_bytes, &path);
    Ok(component)
}

/// Mark an entry as just used.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Delete the least recently used entries until the cache holds at most
/// `max_bytes`; `keep` (the entry just written) is never deleted.
fn prune(dir: &Path, max_bytes: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    files.sort();
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if path == keep {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                total -= len;
                tracing::info!(path = %path.display(), bytes = len, "pruned precompiled module (least recently used)");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not prune precompiled module")
            }
        }
    }
}

fn entry_name(engine: &Engine, digest: &[u8; 32]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{:016x}.cwasm", h.finish())
}

/// Write through a temporary file and rename, so concurrent gateways (or
/// tests) never read a half-written entry.
fn store(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, name: &str, len: usize, age_s: u64) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
        std::fs::File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        path
    }

    #[test]
    fn prune_drops_least_recently_used_first_and_keeps_the_new_entry() {
        let dir = std::env::temp_dir().join(format!("wicket-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let oldest = entry(&dir, "a.cwasm", 400, 300);
        let middle = entry(&dir, "b.cwasm", 400, 200);
        let recent = entry(&dir, "c.cwasm", 400, 100);
        let other = entry(&dir, "notes.txt", 10_000, 400);
        // The entry just written is the oldest by time, and still kept.
        let new = entry(&dir, "d.cwasm", 400, 500);
        prune(&dir, 1_000, &new);
        assert!(!oldest.exists() && !middle.exists());
        assert!(recent.exists() && new.exists());
        assert!(other.exists(), "only cache entries are pruned");
        touch(&recent);
        assert!(
            std::fs::metadata(&recent).unwrap().modified().unwrap()
                > std::time::SystemTime::now() - std::time::Duration::from_secs(10)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
