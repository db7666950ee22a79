//! The audit trail: one record per asset decision (served or refused, downloads and watch deliveries
//! alike), per minted credential and per revocation, with who asked, how they authenticated, what they
//! asked for and what they got — never the file, a key or a token.
//!
//! Records go to one or both of the audit stream's sinks, or, when neither is configured, to the log
//! as `audit` lines (as before the stream existed):
//! - a **file** (`--audit-log FILE`, or `-` for stdout): JSON lines, rotated by size with a kept-file
//!   count ([`file`]);
//! - a **webhook** (`--audit-webhook URL`): the same lines, POSTed in batches, in order, retried with
//!   backoff until the receiver takes them ([`webhook`]).
//!
//! Each record is formatted once, straight from the decision ([`record`]), on the calling thread, and
//! appended to a bounded in-memory queue per sink under one short lock that also gives it its `seq`
//! (one number per record, the same in every sink, increasing in the order records are queued).
//! Writing happens off the request path: a thread for the file, a task for the webhook.
//!
//! **Required mode** (`--audit-required`): a download is served only after its record is written (the
//! file: handed to the operating system, and synced when `--audit-log-fsync` says so; the webhook:
//! acknowledged with a 2xx). A call whose record cannot be queued (the queue is full, or the sink is
//! failing) or is not written within `--audit-timeout` is refused with UNAVAILABLE / 503 instead.
//! Without it, a record that does not fit in the queue is dropped and counted
//! (`kubeconfigd_audit_records_dropped_total`), and a warning says so once per interval.

pub mod file;
pub mod record;
pub mod webhook;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use record::{Auth, Event, Record, Value};

use crate::config::LogFormat;

/// How often a sink that drops records says so, at most.
pub const DROPPED_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The sinks of the audit stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    File,
    Webhook,
}

impl SinkKind {
    pub const ALL: [SinkKind; 2] = [SinkKind::File, SinkKind::Webhook];

    /// The metric label and the name in messages.
    pub fn label(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Webhook => "webhook",
        }
    }
}

/// Records waiting to be written to one sink.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Whole JSON lines, oldest first.
    pub bytes: Vec<u8>,
    /// The `seq` of the first record in `bytes`.
    pub first_seq: u64,
    /// The records in `bytes`.
    pub records: u64,
}

/// What every sink shares: the queues, one lock.
#[derive(Debug)]
pub(crate) struct Queues {
    pub state: Mutex<QueueState>,
    /// Wakes the file writer.
    pub file_wake: Condvar,
    /// Wakes the webhook sender.
    pub webhook_wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
pub(crate) struct QueueState {
    pub next_seq: u64,
    pub pending: [Option<Pending>; 2],
    pub closing: bool,
}

/// One sink's counters and health, read by metrics and by required mode.
#[derive(Debug)]
pub struct SinkStatus {
    /// The highest `seq` written (0: none yet).
    pub(crate) written: tokio::sync::watch::Sender<u64>,
    /// Set while the sink fails to write (and retries).
    pub(crate) failing: AtomicBool,
    pub(crate) records_written: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// The bound of its queue, in bytes.
    pub(crate) queue_bytes: usize,
}

impl SinkStatus {
    fn new(queue_bytes: usize) -> Self {
        SinkStatus {
            written: tokio::sync::watch::channel(0).0,
            failing: AtomicBool::new(false),
            records_written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queue_bytes,
        }
    }

    /// Records `through` (and everything before it) as written.
    pub(crate) fn acknowledge(&self, through: u64, records: u64) {
        self.records_written.fetch_add(records, Ordering::Relaxed);
        self.written.send_if_modified(|written| {
            let advanced = through > *written;
            if advanced {
                *written = through;
            }
            advanced
        });
    }
}

/// Counters of one sink, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub written: u64,
    pub dropped: u64,
    pub up: bool,
}

