//! I/O statistics of each LUN and of each request queue, for `vscsid ctl stats` and the
//! Prometheus metrics: commands and bytes by kind (read, write, other), errors by sense key
//! and by host failure, and a latency histogram.
//!
//! The request path updates them once per command, when it ends: a handful of relaxed
//! atomic additions, no lock, no allocation, each worker in its own copy of the LUN's
//! counters (a shard; they are added up when read), so workers serving one LUN do not
//! fight over its cache lines. The histogram has fixed log-scale buckets
//! (powers of two of microseconds, 1 µs to 2^26 µs ≈ 67 s, then everything longer), so a
//! quantile is computed when the statistics are read and is the upper bound of the bucket
//! it falls in. A LUN's statistics live in its [`super::Lun`] and go with it when it is
//! removed; the queues' live in [`super::LiveLuns`] for the daemon's lifetime.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::{Answer, HostError};
use crate::scsi::{cdb, status};

/// What a command does with data, from its operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoKind {
    Read,
    Write,
    #[default]
    Other,
}

impl IoKind {
    pub const ALL: [IoKind; 3] = [IoKind::Read, IoKind::Write, IoKind::Other];

    /// READ(6/10/12/16) read; WRITE(6/10/12/16) and WRITE AND VERIFY write; everything else
    /// (VERIFY, WRITE SAME, UNMAP, COMPARE AND WRITE, SYNCHRONIZE CACHE, INQUIRY ...) other.
    pub fn of(cdb: &[u8]) -> IoKind {
        match cdb.first().copied() {
            Some(cdb::READ_6 | cdb::READ_10 | cdb::READ_12 | cdb::READ_16) => IoKind::Read,
            Some(
                cdb::WRITE_6
                | cdb::WRITE_10
                | cdb::WRITE_12
                | cdb::WRITE_16
                | cdb::WRITE_AND_VERIFY_10
                | cdb::WRITE_AND_VERIFY_16,
            ) => IoKind::Write,
            _ => IoKind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Latency buckets: bucket `i < LATENCY_BOUNDS` counts commands that took at most 2^i µs
/// (and more than the bucket before); the last one counts those that took longer.
pub const LATENCY_BOUNDS: usize = 27;
const LATENCY_BUCKETS: usize = LATENCY_BOUNDS + 1;

/// The upper bound of latency bucket `i`, in microseconds (None: the last, unbounded one).
pub fn bucket_bound_us(i: usize) -> Option<u64> {
    (i < LATENCY_BOUNDS).then(|| 1u64 << i)
}

/// The bucket a latency falls in.
fn bucket_of(elapsed: Duration) -> usize {
    let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    let us = nanos.div_ceil(1000);
    if us <= 1 {
        return 0;
    }
    // ceil(log2(us)): the smallest i with 2^i >= us.
    let i = (u64::BITS - (us - 1).leading_zeros()) as usize;
    i.min(LATENCY_BOUNDS)
}

/// Sense key names (SPC-4 table 51), as they appear in the statistics.
pub const SENSE_KEY_NAMES: [&str; 16] = [
    "no_sense",
    "recovered_error",
    "not_ready",
    "medium_error",
    "hardware_error",
    "illegal_request",
    "unit_attention",
    "data_protect",
    "blank_check",
    "vendor_specific",
    "copy_aborted",
    "aborted_command",
    "reserved_c",
    "volume_overflow",
    "miscompare",
    "completed",
];

/// Host (transport) failures, in the order of [`HostError`] as counted.
pub const HOST_ERROR_NAMES: [&str; 4] = ["overrun", "aborted", "transport_disrupted", "failure"];

fn host_index(e: HostError) -> usize {
    match e {
        HostError::Overrun => 0,
        HostError::Aborted => 1,
        HostError::TransportDisrupted => 2,
        HostError::Failure => 3,
    }
}

/// The sense key of sense bytes a remote device returned (fixed or descriptor format).
fn raw_sense_key(sense: &[u8]) -> Option<u8> {
    match sense.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) => sense.get(2).map(|b| b & 0x0f),
        Some(0x72 | 0x73) => sense.get(1).map(|b| b & 0x0f),
        _ => None,
    }
}

/// Copies of a LUN's counters, so that worker threads serving the same LUN do not update
/// the same cache lines: each worker counts in the shard of its number (modulo this).
pub const SHARDS: usize = 8;

/// One LUN's counters: [`SHARDS`] copies, added up when read. Every update is a relaxed
/// atomic addition to the caller's shard: readers get each counter exact, not all of them
/// at one instant.
#[derive(Debug, Default)]
pub struct LunStats {
    shards: [Shard; SHARDS],
}

/// One copy of the counters, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    commands: [AtomicU64; 3],
    bytes: [AtomicU64; 3],
    sense_keys: [AtomicU64; 16],
    host_errors: [AtomicU64; 4],
    /// Statuses other than GOOD, CONDITION MET and CHECK CONDITION with readable sense
    /// (BUSY, RESERVATION CONFLICT, TASK SET FULL ... of a remote device).
    other_status: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
    latency_sum_ns: AtomicU64,
}

