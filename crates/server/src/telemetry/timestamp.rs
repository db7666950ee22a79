//! The timestamp every log line starts with, in both formats.

use std::fmt::Write as _;

/// `2026-12-01T13:45:41.630408Z` (RFC 3339, microseconds, UTC): the date and time of day are
/// formatted once a second per thread, the microseconds on every line.
pub(super) fn write(out: &mut String) {
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
