//! The emulated disk's medium I/O: turns an [`IoRequest`] into block I/O operations and
//! advances the command as they complete. READ and WRITE move data straight between guest
//! memory and the file (in pieces when the kernel returns short); WRITE SAME streams a
//! pattern; VERIFY reads back and compares; COMPARE AND WRITE reads, compares and writes
//! under the LUN's write gate; flush, UNMAP and zeroing fan out operations that only need
//! to succeed, with a fallback for block devices that refuse to punch holes.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::gate::{Exclusive, GateHold, WriteEntry, WriteGate};
use super::medium_data::{compare_with_data_out, pattern_buffer, sense_for_errno};
use super::{Answer, IoContext, Step, Task};
use crate::backend::{AlignedBuf, Backing, Fallocate};
use crate::scsi::{IoRequest, Sense};

/// Chunk size for commands that compare what they read (VERIFY).
const CHUNK: u64 = 1 << 20;
/// Retries of an operation the kernel answered with EAGAIN/EINTR.
const MAX_RETRIES: u32 = 16;

/// An emulated disk's medium: the file or device under it and the gate that keeps
/// COMPARE AND WRITE atomic against writes from every queue.
pub struct DiskMedium {
    pub backing: Backing,
    pub gate: WriteGate,
    /// Deallocated blocks read as zeroes (the disk reports LBPRZ).
    pub unmap_zeroes: bool,
    /// A flush failed: writes acknowledged before it may never reach the medium, and a
    /// later flush that succeeds proves nothing about them (the kernel forgets the error
    /// once reported). Every flush fails until the LUN is reset or reopened.
    flush_failed: AtomicBool,
}

impl DiskMedium {
    pub fn new(backing: Backing, gate: WriteGate, unmap_zeroes: bool) -> DiskMedium {
        DiskMedium {
            backing,
            gate,
            unmap_zeroes,
            flush_failed: AtomicBool::new(false),
        }
    }

    fn fd(&self) -> RawFd {
        self.backing.file.as_raw_fd()
    }

    /// Forgets a failed flush (LOGICAL UNIT RESET).
    pub fn reset(&self) {
        self.flush_failed.store(false, Ordering::Release);
    }
}

/// The stage a command's medium I/O is in.
#[derive(Default)]
pub enum Job {
    #[default]
    Idle,
    /// READ: `done` of `len` bytes at `offset` read so far.
    Read {
        offset: u64,
        len: u64,
        done: u64,
    },
    /// WRITE: `done` of `len` bytes at `offset` written so far.
    Write {
        offset: u64,
        len: u64,
        done: u64,
        fua: bool,
    },
    /// Operations issued at once whose results only need to succeed (flush, hole
    /// punching, zeroing). `ranges` are kept for deallocation, so that a block device which
    /// cannot punch holes can have them done another way; `redone` once that started.
    /// `flush_after`: the command must be durable when answered (the write cache is off),
    /// so a flush follows the operations; `flushing` while a flush is in the kernel.
    Fanout {
        ranges: Vec<(u64, u64)>,
        redone: bool,
        flush_after: bool,
        flushing: bool,
    },
    /// WRITE SAME of the pattern in the bounce buffer: next byte to write, end of range;
    /// `dsync` when each write must be durable (the write cache is off).
    Pattern {
        pos: u64,
        end: u64,
        dsync: bool,
    },
    /// VERIFY with BYTCHK: read the chunk at `pos` into the bounce buffer, compare it with
    /// data-out.
    Verify {
        start: u64,
        pos: u64,
        end: u64,
    },
    /// COMPARE AND WRITE, first the read of the medium, then the write.
    CompareRead {
        offset: u64,
        len: u64,
        fua: bool,
    },
    CompareWrite {
        offset: u64,
        len: u64,
        fua: bool,
    },
}