impl LunStats {
    /// Counts a command that ended with `answer` after `elapsed`. `data_out` is the length
    /// of the guest's data-out buffer, counted as moved when the command succeeded; data-in
    /// is counted as the answer placed it. `shard`: the caller's worker number.
    pub fn record(
        &self,
        shard: usize,
        kind: IoKind,
        answer: &Answer,
        data_out: u64,
        elapsed: Duration,
    ) {
        let s = &self.shards[shard % SHARDS];
        let k = kind.index();
        s.commands[k].fetch_add(1, Relaxed);
        let moved = match *answer {
            Answer::Good { data_in } => data_in.saturating_add(data_out),
            Answer::Check(sense) => {
                s.sense_keys[usize::from(sense.key & 0x0f)].fetch_add(1, Relaxed);
                0
            }
            Answer::Status {
                status,
                ref sense,
                data_in,
            } => match status {
                status::GOOD | status::CONDITION_MET => data_in.saturating_add(data_out),
                _ => {
                    match raw_sense_key(sense.as_slice())
                        .filter(|_| status == status::CHECK_CONDITION)
                    {
                        Some(key) => s.sense_keys[usize::from(key)].fetch_add(1, Relaxed),
                        None => s.other_status.fetch_add(1, Relaxed),
                    };
                    data_in
                }
            },
            Answer::Host { error, .. } => {
                s.host_errors[host_index(error)].fetch_add(1, Relaxed);
                0
            }
        };
        if moved > 0 {
            s.bytes[k].fetch_add(moved, Relaxed);
        }
        s.latency[bucket_of(elapsed)].fetch_add(1, Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        s.latency_sum_ns.fetch_add(ns, Relaxed);
    }

    /// The counters now (the shards added up).
    pub fn snapshot(&self) -> LunStatsSnapshot {
        fn add<const N: usize>(to: &mut [u64; N], from: &[AtomicU64; N]) {
            for (t, f) in to.iter_mut().zip(from) {
                *t = t.wrapping_add(f.load(Relaxed));
            }
        }
        let mut snap = LunStatsSnapshot::default();
        for s in &self.shards {
            add(&mut snap.commands, &s.commands);
            add(&mut snap.bytes, &s.bytes);
            add(&mut snap.sense_keys, &s.sense_keys);
            add(&mut snap.host_errors, &s.host_errors);
            snap.other_status = snap.other_status.wrapping_add(s.other_status.load(Relaxed));
            add(&mut snap.latency, &s.latency);
            snap.latency_sum_ns = snap
                .latency_sum_ns
                .wrapping_add(s.latency_sum_ns.load(Relaxed));
        }
        snap
    }
}

/// A LUN's counters as read at one time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LunStatsSnapshot {
    /// By [`IoKind`]: read, write, other.
    pub commands: [u64; 3],
    pub bytes: [u64; 3],
    /// CHECK CONDITION answers by sense key.
    pub sense_keys: [u64; 16],
    /// By [`HOST_ERROR_NAMES`].
    pub host_errors: [u64; 4],
    pub other_status: u64,
    /// Per latency bucket (not cumulative).
    pub latency: [u64; LATENCY_BUCKETS],
    pub latency_sum_ns: u64,
}

