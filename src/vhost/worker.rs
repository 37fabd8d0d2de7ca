//! A request-queue worker: pops chains from its virtqueues, routes each command through the
//! LUN table, completes emulated commands at once and drives medium I/O through its own
//! io_uring, completing requests as their CQEs arrive. One worker per thread; its state is
//! touched only by that thread (and briefly by task management queries).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_uring::{opcode, types};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::device::Shared;
use super::gate::{Exclusive, GateHold, WriteEntry};
use super::io::{compare_with_data_out, map_or_bounce, pattern_buffer, sense_for_errno};
use super::lun::{Lun, Medium};
use super::slot::{Job, Mem, MemGuard, Slot, Vring};
use crate::backend::{AlignedBuf, Ring};
use crate::scsi::target::Route;
use crate::scsi::task::{ScsiCompletion, TaskAttr, TransportError};
use crate::scsi::{cdb, status, DataOut, IoRequest, Outcome, Sense, DATA_IN_SCRATCH};
use crate::virtio::layout::{encode_cmd_resp, response, CMD_REQ_LEN, CMD_RESP_LEN};
use crate::virtio::{ParsedChain, SegList};

/// Chunk size for commands that stream a pattern or compare (WRITE SAME, VERIFY).
const CHUNK: u64 = 1 << 20;
/// fallocate modes: deallocate (blocks then read as zeroes), and write zeroes.
const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
/// Retries of an operation the kernel answered with EAGAIN/EINTR.
const MAX_RETRIES: u32 = 16;

/// The guest's data-out buffer, read on demand from guest memory.
struct GuestDataOut<'a> {
    mem: &'a Mem,
    segs: &'a SegList,
}

impl DataOut for GuestDataOut<'_> {
    fn len(&self) -> usize {
        usize::try_from(self.segs.total().saturating_sub(CMD_REQ_LEN as u64)).unwrap_or(usize::MAX)
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize {
        self.segs
            .read_into(self.mem, CMD_REQ_LEN as u64 + offset as u64, buf)
    }
}

/// State of one worker thread.
pub struct Worker {
    thread: usize,
    ring: Ring,
    slots: Vec<Slot>,
    free: Vec<usize>,
    max_slots: usize,
    scratch: Vec<u8>,
    /// Completions reaped in one pass (kept to avoid allocating per pass).
    reaped: Vec<(usize, i32)>,
    /// A queue stopped popping because every slot was busy.
    throttled: bool,
    /// Completions of passthrough commands, posted by initiator threads.
    passthrough: Arc<PassthroughDone>,
    /// This thread's vrings (cheap shared handles), so a passthrough completion can be
    /// answered by the initiator thread that received it.
    vrings: Vec<Vring>,
    /// Passthrough LUNs with corked commands of the current batch, flushed at its end.
    corked: Vec<Arc<Lun>>,
    /// Commands waiting at a closed write gate (COMPARE AND WRITE), oldest first.
    parked: VecDeque<usize>,
}

/// Passthrough completions waiting for the worker, and the eventfd that wakes it (the
/// io_uring completion eventfd, so one epoll token serves both).
pub struct PassthroughDone {
    items: std::sync::Mutex<Vec<(usize, ScsiCompletion)>>,
    wake: vmm_sys_util::eventfd::EventFd,
}

impl PassthroughDone {
    fn post(&self, id: usize, c: ScsiCompletion) {
        let first = {
            let mut items = self.items.lock().unwrap_or_else(|p| p.into_inner());
            items.push((id, c));
            items.len() == 1
        };
        // One wake-up per batch: while the list is not empty the worker has a wake-up
        // pending (it empties the list when it runs), so only the first post writes.
        if first {
            let _ = self.wake.write(1);
        }
    }
}

impl Worker {
    pub fn new(thread: usize, max_inflight: usize, submit_batch: u32) -> std::io::Result<Worker> {
        let ring = Ring::new(max_inflight as u32, submit_batch)?;
        let passthrough = Arc::new(PassthroughDone {
            items: std::sync::Mutex::new(Vec::new()),
            wake: ring.wake_handle()?,
        });
        Ok(Worker {
            thread,
            ring,
            passthrough,
            slots: Vec::new(),
            free: Vec::new(),
            max_slots: max_inflight,
            scratch: vec![0u8; DATA_IN_SCRATCH],
            reaped: Vec::with_capacity(max_inflight),
            throttled: false,
            vrings: Vec::new(),
            corked: Vec::new(),
            parked: VecDeque::with_capacity(max_inflight),
        })
    }

    /// A handle that wakes this worker (its completion eventfd), for other threads.
    pub fn waker(&self) -> std::io::Result<vmm_sys_util::eventfd::EventFd> {
        self.ring.wake_handle()
    }

    pub fn ring_fd(&self) -> std::os::unix::io::RawFd {
        self.ring.eventfd()
    }

    /// Whether a command of `lun` (with `tag`, if given) is in flight on this worker.
    pub fn has_task(&self, lun: &Arc<Lun>, tag: Option<u64>) -> bool {
        self.slots.iter().any(|s| {
            s.lun.as_ref().is_some_and(|l| Arc::ptr_eq(l, lun)) && tag.is_none_or(|t| t == s.tag)
        })
    }

    /// The passthrough id of `lun`'s command `tag`, if this worker forwarded it.
    pub fn passthrough_id(&self, lun: &Arc<Lun>, tag: u64) -> Option<u64> {
        self.slots
            .iter()
            .find(|s| {
                matches!(s.job, Job::Passthrough)
                    && s.tag == tag
                    && s.lun.as_ref().is_some_and(|l| Arc::ptr_eq(l, lun))
            })
            .map(|s| s.passthrough_id)
    }

