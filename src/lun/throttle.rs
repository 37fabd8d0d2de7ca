//! I/O limits of a LUN at run time: leaky buckets, one per configured limit, shared by
//! every worker thread of the LUN. A command that reads or writes the medium asks
//! [`Throttle::admit`] once before it starts; when a bucket is over-full it is told the
//! instant at which it may go, and its worker keeps it until then (see
//! `vhost::worker`). One small lock per throttled LUN, taken once per command; nothing
//! is allocated per command. Unthrottled LUNs never get here.
//!
//! Semantics, as QEMU's throttling (`util/throttle.c`): each average limit (`iops`, `bw`,
//! and their `_read`/`_write` forms) is a bucket that leaks at that rate. A command may go
//! while every bucket that applies to it is not over its size; it then adds its cost (one
//! operation, or its data length in bytes) to each, so a command larger than a bucket
//! still goes and the next ones pay for it. A bucket's size is `max × burst_length` with a
//! burst rate (`*_max`) and a tenth of a second's worth of the average without one. A
//! burst rate is itself a bucket leaking at that rate with a tenth of a second's worth of
//! room, so a burst is spread at most at that rate, as QEMU does. Over any span, a LUN
//! idle before it moves at most `size + rate × span` of each unit.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::limits::{IoLimits, READ, TOTAL, WRITE};
use crate::scsi::cdb;

/// What a command costs: its direction and its data length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub write: bool,
    pub bytes: u64,
}

impl Cost {
    /// The cost of a command that moves data to or from the medium (READ, WRITE, WRITE
    /// SAME, VERIFY, COMPARE AND WRITE, UNMAP); None for the others, which are never
    /// held back (as QEMU throttles reads and writes only). The byte count is the
    /// guest's data buffers for the command: what a READ or WRITE moves.
    pub fn of(cdb: &[u8], data_in: u64, data_out: u64) -> Option<Cost> {
        let op = *cdb.first()?;
        let write = match op {
            cdb::READ_6 | cdb::READ_10 | cdb::READ_12 | cdb::READ_16 => false,
            cdb::VERIFY_10 | cdb::VERIFY_12 | cdb::VERIFY_16 => false,
            cdb::WRITE_6 | cdb::WRITE_10 | cdb::WRITE_12 | cdb::WRITE_16 => true,
            cdb::WRITE_AND_VERIFY_10 | cdb::WRITE_AND_VERIFY_16 => true,
            cdb::WRITE_SAME_10 | cdb::WRITE_SAME_16 | cdb::UNMAP | cdb::COMPARE_AND_WRITE => true,
            _ => return None,
        };
        Some(Cost {
            write,
            bytes: if write { data_out } else { data_in },
        })
    }
}

/// One leaky bucket; `rate` 0 is unused.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Units leaked per second.
    rate: f64,
    /// Level up to which commands may still go.
    size: f64,
    level: f64,
    /// Which direction's commands fill it.
    dir: usize,
    /// Operations (false) or bytes (true).
    bytes: bool,
}

/// At most this many buckets: (iops, bw) × (total, read, write) × (average, burst).
const BUCKETS: usize = 12;

struct State {
    buckets: [Bucket; BUCKETS],
    used: usize,
    last: Option<Instant>,
}

/// A LUN's limits in force.
pub struct Throttle {
    limits: IoLimits,
    state: Mutex<State>,
}

/// The longest a command is told to wait (a bucket overfilled by a huge command at a tiny
/// rate): it goes then and the next ones pay.
const MAX_WAIT: Duration = Duration::from_secs(60);

