//! Service metrics, exported two ways: at `GET /metrics` on the admin address, and as OpenTelemetry
//! instruments (a no-op unless OTLP export is configured, see `telemetry`).
//!
//! Every Prometheus instrument is defined once, in one `prometheus_client` [`Registry`] built with
//! [`Metrics`]. What other parts of the service count themselves (the cache tiers, minting, the token
//! issuers, connections closed by their limits, log lines dropped) is read at scrape time by
//! [`Collector`]s that hold what they read, so `/metrics` needs nothing passed in.
//!
//! `/metrics` answers in either format from the same registry: OpenMetrics 1.0 when the scraper's
//! `Accept` asks for `application/openmetrics-text`, else the Prometheus text format 0.0.4 (see
//! [`Format`]). Both come from prometheus-client's own encoders: the Prometheus one names a counter's
//! family `name_total` in `# HELP`/`# TYPE` (OpenMetrics names the family `name` and its sample
//! `name_total`), and writes neither `# UNIT` lines nor `# EOF`, so each form parses with its own
//! format's parser.
//!
//! Recording a call takes no lock for its count: each (edge, method) has a fixed slot, made at start,
//! holding a counter per result code and the latency histogram. A slot's counter or histogram is taken
//! from its registry family the first time that series is used (so `/metrics` shows only the series
//! with calls) and kept in the slot (prometheus-client metrics are shared handles); every later call
//! is one atomic add on the counter and one observation of the histogram (prometheus-client guards a
//! histogram's buckets with a lock of its own, one per series). The OpenTelemetry call counter is
//! observed from the same counters; only the OpenTelemetry latency histogram is recorded separately,
//! since OpenTelemetry has no asynchronous histogram.

use std::sync::{Arc, OnceLock};

use kubeconfig_cache::AssetCache;
use opentelemetry::KeyValue;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::loading::inventory::Snapshot;
use crate::service::auth::Issuers;
use crate::service::cached::CachedAsset;
use crate::service::error::ErrorKind;
use crate::service::minting::Minter;

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

/// The labels of `kubeconfigd_calls_total`, in the order they are written.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    edge: &'static str,
    method: &'static str,
    code: &'static str,
}

/// The labels of `kubeconfigd_call_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    edge: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// One (edge, method)'s series, each filled from its family on first use.
#[derive(Debug)]
struct CallSlot {
    codes: [OnceLock<Counter>; CODES.len()],
    latency: OnceLock<Histogram>,
}

impl Default for CallSlot {
    fn default() -> Self {
        CallSlot {
            codes: std::array::from_fn(|_| OnceLock::new()),
            latency: OnceLock::new(),
        }
    }
}

