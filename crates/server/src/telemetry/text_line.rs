//! The text log line when stderr is not a terminal: the same layout as `tracing-subscriber`'s default
//! format without colours (`2026-12-01T13:45:41.630408Z  INFO audit: asset served user="…" …`),
//! written straight into the line buffer instead of through `nu-ansi-term` styles and one `write!`
//! per field. Every call writes an audit line, and the general-purpose formatter was the largest
//! single cost of a cached download (a profile of the REST path put it at an eighth of the process's
//! instructions).
//!
//! One difference on purpose: every value is written with control characters escaped (`\n`, `\r`,
//! `\t`, `\u{1b}`…, and U+2028 and U+2029), including `%display` values and the message, which the default formatter writes
//! raw. A value that came from a hostile file or header therefore cannot start a forged log line.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level};
use tracing_log::NormalizeEvent as _;

use super::log_line::{plain, printable, write_timestamp};

/// Writes one event as a text line.
pub(super) fn format_line(out: &mut String, event: &Event<'_>) -> fmt::Result {
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

/// Whether a character is written as an escape: control characters, and the line and paragraph
/// separators (U+2028, U+2029), which some log viewers and JavaScript-based tools take for line ends.
fn escaped_char(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
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
        while let Some(at) = rest.find(escaped_char) {
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
        if escaped_char(c) {
            self.write_str(c.encode_utf8(&mut [0; 4]))
        } else {
            self.out.push(c);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::log_line::LineFormat;
    use super::super::log_line::capture::{formatted_twice, ordinary_events};

    /// Drops the timestamp (the two formatters read the clock at different instants).
    fn untimed(line: &str) -> &str {
        line.split_once(' ').map_or(line, |(_, rest)| rest)
    }

    #[test]
    fn ordinary_lines_are_the_default_format_without_colours() {
        let (ours, theirs) = formatted_twice(LineFormat::Text, || {
            ordinary_events();
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
        let (ours, _) = formatted_twice(LineFormat::Text, || tracing::info!("x"));
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
    fn no_value_can_break_the_line() {
        let forged = "x\n2026-12-01T00:00:00.000000Z  INFO audit: asset served user=\"admin\"";
        let (ours, _) = formatted_twice(LineFormat::Text, || {
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

    #[test]
    fn line_and_paragraph_separators_are_escaped() {
        let (ours, _) = formatted_twice(LineFormat::Text, || {
            tracing::info!(target: "audit", shown = %"a\u{2028}b", quoted = "c\u{2029}d", "m\u{2028}n");
        });
        assert!(!ours.contains(['\u{2028}', '\u{2029}']), "{ours}");
        assert!(ours.contains("m\\u{2028}n"), "{ours}");
        assert!(ours.contains("shown=a\\u{2028}b"), "{ours}");
        assert!(ours.contains("quoted=\"c\\u{2029}d\""), "{ours}");
    }
}