/// Starts the medium I/O of a command. `write_cache_off`: the guest sees no volatile
/// write cache (WCE=0), so every write must be durable when acknowledged.
pub fn start(
    disk: &DiskMedium,
    req: IoRequest,
    write_cache_off: bool,
    task: &mut Task,
    io: &mut IoContext<'_>,
) -> Step {
    let data_in_cap = io.data.inn.len();
    let data_out_len = io.data.out.len();
    let cache = disk.backing.cache;
    // Deallocation and zeroing bypass O_DSYNC: they need their own flush.
    let flush_after = write_cache_off && cache.honours_flush();
    let overrun = Step::Done(Answer::overrun());
    let mut bounce = None;
    let job = match req {
        IoRequest::Read { offset, len } => {
            if len > data_in_cap {
                return overrun;
            }
            Job::Read {
                offset,
                len,
                done: 0,
            }
        }
        IoRequest::Write { offset, len, fua } => {
            if len > data_out_len {
                return overrun;
            }
            Job::Write {
                offset,
                len,
                done: 0,
                fua: fua && cache.honours_flush() && !cache.writes_are_synchronous(),
            }
        }
        IoRequest::Flush if !cache.honours_flush() => {
            return Step::Done(Answer::Good { data_in: 0 });
        }
        IoRequest::Discard { ref ranges } if ranges.is_empty() => {
            return Step::Done(Answer::Good { data_in: 0 });
        }
        IoRequest::Verify { compare: false, .. } => {
            // Nothing to compare: the range was checked, and the host keeps the medium
            // readable (QEMU answers the same way).
            return Step::Done(Answer::Good { data_in: 0 });
        }
        IoRequest::Flush if disk.flush_failed.load(Ordering::Acquire) => {
            return Step::Done(Answer::Check(Sense::write_error()));
        }
        IoRequest::Flush => Job::Fanout {
            ranges: Vec::new(),
            redone: false,
            flush_after: false,
            flushing: true,
        },
        IoRequest::WriteZeroes { .. } => Job::Fanout {
            ranges: Vec::new(),
            redone: false,
            flush_after,
            flushing: false,
        },
        IoRequest::Discard { ref ranges } => Job::Fanout {
            ranges: ranges.clone(),
            redone: false,
            flush_after,
            flushing: false,
        },
        IoRequest::WriteSame {
            offset,
            len,
            block_len,
        } => {
            let Some(buf) = pattern_buffer(io.data.out, len, block_len) else {
                return Step::Done(Answer::Check(Sense::invalid_field_in_cdb()));
            };
            bounce = Some(Some(buf));
            Job::Pattern {
                pos: offset,
                end: offset + len,
                dsync: flush_after && !cache.writes_are_synchronous(),
            }
        }
        IoRequest::Verify { offset, len, .. } => {
            if len > data_out_len {
                return overrun;
            }
            bounce = Some(AlignedBuf::new(len.min(CHUNK) as usize));
            Job::Verify {
                start: offset,
                pos: offset,
                end: offset + len,
            }
        }
        IoRequest::CompareAndWrite { offset, len, fua } => {
            if len.saturating_mul(2) > data_out_len {
                return overrun;
            }
            bounce = Some(AlignedBuf::new(len as usize));
            Job::CompareRead {
                offset,
                len,
                fua: fua && cache.honours_flush(),
            }
        }
    };
    if let Some(buf) = bounce {
        match (buf, io.block.buffers(io.id)) {
            (Some(buf), Some(bufs)) => bufs.set_bounce(buf),
            _ => return Step::Done(Answer::Check(Sense::internal_target_failure())),
        }
    }
    task.job = job;
    io.hold(task);
    let waiting_ahead = io.waiting_ahead;
    if !pass_gate(disk, task, &req, waiting_ahead, io) {
        task.parked = Some(req);
        return Step::Parked;
    }
    submit(disk, task, req, io)
}

/// A command parked at the write gate tries again.
pub fn resume(disk: &DiskMedium, task: &mut Task, io: &mut IoContext<'_>) -> Step {
    let Some(req) = task.parked.take() else {
        return Step::Done(Answer::Check(Sense::internal_target_failure()));
    };
    if !pass_gate(disk, task, &req, false, io) {
        task.parked = Some(req);
        return Step::Parked;
    }
    submit(disk, task, req, io)
}

