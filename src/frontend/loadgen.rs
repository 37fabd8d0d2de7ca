//! A load generator on top of the frontend: plays QEMU's part against any vhost-user-scsi
//! or vhost-user-blk backend and runs a fio-like workload, so every system is measured the
//! same way from the device side (used by `benches/loadgen.rs` and `benches/compare.sh`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::rng::Rng;
use super::{lun_address, ConnectOptions, Connection};
use crate::scsi::cdb::{READ_16, WRITE_16};

/// Which virtio device the backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Scsi,
    Blk,
}

/// A workload: fio-like parameters plus the names reported with the result.
#[derive(Debug, Clone)]
pub struct Args {
    pub socket: PathBuf,
    pub proto: Proto,
    pub rw: String,
    pub bs: u64,
    pub iodepth: usize,
    pub queues: usize,
    pub runtime: Duration,
    pub size: u64,
    pub lun: u16,
    pub backend_pid: Option<u32>,
    /// A process the backend depends on (an iSCSI target on this machine): its CPU over
    /// the run is reported beside the backend's (`target_cpu_us_per_io`,
    /// `target_busy_pct`), with the generator's own and the whole machine's, so a run
    /// shows which of them was the limit.
    pub target_pid: Option<u32>,
    pub system: String,
    pub workload: String,
    /// After the workload, stay connected without I/O this long and report the backend's
    /// CPU meanwhile (`idle_cpu_pct`, percent of one core).
    pub idle: Duration,
    /// Start the workload at this wall-clock time (after connecting), so several generators
    /// run over the same interval.
    pub start_at: Option<std::time::SystemTime>,
    /// Poll the used rings without sleeping and ask the device for no notifications, as
    /// a guest driver with polling queues does: the generator's own wake-up leaves the
    /// round trip of each I/O, so a run shows what the backend's part of it costs.
    pub spin: bool,
}

/// Guest buffers of one in-flight request.
struct Slot {
    hdr: u64,
    data: u64,
    status: u64,
    started: Instant,
}

struct Engine {
    conn: Connection,
    proto: Proto,
    first_queue: usize,
    slots: Vec<Vec<Slot>>,
    by_head: Vec<Vec<usize>>,
    next_seq: u64,
    rng: Rng,
    blocks: u64,
    args_bs: u64,
    write: bool,
    random: bool,
    lun: [u8; 8],
}

impl Engine {
    fn offset(&mut self) -> u64 {
        if self.random {
            (self.rng.next_u64() % self.blocks) * self.args_bs
        } else {
            let o = (self.next_seq % self.blocks) * self.args_bs;
            self.next_seq += 1;
            o
        }
    }

