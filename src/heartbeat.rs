//! Progress counters of the worker threads, for the service watchdog: each worker's event
//! loop beats on every wake-up (an event, or the periodic timeout an idle loop is given
//! while a watchdog is configured), and busy polling beats on every pass. A thread stuck in
//! a call does not beat, so the watchdog stops being fed. Threads come and go with
//! connections: a beat is dropped from the registry when its thread ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// One thread's counter.
struct Beat {
    /// Unique for the registry's life (an address could be reused by a later thread).
    id: u64,
    name: String,
    count: AtomicU64,
}

/// The registry of every live thread's counter, and how often an idle thread must wake.
#[derive(Clone, Default)]
pub struct Heartbeats {
    beats: Arc<Mutex<Registry>>,
    tick: Option<Duration>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    beats: Vec<Weak<Beat>>,
}

/// A thread's handle on its counter; the counter leaves the registry when it is dropped.
pub struct Heartbeat(Arc<Beat>);

impl Heartbeat {
    /// The thread made progress (woke up and went through its loop).
    pub fn beat(&self) {
        self.0.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Heartbeats {
    /// A registry whose threads wake at least every `tick` when idle (None: they may sleep
    /// for as long as nothing happens, when no watchdog watches them).
    pub fn new(tick: Option<Duration>) -> Heartbeats {
        Heartbeats {
            beats: Arc::default(),
            tick,
        }
    }

    /// How long an idle thread may sleep before it beats again.
    pub fn tick(&self) -> Option<Duration> {
        self.tick
    }

    /// A counter for the thread `name`.
    pub fn register(&self, name: &str) -> Heartbeat {
        let mut reg = self.lock();
        reg.next_id += 1;
        let beat = Arc::new(Beat {
            id: reg.next_id,
            name: name.to_string(),
            count: AtomicU64::new(0),
        });
        reg.beats.retain(|b| b.strong_count() > 0);
        reg.beats.push(Arc::downgrade(&beat));
        Heartbeat(beat)
    }

    /// `(id, name, count)` of every live counter.
    fn snapshot(&self) -> Vec<(u64, String, u64)> {
        let mut reg = self.lock();
        reg.beats.retain(|b| b.strong_count() > 0);
        reg.beats
            .iter()
            .filter_map(Weak::upgrade)
            .map(|b| (b.id, b.name.clone(), b.count.load(Ordering::Relaxed)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Compares the counters from one check to the next.
#[derive(Default)]
pub struct ProgressCheck {
    last: Vec<(u64, u64)>,
}

impl ProgressCheck {
    /// Names of the threads whose counter did not move since the previous check. A thread
    /// registered since then counts as progressing; no threads at all is no stall.
    pub fn stalled(&mut self, beats: &Heartbeats) -> Vec<String> {
        let now = beats.snapshot();
        let stalled = now
            .iter()
            .filter(|(id, _, count)| {
                self.last
                    .iter()
                    .any(|(last_id, last_count)| last_id == id && last_count == count)
            })
            .map(|(_, name, _)| name.clone())
            .collect();
        self.last = now.into_iter().map(|(id, _, count)| (id, count)).collect();
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_stops_beating_is_named_until_it_beats_or_ends() {
        let beats = Heartbeats::new(Some(Duration::from_millis(10)));
        let mut check = ProgressCheck::default();
        assert!(check.stalled(&beats).is_empty(), "no threads, no stall");
        let a = beats.register("vscsid-q0");
        let b = beats.register("vscsid-q1");
        assert!(check.stalled(&beats).is_empty(), "new threads progress");
        a.beat();
        b.beat();
        assert!(check.stalled(&beats).is_empty());
        a.beat();
        assert_eq!(check.stalled(&beats), vec!["vscsid-q1".to_string()]);
        assert_eq!(
            check.stalled(&beats),
            vec!["vscsid-q0".to_string(), "vscsid-q1".to_string()]
        );
        b.beat();
        a.beat();
        assert!(check.stalled(&beats).is_empty());
        // A thread that ends (its connection closed) is no longer watched.
        drop(b);
        a.beat();
        assert!(check.stalled(&beats).is_empty());
        // A later thread with the same name is a new counter.
        let c = beats.register("vscsid-q1");
        a.beat();
        assert!(check.stalled(&beats).is_empty());
        c.beat();
        assert_eq!(check.stalled(&beats), vec!["vscsid-q0".to_string()]);
    }
}