/// Takes a command's share of its LUN's write gate: writes are counted, a COMPARE AND
/// WRITE closes the gate and waits for the writes in flight. False: the command waits
/// (parked). A new write also waits while earlier ones of this worker wait, so the guest's
/// writes keep their order.
fn pass_gate(
    disk: &DiskMedium,
    task: &mut Task,
    req: &IoRequest,
    waiting_ahead: bool,
    io: &mut IoContext<'_>,
) -> bool {
    let exclusive = matches!(req, IoRequest::CompareAndWrite { .. });
    let write = matches!(
        req,
        IoRequest::Write { .. }
            | IoRequest::WriteSame { .. }
            | IoRequest::WriteZeroes { .. }
            | IoRequest::Discard { .. }
    );
    if !exclusive && !write {
        return true;
    }
    if waiting_ahead {
        return false;
    }
    if exclusive {
        let answer = if task.gate == GateHold::Exclusive {
            disk.gate.drained()
        } else {
            disk.gate.close()
        };
        if answer != Exclusive::Busy {
            task.gate = GateHold::Exclusive;
        }
        return answer == Exclusive::Go;
    }
    match disk.gate.enter_write() {
        WriteEntry::Passed => {
            task.gate = GateHold::Write;
            true
        }
        WriteEntry::Wait { wake } => {
            io.wake_workers |= wake;
            false
        }
    }
}

/// Gives back what a command held of its LUN's write gate; true when that lets a waiting
/// command go.
pub fn leave_gate(disk: &DiskMedium, task: &mut Task) -> bool {
    match std::mem::take(&mut task.gate) {
        GateHold::None => false,
        GateHold::Write => disk.gate.end_write(),
        GateHold::Exclusive => {
            disk.gate.open();
            true
        }
    }
}

/// Submits a command's medium I/O.
fn submit(disk: &DiskMedium, task: &mut Task, req: IoRequest, io: &mut IoContext<'_>) -> Step {
    let (id, fd) = (io.id, disk.fd());
    let submitted = match req {
        IoRequest::Discard { ranges } => ranges
            .iter()
            .all(|&(o, l)| io.block.fallocate(id, fd, o, l, Fallocate::PunchHole)),
        IoRequest::WriteZeroes { offset, len } => {
            io.block
                .fallocate(id, fd, offset, len, Fallocate::ZeroRange)
        }
        IoRequest::Flush => io.block.flush(id, fd),
        _ => push_next(disk, task, io),
    };
    if submitted {
        return Step::Pending;
    }
    task.error.get_or_insert(Sense::internal_target_failure());
    finish_when_idle(task, io)
}

/// Queues the next read or write of a streaming job. False if it could not be queued.
fn push_next(disk: &DiskMedium, task: &mut Task, io: &mut IoContext<'_>) -> bool {
    let (id, fd, align) = (io.id, disk.fd(), disk.backing.dio_align);
    let (data, guard) = (io.data, io.data.guard);
    let Some(bufs) = io.block.buffers(id) else {
        return false;
    };
    match task.job {
        Job::Read { offset, len, done } => {
            bufs.map_guest(
                data.inn,
                guard,
                done,
                len - done,
                offset + done,
                align,
                false,
            ) && io.block.read(id, fd, offset + done)
        }
        Job::Write {
            offset,
            len,
            done,
            fua,
        } => {
            bufs.map_guest(
                data.out,
                guard,
                done,
                len - done,
                offset + done,
                align,
                true,
            ) && io.block.write(id, fd, offset + done, fua)
        }
        Job::Pattern { pos, end, dsync } => {
            bufs.point_at_bounce(end - pos) && io.block.write(id, fd, pos, dsync)
        }
        Job::Verify { pos, end, .. } => {
            bufs.point_at_bounce(end - pos) && io.block.read(id, fd, pos)
        }
        Job::CompareRead { offset, len, .. } => {
            bufs.point_at_bounce(len) && io.block.read(id, fd, offset)
        }
        Job::CompareWrite { offset, len, fua } => {
            bufs.point_at_bounce(len) && io.block.write(id, fd, offset, fua)
        }
        Job::Idle | Job::Fanout { .. } => false,
    }
}