    /// Writes the request header for slot `s` of queue `q` and publishes its chain.
    fn submit(&mut self, q: usize, s: usize) {
        let off = self.offset();
        let bs = self.args_bs;
        let mem = &self.conn.mem;
        let slot = &mut self.slots[q][s];
        slot.started = Instant::now();
        // A fixed array: the generator's own hot path allocates nothing per request.
        let bufs: [(u64, u32, bool); 3] = match self.proto {
            Proto::Scsi => {
                let mut h = [0u8; 51];
                h[0..8].copy_from_slice(&self.lun);
                let cdb = &mut h[19..35];
                cdb[0] = if self.write { WRITE_16 } else { READ_16 };
                cdb[2..10].copy_from_slice(&(off / 512).to_be_bytes());
                cdb[10..14].copy_from_slice(&((bs / 512) as u32).to_be_bytes());
                let _ = mem.write_slice(&h, GuestAddress(slot.hdr));
                if self.write {
                    [
                        (slot.hdr, 51, false),
                        (slot.data, bs as u32, false),
                        (slot.status, 108, true),
                    ]
                } else {
                    [
                        (slot.hdr, 51, false),
                        (slot.status, 108, true),
                        (slot.data, bs as u32, true),
                    ]
                }
            }
            Proto::Blk => {
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&(u32::from(self.write)).to_le_bytes());
                h[8..16].copy_from_slice(&(off / 512).to_le_bytes());
                let _ = mem.write_slice(&h, GuestAddress(slot.hdr));
                [
                    (slot.hdr, 16, false),
                    (slot.data, bs as u32, !self.write),
                    (slot.status, 1, true),
                ]
            }
        };
        let queue = &mut self.conn.queues[self.first_queue + q];
        if let Some(head) = queue.add_chain(mem, &bufs, None) {
            self.by_head[q][usize::from(head)] = s;
        }
    }

    /// True when the completed request of slot `s` reports success. A UNIT ATTENTION (a
    /// passthrough LUN's target reports one to every new nexus) is not a failure: a guest
    /// driver retries it, and the slot's next request does the same here.
    fn ok(&self, q: usize, s: usize) -> bool {
        let slot = &self.slots[q][s];
        let mem = &self.conn.mem;
        match self.proto {
            Proto::Scsi => {
                let mut r = [0u8; 15];
                if mem.read_slice(&mut r, GuestAddress(slot.status)).is_err() || r[11] != 0 {
                    return false;
                }
                let unit_attention = r[10] == 2 && r[14] & 0x0f == 6;
                r[10] == 0 || unit_attention
            }
            Proto::Blk => mem
                .read_obj::<u8>(GuestAddress(slot.status))
                .map(|b| b == 0)
                .unwrap_or(false),
        }
    }
}

/// CPU time of every thread of `pid` so far, in nanoseconds (the scheduler's own
/// accounting, finer than the clock ticks of /proc/<pid>/stat).
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Busy and total time of all CPUs so far, in clock ticks, from /proc/stat's first line.
fn machine_ticks() -> Option<(u64, u64)> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Busy and total ticks from /proc/stat's text: idle and I/O wait are not busy; guest
/// time is already part of user time.
fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, busy + idle + iowait))
}

/// What the parties other than the backend spent over a run: the target's CPU (clock
/// ticks of /proc/<pid>/stat, which keep the time of threads that ended, as a target's
/// I/O threads may), the generator's own (ns), and the machine's busy and total ticks.
struct PartySample {
    target: Option<u64>,
    /// The target's threads by id, with their ticks: the busiest one over the run shows
    /// whether a single-threaded event loop was the limit.
    target_threads: Vec<(u32, u64)>,
    generator: Option<u64>,
    machine: Option<(u64, u64)>,
}

impl PartySample {
    fn now(target_pid: Option<u32>) -> PartySample {
        PartySample {
            target: target_pid.and_then(cpu_ticks),
            target_threads: target_pid.map(thread_ticks).unwrap_or_default(),
            generator: own_cpu_ns(),
            machine: machine_ticks(),
        }
    }

    /// The JSON fields for the run from `self` to `end`: `target_cpu_us_per_io`,
    /// `target_busy_pct` (% of one core), `gen_cpu_us_per_io` (the generator's own) and
    /// `machine_busy_pct` (% of all CPUs); null where a figure is missing.
    fn fields(&self, end: &PartySample, ios: f64, elapsed: Duration) -> String {
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64),
            _ => None,
        };
        let show = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.3}"));
        // USER_HZ is 100 on Linux: one tick is 10 ms.
        let target = delta(self.target, end.target).map(|t| t * 10_000_000.0);
        let generator = delta(self.generator, end.generator);
        let machine = match (self.machine, end.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(b1.saturating_sub(b0) as f64 * 100.0 / (t1 - t0) as f64)
            }
            _ => None,
        };
        // A thread that started during the run counts from its start.
        let top_thread = end
            .target_threads
            .iter()
            .map(|&(tid, t1)| {
                let t0 = self
                    .target_threads
                    .iter()
                    .find(|&&(id, _)| id == tid)
                    .map_or(0, |&(_, t)| t);
                t1.saturating_sub(t0)
            })
            .max()
            .map(|t| t as f64 * 10_000_000.0);
        let busy = |ns: f64| ns * 100.0 / elapsed.as_nanos().max(1) as f64;
        format!(
            "\"target_cpu_us_per_io\": {}, \"target_busy_pct\": {}, \"target_top_thread_pct\": {}, \"gen_cpu_us_per_io\": {}, \"machine_busy_pct\": {}",
            show(target.map(|t| t / 1000.0 / ios)),
            show(target.map(busy)),
            show(top_thread.map(busy)),
            show(generator.map(|g| g / 1000.0 / ios)),
            show(machine),
        )
    }
}

