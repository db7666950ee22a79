//! Watches the inventory directory and the tenant file, applies each change to the inventory, swaps in
//! the new snapshot, and publishes what changed on the [`Feed`].
//!
//! Uses the `notify` crate (inotify on Linux). Events carry paths, so a change costs work for the files
//! it touches only (see [`Inventory::apply`]). The tenant file's directory is watched rather than the
//! file itself, so editors that replace files by rename and Kubernetes ConfigMap symlink swaps are seen;
//! the inventory directory's parent is watched too, so a deleted and recreated inventory directory is
//! watched again at once. Events are coalesced briefly; a periodic rescan (a `stat` per file) backs up
//! any event the OS drops.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::loading::feed::Feed;
use crate::loading::inventory::{Changes, Inventory, Snapshot};
use crate::metrics::Metrics;

/// How long to wait for more events after the first one before applying them.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Rescan at least this often even without events.
const RESCAN: Duration = Duration::from_secs(30);

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle").finish_non_exhaustive()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the watch task needs to know to classify a path.
struct Places {
    /// The inventory directory as configured: the inventory's own paths start with it.
    inventory: PathBuf,
    /// Other spellings of it events may use (absolute, symlinks resolved).
    inventory_aliases: Vec<PathBuf>,
    tenant: PathBuf,
    tenant_aliases: Vec<PathBuf>,
}

/// `path`'s absolute and canonical spellings, where they differ from it.
fn aliases(path: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for alias in [std::path::absolute(path).ok(), path.canonicalize().ok()]
        .into_iter()
        .flatten()
    {
        if alias != path && !found.contains(&alias) {
            found.push(alias);
        }
    }
    found
}

impl Places {
    fn new(inventory: PathBuf, tenant: PathBuf) -> Self {
        Places {
            inventory_aliases: aliases(&inventory),
            tenant_aliases: aliases(&tenant),
            inventory,
            tenant,
        }
    }

    /// The event path spelled the way the inventory spells its own paths.
    fn normalise(&self, path: PathBuf) -> PathBuf {
        for alias in &self.inventory_aliases {
            if let Ok(rest) = path.strip_prefix(alias) {
                return self.inventory.join(rest);
            }
        }
        path
    }

    fn classify(&self, paths: Vec<PathBuf>, changes: &mut Changes) {
        for path in paths {
            if self.tenant_aliases.contains(&path) {
                changes.tenant = true;
            }
            let path = self.normalise(path);
            if path == self.tenant {
                changes.tenant = true;
            }
            let inside = path.starts_with(&self.inventory) && path != self.inventory;
            if inside {
                changes.paths.insert(path);
            } else if path == self.inventory {
                // The directory itself was created, removed or renamed.
                changes.rescan = true;
            } else {
                // The tenant file, its directory's ConfigMap links, or a neighbour: re-reading the
                // tenant is cheap (it is compared by digest before it is parsed).
                changes.tenant = true;
            }
        }
    }
}

fn tenant_dir(tenant_file: &Path) -> PathBuf {
    tenant_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Watches `dir` and every directory below it (credentials referenced from subfolders such as `pki/`
/// are watched too), one watch each (watching a directory again changes nothing). The walk takes
/// each entry's type from the listing and follows no symlink, so it costs no `stat` per cluster
/// file: `notify`'s own recursive mode stats every entry, which took a quarter of a second before a
/// 100,000-cluster inventory could be served, and again on every rescan.
fn watch_directories(watcher: &mut dyn Watcher, dir: &Path) -> notify::Result<()> {
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let path = entry.path();
                // A subdirectory that vanished meanwhile is no reason to stop watching the others.
                if watcher.watch(&path, RecursiveMode::NonRecursive).is_ok() {
                    pending.push(path);
                }
            }
        }
    }
    Ok(())
}

