//! Per-queue counts of commands in flight, so a stopping queue (GET_VRING_BASE) or a
//! stopping daemon (SIGTERM) can wait until every accepted command has completed.
//!
//! Waiting is rare (a queue or the daemon stopping) and ending a command is the hot path:
//! at queue depth 1 every command empties its queue. A condition variable's notify is a
//! system call whether or not anyone waits (std's futex condvar keeps no waiter count), so
//! the ending command wakes only when a waiter has said it waits.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct InflightCounters {
    per_queue: Vec<AtomicU32>,
    lock: Mutex<()>,
    idle: Condvar,
    /// Threads in `wait_until`; an ending command notifies only when this is non-zero.
    waiters: AtomicU32,
    /// Notifications sent (for tests: none when nobody waits).
    notified: AtomicU64,
}

impl InflightCounters {
    pub fn new(queues: usize) -> InflightCounters {
        InflightCounters {
            per_queue: (0..queues).map(|_| AtomicU32::new(0)).collect(),
            lock: Mutex::new(()),
            idle: Condvar::new(),
            waiters: AtomicU32::new(0),
            notified: AtomicU64::new(0),
        }
    }

    pub fn begin(&self, queue: u16) {
        if let Some(c) = self.per_queue.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub fn end(&self, queue: u16) {
        if let Some(c) = self.per_queue.get(usize::from(queue)) {
            // SeqCst on both sides: either this sees the waiter's count, or the waiter's
            // check after counting itself sees this command gone.
            if c.fetch_sub(1, Ordering::SeqCst) == 1 && self.waiters.load(Ordering::SeqCst) > 0 {
                // Take the lock so a waiter between its check and its wait cannot miss this.
                let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                self.notified.fetch_add(1, Ordering::Relaxed);
                self.idle.notify_all();
            }
        }
    }

    pub fn queue(&self, queue: usize) -> u32 {
        self.per_queue
            .get(queue)
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    pub fn total(&self) -> u32 {
        self.per_queue
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }

    /// Waits until `busy()` is false or `timeout` passes; returns true if it became idle.
    fn wait_until(&self, timeout: Duration, busy: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let idle = loop {
            if !busy() {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            // Bounded wait: a wake-up can also come from the timeout of a missed notify.
            let step = (deadline - now).min(Duration::from_millis(100));
            g = match self.idle.wait_timeout(g, step) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        drop(g);
        idle
    }

    pub fn wait_queue_idle(&self, queue: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.queue(queue) > 0)
    }

    pub fn wait_all_idle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.total() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waits_until_the_last_command_ends() {
        let c = Arc::new(InflightCounters::new(3));
        c.begin(2);
        c.begin(2);
        assert_eq!(c.total(), 2);
        assert!(!c.wait_queue_idle(2, Duration::from_millis(10)));
        assert!(c.wait_queue_idle(1, Duration::from_millis(10)));
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            c2.end(2);
            c2.end(2);
        });
        assert!(c.wait_all_idle(Duration::from_secs(10)));
        t.join().expect("join");
        assert_eq!(c.queue(2), 0);
    }

    #[test]
    fn an_ending_command_notifies_only_a_waiter() {
        let c = Arc::new(InflightCounters::new(1));
        for _ in 0..100 {
            c.begin(0);
            c.end(0);
        }
        assert_eq!(c.notified.load(Ordering::Relaxed), 0, "nobody waited");
        c.begin(0);
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || c2.wait_queue_idle(0, Duration::from_secs(30)));
        // The command ends once the waiter has counted itself (bounded: 30 s).
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.waiters.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        c.end(0);
        assert!(waiter.join().expect("join"));
        assert_eq!(c.notified.load(Ordering::Relaxed), 1);
        assert_eq!(c.waiters.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn out_of_range_queue_is_ignored() {
        let c = InflightCounters::new(1);
        c.begin(7);
        c.end(7);
        assert_eq!(c.total(), 0);
    }
}