impl LunStatsSnapshot {
    pub fn total_commands(&self) -> u64 {
        self.commands.iter().sum()
    }

    /// Commands that did not end GOOD.
    pub fn errors(&self) -> u64 {
        self.sense_keys.iter().sum::<u64>()
            + self.host_errors.iter().sum::<u64>()
            + self.other_status
    }

    /// Commands counted in the histogram.
    pub fn latency_count(&self) -> u64 {
        self.latency.iter().sum()
    }

    /// Mean latency in microseconds (None before the first command).
    pub fn mean_us(&self) -> Option<f64> {
        let n = self.latency_count();
        (n > 0).then(|| self.latency_sum_ns as f64 / 1000.0 / n as f64)
    }

    /// The latency `q` (0 < q <= 1) of the commands is at most this many microseconds: the
    /// upper bound of the bucket the quantile falls in. `Some(None)`: beyond the last
    /// bound; None before the first command.
    pub fn quantile_us(&self, q: f64) -> Option<Option<u64>> {
        let n = self.latency_count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, &c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_bound_us(i));
            }
        }
        Some(None)
    }
}

/// Commands answered on each queue (by global queue index), daemon-wide.
#[derive(Debug)]
pub struct QueueStats {
    completed: Box<[AtomicU64]>,
    /// Worker threads' wake-ups from epoll with events to serve (all threads).
    wakeups: AtomicU64,
    /// Passes of the worker threads' busy polling over their queues (all threads).
    poll_rounds: AtomicU64,
}

impl QueueStats {
    /// Room for `queues` queues (control and event queues included); others are ignored.
    pub fn new(queues: usize) -> QueueStats {
        QueueStats {
            completed: (0..queues).map(|_| AtomicU64::new(0)).collect(),
            wakeups: AtomicU64::new(0),
            poll_rounds: AtomicU64::new(0),
        }
    }

    /// A worker thread woke from epoll to serve events.
    pub fn woke(&self) {
        self.wakeups.fetch_add(1, Relaxed);
    }

    /// A worker thread ended a busy-poll session of `rounds` passes.
    pub fn polled(&self, rounds: u64) {
        if rounds > 0 {
            self.poll_rounds.fetch_add(rounds, Relaxed);
        }
    }

    /// `(wake-ups, busy-poll passes)` of the worker threads so far.
    pub fn worker_activity(&self) -> (u64, u64) {
        (self.wakeups.load(Relaxed), self.poll_rounds.load(Relaxed))
    }

