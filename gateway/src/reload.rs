//! Watching the configuration file and the plugin modules and TLS files it
//! names, and reloading when they change.
//!
//! The watch is on directories, not files: editors replace files by renaming
//! over them, and Kubernetes swaps a ConfigMap by renaming the `..data`
//! symlink, and neither is visible to a watch on the old file. Events are
//! debounced; the reload itself re-reads everything and does nothing when the
//! file and the modules are byte-for-byte what already runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};

use crate::gateway::Shared;

/// A running watch on the config directory and the module files.
pub struct Watcher {
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<()>,
    inner: RecommendedWatcher,
    /// Directories under watch.
    dirs: HashSet<PathBuf>,
    /// Paths whose changes matter: the config's directory (all of it, for
    /// the Kubernetes `..data` swap) and each module file.
    relevant: Arc<std::sync::RwLock<Relevant>>,
}

#[derive(Default)]
struct Relevant {
    config_dir: PathBuf,
    modules: HashSet<PathBuf>,
    /// Directories of TLS files: any change in them counts, since a
    /// mounted Kubernetes secret swaps its files by renaming `..data`.
    tls_dirs: HashSet<PathBuf>,
}

impl Relevant {
    fn matches(&self, path: &Path) -> bool {
        let parent = path.parent();
        parent == Some(self.config_dir.as_path())
            || self.modules.contains(path)
            || parent.is_some_and(|p| self.tls_dirs.contains(p))
    }
}

impl Watcher {
    /// Start watching what the current snapshot uses.
    pub fn start(shared: Arc<Shared>) -> notify::Result<Watcher> {
        let (tx, events) = mpsc::unbounded_channel();
        let config_dir = absolute(shared.config_path().parent().unwrap_or(Path::new(".")));
        let relevant = Arc::new(std::sync::RwLock::new(Relevant {
            config_dir,
            modules: HashSet::new(),
            tls_dirs: HashSet::new(),
        }));
        let filter = relevant.clone();
        let inner =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                // Only changes of content or of names count: the gateway's
                // own reads (open, access, close-after-read) and metadata
                // changes must never trigger a reload.
                Ok(event) if !changes_content(&event.kind) => {}
                Ok(event) => {
                    let relevant = filter.read().unwrap_or_else(|p| p.into_inner());
                    if event.paths.iter().any(|p| relevant.matches(p)) {
                        let _ = tx.send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "file watch error"),
            })?;
        let mut watcher = Watcher {
            shared,
            events,
            inner,
            dirs: HashSet::new(),
            relevant,
        };
        watcher.rewatch()?;
        Ok(watcher)
    }

    /// Watch the directories of the current snapshot's files.
    fn rewatch(&mut self) -> notify::Result<()> {
        let snapshot = self.shared.current();
        // Plugin modules and TLS files alike: a change to either reloads.
        let modules: HashSet<PathBuf> = snapshot
            .module_paths
            .iter()
            .chain(snapshot.tls_files().map(|(p, _)| p))
            .map(|p| absolute(p))
            .collect();
        let tls_dirs: HashSet<PathBuf> = snapshot
            .tls_files()
            .filter_map(|(p, _)| absolute(p).parent().map(Path::to_path_buf))
            .collect();
        let mut wanted: HashSet<PathBuf> = modules
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        let config_dir = self
            .relevant
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .config_dir
            .clone();
        wanted.insert(config_dir);
        for dir in wanted.difference(&self.dirs.clone()) {
            match self.inner.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir.clone());
                }
                // A module directory that does not exist yet is not fatal;
                // the next reload tries again.
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory")
                }
            }
        }
        for dir in self.dirs.clone().difference(&wanted) {
            let _ = self.inner.unwatch(dir);
            self.dirs.remove(dir);
        }
        let mut relevant = self.relevant.write().unwrap_or_else(|p| p.into_inner());
        relevant.modules = modules;
        relevant.tls_dirs = tls_dirs;
        Ok(())
    }

    /// Reload on changes until `stop` fires.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                event = self.events.recv() => {
                    if event.is_none() {
                        return;
                    }
                    // Debounce: wait until the files have been quiet for a while,
                    // so a burst of writes becomes one reload of the final state.
                    let quiet = Duration::from_millis(self.shared.current().watch_debounce_ms);
                    while let Ok(Some(())) = tokio::time::timeout(quiet, self.events.recv()).await {}
                    tracing::debug!("watched files changed; reloading");
                    if self.shared.reload().await.is_ok() {
                        if let Err(e) = self.rewatch() {
                            tracing::warn!(error = %e, "cannot update file watches");
                        }
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// Whether an event can mean different bytes at a watched path.
pub(crate) fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    use notify::EventKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        // A writer closing the file: its last write is complete.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
