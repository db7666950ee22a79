//! Service counters and their Prometheus text exposition (`GET /metrics` on the REST address).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kubeconfig_cache::CacheStats;

use crate::inventory::Snapshot;

/// Counters and gauges of the service.
#[derive(Debug, Default)]
pub struct Metrics {
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    clusters_loaded: AtomicU64,
    clusters_unavailable: AtomicU64,
    /// Calls by (edge, method, Palette code or "OK").
    calls: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
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

    /// Records one call: `edge` is `grpc` or `rest`, `code` the Palette code or `OK`.
    pub fn call(&self, edge: &'static str, method: &'static str, code: &'static str) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry((edge, method, code)).or_insert(0) += 1;
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, cache: &CacheStats) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let calls: Vec<(String, u64)> = self
            .calls
            .lock()
            .map(|calls| {
                calls
                    .iter()
                    .map(|((edge, method, code), n)| {
                        (
                            format!("{{edge=\"{edge}\",method=\"{method}\",code=\"{code}\"}}"),
                            *n,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "kubeconfigd_calls_total",
            "counter",
            "Calls by edge, method and result code.",
            &calls,
        );
        metric(
            "kubeconfigd_cache_hits_total",
            "counter",
            "Kubeconfigs served, by the tier that answered (render = rendered on this call).",
            &[
                ("{tier=\"memory\"}".to_owned(), cache.memory_hits),
                ("{tier=\"redis\"}".to_owned(), cache.redis_hits),
                ("{tier=\"render\"}".to_owned(), cache.renders),
            ],
        );
        metric(
            "kubeconfigd_cache_redis_errors_total",
            "counter",
            "Redis calls that failed or timed out.",
            &[(String::new(), cache.redis_errors)],
        );
        metric(
            "kubeconfigd_cache_discarded_total",
            "counter",
            "Values read from Redis that did not authenticate or decode.",
            &[(String::new(), cache.discarded)],
        );
        metric(
            "kubeconfigd_cache_invalidations_sent_total",
            "counter",
            "Invalidations published to other replicas.",
            &[(String::new(), cache.invalidations_sent)],
        );
        metric(
            "kubeconfigd_cache_invalidations_received_total",
            "counter",
            "Invalidations received from other replicas.",
            &[(String::new(), cache.invalidations_received)],
        );
        metric(
            "kubeconfigd_cache_memory_entries",
            "gauge",
            "Entries in the in-process tier.",
            &[(String::new(), cache.memory_entries)],
        );
        metric(
            "kubeconfigd_cache_redis_up",
            "gauge",
            "1 when the Redis tier is configured and usable.",
            &[(String::new(), u64::from(cache.redis_up))],
        );
        metric(
            "kubeconfigd_inventory_reloads_total",
            "counter",
            "Inventory loads, by whether every file applied.",
            &[
                (
                    "{result=\"ok\"}".to_owned(),
                    self.reloads_ok.load(Ordering::Relaxed),
                ),
                (
                    "{result=\"failed\"}".to_owned(),
                    self.reloads_failed.load(Ordering::Relaxed),
                ),
            ],
        );
        metric(
            "kubeconfigd_clusters_loaded",
            "gauge",
            "Clusters in the inventory.",
            &[(String::new(), self.clusters_loaded.load(Ordering::Relaxed))],
        );
        metric(
            "kubeconfigd_clusters_unavailable",
            "gauge",
            "Clusters whose record is unusable.",
            &[(
                String::new(),
                self.clusters_unavailable.load(Ordering::Relaxed),
            )],
        );
        out
    }
}