/// Every (edge, method) slot, fixed at start, and the families the slots' series belong to.
#[derive(Debug)]
struct CallTable {
    slots: Vec<CallSlot>,
    counts: Family<CallLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for CallTable {
    fn default() -> Self {
        CallTable {
            slots: (0..EDGES.len() * METHODS.len())
                .map(|_| CallSlot::default())
                .collect(),
            counts: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl CallTable {
    /// The slot of (edge, method), with their names as counted.
    fn slot(&self, edge: &str, method: &str) -> (&CallSlot, &'static str, &'static str) {
        let edge = position(&EDGES, edge).unwrap_or(0);
        let method = position(&METHODS, method).unwrap_or(METHODS.len() - 1);
        (
            &self.slots[edge * METHODS.len() + method],
            EDGES[edge],
            METHODS[method],
        )
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
    /// Prometheus histogram, when OpenTelemetry metrics are exported (`None` otherwise).
    latency: Option<opentelemetry::metrics::Histogram<f64>>,
}

impl Default for OtelInstruments {
    fn default() -> Self {
        let latency = crate::telemetry::exporting().then(|| {
            opentelemetry::global::meter("kubeconfigd")
                .f64_histogram("rpc.server.duration")
                .with_unit("s")
                .with_description("Call latency by edge and method.")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        });
        OtelInstruments { latency }
    }
}

/// What `/metrics` reads from the rest of the service at each scrape.
pub struct Sources {
    pub cache: Arc<dyn AssetCache<CachedAsset>>,
    pub minter: Arc<Minter>,
    pub issuers: Arc<Issuers>,
    /// The audit stream's sinks (none when records go to the log).
    pub auditor: Arc<crate::audit::Auditor>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("minter", &self.minter)
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

/// The format `/metrics` answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: what a scraper gets unless it asks for OpenMetrics.
    Prometheus,
    /// OpenMetrics 1.0 text (ends with `# EOF`).
    OpenMetrics,
}

impl Format {
    /// The format for a request's `Accept` header: the media range with the highest `q` that names
    /// one of the two formats (the first of equals) decides. OpenMetrics is chosen for
    /// `application/openmetrics-text` without a version or with version 1.0.0; `text/plain`, `text/*`
    /// and `*/*` choose the Prometheus text format, as does a missing or unusable header.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let mut best: Option<(f32, Format)> = None;
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut q = 1.0_f32;
            let mut version = None;
            for parameter in parts {
                let Some((key, value)) = parameter.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().unwrap_or(0.0),
                    "version" => version = Some(value),
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/openmetrics-text" if version.is_none_or(|v| v == "1.0.0") => {
                    Format::OpenMetrics
                }
                "text/plain" | "text/*" | "*/*" => Format::Prometheus,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(best, _)| q > best) {
                best = Some((q, format));
            }
        }
        best.map_or(Format::Prometheus, |(_, format)| format)
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Counters and gauges of the service.
#[derive(Debug)]
pub struct Metrics {
    /// Every Prometheus instrument and collector; encoded for each scrape.
    registry: Registry,
    /// Calls by (edge, method, code) and their latency: the one definition both exports read.
    calls: CallTable,
    otel: OtelInstruments,
    reloads_ok: Counter,
    reloads_failed: Counter,
    files_parsed: Counter,
    clusters_loaded: Gauge,
    clusters_unavailable: Gauge,
    watch_streams: Gauge,
    watch_events: Counter,
    watch_known_etags_refused: Counter,
    limits: [Counter; Limit::ALL.len()],
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

/// Registers `metric`. `help` is written as it is shown, with its final full stop, which the registry
/// adds itself. A counter's `name` has no `_total`: the encoders add it.
fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}

/// Registers a counter or gauge and hands back the handle to update it with.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    register(registry, name, help, metric.clone());
    metric
}

impl Default for Metrics {
    /// The service's own instruments only: nothing read from the cache, minting or issuers.
    fn default() -> Self {
        Metrics::build(None)
    }
}

impl Metrics {
    /// Every instrument, with the cache, minting and issuer metrics read from `sources` at scrape time.
    pub fn with_sources(sources: Sources) -> Self {
        Metrics::build(Some(sources))
    }

    fn build(sources: Option<Sources>) -> Self {
        let mut registry = Registry::default();
        let calls = CallTable::default();
        register(
            &mut registry,
            "kubeconfigd_calls",
            "Calls by edge, method and result code.",
            calls.counts.clone(),
        );
        registry.register_with_unit(
            "kubeconfigd_call_duration",
            "Call latency by edge and method",
            Unit::Seconds,
            calls.latency.clone(),
        );
        let watch_streams = registered(
            &mut registry,
            "kubeconfigd_watch_streams",
            "WatchKubeconfigs streams and waiting REST long-polls open now.",
        );
        let watch_events = registered(
            &mut registry,
            "kubeconfigd_watch_events",
            "Events sent on WatchKubeconfigs streams (SYNCED markers included).",
        );
        let watch_known_etags_refused = registered(
            &mut registry,
            "kubeconfigd_watch_known_etags_refused",
            "WatchKubeconfigs requests refused for their known_etags (a key that is not <cluster uid>/<asset>, an etag over 128 bytes, or more than --max-watch-known-etags).",
        );
        let limits = Family::<LimitLabels, Counter>::default();
        register(
            &mut registry,
            "kubeconfigd_limit_hits",
            "Calls refused or ended by a limit, by the limit's flag.",
            limits.clone(),
        );
        let files_parsed = registered(
            &mut registry,
            "kubeconfigd_inventory_files_parsed",
            "Cluster files read and parsed (a change costs the files it touches).",
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        register(
            &mut registry,
            "kubeconfigd_inventory_reloads",
            "Inventory loads, by whether every file applied.",
            reloads.clone(),
        );
        let clusters_loaded = registered(
            &mut registry,
            "kubeconfigd_clusters_loaded",
            "Clusters in the inventory.",
        );
        let clusters_unavailable = registered(
            &mut registry,
            "kubeconfigd_clusters_unavailable",
            "Clusters whose record is unusable.",
        );
        registry.register_collector(Box::new(ProcessCollector));
        if let Some(sources) = sources {
            registry.register_collector(Box::new(Arc::clone(&sources.issuers)));
            registry.register_collector(Box::new(sources));
        }
        Metrics {
            registry,
            otel: OtelInstruments::default(),
            // These series are shown from the start, zero or not.
            reloads_ok: reloads.get_or_create_owned(&ResultLabels { result: "ok" }),
            reloads_failed: reloads.get_or_create_owned(&ResultLabels { result: "failed" }),
            limits: Limit::ALL.map(|limit| {
                limits.get_or_create_owned(&LimitLabels {
                    limit: limit.label(),
                })
            }),
            calls,
            files_parsed,
            clusters_loaded,
            clusters_unavailable,
            watch_streams,
            watch_events,
            watch_known_etags_refused,
        }
    }

    /// A limit refused or ended a call.
    pub fn limit(&self, limit: Limit) {
        self.limits[limit as usize].inc();
    }

    /// A watch stream opened (`+1`) or ended (`-1`).
    pub fn watch_streams(&self, opened: bool) {
        if opened {
            self.watch_streams.inc();
        } else {
            self.watch_streams.dec();
        }
    }

    /// One event sent on a watch stream.
    pub fn watch_event(&self) {
        self.watch_events.inc();
    }

    /// One watch refused because of its `known_etags` (a key that names no cluster uid, an overlong
    /// etag, or more than `--max-watch-known-etags`).
    pub fn watch_known_etags_refused(&self) {
        self.watch_known_etags_refused.inc();
    }

    /// Records one reload.
    pub fn reload(&self, ok: bool) {
        if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        }
        .inc();
    }

    /// Inventory loads so far: (every file applied, some file not applied).
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloads_ok.get(), self.reloads_failed.get())
    }

    /// Counts cluster files read and parsed by one load or change.
    pub fn parsed(&self, files: u64) {
        self.files_parsed.inc_by(files);
    }

    /// Records the cluster counts of a snapshot.
    pub fn loaded(&self, snapshot: &Snapshot) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.clusters_loaded.set(count(snapshot.clusters.len()));
        self.clusters_unavailable
            .set(count(snapshot.unavailable_count()));
    }

