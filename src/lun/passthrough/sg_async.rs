//! The sg driver's asynchronous interface for an `--sg` LUN: the worker thread write()s a
//! command's `sg_io_hdr` to `/dev/sgN` itself (the kernel queues it and returns), and one
//! completion thread per LUN poll()s the descriptor and read()s each answer, which it
//! hands to the worker's callback. Against the helper pool that is one thread hand-off
//! per command instead of two, and one thread per LUN instead of eight.
//!
//! What the kernel does with our memory, and so what must live how long: the CDB is copied
//! by write(); the data buffer is copied in by write() (data-out) and out by the read()
//! that returns the command (data-in), because vscsid never asks for direct I/O
//! (`SG_FLAG_DIRECT_IO`): the kernel works on its own pages between the two calls and
//! never touches ours outside them. The sense buffer is filled by that read() too, so
//! all commands can name one sense area that only the completion thread reads. A command
//! whose descriptor is closed before its answer is read (the device went away) is
//! finished by the kernel without copying into the process. So a command's buffer is
//! held in its slot from write() until its read() returns, and no longer.
//!
//! The driver takes [`SG_MAX_QUEUE`] commands per descriptor; more wait in the pool's
//! queue and are written by the completion thread as answers free slots. When the device
//! is gone, commands wait there too: the completion thread, which may reopen the path
//! (the worker's system call filter has no open), answers them.

use std::cell::UnsafeCell;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{self as pool, Job, Shared};
use super::reply::{self, Health, DEVICE_GONE};
use crate::backend::block_io::IoBuffers;
use crate::backend::sg_io::{self, SgReply};
use crate::lun::MAX_SENSE;
use crate::scsi::task::Completer;

/// Commands the sg driver accepts per descriptor at once (its `SG_MAX_QUEUE`).
pub const SG_MAX_QUEUE: usize = 16;
/// How often the completion thread looks at the stop flag when nothing else wakes it.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// A command the kernel holds.
struct Slot {
    id: u64,
    cdb: [u8; 32],
    cdb_len: usize,
    from_device: bool,
    /// The data buffer the kernel copies into on read() (see the module comment).
    buf: Vec<u8>,
    /// Or the guest's buffers, kept mapped by their guard until the read() that returns
    /// the command.
    guest: Option<IoBuffers>,
    /// Bytes of the transfer.
    len: usize,
    reply: Completer,
    /// The descriptor it was written to: an answer read from another one is not its.
    file: Arc<File>,
}

/// The sense area every command names; only the completion thread reads it, right after
/// the read() that filled it.
struct SenseArea(UnsafeCell<[u8; MAX_SENSE]>);

// SAFETY: the kernel writes the area inside the completion thread's read(), and only that
// thread reads it afterwards; other threads only pass its address to write().
unsafe impl Sync for SenseArea {}

/// The asynchronous engine of one sg LUN.
pub struct AsyncSg {
    slots: Mutex<Vec<Option<Slot>>>,
    /// Iovec arrays of ended commands, for reuse.
    spare: Mutex<Vec<IoBuffers>>,
    wake: EventFd,
    sense: Box<SenseArea>,
}

impl AsyncSg {
    pub fn new() -> io::Result<AsyncSg> {
        let mut slots = Vec::with_capacity(SG_MAX_QUEUE);
        slots.resize_with(SG_MAX_QUEUE, || None);
        Ok(AsyncSg {
            slots: Mutex::new(slots),
            spare: Mutex::new(Vec::with_capacity(SG_MAX_QUEUE)),
            wake: EventFd::new(EFD_NONBLOCK)?,
            sense: Box::new(SenseArea(UnsafeCell::new([0; MAX_SENSE]))),
        })
    }

    /// Wakes the completion thread (queued commands, or a stop).
    pub fn wake(&self) {
        // A full counter already wakes it.
        let _ = self.wake.write(1);
    }

    /// An iovec array for a command's guest buffers (reused).
    pub fn io_buffers(&self) -> IoBuffers {
        pool::lock(&self.spare).pop().unwrap_or_default()
    }

    /// Gives an iovec array back once its command ended (its guard is let go here).
    pub fn recycle(&self, mut b: IoBuffers) {
        b.release();
        let mut spare = pool::lock(&self.spare);
        if spare.len() < SG_MAX_QUEUE {
            spare.push(b);
        }
    }