    fn take_slot(&mut self) -> Option<usize> {
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        if self.slots.len() < self.max_slots {
            self.slots.push(Slot::new());
            return Some(self.slots.len() - 1);
        }
        None
    }

    /// Whether completions (io_uring or passthrough) wait for [`Worker::complete`].
    pub fn has_completions(&mut self) -> bool {
        self.ring.has_completions()
            || !self
                .passthrough
                .items
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
    }

    /// Serves a request queue: pops every available chain (re-checking after re-enabling
    /// notifications, for EVENT_IDX), submits the batch's I/O with one system call and
    /// notifies the guest once for everything completed inline.
    pub fn process_queue(&mut self, sh: &Shared, vrings: &[Vring], vpos: usize, queue: u16) {
        let Some(vring) = vrings.get(vpos) else {
            return;
        };
        if sh.is_broken(queue) {
            return;
        }
        if self.vrings.len() != vrings.len() {
            self.vrings = vrings.to_vec();
        }
        let mem = sh.mem.memory();
        let mut completed = false;
        'outer: loop {
            let _ = vring.disable_notification();
            loop {
                if sh.stopping.load(Ordering::Acquire) {
                    break 'outer;
                }
                let Some(id) = self.take_slot() else {
                    self.throttled = true;
                    break 'outer;
                };
                let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(&*mem);
                let Some(chain) = chain else {
                    self.free.push(id);
                    if avail_ring_is_corrupt(vring, &mem) {
                        sh.mark_broken(queue);
                        break 'outer;
                    }
                    break;
                };
                let slot = &mut self.slots[id];
                slot.chain.parse(chain);
                slot.vring = vpos;
                slot.queue = queue;
                if let Some(used) = self.start(id, sh, &mem) {
                    self.finish_inline(id, vring, used);
                    completed = true;
                }
            }
            self.submit();
            self.flush_passthrough();
            match vring.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
        self.submit();
        self.flush_passthrough();
        if completed {
            signal(vring);
        }
        if !self.parked.is_empty() {
            // The gate may have opened while this pass parked commands behind older ones.
            let mask = self.resume_parked(sh, vrings);
            signal_marked(vrings, mask);
        }
    }

    /// Returns a command that ended without medium I/O (or whose I/O could not start) to
    /// the guest and frees its slot; the caller notifies.
    fn finish_inline(&mut self, id: usize, vring: &Vring, used: u32) {
        let slot = &mut self.slots[id];
        let _ = vring.add_used(slot.chain.head, used);
        slot.release();
        self.free.push(id);
    }

    /// Sends the batch's passthrough commands: one write per iSCSI path.
    fn flush_passthrough(&mut self) {
        for lun in self.corked.drain(..) {
            if let Medium::Iscsi(i) = &lun.medium {
                i.flush();
            }
        }
    }

    fn submit(&mut self) {
        if let Err(e) = self.ring.submit() {
            tracing::warn!("io_uring submit failed: {e}");
        }
    }

    /// Starts one command. Returns the used length when it finished without medium I/O.
    fn start(&mut self, id: usize, sh: &Shared, mem: &MemGuard) -> Option<u32> {
        let m: &Mem = mem;
        let slot = &mut self.slots[id];
        let mut hdr = [0u8; CMD_REQ_LEN];
        if slot.chain.error.is_some()
            || slot.chain.readable.read_into(m, 0, &mut hdr) < CMD_REQ_LEN
            || slot.chain.writable.total() < CMD_RESP_LEN as u64
        {
            return Some(respond(m, &slot.chain, response::FAILURE, 0, 0, &[]));
        }
        let mut lun_addr = [0u8; 8];
        lun_addr.copy_from_slice(&hdr[0..8]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hdr[8..16]);
        slot.tag = u64::from_le_bytes(tag);
        let cdb = &hdr[19..CMD_REQ_LEN];
        let data_in_cap = slot.chain.writable.total() - CMD_RESP_LEN as u64;
        let scratch_len = usize::try_from(data_in_cap)
            .unwrap_or(usize::MAX)
            .min(self.scratch.len());
        let scratch = &mut self.scratch[..scratch_len];
        let data_out = GuestDataOut {
            mem: m,
            segs: &slot.chain.readable,
        };
        let (outcome, lun) = match sh.luns.route(&lun_addr) {
            Route::BadTarget => {
                return Some(respond(m, &slot.chain, response::BAD_TARGET, 0, 0, &[]));
            }
            Route::MissingLun { target } => {
                let o = if cdb[0] == cdb::REPORT_LUNS {
                    sh.luns.report_luns(target, cdb, scratch)
                } else {
                    sh.luns.missing_lun_command(cdb, scratch)
                };
                (o, None)
            }
            Route::Lun { target, lun } => {
                let o = match &lun.medium {
                    _ if cdb[0] == cdb::REPORT_LUNS => sh.luns.report_luns(target, cdb, scratch),
                    Medium::Disk(d) => d.disk.execute(cdb, &data_out, scratch),
                    Medium::Null(d) => match d.execute(cdb, &data_out, scratch) {
                        Outcome::Io(req) => return Some(null_io(m, &slot.chain, &req)),
                        other => other,
                    },
                    Medium::Iscsi(_) => {
                        let (lun, attr) = (lun.clone(), hdr[16]);
                        return self.start_passthrough(
                            id,
                            sh,
                            mem,
                            lun,
                            &hdr[19..CMD_REQ_LEN],
                            attr,
                        );
                    }
                };
                (o, Some(lun.clone()))
            }
        };
        match outcome {
            Outcome::Good { data_in_len } => {
                let n = data_in_len.min(scratch_len);
                let written =
                    slot.chain
                        .writable
                        .write_from(m, CMD_RESP_LEN as u64, &self.scratch[..n]);
                let resid = clamp_u32(data_in_cap - written as u64);
                let used = respond(m, &slot.chain, response::OK, status::GOOD, resid, &[]);
                Some(used.saturating_add(written as u32))
            }
            Outcome::Check(sense) => Some(respond_sense(m, &slot.chain, &sense, data_in_cap)),
            Outcome::Io(req) => match lun {
                Some(lun) => self.start_io(id, sh, mem, lun, req),
                None => Some(respond_sense(
                    m,
                    &slot.chain,
                    &Sense::lun_not_supported(),
                    data_in_cap,
                )),
            },
        }
    }

