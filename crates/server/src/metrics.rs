//! Service counters. Kept as plain atomics so the core stays cheap; exported by telemetry.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::inventory::Snapshot;

/// Counters and gauges of the service.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub clusters_loaded: AtomicU64,
    pub clusters_unavailable: AtomicU64,
}

impl Metrics {
    /// Records one reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Records the cluster counts of a snapshot.
    pub fn loaded(&self, snapshot: &Snapshot) {
        self.clusters_loaded
            .store(snapshot.clusters.len() as u64, Ordering::Relaxed);
        self.clusters_unavailable
            .store(snapshot.unavailable_count() as u64, Ordering::Relaxed);
    }
}
