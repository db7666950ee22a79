//! Re-reading small files that are replaced in place while the server runs: the authentication
//! configuration, the TLS certificate and key, the client CA bundle and its CRL.
//!
//! Each file is checked by `stat` every [`POLL`] (following symlinks, so a Kubernetes Secret or
//! ConfigMap volume's `..data` swap counts, as does an editor's rename and cert-manager's or
//! spiffe-helper's rewrite). When any of a group's files changed, the group is read again as a whole
//! by its `load` function, on the blocking pool; a load that fails keeps the value in service and says
//! why (once per change, not once per poll). A handful of `stat`s a second costs nothing next to the inventory
//! watch, and unlike inotify it cannot miss a swap of a directory it does not watch.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

/// How often the files are checked.
pub const POLL: Duration = Duration::from_secs(1);

/// What identifies one version of a file: replacing, rewriting or re-linking it changes this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    device: u64,
    inode: u64,
    length: u64,
    modified: Option<SystemTime>,
}

/// The stamp of `path` now (following symlinks), or `None` when it cannot be read.
pub fn stamp_of(path: &std::path::Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Stamp {
        device: metadata.dev(),
        inode: metadata.ino(),
        length: metadata.len(),
        modified: metadata.modified().ok(),
    })
}

/// Keeps the reloader alive; dropping it stops it.
#[derive(Debug)]
pub struct Reloading(tokio::task::JoinHandle<()>);

impl Drop for Reloading {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A load in flight, with the stamps of the files it reads.
type Pending<T> = (
    tokio::task::JoinHandle<Result<T, String>>,
    Vec<Option<Stamp>>,
);

/// A load that has run this long is reported (once): its group is not re-read until it ends.
const SLOW_LOAD: Duration = Duration::from_secs(10);

/// Watches `paths` and, whenever one of them changes, calls `load` and puts what it returns in
/// `current` (a failed load leaves `current` as it was and is logged with `what` and its error).
/// `on_reload` runs after each successful swap (to count it, or to act on the new value).
///
/// `load` runs on the blocking pool, never on a runtime worker: a file that takes long to parse (a
/// deeply nested document) or to read (a FIFO put in place of a file) delays only its own group's
/// next version, never a call. One load per group runs at a time.
pub fn spawn<T, L, R>(
    what: &'static str,
    paths: Vec<PathBuf>,
    current: Arc<ArcSwap<T>>,
    load: L,
    on_reload: R,
) -> Reloading
where
    T: Send + Sync + 'static,
    L: Fn() -> Result<T, String> + Send + Sync + 'static,
    R: Fn(&Arc<T>) + Send + 'static,
{
    let mut stamps: Vec<Option<Stamp>> = paths.iter().map(|p| stamp_of(p)).collect();
    let load = Arc::new(load);
    Reloading(tokio::spawn(async move {
        let mut failed_at: Option<Vec<Option<Stamp>>> = None;
        let mut pending: Option<Pending<T>> = None;
        let mut started = tokio::time::Instant::now();
        let mut reported_slow = false;
        let mut interval = tokio::time::interval(POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if let Some((handle, _)) = &pending
                && !handle.is_finished()
            {
                if !reported_slow && started.elapsed() >= SLOW_LOAD {
                    reported_slow = true;
                    tracing::warn!(
                        what,
                        "reading the new version has taken over 10 s (a FIFO or a stalled file \
                         system?); the version in service stays until it ends"
                    );
                }
                continue;
            }
            if let Some((handle, at)) = pending.take() {
                match handle.await {
                    Ok(Ok(value)) => {
                        let value = Arc::new(value);
                        current.store(Arc::clone(&value));
                        on_reload(&value);
                        tracing::info!(what, "reloaded");
                        stamps = at;
                        failed_at = None;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(what, %error, "reload failed; keeping the version in service");
                        failed_at = Some(at);
                    }
                    Err(error) => {
                        tracing::error!(what, %error, "reload panicked; keeping the version in service");
                        failed_at = Some(at);
                    }
                }
                continue;
            }
            let now: Vec<Option<Stamp>> = paths.iter().map(|p| stamp_of(p)).collect();
            if now == stamps || failed_at.as_ref() == Some(&now) {
                continue;
            }
            let load = Arc::clone(&load);
            started = tokio::time::Instant::now();
            reported_slow = false;
            pending = Some((tokio::task::spawn_blocking(move || load()), now));
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replaced_file_is_loaded_and_a_bad_one_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("value");
        std::fs::write(&path, "1").expect("write");
        let current = Arc::new(ArcSwap::from_pointee(1_u32));
        let read = {
            let path = path.clone();
            move || {
                std::fs::read_to_string(&path)
                    .map_err(|e| e.to_string())?
                    .trim()
                    .parse::<u32>()
                    .map_err(|e| e.to_string())
            }
        };
        let _reloading = spawn(
            "value",
            vec![path.clone()],
            Arc::clone(&current),
            read,
            |_| {},
        );
        let settled = |want: u32| {
            let current = Arc::clone(&current);
            async move {
                for _ in 0..50 {
                    if **current.load() == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            }
        };
        // Replaced by rename, as an editor or a Secret volume does.
        let next = dir.path().join("next");
        std::fs::write(&next, "2").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        assert!(settled(2).await, "the new value is loaded");
        std::fs::write(&next, "not a number").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        tokio::time::sleep(POLL * 3).await;
        assert_eq!(**current.load(), 2, "a bad file keeps the last good value");
        std::fs::write(&next, "3").expect("write");
        std::fs::rename(&next, &path).expect("rename");
        assert!(settled(3).await, "a good file after a bad one is loaded");
    }

    /// A load that takes long (a deeply nested file, a FIFO) runs beside the runtime, not on it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_load_never_holds_the_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("value");
        std::fs::write(&path, "1").expect("write");
        let current = Arc::new(ArcSwap::from_pointee(1_u32));
        let slow = || {
            std::thread::sleep(Duration::from_secs(4));
            Ok(2_u32)
        };
        let _reloading = spawn(
            "value",
            vec![path.clone()],
            Arc::clone(&current),
            slow,
            |_| {},
        );
        std::fs::write(&path, "22").expect("write");
        // The load starts within a poll or two; meanwhile this single-threaded runtime keeps
        // running timers on time.
        tokio::time::sleep(POLL * 2).await;
        let started = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the runtime was held for {:?}",
            started.elapsed()
        );
        for _ in 0..100 {
            if **current.load() == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the slow load's value never arrived");
    }
}
