//! How kubeconfigd and kubeconfig-agent write a value in a text log line (`name=value`): one rule for
//! every value, whatever its type or how it was recorded. A value is written as it is unless it is
//! empty or holds a space, `:`, `=`, `"` or `\`; then it is quoted, with `"` and `\` escaped. Control
//! characters, the line and paragraph separators (U+2028, U+2029) and the bidirectional formatting
//! characters (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069) are always escaped (`\n`, `\u{1b}`,
//! `\u{202e}`…), so a value from a hostile file or header can neither end its line, nor pass for
//! another field, nor make a terminal show its line in another order than it was written; and the
//! same field looks the same in every line. [`Fields`] writes an event's fields by this
//! rule for `tracing-subscriber`'s fmt layer. [`Throttle`] decides when a warning that a peer can cause
//! on every request may be written (at most once per interval, with the count held back).

use std::fmt::{self, Write as _};

mod throttle;
pub use throttle::{Throttle, WARNING_INTERVAL};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Whether `value` is written quoted.
pub fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value
            .bytes()
            .any(|b| matches!(b, b' ' | b':' | b'=' | b'"' | b'\\'))
}

/// Whether a character is always written as an escape: control characters, the line and paragraph
/// separators and the bidirectional formatting characters (the JSON log format escapes the same ones).
pub fn escaped_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// In [`BYTE_CLASS`]: a value holding this byte is quoted.
const QUOTED: u8 = 1;
/// In [`BYTE_CLASS`]: a value holding this byte is written character by character (escapes, or a
/// byte of a multi-byte character, which may be a control character or a separator).
const ESCAPED: u8 = 2;

/// What each byte asks of a value that holds it ([`QUOTED`], [`ESCAPED`]).
const BYTE_CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if matches!(byte, b' ' | b':' | b'=') {
            class[b] = QUOTED;
        } else if matches!(byte, b'"' | b'\\') {
            class[b] = QUOTED | ESCAPED;
        } else if byte < b' ' || byte > b'~' {
            class[b] = ESCAPED;
        }
        b += 1;
    }
    class
};

/// Appends `value` by the rule: as it is, or quoted; control characters escaped either way.
pub fn write_value(out: &mut String, value: &str) {
    // One pass over the bytes, one table look-up each: does the value need quotes, and is it
    // printable ASCII without `"` or `\` (written in one piece)?
    let class = value
        .bytes()
        .fold(0, |class, b| class | BYTE_CLASS[usize::from(b)]);
    let special = class & QUOTED != 0;
    let simple = class & ESCAPED == 0;
    let quoted = special || value.is_empty();
    if simple {
        if quoted {
            out.push('"');
            out.push_str(value);
            out.push('"');
        } else {
            out.push_str(value);
        }
        return;
    }
    write_by_characters(out, value, quoted);
}

/// The rule applied character by character: quoted or not as told, escapes where needed.
fn write_by_characters(out: &mut String, value: &str, quoted: bool) {
    if quoted {
        out.push('"');
    }
    for c in value.chars() {
        if quoted && matches!(c, '"' | '\\') {
            out.push('\\');
            out.push(c);
        } else {
            push_escaped(out, c);
        }
    }
    if quoted {
        out.push('"');
    }
}

/// Appends a message: never quoted, control characters escaped.
pub fn write_message(out: &mut String, message: &str) {
    for c in message.chars() {
        push_escaped(out, c);
    }
}

/// Appends one character, as an escape when it is a control character or a line separator.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if escaped_char(c) => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// Writes the fields of one event or span into a line: the message first as it is, then
/// `name=value` by the rule, separated by spaces.
#[derive(Debug)]
pub struct Line<'a> {
    out: &'a mut String,
    scratch: String,
    first: bool,
}

impl<'a> Line<'a> {
    pub fn new(out: &'a mut String) -> Self {
        Line {
            out,
            scratch: String::new(),
            first: true,
        }
    }

