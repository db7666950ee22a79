//! Service counters, exported two ways: Prometheus text at `GET /metrics` on the admin address, and
//! OpenTelemetry instruments (a no-op unless OTLP export is configured, see `telemetry`).
//!
//! Recording a call takes no lock: every (edge, method) has a fixed slot of atomics (a count per result
//! code, the latency histogram's buckets, count and sum), made at start. Both exports read those slots
//! (the OpenTelemetry call counter is observed from them); only the OpenTelemetry latency histogram is
//! recorded separately, since OpenTelemetry has no asynchronous histogram.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use kubeconfig_cache::CacheStats;

use crate::service::minting::MintStats;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;

use crate::service::error::ErrorKind;

use crate::loading::inventory::Snapshot;

/// Upper bounds (seconds) of the call latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The edges calls are counted under.
const EDGES: [&str; 2] = ["grpc", "rest"];

/// The methods calls are counted under (gRPC method names; the REST downloads use theirs). A method
/// not listed is counted as `other`.
const METHODS: [&str; 9] = [
    "GetKubeconfig",
    "GetAdminKubeconfig",
    "GetKubeconfigAccess",
    "ListClusters",
    "WatchKubeconfigs",
    "CheckKubeconfig",
    "RevokeCredential",
    "ListIssuedCredentials",
    "other",
];

/// The result codes: `OK` and every Palette code.
const CODES: [&str; 1 + ErrorKind::ALL.len()] = {
    let mut codes = ["OK"; 1 + ErrorKind::ALL.len()];
    let mut i = 0;
    while i < ErrorKind::ALL.len() {
        codes[i + 1] = ErrorKind::ALL[i].palette_code();
        i += 1;
    }
    codes
};

/// The method a gRPC path is counted under: the API's methods by name, anything else `other`.
pub fn grpc_method(path: &str) -> &'static str {
    let method = path
        .strip_prefix("/kubeconfig.v1.KubeconfigService/")
        .unwrap_or("other");
    METHODS[position(&METHODS, method).unwrap_or(METHODS.len() - 1)]
}