    /// Starts the medium I/O of a command; returns the used length if it finished at once.
    fn start_io(
        &mut self,
        id: usize,
        sh: &Shared,
        mem: &MemGuard,
        lun: Arc<Lun>,
        req: IoRequest,
    ) -> Option<u32> {
        let slot = &mut self.slots[id];
        let m: &Mem = mem;
        let data_in_cap = slot.chain.writable.total() - CMD_RESP_LEN as u64;
        let data_out_len = slot.chain.readable.total() - CMD_REQ_LEN as u64;
        let Some(disk) = lun.as_disk() else {
            return Some(respond_sense(
                m,
                &slot.chain,
                &Sense::internal_target_failure(),
                data_in_cap,
            ));
        };
        let cache = disk.backing.cache;
        let overrun = |slot: &Slot| Some(respond(m, &slot.chain, response::OVERRUN, 0, 0, &[]));
        let job = match req {
            IoRequest::Read { offset, len } => {
                if len > data_in_cap {
                    return overrun(slot);
                }
                Job::Read {
                    offset,
                    len,
                    done: 0,
                }
            }
            IoRequest::Write { offset, len, fua } => {
                if len > data_out_len {
                    return overrun(slot);
                }
                Job::Write {
                    offset,
                    len,
                    done: 0,
                    fua: fua && cache.honours_flush() && !cache.writes_are_synchronous(),
                }
            }
            IoRequest::Flush if !cache.honours_flush() => {
                return Some(good(m, &slot.chain, data_in_cap));
            }
            IoRequest::Discard { ref ranges } if ranges.is_empty() => {
                return Some(good(m, &slot.chain, data_in_cap));
            }
            IoRequest::Verify { compare: false, .. } => {
                // Nothing to compare: the range was checked, and the host keeps the medium
                // readable (QEMU answers the same way).
                return Some(good(m, &slot.chain, data_in_cap));
            }
            IoRequest::Flush | IoRequest::WriteZeroes { .. } => Job::Batch {
                ranges: Vec::new(),
                redone: false,
            },
            IoRequest::Discard { ref ranges } => Job::Batch {
                ranges: ranges.clone(),
                redone: false,
            },
            IoRequest::WriteSame {
                offset,
                len,
                block_len,
            } => {
                let Some(buf) = pattern_buffer(m, &slot.chain.readable, len, block_len) else {
                    return Some(respond_sense(
                        m,
                        &slot.chain,
                        &Sense::invalid_field_in_cdb(),
                        data_in_cap,
                    ));
                };
                slot.bounce = Some(buf);
                Job::Pattern {
                    pos: offset,
                    end: offset + len,
                }
            }
            IoRequest::Verify { offset, len, .. } => {
                if len > data_out_len {
                    return overrun(slot);
                }
                slot.bounce = AlignedBuf::new(len.min(CHUNK) as usize);
                Job::Verify {
                    start: offset,
                    pos: offset,
                    end: offset + len,
                }
            }
            IoRequest::CompareAndWrite { offset, len, fua } => {
                if len.saturating_mul(2) > data_out_len {
                    return overrun(slot);
                }
                slot.bounce = AlignedBuf::new(len as usize);
                Job::CompareRead {
                    offset,
                    len,
                    fua: fua && cache.honours_flush(),
                }
            }
        };
        let needs_bounce = matches!(
            job,
            Job::Pattern { .. } | Job::Verify { .. } | Job::CompareRead { .. }
        );
        if needs_bounce && slot.bounce.is_none() {
            return Some(respond_sense(
                m,
                &slot.chain,
                &Sense::internal_target_failure(),
                data_in_cap,
            ));
        }
        slot.job = job;
        slot.mem = Some(mem.clone());
        slot.lun = Some(lun.clone());
        lun.inflight.fetch_add(1, Ordering::AcqRel);
        sh.inflight.begin(slot.queue);
        if !self.pass_gate(sh, id, &lun, &req, true) {
            self.slots[id].parked = Some(req);
            self.parked.push_back(id);
            return None;
        }
        self.submit_io(id, sh, lun, req)
    }

