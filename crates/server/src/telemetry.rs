//! The one place telemetry is set up: a `tracing` subscriber with text or JSON logs filtered by
//! `RUST_LOG` (default `info,redis=error,notify=error`: the Redis client's own warnings repeat what the cache tier
//! logs once per state change), written off the request path ([`LogBuffer`]: a call appends its line
//! to a bounded in-memory buffer, one thread writes the buffer out every [`LOG_FLUSH_INTERVAL`] or when
//! it fills up; a line that does not fit is dropped and counted, see [`dropped_log_lines`], and what is
//! buffered is written when [`LogGuard`] is dropped at exit), plus — only when the standard OpenTelemetry environment names an
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
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

mod json_line;
mod log_line;
mod text_line;
mod timestamp;
pub use log_line::LineFormat;

/// The default service name.
pub const SERVICE_NAME: &str = "kubeconfigd";

/// How often buffered log lines are written out.
pub const LOG_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);
/// How many bytes of log lines may wait to be written before new lines are dropped (and counted).
pub const LOG_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Past this many buffered bytes the writer is woken before its interval.
const LOG_WAKE_BYTES: usize = 256 * 1024;

/// The process's log lines on their way to stderr. Appending a line takes a short lock and a copy; no
/// call waits for a write, and no call wakes a thread (except when the buffer passes
/// [`LOG_WAKE_BYTES`]), which is what made a queue drained by a writer thread cost a context switch per
/// line under load.
#[derive(Debug)]
pub struct LogBuffer {
    state: std::sync::Mutex<LogState>,
    wake: std::sync::Condvar,
    dropped: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct LogState {
    lines: Vec<u8>,
    closing: bool,
    /// A warning or error is waiting: written at once rather than at the next interval.
    urgent: bool,
}

static LOG: std::sync::OnceLock<std::sync::Arc<LogBuffer>> = std::sync::OnceLock::new();

/// The format of the log, once [`init`] set it up.
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// Whether the filter [`init`] installed passes `audit` lines at INFO: the filter is fixed once
/// installed (`RUST_LOG` at start), so a call does not ask it again.
static AUDIT_LINES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Whether audit lines are written to the log, when [`init`] set the log up; `None` otherwise (a
/// test with its own subscriber asks that subscriber).
pub(crate) fn audit_lines() -> Option<bool> {
    AUDIT_LINES.get().copied()
}

/// Appends one finished line to the log, written off the request path like every log line; `false`
/// when this process does not log through [`init`]'s buffer (a test with its own subscriber), so the
/// caller logs an event instead. For lines formatted by their producer (audit records).
pub(crate) fn append_log_line(line: &[u8]) -> bool {
    LOG.get().is_some_and(|log| {
        log.append(line, false);
        true
    })
}

/// The log's format, once [`init`] set it up.
pub(crate) fn log_format() -> Option<LogFormat> {
    FORMAT.get().copied()
}

/// Writes the timestamp every log line starts with (`2026-12-01T13:45:41.630408Z`).
pub(crate) fn write_timestamp(out: &mut String) {
    timestamp::write(out);
}

/// Writes `text` as a JSON string, escaped as the JSON log line escapes it.
pub(crate) fn write_json_string(out: &mut String, text: &str) {
    json_line::quoted(out, text);
}

/// Log lines dropped so far because the buffer was full.
pub fn dropped_log_lines() -> u64 {
    LOG.get().map_or(0, |log| {
        log.dropped.load(std::sync::atomic::Ordering::Relaxed)
    })
}

impl LogBuffer {
    fn append(&self, line: &[u8], urgent: bool) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.lines.len() + line.len() > LOG_BUFFER_BYTES {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let before = state.lines.len();
        state.lines.extend_from_slice(line);
        state.urgent |= urgent;
        if urgent || (before < LOG_WAKE_BYTES && state.lines.len() >= LOG_WAKE_BYTES) {
            self.wake.notify_one();
        }
    }

    /// Writes what is buffered every interval (or when woken) until closed, then the rest.
    fn run(&self, mut out: impl std::io::Write) {
        let mut spare = Vec::new();
        loop {
            let closing = {
                let Ok(state) = self.state.lock() else { return };
                let Ok((mut state, _)) =
                    self.wake
                        .wait_timeout_while(state, LOG_FLUSH_INTERVAL, |s| {
                            !s.closing && !s.urgent && s.lines.len() < LOG_WAKE_BYTES
                        })
                else {
                    return;
                };
                std::mem::swap(&mut state.lines, &mut spare);
                state.urgent = false;
                state.closing
            };
            if !spare.is_empty() {
                // Nowhere to report a failed write to stderr; the lines are gone either way.
                let _ = out.write_all(&spare).and_then(|()| out.flush());
                spare.clear();
            }
            if closing {
                return;
            }
        }
    }
}

/// A writer for one log line (the formatter writes each event in one call); warnings and errors wake
/// the writer at once.
#[derive(Debug)]
pub struct LogLine<'a> {
    buffer: &'a LogBuffer,
    urgent: bool,
}

impl std::io::Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.append(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `MakeWriter` for the fmt layers.
#[derive(Clone)]
struct LogWriter(std::sync::Arc<LogBuffer>);

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            buffer: &self.0,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LogLine {
            buffer: &self.0,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// Writes every buffered log line when dropped: keep it alive until the last line is logged.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    buffer: std::sync::Arc<LogBuffer>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Ok(mut state) = self.buffer.state.lock() {
            state.closing = true;
        }
        self.buffer.wake.notify_one();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn log_buffer() -> (LogWriter, LogGuard) {
    let buffer = std::sync::Arc::new(LogBuffer {
        state: std::sync::Mutex::new(LogState::default()),
        wake: std::sync::Condvar::new(),
        dropped: std::sync::atomic::AtomicU64::new(0),
    });
    let _ = LOG.set(std::sync::Arc::clone(&buffer));
    let writer = {
        let buffer = std::sync::Arc::clone(&buffer);
        std::thread::Builder::new()
            .name("kubeconfigd-log".to_owned())
            .spawn(move || buffer.run(std::io::stderr()))
            .ok()
    };
    (
        LogWriter(std::sync::Arc::clone(&buffer)),
        LogGuard { buffer, writer },
    )
}

/// Whether calls are exported over OTLP. [`init`] sets it when it installs the span and metric
/// exporters (always together). Without it, calls open no spans (logs are events only: a span would
/// be built, entered and closed in the registry for no reader), and the per-call OpenTelemetry
/// instruments are not built at all instead of recording into the global no-op meter on every call.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the per-call spans (and instruments) on or off. [`init`] turns them on when it exports; a
/// test that installs its own span collector turns them on itself.
pub fn record_spans(on: bool) {
    EXPORTING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether calls are exported (see [`record_spans`]).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
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

/// What the log layer writes: events, and not spans. An `enabled!` check (its metadata is neither a
/// span nor an event) must pass too: a per-layer filter that says no to it leaves the answer in the
/// thread's filter state, where the next event on that thread reads it and is dropped — which lost
/// every warning logged on a thread that had just checked whether audit lines are logged.
fn not_a_span(metadata: &tracing::Metadata<'_>) -> bool {
    !metadata.is_span()
}

/// Installs the global subscriber (and OTLP export when configured). Call once, inside the Tokio
/// runtime (the OTLP exporter's channel lives on it).
pub fn init(format: LogFormat) -> (Telemetry, LogGuard) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,redis=error,notify=error"));
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
    record_spans(telemetry.tracer.is_some());
    let otel = telemetry
        .tracer
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(SERVICE_NAME)));
    let (writer, guard) = log_buffer();
    let _ = FORMAT.set(format);
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal();
    // Logs are events only: every event that matters carries its own fields (the audit event has the
    // user, cluster, asset, decision, request id and digest), so the log layer neither records the
    // fields of each call's span nor prints them again on every line. Spans exist for the exporter;
    // without one, calls do not open them ([`record_spans`]).
    let events_only = tracing_subscriber::filter::filter_fn(not_a_span);
    // A terminal gets the default, coloured format; anything else (a file, a pipe, a collector)
    // gets the same layout written by [`LineFormat::Text`], which costs a fraction of it per line.
    let (plain, coloured, json) = match format {
        LogFormat::Text if !ansi => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .event_format(LineFormat::Text)
                    .with_writer(writer.clone())
                    .with_filter(events_only),
            ),
            None,
            None,
        ),
        LogFormat::Text => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(true)
                    .fmt_fields(kubeconfig_logline::Fields)
                    .with_writer(writer.clone())
                    .with_filter(events_only),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .event_format(LineFormat::Json)
                    .with_writer(writer)
                    .with_filter(events_only),
            ),
        ),
    };
    if let Err(error) = tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(coloured)
        .with(json)
        .with(otel)
        .try_init()
    {
        eprintln!("kubeconfigd: logging already initialised: {error}");
    } else {
        let _ = AUDIT_LINES.set(tracing::enabled!(target: "audit", tracing::Level::INFO));
    }
    if let Some(error) = export_error {
        tracing::error!(%error, "OpenTelemetry export is configured but could not start; continuing without it");
    } else if telemetry.tracer.is_some() {
        tracing::info!("exporting traces and metrics over OTLP");
    }
    (telemetry, guard)
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