/// Each thread of `pid` with its CPU time so far in clock ticks (none if it is gone).
fn thread_ticks(pid: u32) -> Vec<(u32, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let tid: u32 = t.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            Some((tid, stat_ticks(&stat)?))
        })
        .collect()
}

/// utime + stime (clock ticks) from a /proc stat line (the name may hold spaces and
/// parentheses: the fields start after the last one).
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// This process's CPU time so far, every thread's (ended ones too), in nanoseconds.
fn own_cpu_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Runs the workload against the backend at `a.socket`; returns the result as one JSON
/// object (system, workload, iops, bw_mib_s, lat_mean_us, lat_p99_us, cpu_us_per_io,
/// kicks_per_io, calls_per_io: the device's notifications per I/O, idle_cpu_pct).
pub fn run(a: &Args) -> Result<String, String> {
    let queue_size: u16 = 256;
    let slot_bytes = 4096 + a.bs;
    let mem_size = (32 << 20) + (a.queues * a.iodepth) as u64 * slot_bytes.next_multiple_of(4096);
    let (total_queues, first_queue) = match a.proto {
        Proto::Scsi => (2 + a.queues, 2),
        Proto::Blk => (a.queues, 0),
    };
    let opts = ConnectOptions {
        memory_size: mem_size as usize,
        queues: total_queues as u16,
        queue_size,
        connect_timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    };
    let mut conn = Connection::connect(&a.socket, &opts).map_err(|e| e.to_string())?;
    let mut slots = Vec::new();
    for _ in 0..a.queues {
        let mut qs = Vec::new();
        for _ in 0..a.iodepth {
            let base = conn.alloc(slot_bytes, 4096).map_err(|e| e.to_string())?;
            let data = base + 4096;
            let pattern = vec![0x5au8; a.bs as usize];
            conn.mem
                .write_slice(&pattern, GuestAddress(data))
                .map_err(|e| e.to_string())?;
            qs.push(Slot {
                hdr: base,
                data,
                status: base + 512,
                started: Instant::now(),
            });
        }
        slots.push(qs);
    }
    let mut e = Engine {
        conn,
        proto: a.proto,
        first_queue,
        slots,
        by_head: vec![vec![0; usize::from(queue_size)]; a.queues],
        next_seq: 0,
        rng: Rng::new(0x9e37_79b9_7f4a_7c15),
        blocks: (a.size / a.bs).max(1),
        args_bs: a.bs,
        write: a.rw.ends_with("write"),
        random: a.rw.starts_with("rand"),
        lun: lun_address(0, a.lun),
    };
    if a.spin {
        for q in 0..a.queues {
            let mem = &e.conn.mem;
            e.conn.queues[first_queue + q].set_interrupts(mem, false);
        }
    }
    // Warm-up is part of the connection; measurement starts with the first submission.
    let mut lat: Vec<u32> = Vec::with_capacity(4 << 20);
    let mut errors = 0u64;
    // Every completion counts; latencies are sampled up to the vector's capacity.
    let mut completed = 0u64;
    if let Some(at) = a.start_at {
        if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
            std::thread::sleep(wait.min(Duration::from_secs(60)));
        }
    }
    let cpu0 = a.backend_pid.and_then(cpu_ticks);
    let parties0 = PartySample::now(a.target_pid);
    let start = Instant::now();
    for q in 0..a.queues {
        for s in 0..a.iodepth {
            e.submit(q, s);
        }
        e.conn.queues[first_queue + q].kick();
    }
    let mut kicks = a.queues as u64;
    // The device's notifications (interrupts to a guest): the call eventfds' counters.
    let mut calls = 0u64;
    let deadline = start + a.runtime;
    let mut inflight = a.queues * a.iodepth;
    let mut stopping = false;
    while inflight > 0 {
        let mut progressed = false;
        for q in 0..a.queues {
            let mut resubmitted = false;
            loop {
                let mem = &e.conn.mem;
                let Some((head, _)) = e.conn.queues[first_queue + q].pop_used(mem) else {
                    break;
                };
                progressed = true;
                let s = e.by_head[q][usize::from(head) % usize::from(queue_size)];
                let us = e.slots[q][s]
                    .started
                    .elapsed()
                    .as_micros()
                    .min(u128::from(u32::MAX)) as u32;
                if !e.ok(q, s) {
                    errors += 1;
                }
                completed += 1;
                if lat.len() < lat.capacity() {
                    lat.push(us);
                }
                if !stopping && Instant::now() >= deadline {
                    stopping = true;
                }
                if stopping {
                    inflight -= 1;
                } else {
                    e.submit(q, s);
                    resubmitted = true;
                }
            }
            if resubmitted {
                // As a guest driver: only when the device asked for it (it does not while
                // it polls).
                let mem = &e.conn.mem;
                kicks += u64::from(e.conn.queues[first_queue + q].kick_if_needed(mem));
            }
        }
        if !progressed && a.spin {
            std::hint::spin_loop();
            if start.elapsed() > a.runtime + Duration::from_secs(30) {
                return Err("the backend stopped completing requests".into());
            }
        } else if !progressed {
            let mut fds: Vec<libc::pollfd> = (0..a.queues)
                .map(|q| libc::pollfd {
                    fd: std::os::unix::io::AsRawFd::as_raw_fd(&e.conn.queues[first_queue + q].call),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: fds is a valid array of pollfd for the call's duration.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            for q in 0..a.queues {
                calls += e.conn.queues[first_queue + q].call.read().unwrap_or(0);
            }
            if start.elapsed() > a.runtime + Duration::from_secs(30) {
                return Err("the backend stopped completing requests".into());
            }
        }
    }
    let run_time = start.elapsed();
    let elapsed = run_time.as_secs_f64();
    let cpu1 = a.backend_pid.and_then(cpu_ticks);
    let parties1 = PartySample::now(a.target_pid);
    for q in 0..a.queues {
        calls += e.conn.queues[first_queue + q].call.read().unwrap_or(0);
    }
    let idle_cpu = if a.idle.is_zero() {
        "null".to_string()
    } else {
        // Connected, queues live, nothing to do: what the backend spends waiting.
        let before = a.backend_pid.and_then(cpu_ns);
        let t0 = std::time::Instant::now();
        std::thread::sleep(a.idle);
        let after = a.backend_pid.and_then(cpu_ns);
        match (before, after) {
            (Some(b), Some(e)) => format!(
                "{:.4}",
                e.saturating_sub(b) as f64 / t0.elapsed().as_nanos() as f64 * 100.0
            ),
            _ => "null".into(),
        }
    };
    let ios = completed as f64;
    if lat.is_empty() {
        return Err("no I/O completed".into());
    }
    if errors > 0 {
        return Err(format!("{errors} I/Os failed"));
    }
    let cpu = match (cpu0, cpu1) {
        // USER_HZ is 100 on Linux: one tick is 10 000 us.
        (Some(c0), Some(c1)) => format!("{:.3}", (c1 - c0) as f64 * 10_000.0 / ios),
        _ => "null".into(),
    };
    Ok(format!(
        "{}, \"cpu_us_per_io\": {}, \"kicks_per_io\": {:.3}, \"calls_per_io\": {:.3}, \"idle_cpu_pct\": {}, {}}}",
        result_head(a, ios / elapsed, &mut lat),
        cpu,
        kicks as f64 / ios,
        calls as f64 / ios,
        idle_cpu,
        parties0.fields(&parties1, ios, run_time)
    ))
}