impl Throttle {
    /// The buckets of `limits` (which [`IoLimits::check`] accepted), all empty.
    pub fn new(limits: IoLimits) -> Throttle {
        let mut buckets = [Bucket::default(); BUCKETS];
        let mut used = 0;
        let length = limits.burst_length.max(1) as f64;
        for (avg, max, bytes) in [
            (&limits.iops, &limits.iops_max, false),
            (&limits.bw, &limits.bw_max, true),
        ] {
            for dir in [TOTAL, READ, WRITE] {
                if avg[dir] == 0 {
                    continue;
                }
                let avg_rate = avg[dir] as f64;
                let size = if max[dir] != 0 {
                    max[dir] as f64 * length
                } else {
                    avg_rate / 10.0
                };
                buckets[used] = Bucket {
                    rate: avg_rate,
                    size,
                    level: 0.0,
                    dir,
                    bytes,
                };
                used += 1;
                if max[dir] != 0 {
                    let max_rate = max[dir] as f64;
                    buckets[used] = Bucket {
                        rate: max_rate,
                        size: max_rate / 10.0,
                        level: 0.0,
                        dir,
                        bytes,
                    };
                    used += 1;
                }
            }
        }
        Throttle {
            limits,
            state: Mutex::new(State {
                buckets,
                used,
                last: None,
            }),
        }
    }

    pub fn limits(&self) -> &IoLimits {
        &self.limits
    }

    /// Asks whether a command costing `cost` may go at `now`: Ok (and it is counted), or
    /// Err(the instant at which to ask again).
    pub fn admit(&self, cost: Cost, now: Instant) -> Result<(), Instant> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = match st.last {
            Some(last) => now.saturating_duration_since(last).as_secs_f64(),
            None => 0.0,
        };
        if st.last.is_none_or(|last| now > last) {
            st.last = Some(now);
        }
        let used = st.used;
        let mut wait = 0.0f64;
        for b in st.buckets[..used].iter_mut() {
            b.level = (b.level - b.rate * elapsed).max(0.0);
            if !applies(b, cost) {
                continue;
            }
            let over = b.level - b.size;
            if over > 0.0 {
                wait = wait.max(over / b.rate);
            }
        }
        if wait > 0.0 {
            // Round up to a microsecond, so the level is under the size when asked again.
            let d = Duration::from_secs_f64(wait.min(MAX_WAIT.as_secs_f64()))
                + Duration::from_micros(1);
            return Err(now + d);
        }
        for b in st.buckets[..used].iter_mut() {
            if applies(b, cost) {
                b.level += if b.bytes { cost.bytes as f64 } else { 1.0 };
            }
        }
        Ok(())
    }
}

