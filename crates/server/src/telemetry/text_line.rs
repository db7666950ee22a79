//! The text log line when stderr is not a terminal: the same layout as `tracing-subscriber`'s default
//! format without colours (`2026-12-01T13:45:41.630408Z  INFO audit: asset served user="…" …`),
//! written straight into the line buffer instead of through `nu-ansi-term` styles and one `write!`
//! per field. Every call writes an audit line, and the general-purpose formatter was the largest
//! single cost of a cached download (a profile of the REST path put it at an eighth of the process's
//! instructions).
//!
//! One difference on purpose: every value is written with control characters escaped (`\n`, `\r`,
//! `\t`, `\u{1b}`…), including `%display` values and the message, which the default formatter writes
//! raw. A value that came from a hostile file or header therefore cannot start a forged log line.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The [`FormatEvent`] of plain text log lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
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
        write_line(writer, |line| format_line(line, event))
    }
}

/// Builds a line with `format` in a buffer of this thread, where every piece is an inlined append,
/// and hands it to the writer in one call (not a dynamically dispatched call per piece). Shared by
/// the text and JSON lines.
pub(super) fn write_line(
    mut writer: Writer<'_>,
    format: impl Fn(&mut String) -> fmt::Result,
) -> fmt::Result {
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

fn format_line(out: &mut String, event: &Event<'_>) -> fmt::Result {
    let normalized = event.normalized_metadata();
    let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
    write_timestamp(out);
    out.push(' ');
    out.push_str(level(*metadata.level()));
    out.push(' ');
    out.push_str(metadata.target());
    out.push_str(": ");
    let mut fields = Fields {
        out,
        first: true,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    out.push('\n');
    Ok(())
}

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

fn level(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// Writes an event's fields: the message as is, then `name=value` separated by spaces.
struct Fields<'w> {
    out: &'w mut String,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// Starts a field: the separating space, then `name=` unless it is the message. `None` for the
    /// fields a `log` record carries as metadata (already in the line's target).
    fn start(&mut self, field: &Field) -> Option<bool> {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return None;
        }
        if !std::mem::take(&mut self.first) {
            self.out.push(' ');
        }
        if name == "message" {
            return Some(true);
        }
        self.out.push_str(name.strip_prefix("r#").unwrap_or(name));
        self.out.push('=');
        Some(false)
    }

    /// A field whose text needs no quoting or escaping (numbers, booleans).
    fn raw(&mut self, field: &Field, text: &str) {
        if self.start(field).is_some() {
            self.out.push_str(text);
        }
    }

    fn escaped(&mut self, value: fmt::Arguments<'_>) {
        self.result = self.result.and_then(|()| {
            Escaping {
                out: &mut *self.out,
            }
            .write_fmt(value)
        });
    }
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

/// Whether every byte is printable ASCII (no control character, nothing beyond ASCII).
fn printable(text: &str) -> bool {
    text.bytes()
        .fold(true, |printable, b| printable & printable_ascii(b))
}

#[inline(always)]
fn printable_ascii(b: u8) -> bool {
    b.wrapping_sub(b' ') < b'~' - b' ' + 1
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match self.start(field) {
            None => {}
            Some(true) => self.escaped(format_args!("{value}")),
            Some(false) if plain(value) => {
                self.out.push('"');
                self.out.push_str(value);
                self.out.push('"');
            }
            // Quoted and escaped exactly as the default formatter does.
            Some(false) => self.escaped(format_args!("{value:?}")),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, if value { "true" } else { "false" });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, itoa::Buffer::new().format(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.start(field).is_some() {
            self.escaped(format_args!("{value}"));
            let mut source = value.source();
            if source.is_some() {
                self.escaped(format_args!(" {}.sources=[", field.name()));
                let mut first = true;
                while let Some(error) = source {
                    let separator = if std::mem::take(&mut first) { "" } else { ", " };
                    self.escaped(format_args!("{separator}{error}"));
                    source = error.source();
                }
                self.escaped(format_args!("]"));
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.start(field).is_some() {
            self.escaped(format_args!("{value:?}"));
        }
    }
}

/// Passes text through with control characters written as escapes, so that no value can end the
/// line it is on (or colour a terminal that shows the log).
struct Escaping<'w> {
    out: &'w mut String,
}

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Nearly every value is printable ASCII: one pass over the bytes, one write.
        if printable(text) {
            return self.out.write_str(text);
        }
        let mut rest = text;
        while let Some(at) = rest.find(|c: char| c.is_control()) {
            self.out.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().unwrap_or('\0');
            match control {
                '\n' => self.out.write_str("\\n")?,
                '\r' => self.out.write_str("\\r")?,
                '\t' => self.out.write_str("\\t")?,
                other => write!(self.out, "\\u{{{:x}}}", u32::from(other))?,
            }
            rest = &rest[at + control.len_utf8()..];
        }
        self.out.write_str(rest)
    }

    fn write_char(&mut self, c: char) -> fmt::Result {
        if c.is_control() {
            self.write_str(c.encode_utf8(&mut [0; 4]))
        } else {
            self.out.push(c);
            Ok(())
        }
    }
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

    /// Runs `emit` under the subscriber `layers` builds from two sinks (ours, theirs) and returns
    /// what each received.
    pub fn formatted_twice<S>(
        layers: impl FnOnce(Sink, Sink) -> S,
        emit: impl Fn(),
    ) -> (String, String)
    where
        S: tracing::Subscriber + Send + Sync + 'static,
    {
        let ours = Sink::default();
        let theirs = Sink::default();
        tracing::subscriber::with_default(layers(ours.clone(), theirs.clone()), emit);
        let text = |sink: Sink| String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        (text(ours), text(theirs))
    }
}

#[cfg(test)]
mod tests {
    use super::capture::formatted_twice;
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// The lines `emit` logs, formatted by [`TextLine`] and by the default formatter without colours.
    fn both(emit: impl Fn()) -> (String, String) {
        formatted_twice(
            |ours, theirs| {
                tracing_subscriber::registry()
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_ansi(false)
                            .event_format(TextLine)
                            .with_writer(ours),
                    )
                    .with(
                        tracing_subscriber::fmt::layer()
                            .with_ansi(false)
                            .with_writer(theirs),
                    )
            },
            emit,
        )
    }

    /// Drops the timestamp (the two formatters read the clock at different instants).
    fn untimed(line: &str) -> &str {
        line.split_once(' ').map_or(line, |(_, rest)| rest)
    }

    #[test]
    fn ordinary_lines_are_the_default_format_without_colours() {
        let (ours, theirs) = both(|| {
            tracing::info!(target: "audit", user = "a@x.test", allowed = true, count = 3_u64, delta = -2_i64, sha256 = %"ab12", "asset served");
            tracing::warn!(error = %"cannot read", path = ?std::path::Path::new("/x/y.yaml"), "skipped a file");
            tracing::error!(r#type = "quoted \"value\" with \\", "odd");
            tracing::debug!(n = 1.5_f64, "unfiltered here");
        });
        let ours: Vec<&str> = ours.lines().map(untimed).collect();
        let theirs: Vec<&str> = theirs.lines().map(untimed).collect();
        assert_eq!(ours, theirs);
        assert_eq!(ours.len(), 4, "{ours:?}");
        assert!(ours[0].starts_with(" INFO audit: asset served user=\"a@x.test\" allowed=true"));
    }

    #[test]
    fn the_timestamp_is_rfc3339_with_microseconds() {
        let (ours, _) = both(|| tracing::info!("x"));
        let stamp = ours.split_once(' ').unwrap().0;
        assert_eq!(stamp.len(), "2026-12-01T13:45:41.630408Z".len(), "{stamp}");
        let logged = humantime::parse_rfc3339(stamp).expect(stamp);
        let off = std::time::SystemTime::now()
            .duration_since(logged)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < std::time::Duration::from_secs(5),
            "{stamp} is {off:?} off"
        );
    }

    #[test]
    fn the_byte_scans_agree_with_their_definitions() {
        let every_byte: Vec<u8> = (0..=255).collect();
        for b in every_byte {
            let printable_by_definition = (b' '..=b'~').contains(&b);
            assert_eq!(printable_ascii(b), printable_by_definition, "{b}");
            if b.is_ascii() {
                let text = format!("{:>40}{}", "padding that is plain", char::from(b));
                assert_eq!(printable(&text), printable_by_definition, "{b}");
                let plain_by_definition = printable_by_definition && b != b'"' && b != b'\\';
                assert_eq!(plain(&text), plain_by_definition, "{b}");
            }
        }
        assert!(!printable("caf\u{e9}") && !plain("caf\u{e9}"));
        assert!(printable("") && plain(""));
    }

    #[test]
    fn no_value_can_break_the_line() {
        let forged = "x\n2026-12-01T00:00:00.000000Z  INFO audit: asset served user=\"admin\"";
        let (ours, _) = both(|| {
            tracing::info!(target: "audit", name = %forged, path = forged, "message with\na newline and \u{1b}[31m");
        });
        assert_eq!(ours.lines().count(), 1, "{ours}");
        assert!(ours.contains("name=x\\n2026"), "{ours}");
        assert!(ours.contains("path=\"x\\n2026"), "{ours}");
        assert!(
            ours.contains("message with\\na newline and \\u{1b}[31m"),
            "{ours}"
        );
    }
}