fn position(names: &[&'static str], name: &str) -> Option<usize> {
    names.iter().position(|n| *n == name)
}

/// One (edge, method)'s counts and latency histogram: atomics only, so recording a call takes no lock.
#[derive(Debug, Default)]
struct CallSlot {
    codes: [AtomicU64; CODES.len()],
    /// Non-cumulative: the calls that fell in each bucket (the exposition sums them).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// Every (edge, method) slot, fixed at start.
#[derive(Debug)]
struct CallTable {
    slots: Vec<CallSlot>,
}

impl Default for CallTable {
    fn default() -> Self {
        CallTable {
            slots: (0..EDGES.len() * METHODS.len())
                .map(|_| CallSlot::default())
                .collect(),
        }
    }
}

impl CallTable {
    fn slot(&self, edge: &str, method: &str) -> &CallSlot {
        let edge = position(&EDGES, edge).unwrap_or(0);
        let method = position(&METHODS, method).unwrap_or(METHODS.len() - 1);
        &self.slots[edge * METHODS.len() + method]
    }

    /// (edge, method, slot) for every slot.
    fn iter(&self) -> impl Iterator<Item = (&'static str, &'static str, &CallSlot)> {
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| (EDGES[i / METHODS.len()], METHODS[i % METHODS.len()], slot))
    }
}

#[derive(Debug)]
struct OtelInstruments {
    /// OpenTelemetry has no asynchronous histogram: latency is recorded into it as well as into the
    /// call table (the text exposition's).
    latency: Histogram<f64>,
}

impl Default for OtelInstruments {
    fn default() -> Self {
        let meter = opentelemetry::global::meter("kubeconfigd");
        OtelInstruments {
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
    /// Calls by (edge, method, code) and their latency: the one definition both exports read.
    calls: CallTable,
    otel: OtelInstruments,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    files_parsed: AtomicU64,
    clusters_loaded: AtomicU64,
    clusters_unavailable: AtomicU64,
    watch_streams: AtomicU64,
    watch_events: AtomicU64,
    watch_known_etags_refused: AtomicU64,
    limits: [AtomicU64; Limit::ALL.len()],
}

/// A limit that refused or ended a call, counted when it bites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--max-concurrent-requests`, counted from a gRPC call's HEADERS.
    ConcurrentRequests,
    /// A gRPC request message not complete within `--header-read-timeout` of its HEADERS.
    RequestMessageTimeout,
    /// `--max-watch-streams` (watches and waiting long-polls together).
    Watches,
    /// `--max-watch-streams-per-caller` (watches and waiting long-polls together).
    WatchesPerCaller,
    /// Health watches and reflection streams, per connection and in all.
    AnonymousStreams,
}

impl Limit {
    pub const ALL: [Limit; 5] = [
        Limit::ConcurrentRequests,
        Limit::RequestMessageTimeout,
        Limit::Watches,
        Limit::WatchesPerCaller,
        Limit::AnonymousStreams,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::ConcurrentRequests => "max_concurrent_requests",
            Limit::RequestMessageTimeout => "request_message_timeout",
            Limit::Watches => "max_watch_streams",
            Limit::WatchesPerCaller => "max_watch_streams_per_caller",
            Limit::AnonymousStreams => "anonymous_streams",
        }
    }
}

impl Metrics {
    /// A limit refused or ended a call.
    pub fn limit(&self, limit: Limit) {
        self.limits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

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

    /// One watch refused because of its `known_etags` (a key that names no cluster uid, an overlong
    /// etag, or more than `--max-watch-known-etags`).
    pub fn watch_known_etags_refused(&self) {
        self.watch_known_etags_refused
            .fetch_add(1, Ordering::Relaxed);
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
        let slot = self.calls.slot(edge, method);
        let code = position(&CODES, code).unwrap_or(CODES.len() - 1);
        slot.codes[code].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            slot.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        slot.count.fetch_add(1, Ordering::Relaxed);
        slot.sum_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.otel.latency.record(
            seconds,
            &[KeyValue::new("edge", edge), KeyValue::new("method", method)],
        );
    }

    /// Calls so far by (edge, method, code), those with any: for the OpenTelemetry counter.
    pub fn call_counts(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let mut counts = Vec::new();
        for (edge, method, slot) in self.calls.iter() {
            for (code, count) in CODES.iter().zip(&slot.codes) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    counts.push((edge, method, *code, count));
                }
            }
        }
        counts
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
        let calls = self
            .call_counts()
            .into_iter()
            .map(|(edge, method, code, n)| {
                (
                    format!("{{edge=\"{edge}\",method=\"{method}\",code=\"{code}\"}}"),
                    n,
                )
            })
            .collect();
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
                "WatchKubeconfigs streams and waiting REST long-polls open now.",
                load(&self.watch_streams),
            ),
            (
                "kubeconfigd_watch_events_total",
                "counter",
                "Events sent on WatchKubeconfigs streams (SYNCED markers included).",
                load(&self.watch_events),
            ),
            (
                "kubeconfigd_watch_known_etags_refused_total",
                "counter",
                "WatchKubeconfigs requests refused for their known_etags (a key that is not <cluster uid>/<asset>, an etag over 128 bytes, or more than --max-watch-known-etags).",
                load(&self.watch_known_etags_refused),
            ),
            (
                "kubeconfigd_limit_hits_total",
                "counter",
                "Calls refused or ended by a limit, by the limit's flag.",
                Limit::ALL
                    .iter()
                    .map(|limit| {
                        (
                            format!("{{limit=\"{}\"}}", limit.label()),
                            self.limits[*limit as usize].load(Ordering::Relaxed),
                        )
                    })
                    .collect(),
            ),
            (
                "kubeconfigd_connections_closed_total",
                "counter",
                "Connections closed or refused by their limits, by reason: no_request (none within \
--header-read-timeout of connecting), header_timeout, idle (no request open for --idle-timeout), \
evicted (to make room), stalled (a request without progress: the peer does not read), refused (at \
accept, no slot could be freed), tls_handshake (failed, timed out or made room).",
                crate::edges::connections::Closed::ALL
                    .iter()
                    .zip(crate::edges::connections::closed_counts())
                    .map(|(reason, n)| (format!("{{reason=\"{}\"}}", reason.label()), n))
                    .collect(),
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
        for (edge, method, slot) in self.calls.iter() {
            let count = slot.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let labels = format!("edge=\"{edge}\",method=\"{method}\"");
            let mut cumulative = 0;
            for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&slot.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let sum = slot.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
}
