//! Per-queue counts of commands in flight, so a stopping queue (GET_VRING_BASE) or a
//! stopping daemon (SIGTERM) can wait until every accepted command has completed.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct InflightCounters {
    per_queue: Vec<AtomicU32>,
    lock: Mutex<()>,
    idle: Condvar,
}

impl InflightCounters {
    pub fn new(queues: usize) -> InflightCounters {
        InflightCounters {
            per_queue: (0..queues).map(|_| AtomicU32::new(0)).collect(),
            lock: Mutex::new(()),
            idle: Condvar::new(),
        }
    }

    pub fn begin(&self, queue: u16) {
        if let Some(c) = self.per_queue.get(usize::from(queue)) {
            c.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn end(&self, queue: u16) {
        if let Some(c) = self.per_queue.get(usize::from(queue)) {
            if c.fetch_sub(1, Ordering::AcqRel) == 1 {
                // Take the lock so a waiter between its check and its wait cannot miss this.
                let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                self.idle.notify_all();
            }
        }
    }

    pub fn queue(&self, queue: usize) -> u32 {
        self.per_queue
            .get(queue)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    pub fn total(&self) -> u32 {
        self.per_queue
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .sum()
    }

    /// Waits until `busy()` is false or `timeout` passes; returns true if it became idle.
    fn wait_until(&self, timeout: Duration, busy: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while busy() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded wait: a wake-up can also come from the timeout of a missed notify.
            let step = (deadline - now).min(Duration::from_millis(100));
            g = match self.idle.wait_timeout(g, step) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
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
    fn out_of_range_queue_is_ignored() {
        let c = InflightCounters::new(1);
        c.begin(7);
        c.end(7);
        assert_eq!(c.total(), 0);
    }
}
