//! A passthrough LUN's command engine. With helper threads ([`Engine::Threads`]) they
//! take commands from a bounded queue, run each with a blocking SG_IO on the device, and
//! answer it through the worker's callback; an sg device uses the sg driver's
//! asynchronous interface instead ([`Engine::SgAsync`], see `sg_async`). The device's
//! descriptor is shared; when the device is gone it is dropped and the path opened again,
//! at most once per `REOPEN_INTERVAL`, for a later command (`device`). Data moves through
//! buffers the LUN keeps for reuse (see the module above for why not guest memory).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

#[cfg(test)]
use super::device::REOPEN_INTERVAL;
use super::device::{current_file, lock, lost, DeviceState, Queue, Shared};
pub use super::device::{DeviceSpec, Job, QUEUE_DEPTH};
use super::reply::{self, DeviceFacts, Health, DEVICE_GONE};
use super::sg_async::{self, AsyncSg};
use crate::backend::sg_io::{self, Direction};
use crate::lun::MAX_SENSE;
use crate::scsi::task::{ScsiCompletion, TransportError};

/// Helper threads per LUN: enough to keep a disk's queue busy with the commands that are
/// not READ/WRITE (or every command of an sg device); the sg driver takes at most 16
/// commands per descriptor at once.
pub const THREADS: usize = 8;
/// Buffers kept for reuse: one per thread covers a steady load without allocating.
const KEPT_BUFFERS: usize = THREADS;
/// Tries of a command the kernel answered with EINTR/EAGAIN before giving up.
const MAX_TRIES: u32 = 3;

/// How a LUN's commands reach the device.
pub enum Engine {
    /// [`THREADS`] helper threads, each in a blocking SG_IO.
    Threads,
    /// The sg driver's asynchronous interface (`sg_async`): sg devices only.
    SgAsync,
}

/// The helper threads of one LUN and what they share.
pub struct Pool {
    shared: Arc<Shared>,
    /// Set for the asynchronous engine.
    sg_async: Option<Arc<AsyncSg>>,
}

impl Pool {
    /// Starts the threads on an opened device. `mirror_fd`: a descriptor of the same
    /// device, owned by the caller and open for as long as the pool, that a reopen
    /// replaces too.
    pub fn start(
        spec: DeviceSpec,
        file: File,
        facts: DeviceFacts,
        mirror_fd: Option<RawFd>,
        engine: Engine,
    ) -> Result<Pool, String> {
        let sg_async = match engine {
            Engine::Threads => None,
            Engine::SgAsync => Some(Arc::new(
                AsyncSg::new().map_err(|e| format!("cannot set up sg completions: {e}"))?,
            )),
        };
        let shared = Arc::new(Shared {
            spec,
            device: Mutex::new(DeviceState {
                file: Some(Arc::new(file)),
                last_try: Instant::now(),
                generation: 0,
                mirror_fd,
            }),
            queue: Mutex::new(Queue {
                jobs: VecDeque::with_capacity(QUEUE_DEPTH),
                outstanding: 0,
                stopping: false,
            }),
            ready: Condvar::new(),
            buffers: Mutex::new(Vec::with_capacity(KEPT_BUFFERS)),
            facts,
            next_id: AtomicU64::new(1),
            denied_logged: AtomicBool::new(false),
        });
        let pool = Pool { shared, sg_async };
        if let Some(engine) = &pool.sg_async {
            let (shared, engine) = (pool.shared.clone(), engine.clone());
            std::thread::Builder::new()
                .name("vscsid-sgdone".into())
                .spawn(move || {
                    crate::sandbox::enter(crate::sandbox::ThreadKind::Passthrough);
                    sg_async::complete(&shared, &engine);
                })
                .map_err(|e| format!("cannot start the sg completion thread: {e}"))?;
            return Ok(pool);
        }
        for n in 0..THREADS {
            let shared = pool.shared.clone();
            std::thread::Builder::new()
                .name(format!("vscsid-sg{n}"))
                .spawn(move || {
                    crate::sandbox::enter(crate::sandbox::ThreadKind::Passthrough);
                    serve(&shared);
                })
                .map_err(|e| format!("cannot start a passthrough thread: {e}"))?;
        }
        Ok(pool)
    }