/// Starts watching `inventory_dir` and `tenant_file`; applies changes to `inventory`, swaps the result
/// into `store` and publishes the changes on `feed`.
pub fn spawn(
    inventory: Inventory,
    inventory_dir: PathBuf,
    tenant_file: PathBuf,
    store: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    feed: Arc<Feed>,
) -> notify::Result<WatchHandle> {
    let (tx, mut rx) = mpsc::channel::<Vec<PathBuf>>(1024);
    let overflow = Arc::new(AtomicBool::new(false));
    let overflowed = Arc::clone(&overflow);
    let new_directories: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let directories_came = Arc::clone(&new_directories);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            overflowed.store(true, Ordering::Relaxed);
            return;
        };
        // Our own reads (opening cluster and key files) must not trigger more work.
        let relevant = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            // A directory made or moved in (a Secret volume's next `..data` target) is watched
            // too. (Only a rename's paths are looked at, not a symlink's target: one `lstat` each.)
            EventKind::Create(CreateKind::Folder) | EventKind::Modify(ModifyKind::Name(_)) => {
                let directories = event.paths.iter().filter(|path| {
                    matches!(event.kind, EventKind::Create(_))
                        || std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
                });
                if let Ok(mut came) = directories_came.lock() {
                    // Bounded: past that many, the next rescan walks everything anyway.
                    if came.len() < 1024 {
                        came.extend(directories.cloned());
                    } else {
                        overflowed.store(true, Ordering::Relaxed);
                    }
                }
                true
            }
            _ => true,
        };
        if relevant && tx.try_send(event.paths).is_err() {
            // Too many events to keep: the next pass rescans instead.
            overflowed.store(true, Ordering::Relaxed);
        }
    })?;
    watch_directories(&mut watcher, &inventory_dir)?;
    let mut watched = BTreeSet::new();
    for dir in [tenant_dir(&tenant_file), tenant_dir(&inventory_dir)] {
        if dir != inventory_dir && watched.insert(dir.clone()) {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        }
    }
    let watcher = Arc::new(Mutex::new(watcher));
    let places = Places::new(inventory_dir.clone(), tenant_file);
    let inventory = Arc::new(Mutex::new(inventory));
    let task = tokio::spawn(async move {
        let mut inventory_watched = true;
        loop {
            let mut changes = Changes::default();
            match tokio::time::timeout(RESCAN, rx.recv()).await {
                Ok(None) => return,
                Ok(Some(paths)) => {
                    tokio::time::sleep(DEBOUNCE).await;
                    places.classify(paths, &mut changes);
                    while let Ok(paths) = rx.try_recv() {
                        places.classify(paths, &mut changes);
                    }
                }
                Err(_) => {
                    changes.tenant = true;
                    changes.rescan = true;
                }
            }
            changes.rescan |= overflow.swap(false, Ordering::Relaxed);
            let directories = new_directories
                .lock()
                .map(|mut came| std::mem::take(&mut *came))
                .unwrap_or_default();
            if !changes.rescan && !directories.is_empty() {
                // Each new directory and what is below it (not the whole inventory: a rename of a
                // cluster file is no reason to list 100,000 of them).
                if let Ok(mut watcher) = watcher.lock() {
                    for directory in directories {
                        let directory = places.normalise(directory);
                        if directory.starts_with(&inventory_dir) && directory != inventory_dir {
                            let _ = watch_directories(&mut *watcher, &directory);
                        }
                    }
                }
            }
            if changes.rescan {
                // A removed inventory directory loses its watch; watch it again once it is back.
                // Every subdirectory is watched again too, in case a new one's event was lost.
                let exists = inventory_dir.is_dir();
                if let Ok(mut watcher) = watcher.lock() {
                    if exists && !inventory_watched {
                        let _ = watcher.unwatch(&inventory_dir);
                    }
                    inventory_watched =
                        exists && watch_directories(&mut *watcher, &inventory_dir).is_ok();
                }
                if !exists {
                    // Keep serving what is loaded until the directory is back.
                    tracing::warn!(dir = %inventory_dir.display(), "the inventory directory is gone; keeping what is loaded");
                    continue;
                }
            }
            let inventory = Arc::clone(&inventory);
            let applied = tokio::task::spawn_blocking(move || match inventory.lock() {
                Ok(mut inventory) => Some(inventory.apply(&changes)),
                Err(_) => None,
            })
            .await;
            let Ok(Some((snapshot, report))) = applied else {
                tracing::error!("inventory reload task failed; keeping the snapshot in service");
                metrics.reload(false);
                continue;
            };
            for failure in &report.failures {
                tracing::warn!(problem = %failure, "file not applied");
            }
            if let Some(snapshot) = snapshot {
                if report.changed || !report.failures.is_empty() {
                    tracing::info!(
                        clusters = snapshot.clusters.len(),
                        unavailable = snapshot.unavailable_count(),
                        parsed = report.parsed,
                        changes = report.changes.len(),
                        "inventory reloaded"
                    );
                }
                metrics.loaded(&snapshot);
                metrics.parsed(report.parsed);
                store.store(Arc::new(snapshot));
                feed.publish(report.changes);
            }
            metrics.reload(report.failures.is_empty());
        }
    });
    // The watcher is owned by the task (it re-watches a recreated directory), so it lives as long.
    Ok(WatchHandle { task })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events arrive with absolute paths even when the inventory was given relative to the working
    /// directory; they must still be traced to the inventory's own paths.
    #[test]
    fn events_with_absolute_paths_match_a_relative_inventory() {
        let places = Places::new(PathBuf::from("inv"), PathBuf::from("tenant.yaml"));
        let absolute = std::path::absolute("inv/c1.yaml").expect("absolute");
        let mut changes = Changes::default();
        places.classify(vec![absolute], &mut changes);
        assert_eq!(
            changes.paths.into_iter().collect::<Vec<_>>(),
            vec![PathBuf::from("inv/c1.yaml")]
        );
        assert!(!changes.tenant && !changes.rescan);
        let mut changes = Changes::default();
        places.classify(
            vec![std::path::absolute("tenant.yaml").expect("absolute")],
            &mut changes,
        );
        assert!(changes.tenant && changes.paths.is_empty());
    }
}
