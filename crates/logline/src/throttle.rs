//! Warnings that a peer can cause once per request (a Redis that is down, a forged value planted in
//! it) are logged at most once per interval, with the count of those held back: the log stays
//! readable, and cannot be flooded, while the metric beside each warning counts every occurrence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a throttled warning may be logged.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// When a warning was last logged, how many were held back since, and the interval it keeps.
#[derive(Debug)]
pub struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
    interval: Duration,
}

impl Default for Throttle {
    /// Once per [`WARNING_INTERVAL`].
    fn default() -> Self {
        Throttle::every(WARNING_INTERVAL)
    }
}

impl Throttle {
    /// At most once per `interval`.
    pub fn every(interval: Duration) -> Self {
        Throttle {
            state: Mutex::new((None, 0)),
            interval,
        }
    }

    /// `Some(held back since the last one)` when the warning is to be logged now; `None` when it is
    /// held back (and counted).
    pub fn due(&self) -> Option<u64> {
        let mut state = self.state.lock().ok()?;
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
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

    /// Whether nothing is being held back now: none was since the last warning, or its interval is
    /// over. (A line that ends what the warning began — "available again" — is written only then,
    /// so that a flapping peer does not get one line per flap.)
    pub fn quiet(&self) -> bool {
        self.state.lock().map_or(true, |state| {
            state.1 == 0 || state.0.is_none_or(|at| at.elapsed() >= self.interval)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_warning_is_logged_and_the_next_ones_are_counted() {
        let throttle = Throttle::default();
        assert!(throttle.quiet());
        assert_eq!(throttle.due(), Some(0));
        assert!(throttle.quiet(), "nothing held back yet");
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        // An interval later the next one is logged, with the two held back.
        assert!(!throttle.quiet());
        if let Ok(mut state) = throttle.state.lock() {
            state.0 = Instant::now().checked_sub(WARNING_INTERVAL);
        }
        assert!(throttle.quiet());
        assert_eq!(throttle.due(), Some(2));
        assert_eq!(throttle.due(), None);
        assert!(!throttle.quiet());
    }
}