/// Why a record could not be queued or written in time (required mode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the audit {sink} sink {why}; with --audit-required nothing is served unrecorded")]
pub struct Unrecorded {
    pub sink: &'static str,
    pub why: &'static str,
}

/// Where records go, and whether a download waits for its record.
#[derive(Debug)]
pub struct Auditor {
    /// The log's format, when records go to the log (no stream sink configured).
    to_log: bool,
    queues: Arc<Queues>,
    status: [Option<Arc<SinkStatus>>; 2],
    required: bool,
    timeout: Duration,
}

impl Default for Auditor {
    fn default() -> Self {
        Auditor::to_log()
    }
}

/// A queued record: required mode waits on it.
#[derive(Debug)]
#[must_use = "in required mode a record counts only once written"]
pub struct Receipt {
    seq: u64,
}

impl Auditor {
    /// Records go to the log as `audit` lines.
    pub fn to_log() -> Self {
        Auditor {
            to_log: true,
            queues: Arc::new(Queues {
                state: Mutex::default(),
                file_wake: Condvar::new(),
                webhook_wake: tokio::sync::Notify::new(),
            }),
            status: [None, None],
            required: false,
            timeout: Duration::from_secs(5),
        }
    }

    /// Records go to the sinks given their queue bounds (bytes); the writers are started separately
    /// ([`file::spawn`], [`webhook::spawn`]) with [`Auditor::queues`] and [`Auditor::status`].
    pub fn to_stream(
        file: Option<usize>,
        webhook: Option<usize>,
        required: bool,
        timeout: Duration,
    ) -> Self {
        let mut auditor = Auditor::to_log();
        auditor.to_log = file.is_none() && webhook.is_none();
        auditor.required = required && !auditor.to_log;
        auditor.timeout = timeout;
        let mut state = auditor
            .queues
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        state.next_seq = 1;
        for (i, bound) in [file, webhook].into_iter().enumerate() {
            if let Some(bound) = bound {
                auditor.status[i] = Some(Arc::new(SinkStatus::new(bound)));
                state.pending[i] = Some(Pending {
                    first_seq: 1,
                    ..Pending::default()
                });
            }
        }
        drop(state);
        auditor
    }

    pub(crate) fn queues(&self) -> Arc<Queues> {
        Arc::clone(&self.queues)
    }

    pub(crate) fn status(&self, sink: SinkKind) -> Option<Arc<SinkStatus>> {
        self.status[sink as usize].clone()
    }

    /// Whether downloads wait for their records (`--audit-required` with a sink).
    pub fn required(&self) -> bool {
        self.required
    }

    /// In required mode, whether every sink can take a record now: a call is refused before it is
    /// decided when one cannot.
    pub fn accepting(&self) -> Result<(), Unrecorded> {
        if !self.required {
            return Ok(());
        }
        for (kind, status) in SinkKind::ALL.iter().zip(&self.status) {
            if let Some(status) = status
                && status.failing.load(Ordering::Relaxed)
            {
                return Err(Unrecorded {
                    sink: kind.label(),
                    why: "is failing",
                });
            }
        }
        Ok(())
    }

    /// Counters of each configured sink.
    pub fn stats(&self) -> Vec<(SinkKind, SinkStats)> {
        SinkKind::ALL
            .iter()
            .zip(&self.status)
            .filter_map(|(kind, status)| {
                status.as_ref().map(|s| {
                    (
                        *kind,
                        SinkStats {
                            written: s.records_written.load(Ordering::Relaxed),
                            dropped: s.dropped.load(Ordering::Relaxed),
                            up: !s.failing.load(Ordering::Relaxed),
                        },
                    )
                })
            })
            .collect()
    }

