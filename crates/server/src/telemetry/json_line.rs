//! The JSON log line (`--log-format json`): the object `tracing-subscriber`'s JSON formatter writes
//! with flattened event fields and no spans — `{"timestamp":"…","level":"INFO","message":"…",<the
//! other fields in order>,"target":"audit"}` — byte for byte, written straight into the line buffer.
//! The library formatter goes through `serde_json`'s serializer one small write at a time and formats
//! every `%display` value into a new `String` first; with an audit line per call, that made a cached
//! download cost about a quarter more CPU in JSON than in text.
//!
//! Strings that need escaping (`"`, `\`, control characters below U+0020) are escaped by `serde_json`,
//! so no value, whatever a hostile file or header put in it, can end the line or the object.

use std::fmt::{self, Write as _};

use tracing::Event;
use tracing::field::{Field, Visit};
use tracing_log::NormalizeEvent as _;

use super::timestamp;

/// Writes one event as a JSON line.
pub(super) fn format_line(out: &mut String, event: &Event<'_>) -> fmt::Result {
    let normalized = event.normalized_metadata();
    let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
    out.push_str("{\"timestamp\":\"");
    timestamp::write(out);
    out.push_str("\",\"level\":\"");
    out.push_str(metadata.level().as_str());
    out.push('"');
    let mut fields = Fields {
        out,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    out.push_str(",\"target\":");
    quoted(out, metadata.target());
    out.push_str("}\n");
    Ok(())
}

/// `text` as a JSON string (no formatting machinery: keys and most values are plain strings).
pub(super) fn quoted(out: &mut String, text: &str) {
    out.push('"');
    Escaping { out: &mut *out }.escape(text);
    out.push('"');
}

/// A formatted `value` as a JSON string.
fn quoted_fmt(out: &mut String, value: fmt::Arguments<'_>) -> fmt::Result {
    out.push('"');
    Escaping { out: &mut *out }.write_fmt(value)?;
    out.push('"');
    Ok(())
}

/// Writes an event's fields as `,"name":value`, in the order they were recorded.
struct Fields<'w> {
    out: &'w mut String,
    result: fmt::Result,
}

impl Fields<'_> {
    /// Writes `,"name":` and says whether the value should follow.
    fn key(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        self.out.push(',');
        quoted(self.out, field.name());
        self.out.push(':');
        true
    }

    fn raw(&mut self, field: &Field, text: &str) {
        if self.key(field) {
            self.out.push_str(text);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            quoted(self.out, value);
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

    fn record_f64(&mut self, field: &Field, value: f64) {
        // As serde_json writes a float: the shortest text that reads back the same, `null` when
        // it is not finite. Rare enough that the allocation does not matter.
        let text = serde_json::to_string(&value).unwrap_or_else(|_| "null".to_owned());
        self.raw(field, &text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = quoted_fmt(self.out, format_args!("{value:?}"));
        }
    }
}

/// Passes text through escaped for the inside of a JSON string.
struct Escaping<'w> {
    out: &'w mut String,
}

impl Escaping<'_> {
    fn escape(&mut self, text: &str) {
        // Nearly every value is printable ASCII without quotes or backslashes: one pass, one write.
        if plain(text) {
            self.out.push_str(text);
            return;
        }
        // The rare rest is escaped by serde_json itself (a string always serializes). JSON lets DEL,
        // the C1 controls, the line and paragraph separators and the bidirectional formatting
        // characters stand as they are; they are escaped too (`\u202e`), as the text format escapes
        // them: a line shown in a terminal reads in the order it was written, and a parser gets the
        // same string back.
        let quoted = serde_json::to_string(text).unwrap_or_default();
        let inner = quoted
            .get(1..quoted.len().saturating_sub(1))
            .unwrap_or_default();
        for c in inner.chars() {
            if kubeconfig_logline::escaped_char(c) {
                // Every such character is in the Basic Multilingual Plane: one `\uXXXX` each.
                let _ = write!(self.out, "\\u{:04x}", u32::from(c));
            } else {
                self.out.push(c);
            }
        }
    }
}

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.escape(text);
        Ok(())
    }
}

/// Whether a string prints the same in Rust's debug form (quoted) as raw between quotes — and, the
/// same condition, as a JSON string.
fn plain(value: &str) -> bool {
    // A fold without an early exit, which the compiler turns into a few vector instructions per 16
    // or 32 bytes; `all` tests one byte at a time, which was a quarter of the audit line's formatting.
    value.bytes().fold(true, |plain, b| {
        plain & printable_ascii(b) & (b != b'"') & (b != b'\\')
    })
}

