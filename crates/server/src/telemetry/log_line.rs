//! Log lines written straight into a line buffer of the thread that logs, in either format
//! (`text_line`, `json_line`): the one [`FormatEvent`] the log layer uses, and the buffer. The formats
//! import nothing from here outside their tests (their shared timestamp is in `timestamp`), so the
//! modules form no circle.

use std::fmt;

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

/// What a test's log layers wrote: an in-memory writer, and a way to run events through two formatters.
#[cfg(test)]
pub(super) mod capture {
    /// Collects every line written to it (clones share the buffer).
    #[derive(Clone, Default)]
    pub struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Sink {
        /// Everything written so far.
        pub fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

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
        (ours.text(), their_sink.text())
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
