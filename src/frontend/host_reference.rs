//! The limit the load generator's workload can reach on this machine, measured without any
//! vhost-user in between: the same I/O shapes the load generator sends a daemon (one data
//! buffer of `bs` bytes per request, at the same place in a shared memfd mapping as a
//! guest's, 4 KiB-aligned, one buffer per in-flight request; the same offsets' random
//! generator; the same queue depth per queue), issued straight to the file with io_uring
//! and O_DIRECT as vscsid issues them for `cache=none` (a READ or WRITE of one buffer),
//! one thread and one ring per queue. So this reference and vscsid differ only by what
//! vscsid adds: the virtqueues, the request parsing, the wake-ups. (Host fio, the other
//! reference, uses its own buffers and submission pattern.)

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::loadgen::Args;
use super::rng::Rng;

/// What one queue's thread measured.
struct QueueResult {
    completed: u64,
    latencies: Vec<u32>,
    errors: u64,
}

/// A shared anonymous mapping from a memfd, as a frontend's guest memory is.
struct Memory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory, alive until the owner drops it.
unsafe impl Send for Memory {}
// SAFETY: each queue's thread writes only its own slots of the mapping.
unsafe impl Sync for Memory {}

impl Memory {
    fn new(len: usize) -> Result<Memory, String> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags.
        let fd = unsafe { libc::memfd_create(c"host-reference".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        let len_off = libc::off_t::try_from(len).map_err(|_| "memory too large".to_string())?;
        // SAFETY: fd is the memfd just created; ftruncate sizes it.
        let rc = unsafe { libc::ftruncate(fd, len_off) };
        // SAFETY: mapping `len` bytes of a file of that size, shared, readable and writable.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        // SAFETY: the mapping holds its own reference to the file.
        unsafe { libc::close(fd) };
        if rc < 0 || ptr == libc::MAP_FAILED {
            return Err(format!(
                "memfd mapping: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Memory {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`, used by no one any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn self_cpu_us() -> f64 {
    // SAFETY: getrusage writes one rusage struct to the pointer.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `u` lives for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(u.ru_utime) + us(u.ru_stime)
}

/// Runs `a`'s workload straight on `file`; the result is one JSON object in the load
/// generator's format, `cpu_us_per_io` being this process's own CPU time per I/O.
pub fn run(a: &Args, file: &std::path::Path) -> Result<String, String> {
    let write = a.rw.ends_with("write");
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let slot_bytes = (4096 + a.bs).next_multiple_of(4096) as usize;
    let mem = Memory::new(slot_bytes * a.queues * a.iodepth)?;
    // The load generator fills its buffers with a pattern: so does this.
    // SAFETY: the mapping is `mem.len` bytes, written by no one else yet.
    unsafe { std::ptr::write_bytes(mem.ptr, 0x5a, mem.len) };
    let cpu0 = self_cpu_us();
    let start = Instant::now();
    let results: Vec<Result<QueueResult, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..a.queues)
            .map(|q| {
                let (mem, f) = (&mem, &f);
                scope.spawn(move || queue(a, q, mem, slot_bytes, f.as_raw_fd(), write))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("queue thread panicked".into()))
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = self_cpu_us() - cpu0;
    let mut lat = Vec::new();
    let (mut completed, mut errors) = (0u64, 0u64);
    for r in results {
        let r = r?;
        completed += r.completed;
        errors += r.errors;
        lat.extend(r.latencies);
    }
    if errors > 0 {
        return Err(format!("{errors} I/Os failed"));
    }
    if lat.is_empty() {
        return Err("no I/O completed".into());
    }
    Ok(format!(
        "{}, \"cpu_us_per_io\": {:.3}}}",
        super::loadgen::result_head(a, completed as f64 / elapsed, &mut lat),
        cpu / completed as f64
    ))
}

/// One queue: `iodepth` requests in flight on its own ring until the run time is over.
fn queue(
    a: &Args,
    q: usize,
    mem: &Memory,
    slot_bytes: usize,
    fd: i32,
    write: bool,
) -> Result<QueueResult, String> {
    let depth = u32::try_from(a.iodepth.max(1)).map_err(|_| "iodepth too large")?;
    let mut ring = IoUring::new(depth.next_power_of_two()).map_err(|e| e.to_string())?;
    let blocks = (a.size / a.bs).max(1);
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ q as u64);
    let mut next_seq = 0u64;
    let random = a.rw.starts_with("rand");
    let len = u32::try_from(a.bs).map_err(|_| "bs too large")?;
    let mut started = vec![Instant::now(); a.iodepth];
    let mut r = QueueResult {
        completed: 0,
        latencies: Vec::with_capacity(4 << 20),
        errors: 0,
    };
    let mut submit = |ring: &mut IoUring, s: usize, started: &mut [Instant]| {
        let off = if random {
            (rng.next_u64() % blocks) * a.bs
        } else {
            let o = (next_seq % blocks) * a.bs;
            next_seq += 1;
            o
        };
        // The slot's data buffer: 4 KiB after the start of its slot, as in the load
        // generator's guest memory.
        // SAFETY: slot (q, s) lies inside the mapping (its size is queues * iodepth
        // slots) and only this thread uses it.
        let buf = unsafe { mem.ptr.add((q * a.iodepth + s) * slot_bytes + 4096) };
        let e = if write {
            opcode::Write::new(types::Fd(fd), buf, len)
                .offset(off)
                .build()
        } else {
            opcode::Read::new(types::Fd(fd), buf, len)
                .offset(off)
                .build()
        }
        .user_data(s as u64);
        started[s] = Instant::now();
        // SAFETY: the buffer stays mapped and untouched until the completion is reaped.
        unsafe { ring.submission().push(&e) }.is_ok()
    };
    for s in 0..a.iodepth {
        submit(&mut ring, s, &mut started);
    }
    let deadline = Instant::now() + a.runtime;
    let mut inflight = a.iodepth;
    let give_up = deadline + Duration::from_secs(30);
    let mut done: Vec<(usize, i32)> = Vec::with_capacity(a.iodepth);
    while inflight > 0 {
        ring.submit_and_wait(1).map_err(|e| e.to_string())?;
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
        let now = Instant::now();
        for &(s, res) in &done {
            if res != len as i32 {
                r.errors += 1;
            }
            r.completed += 1;
            if r.latencies.len() < r.latencies.capacity() {
                let us = now.duration_since(started[s]).as_micros();
                r.latencies.push(us.min(u128::from(u32::MAX)) as u32);
            }
            if now >= deadline || !submit(&mut ring, s, &mut started) {
                inflight -= 1;
            } else {
                // Each request goes to the kernel as soon as it is made, as vscsid submits
                // (`--submit-batch 1`): a batch would let the block layer plug it.
                ring.submit().map_err(|e| e.to_string())?;
            }
        }
        if now > give_up {
            return Err("the file stopped completing requests".into());
        }
    }
    Ok(r)
}