    /// The asynchronous sg engine, when the LUN uses it: it moves data straight between
    /// guest memory and the device.
    pub fn sg_engine(&self) -> Option<&AsyncSg> {
        self.sg_async.as_deref()
    }

    /// What the LUN knows of its device.
    pub fn facts(&self) -> &DeviceFacts {
        &self.shared.facts
    }

    /// Takes a buffer of `len` bytes (zeroed) from the reusable ones, or a new one.
    pub fn buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = lock(&self.shared.buffers).pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        buf
    }

    /// Gives a buffer back for reuse.
    pub fn recycle(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        let mut kept = lock(&self.shared.buffers);
        if kept.len() < KEPT_BUFFERS {
            kept.push(buf);
        }
    }

    /// Counts a command in before its job is built: false when QUEUE_DEPTH commands are
    /// already outstanding (answer TASK SET FULL).
    pub fn reserve(&self) -> bool {
        let mut q = lock(&self.shared.queue);
        if q.outstanding >= QUEUE_DEPTH || q.stopping {
            return false;
        }
        q.outstanding += 1;
        true
    }

    /// Gives back a count taken by [`Pool::reserve`] for a command that was not queued.
    pub fn cancel_reservation(&self) {
        let mut q = lock(&self.shared.queue);
        q.outstanding = q.outstanding.saturating_sub(1);
    }

    /// A fresh id for a command.
    pub fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues a command counted in by [`Pool::reserve`].
    pub fn submit(&self, job: Job) {
        if let Some(engine) = &self.sg_async {
            sg_async::submit(&self.shared, engine, job);
            return;
        }
        lock(&self.shared.queue).jobs.push_back(job);
        self.shared.ready.notify_one();
    }

    /// Answers queued commands (`which` picks them; None: all) as aborted before they
    /// reach the device. Commands already in an ioctl cannot be taken back: they end when
    /// the device answers. Returns how many were taken off the queue.
    pub fn cancel(&self, which: Option<u64>) -> usize {
        let taken: Vec<Job> = {
            let mut q = lock(&self.shared.queue);
            let (taken, kept): (Vec<Job>, Vec<Job>) = q
                .jobs
                .drain(..)
                .partition(|j| which.is_none_or(|id| id == j.id));
            q.jobs.extend(kept);
            q.outstanding -= taken.len();
            taken
        };
        let n = taken.len();
        for job in taken {
            job.reply
                .complete(reply::failed(TransportError::Aborted, job.buf));
        }
        n
    }

    /// Resets the logical unit (SG_SCSI_RESET), when the device is there and the kernel
    /// allows it (CAP_SYS_ADMIN and CAP_SYS_RAWIO). Blocks until the host is done.
    pub fn reset_device(&self) -> Result<(), String> {
        let Some(file) = current_file(&self.shared) else {
            return Err("the device is gone".into());
        };
        sg_io::reset_device(&file).map_err(|e| e.to_string())
    }

    /// How often the device was opened again after it was gone.
    pub fn generation(&self) -> u64 {
        lock(&self.shared.device).generation
    }

    /// The device failed outside SG_IO (a read or write of the block device): it is
    /// treated as gone, and the next command sent to the threads opens it again.
    pub fn mark_lost(&self) {
        let file = lock(&self.shared.device).file.clone();
        if let Some(f) = file {
            lost(&self.shared, &f);
        }
    }

    /// Whether the device is there now (not known gone).
    pub fn present(&self) -> bool {
        lock(&self.shared.device).file.is_some()
    }

    /// Commands accepted and not answered yet.
    pub fn outstanding(&self) -> usize {
        lock(&self.shared.queue).outstanding
    }
}

/// The threads stop once the queue is empty; nothing waits for a thread still in an
/// ioctl (a tape's REWIND can take minutes), which ends on its own.
impl Drop for Pool {
    fn drop(&mut self) {
        // From here on a reopen leaves the owner's descriptor alone (it closes next).
        lock(&self.shared.device).mirror_fd = None;
        lock(&self.shared.queue).stopping = true;
        self.shared.ready.notify_all();
        if let Some(engine) = &self.sg_async {
            engine.wake();
        }
    }
}

