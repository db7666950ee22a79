//! The text log line when stderr is not a terminal: the same layout as `tracing-subscriber`'s default
//! format without colours (`2026-12-01T13:45:41.630408Z  INFO audit: asset served user="…" …`),
//! written straight into the line buffer instead of through `nu-ansi-term` styles and one `write!`
//! per field. Every call writes an audit line, and the general-purpose formatter was the largest
//! single cost of a cached download (a profile of the REST path put it at an eighth of the process's
//! instructions).
//!
//! The fields follow the one rule of both binaries' text logs ([`kubeconfig_logline`]): a value is
//! quoted when it is empty or holds a space, `:`, `=`, `"` or `\`, whatever its type, and control
//! characters are always escaped, including in `%display` values and the message. A value that came
//! from a hostile file or header therefore cannot start a forged log line or pass for another field.

use std::fmt;

use tracing::{Event, Level};
use tracing_log::NormalizeEvent as _;

use super::timestamp;

/// Writes one event as a text line.
pub(super) fn format_line(out: &mut String, event: &Event<'_>) -> fmt::Result {
    let normalized = event.normalized_metadata();
    let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
    timestamp::write(out);
    out.push(' ');
    out.push_str(level(*metadata.level()));
    out.push(' ');
    out.push_str(metadata.target());
    out.push_str(": ");
    event.record(&mut kubeconfig_logline::Line::new(out));
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
        assert!(ours[0].starts_with(" INFO audit: asset served user=a@x.test allowed=true"));
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
        assert!(ours.contains("name=\"x\\n2026"), "{ours}");
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
        assert!(ours.contains("quoted=c\\u{2029}d"), "{ours}");
    }
}