/// The command's answer once none of its operations is in the kernel any more.
fn finish_when_idle(task: &Task, io: &IoContext<'_>) -> Step {
    if io.block.pending(io.id) > 0 {
        return Step::Pending;
    }
    Step::Done(answer(task))
}

fn answer(task: &Task) -> Answer {
    match task.error {
        Some(sense) => Answer::Check(sense),
        None => Answer::Good {
            data_in: task.data_in,
        },
    }
}

fn fail(task: &mut Task, sense: Sense) -> Step {
    task.error = Some(sense);
    Step::Done(answer(task))
}

/// Queues the next operation of a multi-step command, or fails the command.
fn continue_or_fail(disk: &DiskMedium, task: &mut Task, io: &mut IoContext<'_>) -> Step {
    if push_next(disk, task, io) {
        return Step::Pending;
    }
    task.error.get_or_insert(Sense::internal_target_failure());
    finish_when_idle(task, io)
}

/// Advances a command by one completion (`res`: bytes or -errno).
pub fn on_completion(disk: &DiskMedium, task: &mut Task, res: i32, io: &mut IoContext<'_>) -> Step {
    if res < 0 {
        return on_error(disk, task, -res, io);
    }
    let n = res as u64;
    task.retries = 0;
    if task.error.is_some() {
        return finish_when_idle(task, io);
    }
    let id = io.id;
    match task.job {
        Job::Read { len, done, .. } => {
            if n == 0 {
                // End of file inside the advertised capacity: the backing shrank.
                return fail(task, Sense::medium_error_unrecovered_read());
            }
            if let Some(bufs) = io.block.buffers(id) {
                if let Some(b) = bufs.bounce() {
                    let chunk = &b.as_slice()[..n.min(b.len() as u64) as usize];
                    io.data.inn.write_at(done, chunk);
                }
                bufs.drop_bounce();
            }
            let done = done + n;
            if let Job::Read { done: d, .. } = &mut task.job {
                *d = done;
            }
            if done < len {
                return continue_or_fail(disk, task, io);
            }
            task.data_in = len;
        }
        Job::Write { len, done, .. } => {
            if n == 0 {
                return fail(task, Sense::write_error());
            }
            if let Some(bufs) = io.block.buffers(id) {
                bufs.drop_bounce();
            }
            let done = done + n;
            if let Job::Write { done: d, .. } = &mut task.job {
                *d = done;
            }
            if done < len {
                return continue_or_fail(disk, task, io);
            }
        }
        Job::Fanout {
            ref mut flush_after,
            ref mut flushing,
            ..
        } => {
            if io.block.pending(id) == 0 && std::mem::take(flush_after) {
                *flushing = true;
                if !io.block.flush(id, disk.fd()) {
                    return fail(task, Sense::internal_target_failure());
                }
                return Step::Pending;
            }
        }
        Job::Pattern { pos, end, dsync } => {
            if n == 0 {
                task.error = Some(Sense::write_error());
            } else if pos + n < end {
                task.job = Job::Pattern {
                    pos: pos + n,
                    end,
                    dsync,
                };
                return continue_or_fail(disk, task, io);
            }
        }
        Job::Verify { start, pos, end } => {
            let Some(b) = io.block.buffers(id).and_then(|b| b.bounce()) else {
                return fail(task, Sense::internal_target_failure());
            };
            if n == 0 {
                return fail(task, Sense::medium_error_unrecovered_read());
            }
            let got = &b.as_slice()[..n.min(b.len() as u64) as usize];
            let at = pos - start;
            if let Some(diff) = compare_with_data_out(io.data.out, at, got) {
                return fail(task, Sense::miscompare(at + diff));
            }
            let pos = pos + got.len() as u64;
            if pos < end {
                task.job = Job::Verify { start, pos, end };
                return continue_or_fail(disk, task, io);
            }
        }
        Job::CompareRead { offset, len, fua } => {
            let out = io.data.out;
            let Some(b) = io.block.buffers(id).and_then(|b| b.bounce_mut()) else {
                return fail(task, Sense::internal_target_failure());
            };
            if n != len {
                return fail(task, Sense::medium_error_unrecovered_read());
            }
            if let Some(diff) = compare_with_data_out(out, 0, b.as_slice()) {
                return fail(task, Sense::miscompare(diff));
            }
            // The blocks matched: the bounce buffer now takes the data to write.
            if out.read_at(len, b.as_mut_slice()) as u64 != len {
                return fail(task, Sense::invalid_field_in_cdb());
            }
            task.job = Job::CompareWrite { offset, len, fua };
            return continue_or_fail(disk, task, io);
        }
        Job::CompareWrite { len, .. } => {
            if n != len {
                task.error = Some(Sense::write_error());
            }
        }
        Job::Idle => {}
    }
    finish_when_idle(task, io)
}