    /// Takes a command's share of its LUN's write gate: writes are counted, a COMPARE AND
    /// WRITE closes the gate and waits for the writes in flight. False: the command waits
    /// (parked). A new write also waits while earlier ones of this worker wait, so the
    /// guest's writes keep their order.
    fn pass_gate(
        &mut self,
        sh: &Shared,
        id: usize,
        lun: &Lun,
        req: &IoRequest,
        fresh: bool,
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
        if fresh && !self.parked.is_empty() {
            return false;
        }
        let slot = &mut self.slots[id];
        if exclusive {
            let answer = if slot.gate == GateHold::Exclusive {
                lun.gate.drained()
            } else {
                lun.gate.close()
            };
            if answer != Exclusive::Busy {
                slot.gate = GateHold::Exclusive;
            }
            answer == Exclusive::Go
        } else {
            match lun.gate.enter_write() {
                WriteEntry::Passed => {
                    slot.gate = GateHold::Write;
                    true
                }
                WriteEntry::Wait { wake } => {
                    if wake {
                        sh.wake_workers();
                    }
                    false
                }
            }
        }
    }

    /// Starts the commands waiting at a closed write gate, oldest first, as far as the
    /// gates let them; returns the vrings to notify for those that ended at once.
    fn resume_parked(&mut self, sh: &Shared, vrings: &[Vring]) -> u64 {
        let mut to_signal = 0;
        while let Some(&id) = self.parked.front() {
            let slot = &mut self.slots[id];
            let (Some(req), Some(lun)) = (slot.parked.take(), slot.lun.clone()) else {
                self.parked.pop_front();
                continue;
            };
            if !self.pass_gate(sh, id, &lun, &req, false) {
                self.slots[id].parked = Some(req);
                break;
            }
            self.parked.pop_front();
            if let Some(used) = self.submit_io(id, sh, lun, req) {
                let vpos = self.slots[id].vring;
                if let Some(vring) = vrings.get(vpos) {
                    self.finish_inline(id, vring, used);
                    to_signal |= 1u64 << (vpos % 64);
                }
            }
        }
        self.submit();
        to_signal
    }

    /// Submits a command's medium I/O; returns the used length if it could not be.
    fn submit_io(&mut self, id: usize, sh: &Shared, lun: Arc<Lun>, req: IoRequest) -> Option<u32> {
        let submitted = match req {
            IoRequest::Discard { ranges } => self.push_fallocates(id, &lun, &ranges, PUNCH_HOLE),
            IoRequest::WriteZeroes { offset, len } => {
                self.push_fallocate(id, &lun, offset, len, ZERO_RANGE)
            }
            IoRequest::Flush => self.push_flush(id, &lun),
            _ => self.push_next(id),
        };
        if !submitted {
            let slot = &mut self.slots[id];
            slot.error.get_or_insert(Sense::internal_target_failure());
            if slot.pending == 0 {
                let used = finish_response(slot);
                let queue = slot.queue;
                slot.lun = None;
                leave_gate(sh, &lun, std::mem::take(&mut slot.gate));
                end_lun_io(sh, &lun);
                sh.inflight.end(queue);
                return Some(used);
            }
        }
        None
    }

    /// One fallocate per `(offset, len)` range; false if one could not be queued.
    fn push_fallocates(&mut self, id: usize, lun: &Lun, ranges: &[(u64, u64)], mode: i32) -> bool {
        ranges
            .iter()
            .all(|&(o, l)| self.push_fallocate(id, lun, o, l, mode))
    }

    fn push_fallocate(&mut self, id: usize, lun: &Lun, offset: u64, len: u64, mode: i32) -> bool {
        let e = opcode::Fallocate::new(types::Fd(raw_fd(lun)), len)
            .offset(offset)
            .mode(mode)
            .build()
            .user_data(id as u64);
        self.push(id, &e)
    }

    fn push_flush(&mut self, id: usize, lun: &Lun) -> bool {
        let e = opcode::Fsync::new(types::Fd(raw_fd(lun)))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(id as u64);
        self.push(id, &e)
    }

    fn push(&mut self, id: usize, e: &io_uring::squeue::Entry) -> bool {
        // SAFETY: every entry built by this worker points only at memory owned by slot `id`
        // (its iovec array, its bounce buffer) or at guest memory held alive by the slot's
        // memory guard; the slot is not released before the entry's completion is reaped.
        let ok = unsafe { self.ring.push(e) }.is_ok();
        if ok {
            self.slots[id].pending += 1;
        }
        ok
    }