/// The fields every result starts with, as the opening of a JSON object without its
/// closing brace: system, workload, iops, bw_mib_s, lat_mean_us and lat_p99_us (from
/// `lat`, at least one sample, sorted here).
pub(super) fn result_head(a: &Args, iops: f64, lat: &mut [u32]) -> String {
    let (mean, p99) = mean_and_p99(lat);
    format!(
        "{{\"system\": \"{}\", \"workload\": \"{}\", \"iops\": {:.0}, \"bw_mib_s\": {:.1}, \"lat_mean_us\": {:.1}, \"lat_p99_us\": {:.0}",
        a.system,
        a.workload,
        iops,
        iops * a.bs as f64 / 1048576.0,
        mean,
        p99
    )
}

/// Mean and 99th percentile of latency samples (µs; at least one), sorting them.
fn mean_and_p99(lat: &mut [u32]) -> (f64, f64) {
    lat.sort_unstable();
    let mean = lat.iter().map(|&x| f64::from(x)).sum::<f64>() / lat.len() as f64;
    let p99 = f64::from(lat[((lat.len() as f64 * 0.99) as usize).min(lat.len() - 1)]);
    (mean, p99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_leave_idle_and_io_wait_out_of_busy() {
        let stat = "cpu  100 5 40 800 30 2 3 1 7 0\ncpu0 50 2 20 400 15 1 1 0 3 0\n";
        // busy: user + nice + system + irq + softirq + steal (guest is within user).
        assert_eq!(parse_machine_ticks(stat), Some((151, 981)));
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(parse_machine_ticks("cpu 1 2 3\n"), None);
        assert_eq!(parse_machine_ticks(""), None);
    }

    #[test]
    fn stat_ticks_read_past_a_name_with_parentheses() {
        let stat = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17";
        // utime and stime are the 14th and 15th fields (11 + 12 here).
        assert_eq!(stat_ticks(stat), Some(23));
        assert_eq!(stat_ticks("4242 (x) S 1 2"), None);
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn party_fields_are_per_io_and_per_second() {
        let start = PartySample {
            target: Some(7),
            target_threads: vec![(10, 5), (11, 2)],
            generator: Some(0),
            machine: Some((100, 1000)),
        };
        let end = PartySample {
            // 50 ticks of 10 ms: 40 on thread 10, 3 on thread 11, 7 on a new thread 12.
            target: Some(57),
            target_threads: vec![(10, 45), (11, 5), (12, 7)],
            generator: Some(250_000_000),
            machine: Some((250, 1200)),
        };
        // 1 s, 10 000 I/Os: the target ran 0.5 s (50 µs per I/O), the generator 0.25 s.
        let f = start.fields(&end, 10_000.0, Duration::from_secs(1));
        assert_eq!(
            f,
            "\"target_cpu_us_per_io\": 50.000, \"target_busy_pct\": 50.000, \
             \"target_top_thread_pct\": 40.000, \"gen_cpu_us_per_io\": 25.000, \
             \"machine_busy_pct\": 75.000"
        );
        let none = PartySample {
            target: None,
            target_threads: Vec::new(),
            generator: None,
            machine: None,
        };
        assert_eq!(
            none.fields(&none, 1.0, Duration::from_secs(1)),
            "\"target_cpu_us_per_io\": null, \"target_busy_pct\": null, \
             \"target_top_thread_pct\": null, \"gen_cpu_us_per_io\": null, \
             \"machine_busy_pct\": null"
        );
    }
}