    /// Starts a field; `None` for the fields a `log` record carries as metadata.
    fn start(&mut self, field: &Field) -> Option<bool> {
        let name = field.name();
        if name.starts_with("log.") {
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

    fn text(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let Some(message) = self.start(field) else {
            return;
        };
        self.scratch.clear();
        let _ = self.scratch.write_fmt(value);
        if message {
            write_message(self.out, &self.scratch);
        } else {
            write_value(self.out, &self.scratch);
        }
    }
}

impl Visit for Line<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match self.start(field) {
            None => {}
            Some(true) => write_message(self.out, value),
            Some(false) => write_value(self.out, value),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.start(field).is_some() {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.text(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.text(field, format_args!("{value}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, format_args!("{value}"));
        let mut sources = Vec::new();
        let mut source = value.source();
        while let Some(error) = source {
            sources.push(error.to_string());
            source = error.source();
        }
        if !sources.is_empty() {
            self.out.push(' ');
            self.out.push_str(field.name());
            self.out.push_str(".sources=");
            write_value(self.out, &format!("[{}]", sources.join(", ")));
        }
    }

    /// `%display` and `?debug` values alike: the text they format to, by the rule.
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, format_args!("{value:?}"));
    }
}

/// [`Line`] as `tracing-subscriber`'s field formatter: `.fmt_fields(Fields)` on a fmt layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields;

impl<'writer> FormatFields<'writer> for Fields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut out = String::new();
        fields.record(&mut Line::new(&mut out));
        writer.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> String {
        let mut out = String::new();
        write_value(&mut out, text);
        out
    }

    #[test]
    fn one_rule_for_every_value() {
        assert_eq!(value("prod-east.kubeconfig"), "prod-east.kubeconfig");
        assert_eq!(value("acme-demo"), "acme-demo");
        assert_eq!(value(""), "\"\"");
        assert_eq!(value("two words"), "\"two words\"");
        assert_eq!(value("http://127.0.0.1:1"), "\"http://127.0.0.1:1\"");
        assert_eq!(value("a=b"), "\"a=b\"");
        assert_eq!(value("say \"hi\" \\o/"), "\"say \\\"hi\\\" \\\\o/\"");
        assert_eq!(value("x\ny"), "x\\ny");
        assert_eq!(value("m\u{2028}n\u{1b}"), "m\\u{2028}n\\u{1b}");
        // A right-to-left override would show the rest of the line reversed in a terminal.
        assert_eq!(value("a\u{202e}b\u{2066}c"), "a\\u{202e}b\\u{2066}c");
        // The Arabic letter mark is a bidirectional formatting character too.
        assert_eq!(value("a\u{61c}b"), "a\\u{61c}b");
    }

    /// The rule with no fast path: whether to quote decided per character, then every character
    /// written by the escaping path.
    fn by_characters(value: &str) -> String {
        let quoted = value.is_empty()
            || value
                .chars()
                .any(|c| matches!(c, ' ' | ':' | '=' | '"' | '\\'));
        let mut out = String::new();
        write_by_characters(&mut out, value, quoted);
        out
    }

    #[test]
    fn the_byte_table_says_what_the_rule_says_for_every_character() {
        let characters = (0..=0x7f_u32)
            .chain([
                0x80, 0x85, 0xa0, 0xe9, 0x61c, 0x200e, 0x200f, 0x2028, 0x2029, 0x202a, 0x202e,
                0x2066, 0x2069, 0xfeff, 0x1f600,
            ])
            .filter_map(char::from_u32);
        for c in characters {
            for value in [c.to_string(), format!("ab{c}"), format!("{c}{c}-x.y_z@w")] {
                assert_eq!(value_of(&value), by_characters(&value), "{value:?}");
            }
        }
    }

    fn value_of(text: &str) -> String {
        let mut out = String::new();
        write_value(&mut out, text);
        out
    }

    #[test]
    fn a_value_cannot_pass_for_another_field_or_line() {
        let mut out = String::new();
        let forged = "x user=\"admin\"\n2026-12-01T00:00:00Z INFO forged";
        write_value(&mut out, forged);
        assert!(!out.contains('\n'), "{out}");
        assert!(out.starts_with('"') && out.ends_with('"'), "{out}");
        assert!(out.contains("user=\\\"admin\\\""), "{out}");
    }

    #[test]
    fn the_fmt_layer_writes_fields_by_the_rule() {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::Error::other("poisoned"))?
                    .extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(Fields)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reason = "cannot connect to http://127.0.0.1:1: refused";
            tracing::warn!(asset = "kubeconfig", file = %"prod-east.kubeconfig", %reason, n = 3, "watch interrupted");
        });
        let line = String::from_utf8(sink.0.lock().expect("lock").clone()).expect("utf8");
        assert!(
            line.contains("watch interrupted asset=kubeconfig file=prod-east.kubeconfig reason=\"cannot connect to http://127.0.0.1:1: refused\" n=3"),
            "{line}"
        );
    }
}