    /// Submits the next read or write of a streaming job. False if it could not be queued.
    fn push_next(&mut self, id: usize) -> bool {
        let slot = &mut self.slots[id];
        let (Some(lun), Some(mem)) = (slot.lun.clone(), slot.mem.clone()) else {
            return false;
        };
        let align = lun.as_disk().map_or(1, |d| d.backing.dio_align);
        let m: &Mem = &mem;
        let (write, offset, flags) = match slot.job {
            Job::Read { offset, len, done } => {
                let ok = map_or_bounce(m, slot, done, len - done, offset + done, align, false);
                if !ok {
                    return false;
                }
                (false, offset + done, 0)
            }
            Job::Write {
                offset,
                len,
                done,
                fua,
            } => {
                let ok = map_or_bounce(m, slot, done, len - done, offset + done, align, true);
                if !ok {
                    return false;
                }
                (true, offset + done, if fua { libc::RWF_DSYNC } else { 0 })
            }
            Job::Pattern { pos, end } => (true, pos, bounce_iov(slot, end - pos)),
            Job::Verify { pos, end, .. } => (false, pos, bounce_iov(slot, end - pos)),
            Job::CompareRead { offset, len, .. } => (false, offset, bounce_iov(slot, len)),
            Job::CompareWrite { offset, len, fua } => {
                let flags = bounce_iov(slot, len);
                (true, offset, flags | if fua { libc::RWF_DSYNC } else { 0 })
            }
            Job::Idle | Job::Batch { .. } | Job::Passthrough => return false,
        };
        if slot.iov.0.is_empty() {
            return false;
        }
        let fd = types::Fd(raw_fd(&lun));
        let iov = slot.iov.0.as_ptr();
        let cnt = slot.iov.0.len() as u32;
        let first = slot.iov.0[0];
        // One segment (the common case: a guest page or a bounce buffer) goes as a plain
        // read or write, which spares the kernel importing an iovec array.
        let single = u32::try_from(first.iov_len).ok().filter(|_| cnt == 1);
        let e = match (write, single) {
            (true, Some(len)) => opcode::Write::new(fd, first.iov_base as *const u8, len)
                .offset(offset)
                .rw_flags(flags)
                .build(),
            (false, Some(len)) => opcode::Read::new(fd, first.iov_base.cast::<u8>(), len)
                .offset(offset)
                .build(),
            (true, None) => opcode::Writev::new(fd, iov, cnt)
                .offset(offset)
                .rw_flags(flags)
                .build(),
            (false, None) => opcode::Readv::new(fd, iov, cnt).offset(offset).build(),
        }
        .user_data(id as u64);
        self.push(id, &e)
    }

