//! Watches the inventory directory and the tenant file, and swaps in a new snapshot after each change.
//!
//! Uses the `notify` crate (inotify on Linux). The tenant file's directory is watched rather than the
//! file itself, so editors that replace files by rename and Kubernetes ConfigMap symlink swaps are seen.
//! Events are debounced briefly, and a slow periodic rescan backs up any event the OS drops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use kubeconfig_cache::AssetCache;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::cached::CachedAsset;
use crate::inventory::{Inventory, Snapshot};
use crate::metrics::Metrics;

/// How long to wait for more events after the first one before reloading.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Rescan at least this often even without events.
const RESCAN: Duration = Duration::from_secs(30);

/// Keeps the watcher alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
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

/// The uids whose rendered output may have changed: revised or removed clusters.
fn changed_clusters(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    before
        .clusters
        .iter()
        .filter(|(uid, old)| {
            after
                .clusters
                .get(*uid)
                .is_none_or(|new| new.revision != old.revision)
        })
        .map(|(uid, _)| uid.clone())
        .collect()
}

/// Starts watching `inventory_dir` and `tenant_file`; reloads `inventory` into `store` on change.
pub fn spawn(
    inventory: Inventory,
    inventory_dir: PathBuf,
    tenant_file: PathBuf,
    store: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    cache: Arc<dyn AssetCache<CachedAsset>>,
) -> notify::Result<WatchHandle> {
    let (tx, mut rx) = mpsc::channel::<()>(64);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads (opening cluster and key files) must not trigger another reload.
        let relevant = event.is_ok_and(|e| match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        });
        if relevant {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    })?;
    // Recursive: credentials referenced from subfolders (e.g. `pki/`) are watched too.
    watcher.watch(&inventory_dir, RecursiveMode::Recursive)?;
    let tenant_dir = tenant_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    if tenant_dir != inventory_dir {
        watcher.watch(&tenant_dir, RecursiveMode::NonRecursive)?;
    }
    let inventory = Arc::new(std::sync::Mutex::new(inventory));
    let task = tokio::spawn(async move {
        loop {
            if let Ok(None) = tokio::time::timeout(RESCAN, rx.recv()).await {
                return;
            }
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let inventory = Arc::clone(&inventory);
            let reloaded = tokio::task::spawn_blocking(move || match inventory.lock() {
                Ok(mut inventory) => Some(inventory.reload()),
                Err(_) => None,
            })
            .await;
            let Ok(Some((snapshot, report))) = reloaded else {
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
                        "inventory reloaded"
                    );
                }
                metrics.loaded(&snapshot);
                let previous = store.swap(Arc::new(snapshot));
                let changed = changed_clusters(&previous, &store.load());
                if !changed.is_empty() {
                    tracing::debug!(
                        clusters = changed.len(),
                        "dropping cached kubeconfigs of changed clusters"
                    );
                    cache.invalidate_clusters(&changed);
                }
            }
            metrics.reload(report.failures.is_empty());
        }
    });
    Ok(WatchHandle {
        _watcher: watcher,
        task,
    })
}
