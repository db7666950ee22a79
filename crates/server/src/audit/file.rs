//! The audit file (`--audit-log FILE`, or `-` for stdout): JSON lines written by a thread of its own.
//!
//! The thread writes what is queued as one `write` per batch: at once in required mode (a download
//! waits for it), otherwise every [`INTERVAL`] or when [`WAKE_BYTES`] are waiting. A record is
//! acknowledged once its batch is handed to the operating system, which survives the process but not
//! the machine; with `--audit-log-fsync` the batch is also synced (`fdatasync`) first, so in required
//! mode a served download's record is on the disk.
//!
//! **Rotation** (a file, not stdout): when a batch would take the file past `--audit-log-max-size`,
//! the lines that fit are written, then the file is synced and renamed `FILE.1` (the previous
//! `FILE.1` becomes `FILE.2`, and so on), the oldest beyond `--audit-log-max-files` is removed, a new
//! `FILE` is created (mode 0600) and the rest follows. No record is split across files; only a single
//! record longer than the limit makes a file larger. If a rename fails, the file keeps growing
//! (an error says why): records are never dropped to honour a size.
//!
//! **Failures**: a batch that cannot be written is retried (with a growing pause, at most a second)
//! until it is; meanwhile new records wait in the bounded queue, the sink reports itself down, and in
//! required mode downloads are refused. A write that failed half way may leave part of a batch
//! written before the retry writes it whole: a reader tells the copies apart by `seq`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Auditor, Queues, SinkKind, SinkStatus};

/// A batch is written at least this often when records are waiting.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// A batch is written as soon as this much is waiting.
pub const WAKE_BYTES: usize = 64 * 1024;

/// Where and how the file is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    /// `None`: stdout.
    pub path: Option<PathBuf>,
    /// Rotate before the file would exceed this many bytes (0: never).
    pub max_size: u64,
    /// Rotated files kept (`FILE.1` … `FILE.N`).
    pub max_files: u32,
    /// Sync each batch before acknowledging it.
    pub fsync: bool,
}

enum Output {
    Stdout(std::io::Stdout),
    File { file: std::fs::File, size: u64 },
}

struct Writer {
    settings: FileSettings,
    output: Output,
    /// After a failed rotation, the next is not tried before this.
    rotate_after: Option<Instant>,
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Not through a symbolic link: whoever can write to the directory must not be able to point
    // the records at another file.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Writer {
    fn new(settings: FileSettings) -> std::io::Result<Self> {
        let output = match &settings.path {
            None => Output::Stdout(std::io::stdout()),
            Some(path) => {
                let file = open(path)?;
                let size = file.metadata()?.len();
                Output::File { file, size }
            }
        };
        Ok(Writer {
            settings,
            output,
            rotate_after: None,
        })
    }

    /// Writes a batch of whole lines, rotating between lines where the size limit falls.
    fn write(&mut self, mut batch: &[u8]) -> std::io::Result<()> {
        let max = self.settings.max_size;
        while !batch.is_empty() {
            let piece = match &self.output {
                Output::File { size, .. } if max > 0 && *size + batch.len() as u64 > max => {
                    let room = usize::try_from(max.saturating_sub(*size)).unwrap_or(usize::MAX);
                    match batch[..room.min(batch.len())]
                        .iter()
                        .rposition(|b| *b == b'\n')
                    {
                        // The lines that fit, then a new file for the rest.
                        Some(end) => end + 1,
                        // Not even one line fits: a new file first, unless this one is empty
                        // (a line longer than the limit is written whole).
                        None if *size > 0 => 0,
                        None => batch
                            .iter()
                            .position(|b| *b == b'\n')
                            .map_or(batch.len(), |e| e + 1),
                    }
                }
                _ => batch.len(),
            };
            if piece > 0 {
                self.write_piece(&batch[..piece])?;
                batch = &batch[piece..];
            }
            if !batch.is_empty() {
                if self.rotate_after.is_some_and(|at| Instant::now() < at) {
                    return self.write_piece(batch);
                }
                if let Err(error) = self.rotate() {
                    tracing::error!(%error, "the audit file could not be rotated; it keeps growing (next try in 10 s)");
                    self.rotate_after = Some(Instant::now() + Duration::from_secs(10));
                    return self.write_piece(batch);
                }
            }
        }
        Ok(())
    }