#[inline(always)]
fn printable_ascii(b: u8) -> bool {
    b.wrapping_sub(b' ') < b'~' - b' ' + 1
}

#[cfg(test)]
mod tests {
    use super::super::log_line::LineFormat;
    use super::super::log_line::capture::{formatted_twice, ordinary_events};
    use super::{plain, printable_ascii};

    /// Drops the timestamp's value (the two formatters read the clock at different instants).
    fn untimed(line: &str) -> String {
        let (start, rest) = line.split_once("\"timestamp\":\"").expect(line);
        let (_, rest) = rest.split_once('"').expect(line);
        format!("{start}{rest}")
    }

    #[derive(Debug)]
    struct Failure;
    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("outer \"failure\"")
        }
    }
    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&std::fmt::Error)
        }
    }

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

    #[test]
    fn lines_are_the_library_json_format() {
        let every_control: String = (0_u8..0x20).chain([0x7f]).map(char::from).collect();
        let (ours, theirs) = formatted_twice(LineFormat::Json, || {
            ordinary_events();
            tracing::info!(
                half = 1.5_f64,
                tiny = 1e-300_f64,
                nan = f64::NAN,
                inf = f64::INFINITY,
                big = 1_u128 << 100,
                neg = -5_i128,
                "numbers"
            );
            tracing::info!(controls = every_control.as_str(), shown = %every_control, unicode = "caf\u{e9} \u{1F600} \u{2028} \u{202e}reversed\u{2066}\u{85}\u{61c}", "strings");
            let failure = Failure;
            tracing::error!(
                error = &failure as &(dyn std::error::Error + 'static),
                "an error"
            );
            tracing::info!(target: "weird \"target\"", "message with\na newline");
            tracing::info!(empty = "", "");
        });
        for line in ours.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect(line);
        }
        let ours: Vec<String> = ours.lines().map(untimed).collect();
        let theirs: Vec<String> = theirs.lines().map(untimed).collect();
        assert_eq!(ours.len(), 8, "{ours:?}");
        // (An untimed line starts `{,`.)
        let parsed = |line: &str| {
            serde_json::from_str::<serde_json::Value>(&line.replacen("{,", "{", 1)).expect(line)
        };
        for (ours, theirs) in ours.iter().zip(&theirs) {
            // The same object, in the same bytes but for the characters this format escapes and the
            // library's leaves as they are; none of those is left raw.
            assert_eq!(parsed(ours), parsed(theirs));
            if !theirs.chars().any(kubeconfig_logline::escaped_char) {
                assert_eq!(ours, theirs);
            }
            assert!(
                !ours.chars().any(kubeconfig_logline::escaped_char),
                "{ours}"
            );
        }
        assert!(ours.iter().any(|line| line.contains("\\u202e")), "{ours:?}");
        assert_eq!(ours.len(), theirs.len());
    }

    #[test]
    fn the_timestamp_is_rfc3339_with_microseconds() {
        let (ours, theirs) = formatted_twice(LineFormat::Json, || tracing::info!("x"));
        let stamp = |line: &str| line[14..].split_once('"').unwrap().0.to_owned();
        assert!(ours.starts_with("{\"timestamp\":\""), "{ours}");
        assert_eq!(stamp(&ours).len(), stamp(&theirs).len(), "{ours} {theirs}");
        humantime::parse_rfc3339(&stamp(&ours)).expect(&ours);
    }

    #[test]
    fn no_value_can_break_the_line_or_the_object() {
        let forged = "x\"}\n{\"timestamp\":\"2026-12-01T00:00:00.000000Z\",\"level\":\"INFO\",\"message\":\"asset served\",\"user\":\"admin\"";
        let (ours, _) = formatted_twice(LineFormat::Json, || {
            tracing::info!(target: "audit", name = %forged, path = forged, "message with\na newline");
        });
        assert_eq!(ours.lines().count(), 1, "{ours}");
        let line: serde_json::Value = serde_json::from_str(&ours).expect(&ours);
        assert_eq!(line["name"], forged);
        assert_eq!(line["path"], forged);
        assert!(line.get("user").is_none(), "{ours}");
    }
}