    /// A command of `queue` was answered.
    pub fn completed(&self, queue: u16) {
        if let Some(c) = self.completed.get(usize::from(queue)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// `(global queue index, commands answered)` of every queue that answered one.
    pub fn snapshot(&self) -> Vec<(u16, u64)> {
        self.completed
            .iter()
            .enumerate()
            .filter_map(|(q, c)| {
                let n = c.load(Relaxed);
                Some((u16::try_from(q).ok()?, n)).filter(|_| n > 0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun::RawSense;
    use crate::scsi::Sense;

    #[test]
    fn kinds_from_opcodes() {
        assert_eq!(IoKind::of(&[cdb::READ_10]), IoKind::Read);
        assert_eq!(IoKind::of(&[cdb::READ_16]), IoKind::Read);
        assert_eq!(IoKind::of(&[cdb::WRITE_6]), IoKind::Write);
        assert_eq!(IoKind::of(&[cdb::WRITE_AND_VERIFY_16]), IoKind::Write);
        assert_eq!(IoKind::of(&[cdb::INQUIRY]), IoKind::Other);
        assert_eq!(IoKind::of(&[]), IoKind::Other);
    }

    #[test]
    fn buckets_are_powers_of_two_of_microseconds() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_nanos(1000)), 0);
        assert_eq!(bucket_of(Duration::from_nanos(1001)), 1);
        assert_eq!(bucket_of(Duration::from_micros(2)), 1);
        assert_eq!(bucket_of(Duration::from_micros(3)), 2);
        assert_eq!(bucket_of(Duration::from_micros(1024)), 10);
        assert_eq!(bucket_of(Duration::from_micros(1025)), 11);
        assert_eq!(bucket_of(Duration::from_micros(1 << 26)), 26);
        assert_eq!(bucket_of(Duration::from_secs(3600)), LATENCY_BOUNDS);
        assert_eq!(bucket_of(Duration::MAX), LATENCY_BOUNDS);
        assert_eq!(bucket_bound_us(26), Some(1 << 26));
        assert_eq!(bucket_bound_us(LATENCY_BOUNDS), None);
    }

    #[test]
    fn answers_are_counted_by_kind_bytes_and_error() {
        let s = LunStats::default();
        let us = Duration::from_micros;
        s.record(0, IoKind::Read, &Answer::Good { data_in: 4096 }, 0, us(100));
        s.record(
            0,
            IoKind::Write,
            &Answer::Good { data_in: 0 },
            8192,
            us(100),
        );
        s.record(
            3,
            IoKind::Write,
            &Answer::Check(Sense::new(3, 0x11, 0)),
            512,
            us(100),
        );
        s.record(0, IoKind::Other, &Answer::overrun(), 0, us(3));
        let mut fixed = [0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x02;
        let status = |status, sense: &[u8]| Answer::Status {
            status,
            sense: RawSense::new(sense),
            data_in: 0,
        };
        s.record(
            9,
            IoKind::Read,
            &status(status::CHECK_CONDITION, &fixed),
            0,
            us(1),
        );
        s.record(
            13,
            IoKind::Read,
            &status(status::CHECK_CONDITION, &[0x72, 0x0b]),
            0,
            us(1),
        );
        s.record(0, IoKind::Read, &status(status::BUSY, &[]), 0, us(1));
        s.record(
            0,
            IoKind::Read,
            &status(status::GOOD, &[]),
            0,
            us(70_000_000),
        );
        let snap = s.snapshot();
        assert_eq!(snap.commands, [5, 2, 1]);
        assert_eq!(snap.bytes, [4096, 8192, 0]);
        assert_eq!(snap.sense_keys[3], 1);
        assert_eq!(snap.sense_keys[2], 1);
        assert_eq!(snap.sense_keys[0x0b], 1);
        assert_eq!(snap.host_errors, [1, 0, 0, 0]);
        assert_eq!(snap.other_status, 1);
        assert_eq!(snap.errors(), 5);
        assert_eq!(snap.total_commands(), 8);
        assert_eq!(snap.latency_count(), 8);
        assert_eq!(snap.latency[LATENCY_BOUNDS], 1);
        // 3 at 1 µs, 1 at 3 µs, 3 at 100 µs, 1 past the last bound.
        assert_eq!(snap.quantile_us(0.375), Some(Some(1)));
        assert_eq!(snap.quantile_us(0.5), Some(Some(4)));
        assert_eq!(snap.quantile_us(0.75), Some(Some(128)));
        assert_eq!(snap.quantile_us(0.999), Some(None));
        assert!(snap.mean_us().is_some_and(|m| m > 8_000_000.0));
        assert_eq!(LunStatsSnapshot::default().quantile_us(0.5), None);
        assert_eq!(LunStatsSnapshot::default().mean_us(), None);
    }

    #[test]
    fn queues_count_what_they_answered() {
        let q = QueueStats::new(4);
        q.completed(2);
        q.completed(2);
        q.completed(3);
        q.completed(9);
        assert_eq!(q.snapshot(), vec![(2, 2), (3, 1)]);
    }
}