/// A helper thread's loop.
fn serve(shared: &Shared) {
    let mut sense = [0u8; MAX_SENSE];
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.stopping {
                    return;
                }
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Job {
            cdb,
            cdb_len,
            dir,
            buf,
            reply,
            ..
        } = job;
        let completion = run(shared, &cdb[..cdb_len], dir, buf, &mut sense);
        lock(&shared.queue).outstanding -= 1;
        reply.complete(completion);
    }
}

/// Runs one command on the device and builds its answer.
fn run(
    shared: &Shared,
    cdb: &[u8],
    dir: Direction,
    mut buf: Vec<u8>,
    sense: &mut [u8; MAX_SENSE],
) -> ScsiCompletion {
    let Some(file) = current_file(shared) else {
        return reply::check(DEVICE_GONE, buf);
    };
    let timeout = shared.spec.timeout_ms;
    let mut tries = 0;
    let result = loop {
        tries += 1;
        match sg_io::sg_io(&file, cdb, dir, &mut buf, sense, timeout) {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN))
                    && tries < MAX_TRIES => {}
            r => break r,
        }
    };
    match result {
        Ok(r) => {
            let (mut c, health) = reply::for_reply(&r, sense, buf, dir == Direction::FromDevice);
            if health == Health::Gone {
                lost(shared, &file);
            } else if matches!(&c.result, Ok(st) if st.status == crate::scsi::status::GOOD) {
                shared.facts.observe(cdb, &mut c.data_in);
            }
            c
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            if sg_io::device_gone(errno) {
                lost(shared, &file);
            }
            if matches!(errno, libc::EPERM | libc::EACCES)
                && !shared.denied_logged.swap(true, Ordering::Relaxed)
            {
                tracing::warn!(
                    path = %shared.spec.path.display(),
                    opcode = format_args!("{:#04x}", cdb.first().copied().unwrap_or(0)),
                    "the kernel refused a passthrough command (EPERM): some commands need CAP_SYS_RAWIO; answered INVALID COMMAND OPERATION CODE (logged once)"
                );
            }
            reply::for_errno(errno, buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sg_io::DeviceKind;
    use std::sync::mpsc;
    use std::time::Duration;

    /// A pool on /dev/null: every SG_IO fails with ENOTTY, which is not a lost device.
    /// A pool for a device at `path` whose first descriptor is /dev/null (every SG_IO
    /// fails with ENOTTY, which is not a lost device).
    fn pool_at(path: std::path::PathBuf, engine: Engine) -> Pool {
        let spec = DeviceSpec {
            path,
            kind: DeviceKind::ScsiGeneric,
            readonly: true,
            extra_flags: 0,
            timeout_ms: 1000,
        };
        let file = File::open("/dev/null").expect("/dev/null");
        Pool::start(spec, file, DeviceFacts::new(1 << 20, 512, 0), None, engine).expect("pool")
    }

    fn null_pool() -> Pool {
        pool_at("/dev/null".into(), Engine::Threads)
    }

    fn job(pool: &Pool, tx: mpsc::Sender<ScsiCompletion>) -> Job {
        let mut cdb = [0u8; 32];
        cdb[0] = crate::scsi::cdb::INQUIRY;
        Job {
            id: pool.next_id(),
            cdb,
            cdb_len: 6,
            dir: Direction::FromDevice,
            buf: pool.buffer(96),
            guest: None,
            reply: crate::scsi::task::Completer::new(move |c| {
                let _ = tx.send(c);
            }),
        }
    }

    #[test]
    fn a_command_is_answered_from_a_helper_thread_and_its_buffer_comes_back() {
        let pool = null_pool();
        let (tx, rx) = mpsc::channel();
        assert!(pool.reserve());
        pool.submit(job(&pool, tx));
        let c = rx.recv_timeout(Duration::from_secs(10)).expect("answer");
        // ENOTTY: an internal target failure, not a lost device.
        let st = c.result.expect("status");
        assert_eq!(st.status, crate::scsi::status::CHECK_CONDITION);
        assert_eq!(st.sense[12], 0x44);
        assert!(pool.present());
        assert!(c.data_in.is_empty() && c.data_in.capacity() >= 96);
        pool.recycle(c.data_in);
        assert_eq!(pool.buffer(10), vec![0u8; 10], "reused, zeroed");
        assert_eq!(pool.outstanding(), 0);
    }

    #[test]
    fn the_queue_is_bounded() {
        let pool = null_pool();
        // Counted in but not submitted: the threads cannot take them.
        for _ in 0..QUEUE_DEPTH {
            assert!(pool.reserve());
        }
        assert!(!pool.reserve(), "TASK SET FULL past the depth");
        assert_eq!(pool.outstanding(), QUEUE_DEPTH);
    }

    #[test]
    fn cancelled_commands_end_aborted() {
        let pool = null_pool();
        let (tx, rx) = mpsc::channel();
        let (a, b) = (job(&pool, tx.clone()), job(&pool, tx));
        let (id_a, id_b) = (a.id, b.id);
        {
            let mut q = lock(&pool.shared.queue);
            q.outstanding += 2;
            q.jobs.push_back(a);
            q.jobs.push_back(b);
        }
        // Whichever a thread already took ends with the device's answer; the rest abort.
        let taken = pool.cancel(Some(id_a)) + pool.cancel(None);
        let mut aborted = 0;
        for _ in 0..2 {
            let c = rx.recv_timeout(Duration::from_secs(10)).expect("answer");
            if c.result == Err(TransportError::Aborted) {
                aborted += 1;
            }
        }
        assert_eq!(aborted, taken);
        assert_eq!(pool.outstanding(), 0);
        assert_ne!(id_a, id_b);
    }

    #[test]
    fn a_gone_device_is_not_ready_and_reopened_at_most_once_per_interval() {
        let dir = tempfile::tempdir().expect("tmp");
        let pool = pool_at(dir.path().join("sg9"), Engine::Threads);
        let held = current_file(&pool.shared).expect("open");
        lost(&pool.shared, &held);
        assert!(!pool.present());
        let (tx, rx) = mpsc::channel();
        assert!(pool.reserve());
        pool.submit(job(&pool, tx));
        let c = rx.recv_timeout(Duration::from_secs(10)).expect("answer");
        let st = c.result.expect("status");
        assert_eq!(
            (st.sense[2], st.sense[12], st.sense[13]),
            (0x02, 0x04, 0x03)
        );
        // The path does not exist: the attempt fails, and the next waits its turn.
        lock(&pool.shared.device).last_try = Instant::now() - REOPEN_INTERVAL;
        assert!(current_file(&pool.shared).is_none());
        let tried = lock(&pool.shared.device).last_try;
        assert!(tried.elapsed() < REOPEN_INTERVAL);
        assert!(current_file(&pool.shared).is_none());
        assert_eq!(lock(&pool.shared.device).last_try, tried, "rate-limited");
        assert_eq!(pool.generation(), 0);
        assert!(pool.reset_device().is_err());
    }

    #[test]
    fn with_the_sg_engine_commands_of_a_gone_device_wait_for_the_completion_thread_and_end_not_ready(
    ) {
        let dir = tempfile::tempdir().expect("tmp");
        let pool = pool_at(dir.path().join("sg9"), Engine::SgAsync);
        pool.mark_lost();
        assert!(!pool.present());
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            assert!(pool.reserve());
            let tx = tx.clone();
            let mut cdb = [0u8; 32];
            cdb[0] = crate::scsi::cdb::INQUIRY;
            pool.submit(Job {
                id: pool.next_id(),
                cdb,
                cdb_len: 6,
                dir: Direction::FromDevice,
                buf: pool.buffer(96),
                guest: None,
                reply: crate::scsi::task::Completer::new(move |c| {
                    let _ = tx.send((std::thread::current().name().map(String::from), c));
                }),
            });
        }
        for _ in 0..3 {
            let (thread, c) = rx.recv_timeout(Duration::from_secs(10)).expect("answer");
            assert_eq!(thread.as_deref(), Some("vscsid-sgdone"));
            let st = c.result.expect("status");
            assert_eq!(
                (st.sense[2], st.sense[12], st.sense[13]),
                (0x02, 0x04, 0x03)
            );
        }
        assert_eq!(pool.outstanding(), 0);
    }
}
