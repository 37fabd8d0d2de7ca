//! COMPARE AND WRITE atomicity. SBC requires that no other write changes the blocks between
//! the compare and the write; the commands of one LUN run on every queue's worker at once,
//! so a LUN keeps a gate: plain writes pass it (an atomic add each), a COMPARE AND WRITE
//! closes it, waits for the writes already in flight to end, and opens it when done.
//! Commands that find the gate closed wait (parked) on their worker, in order.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// What a command holds of its LUN's gate until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GateHold {
    #[default]
    None,
    /// A write counted among those in flight.
    Write,
    /// The COMPARE AND WRITE that closed the gate.
    Exclusive,
}

/// The answer to a plain write asking to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEntry {
    /// Counted in flight: go.
    Passed,
    /// The gate is closed: wait. `wake`: backing off let the holder go, wake it.
    Wait { wake: bool },
}

/// The answer to a COMPARE AND WRITE asking for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusive {
    /// The gate is this command's and no write is in flight: go.
    Go,
    /// The gate is this command's; writes still in flight must end first.
    Drain,
    /// Another COMPARE AND WRITE holds the gate.
    Busy,
}

#[derive(Debug, Default)]
pub struct WriteGate {
    writes: AtomicU32,
    closed: AtomicBool,
}

impl WriteGate {
    /// A plain write asks to pass.
    pub fn enter_write(&self) -> WriteEntry {
        // Counted first, then checked: a COMPARE AND WRITE closing the gate at the same
        // moment either sees this write or is seen by it (both sequentially consistent).
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.check_counted_write()
    }

    fn check_counted_write(&self) -> WriteEntry {
        if self.closed.load(Ordering::SeqCst) {
            // The holder may have seen this write's count and be waiting for it to end.
            return WriteEntry::Wait {
                wake: self.end_write(),
            };
        }
        WriteEntry::Passed
    }

    /// A counted write ended. True when a closed gate now waits for no write: the
    /// COMPARE AND WRITE waiting for the drain must be woken.
    pub fn end_write(&self) -> bool {
        let before = self.writes.fetch_sub(1, Ordering::SeqCst);
        before == 1 && self.closed.load(Ordering::SeqCst)
    }

    /// A COMPARE AND WRITE asks for the gate.
    pub fn close(&self) -> Exclusive {
        if self
            .closed
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Exclusive::Busy;
        }
        self.drained()
    }

    /// For the COMPARE AND WRITE holding the gate: whether the writes before it ended.
    pub fn drained(&self) -> Exclusive {
        if self.writes.load(Ordering::SeqCst) == 0 {
            Exclusive::Go
        } else {
            Exclusive::Drain
        }
    }

    /// The COMPARE AND WRITE holding the gate ended; waiting commands may go.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pass_an_open_gate() {
        let g = WriteGate::default();
        assert_eq!(g.enter_write(), WriteEntry::Passed);
        assert_eq!(g.enter_write(), WriteEntry::Passed);
        assert!(!g.end_write());
        assert!(!g.end_write());
        assert_eq!(g.close(), Exclusive::Go);
    }

    #[test]
    fn compare_and_write_waits_for_writes_in_flight_and_holds_new_ones() {
        let g = WriteGate::default();
        assert_eq!(g.enter_write(), WriteEntry::Passed);
        assert_eq!(g.close(), Exclusive::Drain);
        // A new write waits; a second COMPARE AND WRITE too.
        assert_eq!(g.enter_write(), WriteEntry::Wait { wake: false });
        assert_eq!(g.close(), Exclusive::Busy);
        // The last write in flight ends: the holder is to be woken and may go.
        assert!(g.end_write());
        assert_eq!(g.drained(), Exclusive::Go);
        g.open();
        assert_eq!(g.enter_write(), WriteEntry::Passed);
        assert!(!g.end_write());
        assert_eq!(g.close(), Exclusive::Go);
    }

    #[test]
    fn a_write_backing_off_wakes_a_holder_that_counted_it() {
        let g = WriteGate::default();
        // The write is counted, the holder closes the gate and sees it in flight...
        g.writes.fetch_add(1, Ordering::SeqCst);
        assert_eq!(g.close(), Exclusive::Drain);
        // ...then the write sees the gate closed and backs off: the holder must be woken.
        assert_eq!(g.check_counted_write(), WriteEntry::Wait { wake: true });
        assert_eq!(g.drained(), Exclusive::Go);
    }

    #[test]
    fn concurrent_writers_never_overlap_a_holder() {
        use std::sync::atomic::AtomicU64;
        use std::sync::Arc;
        let g = Arc::new(WriteGate::default());
        let inside = Arc::new(AtomicU64::new(0));
        let violations = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (g, inside, bad) = (g.clone(), inside.clone(), violations.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if g.enter_write() == WriteEntry::Passed {
                            if inside.load(Ordering::SeqCst) != 0 {
                                bad.fetch_add(1, Ordering::SeqCst);
                            }
                            g.end_write();
                        }
                    }
                })
            })
            .collect();
        for _ in 0..20_000 {
            if g.close() == Exclusive::Busy {
                continue;
            }
            while g.drained() != Exclusive::Go {
                std::hint::spin_loop();
            }
            inside.store(1, Ordering::SeqCst);
            std::hint::spin_loop();
            inside.store(0, Ordering::SeqCst);
            g.open();
        }
        for w in writers {
            w.join().expect("writer");
        }
        assert_eq!(violations.load(Ordering::SeqCst), 0);
    }
}