    /// Reaps io_uring completions, advances or finishes their commands, and resumes queues
    /// that were waiting for a free slot.
    pub fn complete(&mut self, sh: &Shared, vrings: &[Vring]) {
        let mut reaped = std::mem::take(&mut self.reaped);
        self.ring.reap(|ud, res| reaped.push((ud as usize, res)));
        let mut to_signal: u64 = 0;
        for &(id, res) in &reaped {
            if id >= self.slots.len() || self.slots[id].pending == 0 {
                continue;
            }
            if let Some(used) = self.on_cqe(id, res) {
                to_signal |= self.retire(id, used, sh, vrings);
            }
        }
        reaped.clear();
        self.reaped = reaped;
        let done = std::mem::take(
            &mut *self
                .passthrough
                .items
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (id, c) in done {
            to_signal |= self.answer_passthrough(id, c, sh, vrings);
        }
        if !self.parked.is_empty() {
            to_signal |= self.resume_parked(sh, vrings);
        }
        self.submit();
        signal_marked(vrings, to_signal);
        if self.throttled && !self.free.is_empty() {
            self.throttled = false;
            for (vpos, queue) in sh.request_queues_of(self.thread) {
                self.process_queue(sh, vrings, vpos, queue);
            }
        }
    }

    /// Answers passthrough command `id` with `c` on the calling thread (which holds this
    /// worker's lock) and notifies the guest.
    fn finish_passthrough_here(&mut self, id: usize, c: ScsiCompletion, sh: &Shared) {
        let vrings = std::mem::take(&mut self.vrings);
        let bit = self.answer_passthrough(id, c, sh, &vrings);
        signal_marked(&vrings, bit);
        self.vrings = vrings;
        if self.throttled {
            // A queue waits for a free slot: let the worker thread resume it.
            let _ = self.passthrough.wake.write(1);
        }
    }

    /// Writes passthrough command `id`'s answer and retires it; returns its vring's bit for
    /// the notification mask (0 for a slot that no longer holds a passthrough command).
    fn answer_passthrough(
        &mut self,
        id: usize,
        c: ScsiCompletion,
        sh: &Shared,
        vrings: &[Vring],
    ) -> u64 {
        if id >= self.slots.len() || !matches!(self.slots[id].job, Job::Passthrough) {
            return 0;
        }
        let used = finish_passthrough(&mut self.slots[id], c);
        self.retire(id, used, sh, vrings)
    }

    /// Returns a finished command's chain to the guest and frees its slot; returns the bit
    /// of its vring for the notification mask.
    fn retire(&mut self, id: usize, used: u32, sh: &Shared, vrings: &[Vring]) -> u64 {
        let slot = &mut self.slots[id];
        let mut bit = 0;
        if let Some(vring) = vrings.get(slot.vring) {
            let _ = vring.add_used(slot.chain.head, used);
            bit = 1u64 << (slot.vring % 64);
        }
        let lun = slot.lun.take();
        let queue = slot.queue;
        let gate = std::mem::take(&mut slot.gate);
        slot.release();
        self.free.push(id);
        if let Some(lun) = lun {
            leave_gate(sh, &lun, gate);
            end_lun_io(sh, &lun);
        }
        sh.inflight.end(queue);
        bit
    }

    /// Forwards a command to a passthrough LUN: the CDB unchanged, data-out copied from guest
    /// memory; the answer arrives through [`PassthroughDone`].
    fn start_passthrough(
        &mut self,
        id: usize,
        sh: &Shared,
        mem: &MemGuard,
        lun: Arc<Lun>,
        cdb: &[u8],
        task_attr: u8,
    ) -> Option<u32> {
        let slot = &mut self.slots[id];
        let m: &Mem = mem;
        let Medium::Iscsi(target) = &lun.medium else {
            return Some(respond(m, &slot.chain, response::FAILURE, 0, 0, &[]));
        };
        let out_len = slot.chain.readable.total() - CMD_REQ_LEN as u64;
        let in_len = slot.chain.writable.total() - CMD_RESP_LEN as u64;
        if out_len > MAX_PASSTHROUGH_BYTES || in_len > MAX_PASSTHROUGH_BYTES {
            return Some(respond(m, &slot.chain, response::OVERRUN, 0, 0, &[]));
        }
        let mut data_out = vec![0u8; out_len as usize];
        if slot
            .chain
            .readable
            .read_into(m, CMD_REQ_LEN as u64, &mut data_out)
            != data_out.len()
        {
            return Some(respond(m, &slot.chain, response::FAILURE, 0, 0, &[]));
        }
        let mut cmd = crate::scsi::task::command(cdb, data_out, in_len as u32);
        cmd.cdb_len =
            cdb::cdb_len_for_opcode(cdb[0]).unwrap_or(if cdb[0] == 0x7f { 32 } else { 16 });
        cmd.task_attr = match task_attr {
            1 => TaskAttr::Ordered,
            2 => TaskAttr::HeadOfQueue,
            3 => TaskAttr::Aca,
            _ => TaskAttr::Simple,
        };
        slot.job = Job::Passthrough;
        slot.mem = Some(mem.clone());
        slot.lun = Some(lun.clone());
        slot.pending = 1;
        lun.inflight.fetch_add(1, Ordering::AcqRel);
        sh.inflight.begin(slot.queue);
        let done = self.passthrough.clone();
        let (shared, thread) = (sh.me.clone(), self.thread);
        if !self.corked.iter().any(|l| Arc::ptr_eq(l, &lun)) {
            self.corked.push(lun.clone());
        }
        let pid = target.submit_corked(
            cmd,
            Box::new(move |c| {
                // Answer from the initiator thread when the worker is free: no hand-over,
                // no wake-up. Otherwise (the worker is busy, or this is its own thread
                // inside `submit`) hand the completion over.
                if let Some(sh) = shared.upgrade() {
                    if let Some(Ok(mut w)) = sh.workers.get(thread).map(|m| m.try_lock()) {
                        w.finish_passthrough_here(id, c, &sh);
                        return;
                    }
                }
                done.post(id, c);
            }),
        );
        // The completion can only be consumed by this thread, after this store.
        self.slots[id].passthrough_id = pid;
        None
    }

    /// Advances a command by one completion; returns the used length when it is finished.
    fn on_cqe(&mut self, id: usize, res: i32) -> Option<u32> {
        let slot = &mut self.slots[id];
        slot.pending -= 1;
        let Some(mem) = slot.mem.clone() else {
            return Some(finish_response(slot));
        };
        let m: &Mem = &mem;
        let is_write = matches!(
            slot.job,
            Job::Write { .. } | Job::Pattern { .. } | Job::CompareWrite { .. }
        );
        if res < 0 {
            let errno = -res;
            let retry = (errno == libc::EAGAIN || errno == libc::EINTR)
                && slot.retries < MAX_RETRIES
                && !matches!(slot.job, Job::Batch { .. });
            if retry {
                slot.retries += 1;
                if self.push_next(id) {
                    return None;
                }
                let slot = &mut self.slots[id];
                slot.error.get_or_insert(Sense::internal_target_failure());
                return (slot.pending == 0).then(|| finish_response(slot));
            } else if errno == libc::EOPNOTSUPP {
                if let Some(answer) = self.deallocate_another_way(id) {
                    return answer;
                }
            }
            let slot = &mut self.slots[id];
            slot.error.get_or_insert(sense_for_errno(errno, is_write));
            return (slot.pending == 0).then(|| finish_response(slot));
        }
        let n = res as u64;
        slot.retries = 0;
        if slot.error.is_some() {
            return (slot.pending == 0).then(|| finish_response(slot));
        }
        match slot.job {
            Job::Read {
                offset,
                len,
                ref mut done,
            } => {
                if n == 0 {
                    // End of file inside the advertised capacity: the backing shrank.
                    slot.error = Some(Sense::medium_error_unrecovered_read());
                    return Some(finish_response(slot));
                }
                let start = *done;
                *done += n;
                if let Some(b) = slot.bounce.as_ref() {
                    let chunk = &b.as_slice()[..n.min(b.len() as u64) as usize];
                    slot.chain
                        .writable
                        .write_from(m, CMD_RESP_LEN as u64 + start, chunk);
                    slot.bounce = None;
                }
                if *done < len {
                    let _ = offset;
                    return self.continue_or_fail(id);
                }
                slot.data_in = len;
            }
            Job::Write {
                len, ref mut done, ..
            } => {
                if n == 0 {
                    slot.error = Some(Sense::write_error());
                    return Some(finish_response(slot));
                }
                *done += n;
                slot.bounce = None;
                if *done < len {
                    return self.continue_or_fail(id);
                }
            }
            Job::Batch { .. } => {
                if slot.pending > 0 {
                    return None;
                }
            }
            Job::Pattern { ref mut pos, end } => {
                *pos += n;
                if n == 0 {
                    slot.error = Some(Sense::write_error());
                } else if *pos < end {
                    return self.continue_or_fail(id);
                }
            }
            Job::Verify {
                start,
                ref mut pos,
                end,
            } => {
                let Some(b) = slot.bounce.as_ref() else {
                    slot.error = Some(Sense::internal_target_failure());
                    return Some(finish_response(slot));
                };
                if n == 0 {
                    slot.error = Some(Sense::medium_error_unrecovered_read());
                    return Some(finish_response(slot));
                }
                let got = &b.as_slice()[..n.min(b.len() as u64) as usize];
                let at = *pos - start;
                if let Some(diff) = compare_with_data_out(m, &slot.chain.readable, at, got) {
                    slot.error = Some(Sense::miscompare(at + diff));
                    return Some(finish_response(slot));
                }
                *pos += got.len() as u64;
                if *pos < end {
                    return self.continue_or_fail(id);
                }
            }
            Job::CompareRead { offset, len, fua } => {
                let Some(b) = slot.bounce.as_mut() else {
                    slot.error = Some(Sense::internal_target_failure());
                    return Some(finish_response(slot));
                };
                if n != len {
                    slot.error = Some(Sense::medium_error_unrecovered_read());
                    return Some(finish_response(slot));
                }
                if let Some(diff) = compare_with_data_out(m, &slot.chain.readable, 0, b.as_slice())
                {
                    slot.error = Some(Sense::miscompare(diff));
                    return Some(finish_response(slot));
                }
                let copied =
                    slot.chain
                        .readable
                        .read_into(m, CMD_REQ_LEN as u64 + len, b.as_mut_slice());
                if copied as u64 != len {
                    slot.error = Some(Sense::invalid_field_in_cdb());
                    return Some(finish_response(slot));
                }
                slot.job = Job::CompareWrite { offset, len, fua };
                return self.continue_or_fail(id);
            }
            Job::CompareWrite { len, .. } => {
                if n != len {
                    slot.error = Some(Sense::write_error());
                }
            }
            Job::Idle | Job::Passthrough => {}
        }
        let slot = &mut self.slots[id];
        (slot.pending == 0).then(|| finish_response(slot))
    }

    /// A block device refused to punch a hole (a write of zeroes with unmap) for UNMAP or
    /// WRITE SAME(UNMAP). The first refusal of the command redoes all its ranges another
    /// way; later ones are then moot. Where the disk claims LBPRZ the blocks must read as
    /// zeroes, so zeroes are written; elsewhere the ranges are discarded. None when the
    /// command is not such a deallocation.
    fn deallocate_another_way(&mut self, id: usize) -> Option<Option<u32>> {
        let slot = &mut self.slots[id];
        let lun = slot.lun.clone()?;
        let disk = lun.as_disk().filter(|d| d.backing.is_block_device)?;
        let Job::Batch { ranges, redone } = &mut slot.job else {
            return None;
        };
        if ranges.is_empty() {
            return None;
        }
        if !std::mem::replace(redone, true) {
            let ranges = ranges.clone();
            if disk.disk.properties().unmap_zeroes {
                if !self.push_fallocates(id, &lun, &ranges, ZERO_RANGE) {
                    let slot = &mut self.slots[id];
                    slot.error.get_or_insert(Sense::internal_target_failure());
                }
            } else if ranges
                .iter()
                .any(|&(o, l)| disk.backing.blk_discard(o, l).is_err())
            {
                let slot = &mut self.slots[id];
                slot.error
                    .get_or_insert(sense_for_errno(libc::EOPNOTSUPP, true));
            }
        }
        let slot = &mut self.slots[id];
        Some((slot.pending == 0).then(|| finish_response(slot)))
    }

    /// Queues the next operation of a multi-step command, or fails the command.
    fn continue_or_fail(&mut self, id: usize) -> Option<u32> {
        if self.push_next(id) {
            return None;
        }
        let slot = &mut self.slots[id];
        slot.error.get_or_insert(Sense::internal_target_failure());
        (slot.pending == 0).then(|| finish_response(slot))
    }
}

/// The backing file's descriptor (-1, which the kernel refuses, for a LUN without one).
fn raw_fd(lun: &Lun) -> i32 {
    use std::os::unix::io::AsRawFd;
    lun.as_disk().map_or(-1, |d| d.backing.file.as_raw_fd())
}

/// Points the slot's single iovec at its bounce buffer, for at most `max` bytes.
fn bounce_iov(slot: &mut Slot, max: u64) -> i32 {
    slot.iov.0.clear();
    if let Some(b) = slot.bounce.as_mut() {
        let n = max.min(b.len() as u64) as usize;
        slot.iov.0.push(libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: n,
        });
    }
    0
}

