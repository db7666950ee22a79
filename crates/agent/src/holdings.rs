//! What the agent holds and how the server's messages change it. The server is not trusted with
//! more than the bytes of the files the agent asked for: an event for a uid or asset the agent did not
//! ask for, an invalid uid, a file name that is not one safe path component, a file larger than
//! `--max-file-size`, or a file past `--max-files` or `--max-total-size` is refused (counted by reason,
//! logged, and reported by `/readyz` and `--once` when it concerns a file the agent wanted). No I/O
//! happens here, so the fuzz target drives the same code with arbitrary messages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use kubeconfig_proto::kubeconfig::v1 as pb;
use pb::watch_kubeconfigs_response::Type;

use crate::health::Stats;
use crate::naming;
use crate::output::{Asset, Files, Held, Key};

/// Bounds on what a server can make the agent hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest file, in bytes.
    pub max_file_size: usize,
    /// The most files held at once.
    pub max_files: usize,
    /// The most bytes held at once, all files together.
    pub max_total_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 1 << 20,
            max_files: 10_000,
            max_total_size: 256 << 20,
        }
    }
}

/// Why an event was refused (a metric label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The cluster uid is not `[a-z0-9-]{1,64}`.
    Uid,
    /// A cluster or asset the agent did not ask for.
    NotRequested,
    /// The file name is not one safe path component.
    FileName,
    /// Larger than `--max-file-size`.
    TooLarge,
    /// Past `--max-files`.
    TooManyFiles,
    /// Past `--max-total-size`.
    TotalTooLarge,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Uid,
        Refusal::NotRequested,
        Refusal::FileName,
        Refusal::TooLarge,
        Refusal::TooManyFiles,
        Refusal::TotalTooLarge,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Uid => "uid",
            Refusal::NotRequested => "not_requested",
            Refusal::FileName => "file_name",
            Refusal::TooLarge => "too_large",
            Refusal::TooManyFiles => "too_many_files",
            Refusal::TotalTooLarge => "total_too_large",
        }
    }

    /// Index into [`Stats::refused`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The files held and what the server said about the others.
#[derive(Debug)]
pub struct Holdings {
    pub files: Files,
    /// Files received since the last write.
    pub dirty: BTreeSet<Key>,
    /// What the server said about files it did not send (`--once` reports these).
    pub problems: BTreeMap<Key, String>,
    /// Files the server sent that the agent refused, and why (not ready while any is here).
    pub refused: BTreeMap<Key, String>,
    /// Whether the initial state is complete.
    pub synced: bool,
    /// Whether anything to write or remove arrived since the last write.
    pub changed: bool,
    /// The uids asked for by name (`None`: every visible cluster).
    wanted: Option<BTreeSet<String>>,
    assets: Vec<Asset>,
    limits: Limits,
    keep_on_revoke: bool,
    held_bytes: usize,
}

fn asset_of(event: &pb::WatchKubeconfigsResponse) -> Option<Asset> {
    match event.asset() {
        pb::WatchedAsset::Kubeconfig => Some(Asset::Kubeconfig),
        pb::WatchedAsset::AdminKubeconfig => Some(Asset::AdminKubeconfig),
        pb::WatchedAsset::Unspecified => None,
    }
}

