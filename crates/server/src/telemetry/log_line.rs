//! Log lines written straight into a line buffer of the thread that logs, in either format
//! (`text_line`, `json_line`): the one [`FormatEvent`] the log layer uses, and what both formats share
//! (the buffer, the timestamp, the byte scans that decide whether a value needs escaping).

use std::fmt::{self, Write as _};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The format of log lines when stderr is not a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// The default `tracing-subscriber` layout without colours (`text_line`).
    Text,
    /// The object of `tracing-subscriber`'s JSON format with flattened fields (`json_line`).
    Json,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        match self {
            LineFormat::Text => {
                write_line(writer, |line| super::text_line::format_line(line, event))
            }
            LineFormat::Json => {
                write_line(writer, |line| super::json_line::format_line(line, event))
            }
        }
    }
}

/// Builds a line with `format` in a buffer of this thread, where every piece is an inlined append,
/// and hands it to the writer in one call (not a dynamically dispatched call per piece).
fn write_line(mut writer: Writer<'_>, format: impl Fn(&mut String) -> fmt::Result) -> fmt::Result {
    thread_local! {
        static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            // Only if formatting a field logged an event itself: no fast path then.
            let mut own = String::new();
            format(&mut own)?;
            return writer.write_str(&own);
        };
        line.clear();
        let result = format(&mut line).and_then(|()| writer.write_str(&line));
        if line.capacity() > MAX_KEPT_LINE {
            *line = String::new();
        }
        result
    })
}

/// A line buffer larger than this is not kept for the next line.
const MAX_KEPT_LINE: usize = 64 * 1024;

/// `2026-12-01T13:45:41.630408Z` (RFC 3339, microseconds, UTC): the date and time of day are
/// formatted once a second per thread, the microseconds on every line.
pub(super) fn write_timestamp(out: &mut String) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let now = std::time::SystemTime::now();
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != seconds {
        let text = humantime::format_rfc3339_seconds(now).to_string();
        if text.len() != 20 {
            // Outside years 0000-9999: no fast path.
            let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
            return;
        }
        prefix.copy_from_slice(&text.as_bytes()[..19]);
        SECOND.set((seconds, prefix));
    }
    let mut line = [0u8; 27];
    line[..19].copy_from_slice(&prefix);
    line[19] = b'.';
    let mut micros = since_epoch.subsec_micros();
    for at in (20..26).rev() {
        line[at] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    line[26] = b'Z';
    // Digits, ASCII punctuation and the prefix humantime wrote: always UTF-8.
    out.push_str(std::str::from_utf8(&line).unwrap_or_default());
}

/// Whether a string prints the same in Rust's debug form (quoted) as raw between quotes — and, the
/// same condition, as a JSON string.
pub(super) fn plain(value: &str) -> bool {
    // A fold without an early exit, which the compiler turns into a few vector instructions per 16
    // or 32 bytes; `all` tests one byte at a time, which was a quarter of the audit line's formatting.
    value.bytes().fold(true, |plain, b| {
        plain & printable_ascii(b) & (b != b'"') & (b != b'\\')
    })
}

#[inline(always)]
pub(super) fn printable_ascii(b: u8) -> bool {
    b.wrapping_sub(b' ') < b'~' - b' ' + 1
}

/// What a test's log layers wrote: an in-memory writer, and a way to run events through two formatters.
#[cfg(test)]
pub(super) mod capture {
    /// Collects every line written to it (clones share the buffer).
    #[derive(Clone, Default)]
    pub struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    /// Runs `emit` with two log layers, each writing to its own sink, and returns what each
    /// received: ours in `format`, and the library formatter it replaces, configured as
    /// `kubeconfigd` configured it before (text: the default format without colours; JSON: flattened
    /// event fields, no spans).
    pub fn formatted_twice(format: super::LineFormat, emit: impl Fn()) -> (String, String) {
        use tracing_subscriber::Layer as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let (ours, their_sink) = (Sink::default(), Sink::default());
        let library = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(their_sink.clone());
        let theirs = match format {
            // The default layout, with the fields both binaries write (the coloured terminal layer).
            super::LineFormat::Text => library.fmt_fields(kubeconfig_logline::Fields).boxed(),
            super::LineFormat::Json => library
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .boxed(),
        };
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(format)
                    .with_writer(ours.clone()),
            )
            .with(theirs);
        tracing::subscriber::with_default(subscriber, emit);
        let text = |sink: Sink| String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        (text(ours), text(their_sink))
    }

    /// Events both formats are checked with: an audit line with every kind of value, a warning with
    /// a displayed and a debugged value, and an error whose field name is a keyword and whose value
    /// has quotes and a backslash.
    pub fn ordinary_events() {
        tracing::info!(target: "audit", user = "a@x.test", allowed = true, count = 3_u64, delta = -2_i64, sha256 = %"ab12", "asset served");
        tracing::warn!(error = %"cannot read", path = ?std::path::Path::new("/x/y.yaml"), "skipped a file");
        tracing::error!(r#type = "quoted \"value\" with \\", "odd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_scans_agree_with_their_definitions() {
        let every_byte: Vec<u8> = (0..=255).collect();
        for b in every_byte {
            let printable_by_definition = (b' '..=b'~').contains(&b);
            assert_eq!(printable_ascii(b), printable_by_definition, "{b}");
            if b.is_ascii() {
                let text = format!("{:>40}{}", "padding that is plain", char::from(b));
                let plain_by_definition = printable_by_definition && b != b'"' && b != b'\\';
                assert_eq!(plain(&text), plain_by_definition, "{b}");
            }
        }
        assert!(!plain("caf\u{e9}"));
        assert!(plain(""));
    }
}