    /// Records one call: `edge` is `grpc` or `rest`, `code` the Palette code or `OK`.
    pub fn call(
        &self,
        edge: &'static str,
        method: &'static str,
        code: &'static str,
        elapsed: std::time::Duration,
    ) {
        let (slot, edge, method) = self.calls.slot(edge, method);
        let code = position(&CODES, code).unwrap_or(CODES.len() - 1);
        slot.codes[code]
            .get_or_init(|| {
                self.calls.counts.get_or_create_owned(&CallLabels {
                    edge,
                    method,
                    code: CODES[code],
                })
            })
            .inc();
        let seconds = elapsed.as_secs_f64();
        slot.latency
            .get_or_init(|| {
                self.calls
                    .latency
                    .get_or_create_owned(&LatencyLabels { edge, method })
            })
            .observe(seconds);
        if let Some(latency) = &self.otel.latency {
            latency.record(
                seconds,
                &[KeyValue::new("edge", edge), KeyValue::new("method", method)],
            );
        }
    }

    /// Calls so far by (edge, method, code), those with any: for the OpenTelemetry counter.
    pub fn call_counts(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let mut counts = Vec::new();
        for (edge, method, slot) in self.calls.iter() {
            for (code, counter) in CODES.iter().zip(&slot.codes) {
                let count = counter.get().map_or(0, Counter::get);
                if count > 0 {
                    counts.push((edge, method, *code, count));
                }
            }
        }
        counts
    }

    /// Every metric, in `format`.
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }
}

/// Writes one family of constant samples (`name` without `_total` for a counter).
fn write_family<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (S, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

/// Writes one unlabelled sample.
fn write_single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(metric),
        _ => ConstGauge::new(value).encode(metric),
    }
}

/// Counts kept by the process as a whole, read at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use crate::edges::connections::{Closed, closed_counts};
        write_family(
            &mut encoder,
            "kubeconfigd_connections_closed",
            "Connections closed or refused by their limits, by reason: no_request (none within \
--header-read-timeout of connecting), header_timeout (on HTTP/1, the next request not in within \
--header-read-timeout of the last answer), idle (no request open for --idle-timeout), \
evicted (to make room), stalled (a request without progress: the peer does not read), refused (at \
accept, no slot could be freed), tls_handshake (failed, timed out or made room).",
            MetricType::Counter,
            Closed::ALL
                .iter()
                .zip(closed_counts())
                .map(|(reason, n)| ([("reason", reason.label())], n)),
        )?;
        write_single(
            &mut encoder,
            "kubeconfigd_log_lines_dropped",
            "Log lines dropped because the log writer could not keep up.",
            MetricType::Counter,
            crate::telemetry::dropped_log_lines(),
        )
    }
}