/// Medium access on a null LUN: reads return zeroes, everything else succeeds at once.
fn null_io(m: &Mem, chain: &ParsedChain, req: &IoRequest) -> u32 {
    static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
    let data_in_cap = chain.writable.total() - CMD_RESP_LEN as u64;
    let IoRequest::Read { len, .. } = *req else {
        return good(m, chain, data_in_cap);
    };
    if len > data_in_cap {
        return respond(m, chain, response::OVERRUN, 0, 0, &[]);
    }
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZEROES.len() as u64) as usize;
        if chain
            .writable
            .write_from(m, CMD_RESP_LEN as u64 + done, &ZEROES[..n])
            < n
        {
            let sense = Sense::internal_target_failure();
            return respond_sense(m, chain, &sense, data_in_cap);
        }
        done += n as u64;
    }
    let resid = clamp_u32(data_in_cap - len);
    respond(m, chain, response::OK, status::GOOD, resid, &[]).saturating_add(clamp_u32(len))
}

/// Largest data buffer of one passthrough command (it is copied, unlike local I/O).
const MAX_PASSTHROUGH_BYTES: u64 = 16 << 20;

/// Writes the response of a passthrough command: the target's status, sense and data, or
/// the virtio answer an HBA gives when the target could not be reached in time.
fn finish_passthrough(slot: &mut Slot, c: ScsiCompletion) -> u32 {
    slot.pending = 0;
    let Some(mem) = slot.mem.clone() else {
        return 0;
    };
    let m: &Mem = &mem;
    let in_cap = slot.chain.writable.total() - CMD_RESP_LEN as u64;
    match c.result {
        Ok(st) => {
            let n = c
                .data_in
                .len()
                .min(usize::try_from(in_cap).unwrap_or(usize::MAX));
            let written = slot
                .chain
                .writable
                .write_from(m, CMD_RESP_LEN as u64, &c.data_in[..n]);
            let resid = clamp_u32(in_cap - written as u64);
            respond(m, &slot.chain, response::OK, st.status, resid, &st.sense)
                .saturating_add(written as u32)
        }
        Err(TransportError::Timeout | TransportError::Closed) => {
            // No path within no_path_retry: what a real HBA's LU gives for a lost target.
            let mut sense = [0u8; 18];
            let n = Sense::lu_communication_failure().to_fixed(&mut sense);
            respond(
                m,
                &slot.chain,
                response::OK,
                status::CHECK_CONDITION,
                clamp_u32(in_cap),
                &sense[..n],
            )
        }
        // The guest's task management ended it, as QEMU reports cancelled requests.
        Err(TransportError::Aborted) => {
            respond(m, &slot.chain, response::ABORTED, 0, clamp_u32(in_cap), &[])
        }
        // The path died with the command at the target and it may not run twice: the
        // guest's SCSI layer decides whether to retry (Linux: DID_TRANSPORT_DISRUPTED).
        Err(TransportError::Disrupted) => respond(
            m,
            &slot.chain,
            response::TRANSPORT_FAILURE,
            0,
            clamp_u32(in_cap),
            &[],
        ),
        Err(TransportError::Protocol(_)) => {
            respond(m, &slot.chain, response::FAILURE, 0, clamp_u32(in_cap), &[])
        }
    }
}