fn applies(b: &Bucket, cost: Cost) -> bool {
    b.dir == TOTAL || (b.dir == WRITE) == cost.write
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pairs: &[(&str, u64)]) -> IoLimits {
        let mut l = IoLimits::default();
        for (k, v) in pairs {
            l.set(k, *v).expect(k);
        }
        l.check().expect("valid");
        l
    }

    const READ4K: Cost = Cost {
        write: false,
        bytes: 4096,
    };
    const WRITE4K: Cost = Cost {
        write: true,
        bytes: 4096,
    };

    /// Commands admitted over `span` when one is offered whenever the throttle allows
    /// (asking again at the instant it names), starting at `t0` (the throttle keeps what
    /// earlier calls admitted).
    fn admitted(t: &Throttle, cost: Cost, t0: Instant, span: Duration) -> u64 {
        let mut now = t0;
        let mut n = 0;
        for _ in 0..1_000_000 {
            if now > t0 + span {
                break;
            }
            match t.admit(cost, now) {
                Ok(()) => n += 1,
                Err(at) => {
                    assert!(at > now);
                    now = at;
                }
            }
        }
        n
    }

    #[test]
    fn iops_hold_the_average_after_a_tenth_of_a_second_of_burst() {
        let t = Throttle::new(limits(&[("iops", 200)]));
        let t0 = Instant::now();
        // 21 at once (the bucket holds 20 and the 21st goes while it is not over-full).
        let first = admitted(&t, READ4K, t0, Duration::ZERO);
        assert_eq!(first, 21);
        // Over 2 s: 200 a second on top of those.
        let n = first + admitted(&t, READ4K, t0, Duration::from_secs(2));
        assert!((419..=422).contains(&n), "{n}");
    }

    #[test]
    fn bandwidth_counts_bytes_and_a_big_command_still_goes() {
        let t = Throttle::new(limits(&[("bw", 1 << 20)]));
        let t0 = Instant::now();
        let big = Cost {
            write: true,
            bytes: 8 << 20,
        };
        assert_eq!(t.admit(big, t0), Ok(()));
        // The next one waits until the 8 MiB have leaked down to the bucket's size.
        let at = t.admit(READ4K, t0).expect_err("over");
        let waited = at - t0;
        assert!(
            (Duration::from_millis(7850)..Duration::from_millis(7950)).contains(&waited),
            "{waited:?}"
        );
        assert_eq!(t.admit(READ4K, at), Ok(()));
        // Then 1 MiB/s (the bucket is full): 256 commands of 4 KiB per second.
        let n = admitted(&t, READ4K, at, Duration::from_secs(1));
        assert!((254..=258).contains(&n), "{n}");
    }

    #[test]
    fn read_and_write_limits_are_separate() {
        let t = Throttle::new(limits(&[("iops_read", 10), ("iops_write", 100)]));
        let t0 = Instant::now();
        assert_eq!(admitted(&t, READ4K, t0, Duration::ZERO), 2);
        assert_eq!(admitted(&t, WRITE4K, t0, Duration::ZERO), 11);
        let r = 2 + admitted(&t, READ4K, t0, Duration::from_secs(1));
        assert!((11..=13).contains(&r), "{r}");
    }

    #[test]
    fn a_burst_drains_the_bucket_at_the_burst_rate() {
        // 100/s average, bursts at 1000/s for 2 s: a 2000-command bucket.
        let new = || {
            Throttle::new(limits(&[
                ("iops", 100),
                ("iops_max", 1000),
                ("burst_length", 2),
            ]))
        };
        let t0 = Instant::now();
        // At once: only the burst bucket's tenth of a second.
        assert_eq!(admitted(&new(), READ4K, t0, Duration::ZERO), 101);
        // Over one second: the burst rate (the average bucket is not full yet).
        let n = admitted(&new(), READ4K, t0, Duration::from_secs(1));
        assert!((1095..=1102).contains(&n), "{n}");
        // Over 10 s: the 2000 of the bucket and the average (100 a second).
        let t = new();
        let before = admitted(&t, READ4K, t0, Duration::from_secs(10));
        assert!((2990..=3002).contains(&before), "{before}");
        // Once they are spent, the average.
        let t1 = t0 + Duration::from_secs(10);
        let after = admitted(&t, READ4K, t1, Duration::from_secs(1));
        assert!((98..=102).contains(&after), "{after}");
    }

    #[test]
    fn idle_time_refills_only_up_to_the_size() {
        let t = Throttle::new(limits(&[("iops", 50)]));
        let t0 = Instant::now();
        assert_eq!(admitted(&t, READ4K, t0, Duration::ZERO), 6);
        let later = t0 + Duration::from_secs(100);
        assert_eq!(admitted(&t, READ4K, later, Duration::ZERO), 6);
        // An instant earlier than the last one (another thread's) does not refill.
        assert!(t.admit(READ4K, t0).is_err());
    }

    #[test]
    fn only_medium_commands_cost() {
        let read10 = [cdb::READ_10, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        assert_eq!(
            Cost::of(&read10, 4096, 0),
            Some(Cost {
                write: false,
                bytes: 4096
            })
        );
        let write16 = [cdb::WRITE_16; 16];
        assert_eq!(Cost::of(&write16, 0, 512).map(|c| c.write), Some(true));
        assert_eq!(Cost::of(&[cdb::INQUIRY, 0, 0, 0, 96, 0], 96, 0), None);
        assert_eq!(Cost::of(&[], 0, 0), None);
    }
}