    /// Commands the kernel holds now.
    fn in_kernel(&self) -> usize {
        pool::lock(&self.slots).iter().flatten().count()
    }
}

/// Sends `job` from the calling (worker) thread when the device is there, a slot is free
/// and nothing is queued ahead of it; otherwise queues it for the completion thread.
pub fn submit(shared: &Shared, engine: &AsyncSg, job: Job) {
    let mut job = Some(job);
    {
        let q = pool::lock(&shared.queue);
        if q.jobs.is_empty() {
            drop(q);
            let file = pool::lock(&shared.device).file.clone();
            if let Some(file) = file {
                job = try_write(shared, engine, &file, job.take());
            }
        }
    }
    if let Some(job) = job {
        pool::lock(&shared.queue).jobs.push_back(job);
        engine.wake();
    }
}

/// Writes a command to the device if a slot is free: None when it was written or
/// answered (the device refused it), the job back when every slot is taken.
fn try_write(shared: &Shared, engine: &AsyncSg, file: &Arc<File>, job: Option<Job>) -> Option<Job> {
    let job = job?;
    let mut slots = pool::lock(&engine.slots);
    let Some(index) = slots.iter().position(Option::is_none) else {
        return Some(job);
    };
    let Job {
        id,
        cdb,
        cdb_len,
        dir,
        buf,
        guest,
        reply,
    } = job;
    let len = match &guest {
        Some(g) => g.iovecs().iter().map(|v| v.iov_len).sum(),
        None => buf.len(),
    };
    let slot = slots[index].insert(Slot {
        id,
        cdb,
        cdb_len,
        from_device: dir == sg_io::Direction::FromDevice,
        buf,
        guest,
        len,
        reply,
        file: file.clone(),
    });
    let pack_id = i32::try_from(index).unwrap_or(0);
    let sense = engine.sense.0.get().cast();
    let cdb = &slot.cdb[..slot.cdb_len];
    let timeout = shared.spec.timeout_ms;
    let result = match &slot.guest {
        Some(g) => sg_io::sg_write_iov(
            file,
            cdb,
            dir,
            g.iovecs(),
            slot.len,
            sense,
            MAX_SENSE,
            timeout,
            pack_id,
        ),
        None => sg_io::sg_write(
            file,
            cdb,
            dir,
            &mut slot.buf,
            sense,
            MAX_SENSE,
            timeout,
            pack_id,
        ),
    };
    let Err(e) = result else {
        return None;
    };
    // Not queued by the kernel: answer it now, from the errno.
    let slot = slots[index].take()?;
    drop(slots);
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    if sg_io::device_gone(errno) {
        pool::lost(shared, file);
    }
    let completion = reply::for_errno(errno, slot.buf);
    if let Some(g) = slot.guest {
        engine.recycle(g);
    }
    pool::lock(&shared.queue).outstanding -= 1;
    slot.reply.complete(completion);
    None
}

/// The completion thread: reads answers, writes queued commands, answers queued commands
/// while the device is gone; ends once the pool stops and the kernel holds nothing.
pub fn complete(shared: &Shared, engine: &AsyncSg) {
    loop {
        drain_queue(shared, engine);
        let stopping = pool::lock(&shared.queue).stopping;
        if stopping && engine.in_kernel() == 0 {
            return;
        }
        let file = pool::lock(&shared.device).file.clone();
        let readable = wait(engine, file.as_deref());
        if let (true, Some(file)) = (readable, file) {
            read_answers(shared, engine, &file);
        }
    }
}

/// Waits for an answer on `file` (if any), a wake-up, or IDLE_WAKE: true when `file` is
/// readable.
fn wait(engine: &AsyncSg, file: Option<&File>) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: engine.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: file.map_or(-1, |f| f.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let timeout = i32::try_from(IDLE_WAKE.as_millis()).unwrap_or(1000);
    // SAFETY: `fds` holds two pollfd entries for the call's duration; a negative fd is
    // ignored by poll.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
    if n <= 0 {
        return false;
    }
    if fds[0].revents != 0 {
        let _ = engine.wake.read();
    }
    // POLLERR/POLLHUP: the device is going; the read says how.
    fds[1].revents != 0
}