/// An operation failed with `errno`: retried when the kernel asks, redone another way when
/// a block device cannot deallocate, otherwise the command fails with the disk's sense.
fn on_error(disk: &DiskMedium, task: &mut Task, errno: i32, io: &mut IoContext<'_>) -> Step {
    if let Job::Fanout { flushing: true, .. } = task.job {
        // Whatever the errno, acknowledged writes may be lost: a write error, and every
        // later flush fails too.
        disk.flush_failed.store(true, Ordering::Release);
        tracing::error!(
            path = %disk.backing.path.display(),
            "flush failed (errno {errno}); every later SYNCHRONIZE CACHE fails until reset"
        );
        task.error.get_or_insert(Sense::write_error());
        return finish_when_idle(task, io);
    }
    let is_write = matches!(
        task.job,
        Job::Write { .. } | Job::Pattern { .. } | Job::CompareWrite { .. } | Job::Fanout { .. }
    );
    let retry = (errno == libc::EAGAIN || errno == libc::EINTR)
        && task.retries < MAX_RETRIES
        && !matches!(task.job, Job::Fanout { .. });
    if retry {
        task.retries += 1;
        return continue_or_fail(disk, task, io);
    }
    if errno == libc::EOPNOTSUPP {
        if let Some(step) = deallocate_another_way(disk, task, io) {
            return step;
        }
    }
    task.error.get_or_insert(sense_for_errno(errno, is_write));
    finish_when_idle(task, io)
}

/// A block device refused to punch a hole (a write of zeroes with unmap) for UNMAP or
/// WRITE SAME(UNMAP). The first refusal of the command redoes all its ranges another way;
/// later ones are then moot. Where the disk claims LBPRZ the blocks must read as zeroes,
/// so zeroes are written; elsewhere the ranges are discarded. None when the command is not
/// such a deallocation.
fn deallocate_another_way(
    disk: &DiskMedium,
    task: &mut Task,
    io: &mut IoContext<'_>,
) -> Option<Step> {
    if !disk.backing.is_block_device {
        return None;
    }
    let Job::Fanout { ranges, redone, .. } = &mut task.job else {
        return None;
    };
    if ranges.is_empty() {
        return None;
    }
    if !std::mem::replace(redone, true) {
        let (id, fd) = (io.id, disk.fd());
        let failed = if disk.unmap_zeroes {
            let queued = ranges
                .iter()
                .all(|&(o, l)| io.block.fallocate(id, fd, o, l, Fallocate::ZeroRange));
            (!queued).then(Sense::internal_target_failure)
        } else {
            let refused = ranges
                .iter()
                .any(|&(o, l)| disk.backing.blk_discard(o, l).is_err());
            refused.then(|| sense_for_errno(libc::EOPNOTSUPP, true))
        };
        if let Some(sense) = failed {
            task.error.get_or_insert(sense);
        }
    }
    Some(finish_when_idle(task, io))
}
