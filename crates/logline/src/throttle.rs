//! Warnings that a peer can cause once per request (a Redis that is down, a forged value planted in
//! it) are logged at most once per interval, with the count of those held back: the log stays
//! readable, and cannot be flooded, while the metric beside each warning counts every occurrence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled warning may be logged.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// When a warning was last logged and how many were held back since.
#[derive(Debug, Default)]
pub struct Throttle(Mutex<(Option<Instant>, u64)>);

impl Throttle {
    /// `Some(held back since the last one)` when the warning is to be logged now; `None` when it is
    /// held back (and counted).
    pub fn due(&self) -> Option<u64> {
        let mut state = self.0.lock().ok()?;
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < WARNING_INTERVAL => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = state.1;
                *state = (Some(now), 0);
                Some(held_back)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_warning_is_logged_and_the_next_ones_are_counted() {
        let throttle = Throttle::default();
        assert_eq!(throttle.due(), Some(0));
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        // An interval later the next one is logged, with the two held back.
        if let Ok(mut state) = throttle.0.lock() {
            state.0 = Instant::now().checked_sub(WARNING_INTERVAL);
        }
        assert_eq!(throttle.due(), Some(2));
        assert_eq!(throttle.due(), None);
    }
}
