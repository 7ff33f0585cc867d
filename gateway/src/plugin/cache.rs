//! The precompiled-module cache: compiled components on disk, keyed by the
//! module's digest and the engine's compatibility hash, so a restart loads in
//! a fraction of a millisecond instead of recompiling.

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

/// The compiled component for `bytes`, from `dir` when a compatible entry
/// exists, else compiled now and written back (best effort).
pub(super) fn load_or_compile(
    engine: &Engine,
    dir: Option<&Path>,
    digest: &[u8; 32],
    bytes: &[u8],
) -> wasmtime::Result<Component> {
    let Some(dir) = dir else {
        return Component::from_binary(engine, bytes);
    };
    let path = dir.join(entry_name(engine, digest));
    if path.exists() {
        // SAFETY: the file is only ever written by `store` below from
        // `Component::serialize` of this engine configuration (the name carries
        // the engine's compatibility hash), and wasmtime checks the header
        // again on load. A corrupt or foreign file is rejected, not run.
        #[allow(unsafe_code)]
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable precompiled module");
            }
        }
    }
    let component = Component::from_binary(engine, bytes)?;
    if let Err(e) = store(&component, dir, &path) {
        tracing::warn!(path = %path.display(), error = %e, "could not write precompiled module");
    }
    Ok(component)
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