/// Reads every answer the device has ready and hands each to its command's callback.
fn read_answers(shared: &Shared, engine: &AsyncSg, file: &Arc<File>) {
    for _ in 0..SG_MAX_QUEUE {
        match sg_io::sg_read(file) {
            Ok((pack_id, r)) => finish(shared, engine, file, pack_id, &r),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                // The descriptor is let go whatever the error (and the path opened again
                // later): what the kernel holds on it will then never be read, and the
                // kernel finishes those without touching our memory (module comment), so
                // their buffers, guest memory included, can be let go.
                pool::lost(shared, file);
                abandon(shared, engine, file, errno);
                return;
            }
        }
    }
}

/// Answers the command in slot `pack_id` with what the kernel reported.
fn finish(shared: &Shared, engine: &AsyncSg, file: &Arc<File>, pack_id: i32, r: &SgReply) {
    let slot = usize::try_from(pack_id).ok().and_then(|i| {
        let mut slots = pool::lock(&engine.slots);
        let s = slots.get_mut(i)?;
        if s.as_ref().is_some_and(|s| Arc::ptr_eq(&s.file, file)) {
            s.take()
        } else {
            None
        }
    });
    let Some(slot) = slot else {
        tracing::warn!(pack_id, "sg answer for no command of this LUN; ignored");
        return;
    };
    // SAFETY: the read() that returned this answer filled the area, and this thread is the
    // only one that reads it (see SenseArea); no read() is under way now.
    let sense: &[u8; MAX_SENSE] = unsafe { &*engine.sense.0.get() };
    let (mut c, health) = match slot.guest {
        Some(g) => {
            engine.recycle(g);
            reply::for_direct_reply(r, sense, slot.len)
        }
        None => reply::for_reply(r, sense, slot.buf, slot.from_device),
    };
    if health == Health::Gone {
        pool::lost(shared, file);
    } else if matches!(&c.result, Ok(st) if st.status == crate::scsi::status::GOOD) {
        shared
            .facts
            .observe(&slot.cdb[..slot.cdb_len], &mut c.data_in);
    }
    pool::lock(&shared.queue).outstanding -= 1;
    tracing::trace!(id = slot.id, "sg answer");
    slot.reply.complete(c);
}

/// Answers every command the kernel holds on `file` as failed by `errno`.
fn abandon(shared: &Shared, engine: &AsyncSg, file: &Arc<File>, errno: i32) {
    let taken: Vec<Slot> = pool::lock(&engine.slots)
        .iter_mut()
        .filter(|s| s.as_ref().is_some_and(|s| Arc::ptr_eq(&s.file, file)))
        .filter_map(Option::take)
        .collect();
    for slot in taken {
        if let Some(g) = slot.guest {
            engine.recycle(g);
        }
        let c = reply::for_errno(errno, slot.buf);
        pool::lock(&shared.queue).outstanding -= 1;
        slot.reply.complete(c);
    }
}

/// Writes queued commands while slots are free; answers them NOT READY while the device is
/// gone (after trying to open it again, at most once per REOPEN_INTERVAL).
fn drain_queue(shared: &Shared, engine: &AsyncSg) {
    for _ in 0..pool::QUEUE_DEPTH {
        let Some(job) = pool::lock(&shared.queue).jobs.pop_front() else {
            return;
        };
        match pool::current_file(shared) {
            Some(file) => {
                if let Some(job) = try_write(shared, engine, &file, Some(job)) {
                    // Every slot is taken: it goes first once one frees.
                    pool::lock(&shared.queue).jobs.push_front(job);
                    return;
                }
            }
            None => {
                pool::lock(&shared.queue).outstanding -= 1;
                job.reply.complete(reply::check(DEVICE_GONE, job.buf));
            }
        }
    }
}

/// Whether `--sg` LUNs use this engine: yes, unless `VSCSID_SG_ENGINE=threads` asks for
/// the helper pool (kept to measure one against the other, see the passthrough module).
pub fn chosen() -> bool {
    std::env::var("VSCSID_SG_ENGINE").map_or(true, |v| v != "threads")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sense_area_is_one_allocation_with_a_stable_address() {
        let engine = AsyncSg::new().expect("engine");
        let before = engine.sense.0.get();
        let moved = engine;
        assert_eq!(moved.sense.0.get(), before);
        assert_eq!(moved.in_kernel(), 0);
        moved.wake();
        assert_eq!(moved.wake.read().expect("woken"), 1);
    }
}