/// The cache tiers' and minting's counters, read at each scrape.
impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let cache = self.cache.stats();
        write_family(
            &mut encoder,
            "kubeconfigd_cache_hits",
            "Kubeconfigs served, by the tier that answered (render = rendered on this call; in_flight = \
             served by a concurrent miss of the same file).",
            MetricType::Counter,
            [
                ("memory", cache.memory_hits),
                ("redis", cache.redis_hits),
                ("render", cache.renders),
                ("in_flight", cache.coalesced),
            ]
            .map(|(tier, n)| ([("tier", tier)], n)),
        )?;
        let counters = [
            (
                "kubeconfigd_cache_redis_errors",
                "Redis calls that failed or timed out.",
                cache.redis_errors,
            ),
            (
                "kubeconfigd_cache_discarded",
                "Values read from Redis that did not authenticate or decode.",
                cache.discarded,
            ),
            (
                "kubeconfigd_cache_invalidations_sent",
                "Invalidations published to other replicas.",
                cache.invalidations_sent,
            ),
            (
                "kubeconfigd_cache_invalidations_received",
                "Invalidations received from other replicas.",
                cache.invalidations_received,
            ),
            (
                "kubeconfigd_cache_forged_invalidations",
                "Invalidation messages discarded because they did not authenticate.",
                cache.forged_invalidations,
            ),
        ];
        for (name, help, value) in counters {
            write_single(&mut encoder, name, help, MetricType::Counter, value)?;
        }
        let gauges = [
            (
                "kubeconfigd_cache_memory_entries",
                "Entries in the in-process tier.",
                cache.memory_entries,
            ),
            (
                "kubeconfigd_cache_redis_up",
                "1 when the Redis tier is configured and usable.",
                u64::from(cache.redis_up),
            ),
        ];
        for (name, help, value) in gauges {
            write_single(&mut encoder, name, help, MetricType::Gauge, value)?;
        }
        let minting = self.minter.stats();
        let counters = [
            (
                "kubeconfigd_credentials_minted",
                "Admin credentials minted (a client certificate signed per caller) and recorded in the ledger.",
                minting.minted,
            ),
            (
                "kubeconfigd_credentials_reused",
                "Requests answered with a credential minted earlier for the same caller, cluster, key and lifetime (more than half its lifetime left).",
                minting.reused,
            ),
            (
                "kubeconfigd_credential_ledger_failures",
                "Minted credentials not served because the ledger could not record them.",
                minting.ledger_failures,
            ),
            (
                "kubeconfigd_credential_mints_rate_limited",
                "Mints refused because the caller reached --max-mints-per-minute.",
                minting.rate_limited,
            ),
            (
                "kubeconfigd_credential_ledger_forged",
                "Ledger values read back from Redis that did not authenticate (not written by a replica).",
                minting.forged,
            ),
        ];
        for (name, help, value) in counters {
            write_single(&mut encoder, name, help, MetricType::Counter, value)?;
        }
        let sinks = self.auditor.stats();
        if !sinks.is_empty() {
            write_family(
                &mut encoder,
                "kubeconfigd_audit_records",
                "Audit records written (file) or delivered (webhook), by sink.",
                MetricType::Counter,
                sinks
                    .iter()
                    .map(|(sink, s)| ([("sink", sink.label())], s.written)),
            )?;
            write_family(
                &mut encoder,
                "kubeconfigd_audit_records_dropped",
                "Audit records not queued, by sink: the queue was full (--audit-queue-size) or the service was stopping; with --audit-required the download was refused instead of served.",
                MetricType::Counter,
                sinks
                    .iter()
                    .map(|(sink, s)| ([("sink", sink.label())], s.dropped)),
            )?;
            write_family(
                &mut encoder,
                "kubeconfigd_audit_sink_up",
                "0 while an audit sink fails to write and retries, else 1.",
                MetricType::Gauge,
                sinks
                    .iter()
                    .map(|(sink, s)| ([("sink", sink.label())], u64::from(s.up))),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
