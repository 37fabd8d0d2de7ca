//! What the service thread waits on between status lines: whatever changes the status
//! (a frontend connects or leaves, a LUN is added or removed) rings the bell, so the thread
//! recomputes the line when something changed instead of waking every second to look. An
//! idle daemon's threads then all sleep until work or a change comes.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A count of rings and a condition variable to wait for the next one.
#[derive(Default)]
pub struct StatusBell {
    rings: Mutex<u64>,
    rung: Condvar,
}

impl StatusBell {
    /// Something the status line shows changed. Rare (connections, LUN changes), so the
    /// lock and the wake-up cost nothing that counts.
    pub fn ring(&self) {
        *self.lock() += 1;
        self.rung.notify_all();
    }

    /// The rings so far: read before computing what they announce, so a ring during the
    /// computation makes the next `wait` return at once.
    pub fn rings(&self) -> u64 {
        *self.lock()
    }

    /// Waits until the count differs from `seen`, or `timeout` passed (None: no limit).
    /// Returns the count then.
    pub fn wait(&self, seen: u64, timeout: Option<Duration>) -> u64 {
        let guard = self.lock();
        let guard = match timeout {
            None => self
                .rung
                .wait_while(guard, |n| *n == seen)
                .unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.rung
                    .wait_timeout_while(guard, t, |n| *n == seen)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        *guard
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_wakes_a_waiter_that_has_no_time_limit() {
        let bell = Arc::new(StatusBell::default());
        let seen = bell.rings();
        let waiter = {
            let bell = bell.clone();
            std::thread::spawn(move || bell.wait(seen, None))
        };
        bell.ring();
        assert_eq!(waiter.join().expect("waiter"), seen + 1);
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let bell = StatusBell::default();
        let seen = bell.rings();
        bell.ring();
        bell.ring();
        assert_eq!(bell.wait(seen, None), seen + 2);
    }

    #[test]
    fn without_a_ring_the_wait_ends_at_its_limit_unchanged() {
        let bell = StatusBell::default();
        let seen = bell.rings();
        assert_eq!(bell.wait(seen, Some(Duration::from_millis(5))), seen);
    }
}
