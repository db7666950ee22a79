//! The one place telemetry is set up: a `tracing` subscriber with text or JSON logs filtered by
//! `RUST_LOG` (default `info,redis=error`: the Redis client's own warnings repeat what the cache tier
//! logs once per state change), written off the request path (a bounded queue of
//! [`LOG_QUEUE_LINES`] lines drained by one writer thread, which batches its writes; a line that does not
//! fit is dropped and counted, see [`dropped_log_lines`], and the queue is flushed when [`LogGuard`] is
//! dropped at exit), plus — only when the standard OpenTelemetry environment names an
//! endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) — an
//! OpenTelemetry layer exporting spans over OTLP/gRPC and a meter provider exporting metrics. The
//! service name is `OTEL_SERVICE_NAME`, default `kubeconfigd`. W3C trace context is the propagator.
//!
//! Nothing here ever records a kubeconfig body, key, token, API key or client secret: spans and events
//! carry uids, names, decisions and digests only.

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// The default service name.
pub const SERVICE_NAME: &str = "kubeconfigd";

/// How many log lines may wait for the writer thread before new ones are dropped (and counted).
pub const LOG_QUEUE_LINES: usize = 65_536;

static DROPPED: std::sync::OnceLock<tracing_appender::non_blocking::ErrorCounter> =
    std::sync::OnceLock::new();

/// Log lines dropped so far because the writer could not keep up.
pub fn dropped_log_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Flushes every queued log line when dropped: keep it alive until the last line is logged.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    _flush_on_drop: tracing_appender::non_blocking::WorkerGuard,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

/// Installed providers; [`Telemetry::shutdown`] flushes them.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

/// Whether the environment asks for OTLP export.
pub fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()))
}

fn resource() -> Resource {
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| SERVICE_NAME.to_owned());
    Resource::builder().with_service_name(name).build()
}

fn providers() -> Result<(SdkTracerProvider, SdkMeterProvider), String> {
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let tracer = SdkTracerProvider::builder()
        .with_batch_exporter(spans)
        .with_resource(resource())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    let meter = SdkMeterProvider::builder()
        .with_periodic_exporter(metrics)
        .with_resource(resource())
        .build();
    Ok((tracer, meter))
}

/// Installs the global subscriber (and OTLP export when configured). Call once, inside the Tokio
/// runtime (the OTLP exporter's channel lives on it).
pub fn init(format: LogFormat) -> (Telemetry, LogGuard) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,redis=error"));
    let mut telemetry = Telemetry::default();
    let mut export_error = None;
    if otlp_configured() {
        match providers() {
            Ok((tracer, meter)) => {
                global::set_meter_provider(meter.clone());
                telemetry = Telemetry {
                    tracer: Some(tracer),
                    meter: Some(meter),
                };
            }
            Err(error) => export_error = Some(error),
        }
    }
    let otel = telemetry
        .tracer
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(SERVICE_NAME)));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("kubeconfigd-log")
        // The writer thread flushes whenever its queue is empty, so a burst is written in few calls.
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let _ = DROPPED.set(writer.error_counter());
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal();
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(writer),
            ),
        ),
    };
    if let Err(error) = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
    {
        eprintln!("kubeconfigd: logging already initialised: {error}");
    }
    if let Some(error) = export_error {
        tracing::error!(%error, "OpenTelemetry export is configured but could not start; continuing without it");
    } else if telemetry.tracer.is_some() {
        tracing::info!("exporting traces and metrics over OTLP");
    }
    (
        telemetry,
        LogGuard {
            _flush_on_drop: guard,
        },
    )
}

impl Telemetry {
    /// Flushes and stops the exporters. Blocks: call it outside async code (e.g. `spawn_blocking`).
    pub fn shutdown(self) {
        if let Some(Err(error)) = self.tracer.map(|tracer| tracer.shutdown()) {
            eprintln!("kubeconfigd: flushing spans failed: {error}");
        }
        if let Some(Err(error)) = self.meter.map(|meter| meter.shutdown()) {
            eprintln!("kubeconfigd: flushing metrics failed: {error}");
        }
    }
}

/// Reads W3C trace context from HTTP headers or gRPC metadata (both are an `http::HeaderMap`).
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

fn join_caller_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
}

/// A server span: the edge's own fields plus the ones every call records as it proceeds.
macro_rules! server_span {
    ($edge:literal, $request_id:expr, $($edge_fields:tt)+) => {
        tracing::info_span!(
            $edge,
            $($edge_fields)+,
            otel.kind = "server",
            request_id = $request_id,
            enduser.id = tracing::field::Empty,
            kubeconfig.cluster_uid = tracing::field::Empty,
            kubeconfig.asset = tracing::field::Empty,
            kubeconfig.variant = tracing::field::Empty,
            kubeconfig.decision = tracing::field::Empty,
            kubeconfig.reason = tracing::field::Empty,
            kubeconfig.cache_tier = tracing::field::Empty,
        )
    };
}

/// The span of one gRPC call (OpenTelemetry RPC conventions), joined to the caller's trace.
pub fn grpc_span(
    method: &'static str,
    request_id: &str,
    headers: &http::HeaderMap,
) -> tracing::Span {
    let span = server_span!(
        "grpc",
        request_id,
        otel.name = format!("kubeconfig.v1.KubeconfigService/{method}"),
        rpc.system = "grpc",
        rpc.service = "kubeconfig.v1.KubeconfigService",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty
    );
    join_caller_trace(&span, headers);
    span
}

/// The span of one REST request (OpenTelemetry HTTP conventions), joined to the caller's trace.
pub fn rest_span(
    route: &'static str,
    request_id: &str,
    headers: &http::HeaderMap,
) -> tracing::Span {
    let span = server_span!(
        "rest",
        request_id,
        otel.name = format!("GET {route}"),
        http.request.method = "GET",
        http.route = route,
        http.response.status_code = tracing::field::Empty
    );
    join_caller_trace(&span, headers);
    span
}
