//! The timestamp every log line starts with, in both formats.

use std::fmt::Write as _;

/// `2026-12-01T13:45:41.630408Z` (RFC 3339, microseconds, UTC): the date and time of day are
/// formatted once a second per thread, the microseconds on every line.
pub(super) fn write(out: &mut String) {
    thread_local! {
        /// The second last formatted on this thread, and its text up to the fraction's dot.
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let since_epoch = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let written = SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != seconds {
            let text = humantime::format_rfc3339_seconds(now).to_string();
            if text.len() != 20 {
                // Outside years 0000-9999: no fast path.
                return false;
            }
            prefix.clear();
            prefix.push_str(&text[..19]);
            prefix.push('.');
            *cached = seconds;
        }
        out.push_str(prefix);
        true
    });
    if !written {
        let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
        return;
    }
    // The microseconds, digit by digit (ASCII: no UTF-8 check of a buffer).
    let micros = since_epoch.subsec_micros();
    for place in [100_000, 10_000, 1_000, 100, 10, 1] {
        out.push(char::from(b'0' + (micros / place % 10) as u8));
    }
    out.push('Z');
}