    fn write_piece(&mut self, piece: &[u8]) -> std::io::Result<()> {
        match &mut self.output {
            Output::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(piece)?;
                out.flush()
            }
            Output::File { file, size } => {
                file.write_all(piece)?;
                *size += piece.len() as u64;
                if self.settings.fsync {
                    file.sync_data()?;
                }
                Ok(())
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let Some(path) = self.settings.path.clone() else {
            return Ok(());
        };
        if let Output::File { file, .. } = &self.output {
            file.sync_data()?;
        }
        // The next file is opened before anything is renamed: when it cannot be (no descriptors,
        // a full disk), nothing moves and the current file keeps growing.
        let next = numbered(&path, 0);
        let _ = std::fs::remove_file(&next);
        let next_file = open(&next)?;
        let kept = self.settings.max_files;
        if kept == 0 {
            std::fs::remove_file(&path)?;
        } else {
            for n in (1..kept).rev() {
                match std::fs::rename(numbered(&path, n), numbered(&path, n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&path, numbered(&path, 1))?;
        }
        std::fs::rename(&next, &path)?;
        self.output = Output::File {
            file: next_file,
            size: 0,
        };
        Ok(())
    }

    fn sync(&mut self) {
        if let Output::File { file, .. } = &self.output {
            let _ = file.sync_data();
        }
    }
}

/// Opens the file (an error names why it cannot be written) and starts the thread that writes it.
pub fn spawn(
    auditor: &Auditor,
    settings: FileSettings,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let status = auditor
        .status(SinkKind::File)
        .ok_or_else(|| std::io::Error::other("the auditor has no file sink"))?;
    let writer = Writer::new(settings)?;
    let queues = auditor.queues();
    std::thread::Builder::new()
        .name("kubeconfigd-audit".to_owned())
        .spawn(move || run(&queues, &status, writer))
}

fn run(queues: &Arc<Queues>, status: &SinkStatus, mut writer: Writer) {
    let mut batch = Vec::new();
    let mut reported = (Instant::now(), 0_u64);
    loop {
        let (first_seq, records, closing) = {
            let Ok(state) = queues.state.lock() else {
                return;
            };
            let Ok((mut state, _)) = queues.file_wake.wait_timeout_while(state, INTERVAL, |s| {
                !s.closing
                    && s.pending[SinkKind::File as usize]
                        .as_ref()
                        .is_none_or(|p| p.records == 0)
            }) else {
                return;
            };
            let closing = state.closing;
            let next_seq = state.next_seq;
            let Some(pending) = state.pending[SinkKind::File as usize].as_mut() else {
                return;
            };
            std::mem::swap(&mut pending.bytes, &mut batch);
            let taken = (pending.first_seq, pending.records, closing);
            pending.records = 0;
            pending.first_seq = next_seq;
            taken
        };
        if records > 0 {
            let mut pause = Duration::from_millis(10);
            loop {
                match writer.write(&batch) {
                    Ok(()) => break,
                    Err(error) => {
                        if !status.failing.swap(true, Ordering::Relaxed) {
                            tracing::error!(%error, records, "the audit file cannot be written; retrying");
                        }
                        if closing && pause >= Duration::from_secs(1) {
                            tracing::error!(%error, records, "stopping: audit records were not written");
                            return;
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
            }
            if status.failing.swap(false, Ordering::Relaxed) {
                tracing::info!("the audit file is written again");
            }
            status.acknowledge(first_seq + records - 1, records);
            batch.clear();
            // A burst's buffer is not kept for ever.
            if batch.capacity() > 4 * WAKE_BYTES {
                batch = Vec::new();
            }
        }
        report_dropped(status, SinkKind::File, &mut reported);
        if closing && records == 0 {
            writer.sync();
            return;
        }
    }
}

/// Says how many records a sink dropped since it last said so, at most once per
/// [`super::DROPPED_REPORT_INTERVAL`].
pub(super) fn report_dropped(status: &SinkStatus, sink: SinkKind, reported: &mut (Instant, u64)) {
    let dropped = status.dropped.load(Ordering::Relaxed);
    if dropped > reported.1 && reported.0.elapsed() >= super::DROPPED_REPORT_INTERVAL {
        tracing::warn!(
            sink = sink.label(),
            dropped = dropped - reported.1,
            "audit records dropped: the queue was full (raise --audit-queue-size, or use --audit-required to refuse downloads instead)"
        );
        *reported = (Instant::now(), dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_configured_count_and_every_line_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let mut writer = Writer::new(FileSettings {
            path: Some(path.clone()),
            max_size: 100,
            max_files: 2,
            fsync: false,
        })
        .expect("open");
        for n in 0..20 {
            let line = format!(
                "{{\"seq\":{}, \"pad\": \"....................\"}}\n",
                100 + n
            );
            writer.write(line.as_bytes()).expect("write");
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("present")
            .map(|e| {
                e.expect("present")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
        let mut seqs = Vec::new();
        for name in ["audit.log.2", "audit.log.1", "audit.log"] {
            let text = std::fs::read_to_string(dir.path().join(name)).expect("present");
            assert!(text.len() <= 100, "{name}: {}", text.len());
            for line in text.lines() {
                let value: serde_json::Value = serde_json::from_str(line).expect(line);
                seqs.push(value["seq"].as_u64().expect("present") - 100);
            }
        }
        let expected: Vec<u64> = (seqs[0]..20).collect();
        assert_eq!(seqs, expected, "the newest records, in order, none missing");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .expect("present")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
