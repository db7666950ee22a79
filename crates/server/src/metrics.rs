//! Service counters, exported two ways: Prometheus text at `GET /metrics` on the REST address, and
//! OpenTelemetry instruments (a no-op unless OTLP export is configured, see `telemetry`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kubeconfig_cache::CacheStats;

use crate::minting::MintStats;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

use crate::inventory::Snapshot;

/// Upper bounds (seconds) of the call latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default, Clone)]
struct LatencyHistogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug)]
struct OtelInstruments {
    calls: Counter<u64>,
    latency: Histogram<f64>,
}

impl Default for OtelInstruments {
    fn default() -> Self {
        let meter = opentelemetry::global::meter("kubeconfigd");
        OtelInstruments {
            calls: meter
                .u64_counter("kubeconfigd.calls")
                .with_description("Calls by edge, method and result code.")
                .build(),
            latency: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("s")
                .with_description("Call latency by edge and method.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build(),
        }
    }
}

/// One metric family for the text exposition: name, type, help and its (labels, value) samples.
type Family = (&'static str, &'static str, &'static str, Vec<(String, u64)>);

fn minting_families(minting: &MintStats) -> Vec<Family> {
    vec![
        (
            "kubeconfigd_credentials_minted_total",
            "counter",
            "Admin credentials minted (a client certificate signed per caller) and recorded in the ledger.",
            single(minting.minted),
        ),
        (
            "kubeconfigd_credentials_reused_total",
            "counter",
            "Requests answered with a credential minted earlier for the same caller, cluster, key and lifetime (more than half its lifetime left).",
            single(minting.reused),
        ),
        (
            "kubeconfigd_credential_ledger_failures_total",
            "counter",
            "Minted credentials not served because the ledger could not record them.",
            single(minting.ledger_failures),
        ),
        (
            "kubeconfigd_credential_mints_rate_limited_total",
            "counter",
            "Mints refused because the caller reached --max-mints-per-minute.",
            single(minting.rate_limited),
        ),
        (
            "kubeconfigd_credential_ledger_forged_total",
            "counter",
            "Ledger values read back from Redis that did not authenticate (not written by a replica).",
            single(minting.forged),
        ),
    ]
}

fn single(value: u64) -> Vec<(String, u64)> {
    vec![(String::new(), value)]
}

/// The cache tiers' counters.
fn cache_families(cache: &CacheStats) -> Vec<Family> {
    vec![
        (
            "kubeconfigd_cache_hits_total",
            "counter",
            "Kubeconfigs served, by the tier that answered (render = rendered on this call; in_flight = \
             served by a concurrent miss of the same file).",
            vec![
                ("{tier=\"memory\"}".to_owned(), cache.memory_hits),
                ("{tier=\"redis\"}".to_owned(), cache.redis_hits),
                ("{tier=\"render\"}".to_owned(), cache.renders),
                ("{tier=\"in_flight\"}".to_owned(), cache.coalesced),
            ],
        ),
        (
            "kubeconfigd_cache_redis_errors_total",
            "counter",
            "Redis calls that failed or timed out.",
            single(cache.redis_errors),
        ),
        (
            "kubeconfigd_cache_discarded_total",
            "counter",
            "Values read from Redis that did not authenticate or decode.",
            single(cache.discarded),
        ),
        (
            "kubeconfigd_cache_invalidations_sent_total",
            "counter",
            "Invalidations published to other replicas.",
            single(cache.invalidations_sent),
        ),
        (
            "kubeconfigd_cache_invalidations_received_total",
            "counter",
            "Invalidations received from other replicas.",
            single(cache.invalidations_received),
        ),
        (
            "kubeconfigd_cache_forged_invalidations_total",
            "counter",
            "Invalidation messages discarded because they did not authenticate.",
            single(cache.forged_invalidations),
        ),
        (
            "kubeconfigd_cache_memory_entries",
            "gauge",
            "Entries in the in-process tier.",
            single(cache.memory_entries),
        ),
        (
            "kubeconfigd_cache_redis_up",
            "gauge",
            "1 when the Redis tier is configured and usable.",
            single(u64::from(cache.redis_up)),
        ),
    ]
}

/// Counters and gauges of the service.
#[derive(Debug, Default)]
pub struct Metrics {
    latency: Mutex<BTreeMap<(&'static str, &'static str), LatencyHistogram>>,
    otel: OtelInstruments,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    files_parsed: AtomicU64,
    clusters_loaded: AtomicU64,
    clusters_unavailable: AtomicU64,
    /// Calls by (edge, method, Palette code or "OK").
    calls: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    watch_streams: AtomicU64,
    watch_events: AtomicU64,
}

impl Metrics {
    /// A watch stream opened (`+1`) or ended (`-1`).
    pub fn watch_streams(&self, opened: bool) {
        if opened {
            self.watch_streams.fetch_add(1, Ordering::Relaxed);
        } else {
            self.watch_streams.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// One event sent on a watch stream.
    pub fn watch_event(&self) {
        self.watch_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Inventory loads so far: (every file applied, some file not applied).
    pub fn reloads(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Counts cluster files read and parsed by one load or change.
    pub fn parsed(&self, files: u64) {
        self.files_parsed.fetch_add(files, Ordering::Relaxed);
    }

    /// Records the cluster counts of a snapshot.
    pub fn loaded(&self, snapshot: &Snapshot) {
        self.clusters_loaded
            .store(snapshot.clusters.len() as u64, Ordering::Relaxed);
        self.clusters_unavailable
            .store(snapshot.unavailable_count() as u64, Ordering::Relaxed);
    }

    /// Records one call: `edge` is `grpc` or `rest`, `code` the Palette code or `OK`.
    pub fn call(
        &self,
        edge: &'static str,
        method: &'static str,
        code: &'static str,
        elapsed: std::time::Duration,
    ) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry((edge, method, code)).or_insert(0) += 1;
        }
        let seconds = elapsed.as_secs_f64();
        if let Ok(mut latency) = self.latency.lock() {
            let histogram = latency.entry((edge, method)).or_default();
            for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS) {
                if seconds <= bound {
                    *bucket += 1;
                }
            }
            histogram.count += 1;
            histogram.sum += seconds;
        }
        let attributes = [
            KeyValue::new("edge", edge),
            KeyValue::new("method", method),
            KeyValue::new("code", code),
        ];
        self.otel.calls.add(1, &attributes);
        self.otel.latency.record(seconds, &attributes[..2]);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self, cache: &CacheStats, minting: &MintStats) -> String {
        let mut out = String::new();
        let families = [
            self.call_families(),
            cache_families(cache),
            self.service_families(),
            minting_families(minting),
        ];
        for (name, kind, help, samples) in families.into_iter().flatten() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        self.write_latency(&mut out);
        out
    }

    fn call_families(&self) -> Vec<Family> {
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
        vec![(
            "kubeconfigd_calls_total",
            "counter",
            "Calls by edge, method and result code.",
            calls,
        )]
    }

    fn service_families(&self) -> Vec<Family> {
        let load = |counter: &AtomicU64| single(counter.load(Ordering::Relaxed));
        vec![
            (
                "kubeconfigd_watch_streams",
                "gauge",
                "WatchKubeconfigs streams open now.",
                load(&self.watch_streams),
            ),
            (
                "kubeconfigd_watch_events_total",
                "counter",
                "Events sent on WatchKubeconfigs streams (SYNCED markers included).",
                load(&self.watch_events),
            ),
            (
                "kubeconfigd_inventory_files_parsed_total",
                "counter",
                "Cluster files read and parsed (a change costs the files it touches).",
                load(&self.files_parsed),
            ),
            (
                "kubeconfigd_inventory_reloads_total",
                "counter",
                "Inventory loads, by whether every file applied.",
                vec![
                    (
                        "{result=\"ok\"}".to_owned(),
                        self.reloads_ok.load(Ordering::Relaxed),
                    ),
                    (
                        "{result=\"failed\"}".to_owned(),
                        self.reloads_failed.load(Ordering::Relaxed),
                    ),
                ],
            ),
            (
                "kubeconfigd_clusters_loaded",
                "gauge",
                "Clusters in the inventory.",
                load(&self.clusters_loaded),
            ),
            (
                "kubeconfigd_clusters_unavailable",
                "gauge",
                "Clusters whose record is unusable.",
                load(&self.clusters_unavailable),
            ),
            (
                "kubeconfigd_log_lines_dropped_total",
                "counter",
                "Log lines dropped because the log writer could not keep up.",
                single(crate::telemetry::dropped_log_lines()),
            ),
        ]
    }

    fn write_latency(&self, out: &mut String) {
        let name = "kubeconfigd_call_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Call latency by edge and method.\n# TYPE {name} histogram"
        );
        let Ok(histograms) = self.latency.lock() else {
            return;
        };
        for ((edge, method), h) in histograms.iter() {
            let labels = format!("edge=\"{edge}\",method=\"{method}\"");
            for (bound, count) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
    }
}