/// A new request id: a random (v4) UUID in its hyphenated form, encoded without the formatting
/// machinery (every call makes one).
pub fn new_request_id() -> RequestId {
    let mut text = uuid::Uuid::encode_buffer();
    RequestId::of(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text))
}

/// A request id: a random UUID in its hyphenated lowercase form, held by value (no allocation; a call
/// copies 36 bytes where it needs its own).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId(arrayvec::ArrayString<{ uuid::fmt::Hyphenated::LENGTH }>);

impl RequestId {
    fn of(text: &str) -> Self {
        RequestId(arrayvec::ArrayString::from(text).unwrap_or_default())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for RequestId {
    /// The nil UUID (calls made inside the process, and tests).
    fn default() -> Self {
        let mut text = uuid::Uuid::encode_buffer();
        RequestId::of(uuid::Uuid::nil().hyphenated().encode_lower(&mut text))
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
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
    // No layer records the span (nothing exports spans): nothing to join, so the caller's trace
    // context is not parsed.
    if span.is_disabled() {
        return;
    }
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
    if !exporting() {
        return tracing::Span::none();
    }
    let span = server_span!(
        "grpc",
        request_id,
        otel.name = %format_args!("kubeconfig.v1.KubeconfigService/{method}"),
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
    if !exporting() {
        return tracing::Span::none();
    }
    let span = server_span!(
        "rest",
        request_id,
        otel.name = %format_args!("GET {route}"),
        http.request.method = "GET",
        http.route = route,
        http.response.status_code = tracing::field::Empty
    );
    join_caller_trace(&span, headers);
    span
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::log_line::capture::Sink;

    /// The log layer as [`super::init`] stacks it: a level filter, then the formatter behind its
    /// per-layer filter.
    fn logged_after_a_check(filter: fn(&tracing::Metadata<'_>) -> bool) -> String {
        let sink = Sink::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(sink.clone())
                    .with_filter(tracing_subscriber::filter::filter_fn(filter)),
            );
        tracing::subscriber::with_default(subscriber, || {
            let _ = tracing::enabled!(target: "audit", tracing::Level::INFO);
            tracing::warn!("issuer keys not refreshed");
        });
        sink.text()
    }

    #[test]
    fn a_warning_right_after_an_enabled_check_is_logged() {
        assert!(logged_after_a_check(super::not_a_span).contains("issuer keys not refreshed"));
        // The filter this replaced lost it: the check is what this test exercises.
        assert!(!logged_after_a_check(|metadata| metadata.is_event()).contains("issuer keys"));
    }
}
