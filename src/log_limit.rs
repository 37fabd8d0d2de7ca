//! Rate limiting of repeated log lines: a line of one kind is logged at most once per
//! interval; the lines suppressed meanwhile are counted and the count goes out with the
//! next line of that kind that is logged. One limiter per source (an iSCSI path, say), so
//! one flapping source cannot hide another's lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a line of one kind may be logged by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Most kinds of line one limiter tracks; past that, new kinds are always logged (kinds are
/// static strings in the code, so there are only a handful).
const MAX_KINDS: usize = 32;

struct Kind {
    key: &'static str,
    last_logged: Instant,
    suppressed: u64,
}

/// Decides which repeated log lines to write.
pub struct LogLimiter {
    interval: Duration,
    kinds: Mutex<Vec<Kind>>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(DEFAULT_INTERVAL)
    }
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            kinds: Mutex::new(Vec::new()),
        }
    }

    /// Whether a line of kind `key` may be logged now: `Some` with the lines of that kind
    /// suppressed since the last one logged, or `None` when this one is suppressed.
    pub fn check(&self, key: &'static str) -> Option<Suppressed> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &'static str, now: Instant) -> Option<Suppressed> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        match kinds.iter_mut().find(|k| k.key == key) {
            Some(k) if now.saturating_duration_since(k.last_logged) < self.interval => {
                k.suppressed = k.suppressed.saturating_add(1);
                None
            }
            Some(k) => {
                k.last_logged = now;
                Some(Suppressed(std::mem::take(&mut k.suppressed)))
            }
            None => {
                if kinds.len() < MAX_KINDS {
                    kinds.push(Kind {
                        key,
                        last_logged: now,
                        suppressed: 0,
                    });
                }
                Some(Suppressed(0))
            }
        }
    }
}

/// How many lines like this one were suppressed before it; displays as nothing when none
/// were, so it can end any message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            0 => Ok(()),
            n => write!(f, " ({n} more like this suppressed)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_line_of_a_kind_is_logged() {
        let l = LogLimiter::new(SECOND);
        let t = Instant::now();
        assert_eq!(l.check_at("a", t), Some(Suppressed(0)));
        assert_eq!(l.check_at("b", t), Some(Suppressed(0)));
    }

    #[test]
    fn repeats_within_the_interval_are_counted_and_reported_with_the_next_line() {
        let l = LogLimiter::new(SECOND);
        let t = Instant::now();
        assert!(l.check_at("lost", t).is_some());
        for i in 1..=1000 {
            assert_eq!(l.check_at("lost", t + Duration::from_micros(i)), None);
        }
        assert_eq!(l.check_at("lost", t + SECOND), Some(Suppressed(1000)));
        // The count starts again after it was reported.
        assert_eq!(l.check_at("lost", t + SECOND + SECOND / 2), None);
        assert_eq!(l.check_at("lost", t + 3 * SECOND), Some(Suppressed(1)));
        assert_eq!(l.check_at("lost", t + 5 * SECOND), Some(Suppressed(0)));
    }

    #[test]
    fn kinds_are_limited_independently() {
        let l = LogLimiter::new(SECOND);
        let t = Instant::now();
        assert!(l.check_at("lost", t).is_some());
        assert!(l.check_at("up", t).is_some());
        assert_eq!(l.check_at("lost", t), None);
        assert_eq!(l.check_at("lost", t), None);
        assert_eq!(l.check_at("up", t + SECOND), Some(Suppressed(0)));
        assert_eq!(l.check_at("lost", t + SECOND), Some(Suppressed(2)));
    }

    #[test]
    fn a_clock_going_backwards_suppresses_rather_than_panics() {
        let l = LogLimiter::new(SECOND);
        let t = Instant::now() + SECOND;
        assert!(l.check_at("x", t).is_some());
        assert_eq!(l.check_at("x", t - SECOND), None);
    }

    #[test]
    fn kinds_past_the_table_are_always_logged() {
        // Static keys made at run time (leaked: a test's few bytes).
        let keys: Vec<&'static str> = (0..=MAX_KINDS)
            .map(|i| &*Box::leak(format!("kind {i}").into_boxed_str()))
            .collect();
        let l = LogLimiter::new(SECOND);
        let t = Instant::now();
        for &k in &keys {
            assert!(l.check_at(k, t).is_some());
        }
        // The table is full: the last kind is not tracked, so never suppressed.
        assert!(l.check_at(keys[MAX_KINDS], t).is_some());
        assert_eq!(l.check_at(keys[0], t), None);
    }

    #[test]
    fn suppressed_count_displays_only_when_there_is_one() {
        assert_eq!(format!("lost{}", Suppressed(0)), "lost");
        assert_eq!(
            format!("lost{}", Suppressed(3)),
            "lost (3 more like this suppressed)"
        );
    }
}