/// Notifies the guest on every vring whose bit is set in `mask`.
fn signal_marked(vrings: &[Vring], mask: u64) {
    for (vpos, vring) in vrings.iter().enumerate() {
        if mask & (1u64 << (vpos % 64)) != 0 {
            signal(vring);
        }
    }
}

/// Gives back what a command held of its LUN's write gate, waking the workers when that
/// lets a waiting command go.
fn leave_gate(sh: &Shared, lun: &Lun, hold: GateHold) {
    let wake = match hold {
        GateHold::None => false,
        GateHold::Write => lun.gate.end_write(),
        GateHold::Exclusive => {
            lun.gate.open();
            true
        }
    };
    if wake {
        sh.wake_workers();
    }
}

/// Marks the end of one command of `lun`, waking task management waiting for it to drain.
fn end_lun_io(sh: &Shared, lun: &Lun) {
    lun.inflight.fetch_sub(1, Ordering::AcqRel);
    // Waiting task management re-checks (an ABORT TASK waits for one task, not a drain);
    // nothing happens when none waits.
    sh.lun_drained();
}

/// Writes the response of a finished I/O command; returns the used length.
fn finish_response(slot: &mut Slot) -> u32 {
    let Some(mem) = slot.mem.clone() else {
        return 0;
    };
    let m: &Mem = &mem;
    let data_in_cap = slot.chain.writable.total() - CMD_RESP_LEN as u64;
    if let Some(sense) = slot.error {
        return respond_sense(m, &slot.chain, &sense, data_in_cap);
    }
    let resid = clamp_u32(data_in_cap - slot.data_in.min(data_in_cap));
    respond(m, &slot.chain, response::OK, status::GOOD, resid, &[])
        .saturating_add(clamp_u32(slot.data_in))
}

fn good(m: &Mem, chain: &ParsedChain, data_in_cap: u64) -> u32 {
    respond(
        m,
        chain,
        response::OK,
        status::GOOD,
        clamp_u32(data_in_cap),
        &[],
    )
}

fn respond_sense(m: &Mem, chain: &ParsedChain, sense: &Sense, data_in_cap: u64) -> u32 {
    let mut buf = [0u8; 32];
    let n = sense.to_fixed(&mut buf);
    respond(
        m,
        chain,
        response::OK,
        status::CHECK_CONDITION,
        clamp_u32(data_in_cap),
        &buf[..n],
    )
}

/// Writes a `virtio_scsi_cmd_resp` at the start of the writable part; returns the bytes
/// written (0 when the guest gave no room for it).
pub(crate) fn respond(
    m: &Mem,
    chain: &ParsedChain,
    response: u8,
    status: u8,
    resid: u32,
    sense: &[u8],
) -> u32 {
    if chain.writable.total() < CMD_RESP_LEN as u64 {
        return 0;
    }
    let mut out = [0u8; CMD_RESP_LEN];
    encode_cmd_resp(&mut out, response, status, resid, sense);
    chain.writable.write_from(m, 0, &out) as u32
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// True when the guest's available index is more than a queue size ahead of what the
/// device consumed (or unreadable): such a ring can never be served.
pub(crate) fn avail_ring_is_corrupt(vring: &Vring, mem: &MemGuard) -> bool {
    let state = vring.get_ref();
    let q = state.get_queue();
    match q.avail_idx(&**mem, std::sync::atomic::Ordering::Acquire) {
        Ok(idx) => idx.0.wrapping_sub(q.next_avail()) > q.size(),
        Err(_) => true,
    }
}

/// Notifies the guest if it asked to be (EVENT_IDX) or always without it.
pub(crate) fn signal(vring: &Vring) {
    if vring.needs_notification().unwrap_or(true) {
        let _ = vring.signal_used_queue();
    }
}