impl Holdings {
    pub fn new(
        clusters: &[String],
        assets: &[Asset],
        limits: Limits,
        keep_on_revoke: bool,
    ) -> Holdings {
        Holdings {
            files: Files::new(),
            dirty: BTreeSet::new(),
            problems: BTreeMap::new(),
            refused: BTreeMap::new(),
            synced: false,
            changed: false,
            wanted: (!clusters.is_empty()).then(|| clusters.iter().cloned().collect()),
            assets: assets.to_vec(),
            limits,
            keep_on_revoke,
            held_bytes: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes held, all files together.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    fn refuse(&mut self, stats: &Stats, key: Option<Key>, why: Refusal, detail: String) {
        stats.refused[why.index()].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            cluster = key.as_ref().map_or("", |k| k.0.as_str()),
            reason = why.as_str(),
            detail = %detail,
            "refused an event from the server"
        );
        if let Some(key) = key {
            self.refused
                .insert(key, format!("{}: {detail}", why.as_str()));
        }
    }

    fn remove(&mut self, key: &Key) -> bool {
        match self.files.remove(key) {
            Some(held) => {
                self.held_bytes -= held.yaml.len();
                self.dirty.remove(key);
                true
            }
            None => false,
        }
    }

    /// Applies one event from the server.
    pub fn apply(&mut self, event: pb::WatchKubeconfigsResponse, stats: &Stats) {
        stats.events.fetch_add(1, Ordering::Relaxed);
        let kind = event.r#type();
        if kind == Type::Synced {
            self.synced = true;
            return;
        }
        if kind == Type::Unspecified {
            return;
        }
        if !naming::is_valid_uid(&event.cluster_uid) {
            let shown: String = event.cluster_uid.chars().take(80).collect();
            self.refuse(stats, None, Refusal::Uid, format!("cluster uid {shown:?}"));
            return;
        }
        let asset = asset_of(&event);
        let asked_for = asset.is_some_and(|a| self.assets.contains(&a))
            && self
                .wanted
                .as_ref()
                .is_none_or(|wanted| wanted.contains(&event.cluster_uid));
        let Some(asset) = asset.filter(|_| asked_for) else {
            self.refuse(
                stats,
                None,
                Refusal::NotRequested,
                format!(
                    "cluster {} ({:?}) was not asked for",
                    event.cluster_uid,
                    event.asset()
                ),
            );
            return;
        };
        let key = (event.cluster_uid, asset);
        match kind {
            Type::Upsert => {
                let Some(kubeconfig) = event.kubeconfig else {
                    return;
                };
                if !naming::is_safe_file_name(&kubeconfig.file_name) {
                    let shown: String = kubeconfig.file_name.chars().take(80).collect();
                    self.refuse(
                        stats,
                        Some(key),
                        Refusal::FileName,
                        format!("file name {shown:?} is not one safe path component"),
                    );
                    return;
                }
                let size = kubeconfig.yaml.len();
                if size > self.limits.max_file_size {
                    self.refuse(
                        stats,
                        Some(key),
                        Refusal::TooLarge,
                        format!(
                            "{} is {size} bytes, over --max-file-size {}",
                            kubeconfig.file_name, self.limits.max_file_size
                        ),
                    );
                    return;
                }
                let previous = self.files.get(&key).map_or(0, |held| held.yaml.len());
                if !self.files.contains_key(&key) && self.files.len() >= self.limits.max_files {
                    self.refuse(
                        stats,
                        Some(key),
                        Refusal::TooManyFiles,
                        format!("over --max-files {}", self.limits.max_files),
                    );
                    return;
                }
                if self.held_bytes - previous + size > self.limits.max_total_size {
                    self.refuse(
                        stats,
                        Some(key),
                        Refusal::TotalTooLarge,
                        format!("over --max-total-size {}", self.limits.max_total_size),
                    );
                    return;
                }
                self.problems.remove(&key);
                self.refused.remove(&key);
                let held = Held {
                    cluster_name: event.cluster_name,
                    file_name: kubeconfig.file_name,
                    etag: kubeconfig.etag,
                    yaml: kubeconfig.yaml,
                };
                if self.files.get(&key) != Some(&held) {
                    tracing::info!(cluster = %key.0, asset = asset.as_str(), file = %held.file_name, "file changed");
                    self.held_bytes = self.held_bytes - previous + size;
                    self.dirty.insert(key.clone());
                    self.files.insert(key, held);
                    self.changed = true;
                }
            }
            Type::Revoked | Type::Removed => {
                let problem = format!("{}: {}", event.reason, event.message);
                let repeated = self.problems.get(&key) == Some(&problem);
                if self.files.contains_key(&key) {
                    tracing::warn!(cluster = %key.0, asset = asset.as_str(), reason = %event.reason, message = %event.message, "access ended");
                } else if !repeated {
                    // Never held: with `--all` most such clusters were simply never granted. Said
                    // once (not again at every reconnect); louder for a cluster asked for by name.
                    let asked = self.wanted.as_ref().is_some_and(|w| w.contains(&key.0));
                    if asked {
                        tracing::warn!(cluster = %key.0, asset = asset.as_str(), reason = %event.reason, message = %event.message, "not available to this caller");
                    } else {
                        tracing::info!(cluster = %key.0, asset = asset.as_str(), reason = %event.reason, "not available to this caller");
                    }
                }
                self.refused.remove(&key);
                self.problems.insert(key.clone(), problem);
                if !self.keep_on_revoke && self.remove(&key) {
                    self.changed = true;
                }
            }
            Type::Unavailable => {
                let problem = format!("{}: {}", event.reason, event.message);
                if self.problems.get(&key) != Some(&problem) {
                    if self.files.contains_key(&key) {
                        tracing::warn!(cluster = %key.0, asset = asset.as_str(), message = %event.message, "cluster unavailable; keeping its file");
                    } else {
                        tracing::warn!(cluster = %key.0, asset = asset.as_str(), message = %event.message, "cluster unavailable");
                    }
                }
                self.problems.insert(key, problem);
            }
            Type::Synced | Type::Unspecified => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(
        uid: &str,
        asset: pb::WatchedAsset,
        name: &str,
        yaml: &str,
    ) -> pb::WatchKubeconfigsResponse {
        let mut event = pb::WatchKubeconfigsResponse {
            cluster_uid: uid.to_owned(),
            kubeconfig: Some(pb::Kubeconfig {
                file_name: name.to_owned(),
                yaml: yaml.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        event.set_type(Type::Upsert);
        event.set_asset(asset);
        event
    }

    #[test]
    fn explicit_uids_and_assets_limit_what_is_kept() {
        let stats = Stats::default();
        let mut holdings = Holdings::new(
            &["aa01".to_owned()],
            &[Asset::Kubeconfig],
            Limits::default(),
            false,
        );
        let kube = pb::WatchedAsset::Kubeconfig;
        holdings.apply(upsert("aa01", kube, "a.kubeconfig", "a"), &stats);
        holdings.apply(upsert("ff99", kube, "b.kubeconfig", "b"), &stats);
        holdings.apply(
            upsert(
                "aa01",
                pb::WatchedAsset::AdminKubeconfig,
                "admin.a.kubeconfig",
                "a",
            ),
            &stats,
        );
        holdings.apply(
            upsert("aa01", pb::WatchedAsset::Unspecified, "c", "c"),
            &stats,
        );
        holdings.apply(upsert("AA/01", kube, "d.kubeconfig", "d"), &stats);
        assert_eq!(holdings.files.len(), 1);
        assert_eq!(
            stats.refused[Refusal::NotRequested.index()].load(Ordering::Relaxed),
            3
        );
        assert_eq!(
            stats.refused[Refusal::Uid.index()].load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn sizes_and_counts_are_bounded() {
        let stats = Stats::default();
        let limits = Limits {
            max_file_size: 10,
            max_files: 2,
            max_total_size: 15,
        };
        let mut holdings = Holdings::new(&[], &[Asset::Kubeconfig], limits, false);
        let kube = pb::WatchedAsset::Kubeconfig;
        holdings.apply(upsert("a1", kube, "a1", &"x".repeat(11)), &stats);
        holdings.apply(upsert("a2", kube, "a2", &"x".repeat(10)), &stats);
        holdings.apply(upsert("a3", kube, "a3", &"x".repeat(6)), &stats);
        holdings.apply(upsert("a4", kube, "a4", &"x".repeat(5)), &stats);
        holdings.apply(upsert("a5", kube, "a5", "x"), &stats);
        // A held file may be replaced by one of the same size even at the limits.
        holdings.apply(upsert("a2", kube, "a2", &"y".repeat(10)), &stats);
        let held: Vec<&str> = holdings.files.keys().map(|k| k.0.as_str()).collect();
        assert_eq!(held, ["a2", "a4"]);
        assert_eq!(holdings.held_bytes(), 15);
        for (why, count) in [
            (Refusal::TooLarge, 1),
            (Refusal::TotalTooLarge, 1),
            (Refusal::TooManyFiles, 1),
        ] {
            assert_eq!(
                stats.refused[why.index()].load(Ordering::Relaxed),
                count,
                "{why:?}"
            );
        }
        assert_eq!(holdings.refused.len(), 3);
    }
}