    /// Records one event. `Ok(None)` when nothing needs waiting for; in required mode a receipt to
    /// [`Auditor::written`] before the outcome is handed out, or the reason the record could not
    /// even be queued.
    pub fn record(&self, record: &Record<'_>) -> Result<Option<Receipt>, Unrecorded> {
        if self.to_log {
            to_log(record);
            return Ok(None);
        }
        thread_local! {
            static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        SCRATCH.with_borrow_mut(|tail| {
            tail.clear();
            record.write_stream_tail(tail);
            self.enqueue(tail.as_bytes())
        })
    }

    fn enqueue(&self, tail: &[u8]) -> Result<Option<Receipt>, Unrecorded> {
        let mut seq_text = itoa::Buffer::new();
        let mut state = self.queues.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.closing {
            // Shutting down: nobody writes the queue any more.
            for status in self.status.iter().flatten() {
                status.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return Err(Unrecorded {
                sink: "stream",
                why: "is closed",
            });
        }
        let seq = state.next_seq;
        let head = seq_text.format(seq);
        let length = "{\"seq\":,".len() + head.len() + tail.len();
        // All or nothing: in required mode a record every sink cannot take is not queued anywhere.
        let mut fits = [true; 2];
        for (i, pending) in state.pending.iter().enumerate() {
            if let (Some(pending), Some(status)) = (pending, &self.status[i]) {
                fits[i] = pending.bytes.len() + length <= status.queue_bytes;
                if !fits[i] && self.required {
                    // Counted: some records (a mint's, a revocation's) are not waited for.
                    status.dropped.fetch_add(1, Ordering::Relaxed);
                    return Err(Unrecorded {
                        sink: SinkKind::ALL[i].label(),
                        why: "has a full queue",
                    });
                }
            }
        }
        state.next_seq += 1;
        let mut wake = [false; 2];
        for (i, pending) in state.pending.iter_mut().enumerate() {
            let (Some(pending), Some(status)) = (pending, &self.status[i]) else {
                continue;
            };
            if !fits[i] {
                status.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if pending.records == 0 {
                pending.first_seq = seq;
            }
            pending.bytes.extend_from_slice(b"{\"seq\":");
            pending.bytes.extend_from_slice(head.as_bytes());
            pending.bytes.push(b',');
            pending.bytes.extend_from_slice(tail);
            pending.records += 1;
            // The file writer wakes at once when someone waits, else when a batch is worth writing
            // (and at its interval).
            wake[i] = self.required || pending.bytes.len() >= file::WAKE_BYTES;
        }
        drop(state);
        if wake[SinkKind::File as usize] {
            self.queues.file_wake.notify_one();
        }
        if self.status[SinkKind::Webhook as usize].is_some() {
            // A stored permit, no system call: the sender batches whatever has arrived.
            self.queues.webhook_wake.notify_one();
        }
        Ok(self.required.then_some(Receipt { seq }))
    }

    /// Waits until every sink wrote the record (required mode), at most `--audit-timeout`.
    pub async fn written(&self, receipt: Receipt) -> Result<(), Unrecorded> {
        let wait = async {
            for (kind, status) in SinkKind::ALL.iter().zip(&self.status) {
                let Some(status) = status else { continue };
                let mut written = status.written.subscribe();
                if written.wait_for(|w| *w >= receipt.seq).await.is_err() {
                    return Err(Unrecorded {
                        sink: kind.label(),
                        why: "stopped",
                    });
                }
            }
            Ok(())
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .unwrap_or(Err(Unrecorded {
                sink: "stream",
                why: "did not write the record within --audit-timeout",
            }))
    }

    /// Records one event and, in required mode, waits until it is written.
    pub async fn record_and_wait(&self, record: &Record<'_>) -> Result<(), Unrecorded> {
        match self.record(record)? {
            // Boxed: only required mode waits, and the wait's state (a timer) would otherwise be
            // part of every call's future, copied whole each time that future is moved.
            Some(receipt) => Box::pin(self.written(receipt)).await,
            None => Ok(()),
        }
    }

    /// Stops taking records and wakes the writers, which write what is queued and stop.
    pub fn close(&self) {
        self.queues
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closing = true;
        self.queues.file_wake.notify_all();
        self.queues.webhook_wake.notify_one();
    }
}

/// An audit line in the log: formatted here in the log's format and appended to its buffer; as a
/// `tracing` event where the process logs through another subscriber (tests). Filtered as an `audit`
/// event at INFO would be (`RUST_LOG`).
fn to_log(record: &Record<'_>) {
    let enabled = crate::telemetry::audit_lines()
        .unwrap_or_else(|| tracing::enabled!(target: "audit", tracing::Level::INFO));
    if !enabled {
        return;
    }
    thread_local! {
        static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        match crate::telemetry::log_format() {
            Some(LogFormat::Json) => record.write_json_log_line(line),
            Some(LogFormat::Text) => record.write_text_log_line(line),
            None => {
                record.write_text_fields(line);
                tracing::info!(target: "audit", record = line.as_str(), "{}", record.event.as_str());
                return;
            }
        }
        if !crate::telemetry::append_log_line(line.as_bytes()) {
            tracing::info!(target: "audit", record = line.as_str(), "{}", record.event.as_str());
        }
        // A line this long once would keep its buffer: let the next one start small again.
        if line.capacity() > 64 * 1024 {
            *line = String::new();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(auth: &Auth) -> Record<'_> {
        let mut record = Record::new(Event::AssetServed, "a@x.test", auth);
        record.with("cluster", "c1");
        record
    }

    fn lines(auditor: &Auditor, sink: SinkKind) -> Vec<serde_json::Value> {
        let state = auditor.queues.state.lock().expect("present");
        let pending = state.pending[sink as usize].as_ref().expect("present");
        String::from_utf8(pending.bytes.clone())
            .expect("present")
            .lines()
            .map(|l| serde_json::from_str(l).expect("present"))
            .collect()
    }

    #[test]
    fn every_sink_gets_the_record_with_the_same_seq() {
        let auditor =
            Auditor::to_stream(Some(1 << 20), Some(1 << 20), false, Duration::from_secs(1));
        let auth = Auth::default();
        for _ in 0..3 {
            assert!(auditor.record(&record(&auth)).expect("present").is_none());
        }
        for sink in SinkKind::ALL {
            let seqs: Vec<_> = lines(&auditor, sink)
                .iter()
                .map(|v| v["seq"].as_u64().expect("present"))
                .collect();
            assert_eq!(seqs, [1, 2, 3]);
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_or_refuses_in_required_mode() {
        let auth = Auth::default();
        let lenient = Auditor::to_stream(Some(300), None, false, Duration::from_secs(1));
        for _ in 0..10 {
            assert!(lenient.record(&record(&auth)).is_ok());
        }
        let stats = lenient.stats();
        assert!(stats[0].1.dropped > 0, "{stats:?}");
        assert_eq!(
            lines(&lenient, SinkKind::File).len() as u64 + stats[0].1.dropped,
            10
        );

        let strict = Auditor::to_stream(Some(300), None, true, Duration::from_secs(1));
        let results: Vec<_> = (0..10).map(|_| strict.record(&record(&auth))).collect();
        let queued = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        assert_eq!(queued, lines(&strict, SinkKind::File).len());
        let refused = results.iter().filter(|r| r.is_err()).count();
        assert!(refused > 0);
        // Counted, since some records (a mint's, a revocation's) are not waited for.
        assert_eq!(strict.stats()[0].1.dropped, refused as u64);
    }

    #[tokio::test]
    async fn required_mode_waits_for_the_write_and_gives_up_at_the_timeout() {
        let auditor = Auditor::to_stream(Some(1 << 20), None, true, Duration::from_millis(50));
        let auth = Auth::default();
        let first = auditor
            .record(&record(&auth))
            .expect("present")
            .expect("present");
        let second = auditor
            .record(&record(&auth))
            .expect("present")
            .expect("present");
        let status = auditor.status(SinkKind::File).expect("present");
        status.acknowledge(1, 1);
        assert_eq!(auditor.written(first).await, Ok(()));
        assert!(auditor.written(second).await.is_err(), "never written");
    }
}
