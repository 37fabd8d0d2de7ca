//! The LUN layer: the LUN table, and the one interface every kind of LUN implements.
//!
//! The vhost layer hands a LUN a [`Command`] (CDB, task attribute, the guest's data
//! buffers) with an [`IoContext`] (the worker's block I/O, a scratch buffer, a way to be
//! answered later from another thread). The LUN answers at once ([`Step::Done`]), or starts
//! block I/O and continues when it completes ([`LunDevice::io_done`]), or forwards the
//! command to a remote target and is answered through the callback
//! ([`LunDevice::remote_done`]), or parks at its write gate until it may go
//! ([`LunDevice::resume`]). Per-command state lives in a [`Task`] the worker keeps and reuses,
//! so the hot path does not allocate.
//!
//! Dispatch is a trait object (`Box<dyn LunDevice>` inside [`Lun`]) rather than an enum: one
//! indirect call per command and per completion, next to an io_uring system call or a
//! network round trip, costs nothing measurable, and a new kind of LUN is one new file that
//! implements [`LunDevice`] plus one line in [`registry`]'s `open_device`. The write gate,
//! the COMPARE AND WRITE / VERIFY / WRITE SAME state machines and the errno-to-sense mapping
//! live here, beside the emulated disk that needs them.

mod disk;
mod forwarded_io;
mod gate;
mod identity;
mod iscsi;
mod iscsi_all;
pub mod live;
mod medium;
mod medium_data;
mod null;
mod passthrough;
mod registry;
mod reservations;
pub mod stats;
pub mod table;
mod task;
#[cfg(test)]
mod tests;
pub mod throttle;
pub mod tmf;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::backend::guest::{DataBuffers, GuestData};
use crate::backend::BlockIo;
use crate::config::IoLimits;
use crate::scsi::disk::DiskProperties;
use crate::scsi::task::{Completer, ScsiCompletion, TaskAttr, TmfFunction, TransportError};
use crate::scsi::{DataOut, Outcome, Sense};

pub use iscsi_all::{expand_all_luns, Discovery};
pub use live::{LiveLuns, LunChange};
pub use registry::{build_lun_table, iscsi_options, open_options, status_lines, LunOpenOptions};
pub use reservations::{ReservationReport, ReservationSetup};
pub use stats::{IoKind, LunStats, QueueStats};
pub use table::{LunTable, Route};
pub use task::Task;
pub use throttle::{Cost, Throttle};

/// Largest transfer one READ/WRITE may ask for (VPD 0xB0), in bytes.
pub const MAX_TRANSFER_BYTES: u64 = 8 << 20;

/// Most sense bytes an answer carries (what a virtio-scsi response has room for; fixed
/// format sense is 18 bytes, descriptor format rarely more than 32).
pub const MAX_SENSE: usize = 96;

/// One command as a LUN receives it.
pub struct Command<'a> {
    pub cdb: &'a [u8; 32],
    pub task_attr: TaskAttr,
}

/// Sense bytes as a remote device returned them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSense {
    bytes: [u8; MAX_SENSE],
    len: u8,
}

impl RawSense {
    pub fn new(sense: &[u8]) -> RawSense {
        let len = sense.len().min(MAX_SENSE);
        let mut bytes = [0u8; MAX_SENSE];
        bytes[..len].copy_from_slice(&sense[..len]);
        RawSense {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A failure of the service delivery rather than of the command: no SCSI status exists
/// (virtio-scsi's response codes, Linux's DID_* codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The guest's buffers are too small for the transfer the CDB asks for.
    Overrun,
    /// Ended by task management before it completed.
    Aborted,
    /// The path to the device failed with the command outstanding; the guest decides
    /// whether to retry.
    TransportDisrupted,
    /// The request could not be carried out at all.
    Failure,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// GOOD; `data_in` bytes were placed at the start of the guest's data-in buffer.
    Good { data_in: u64 },
    /// CHECK CONDITION with this sense; no data.
    Check(Sense),
    /// A status and sense a remote device returned, with `data_in` bytes of data.
    Status {
        status: u8,
        sense: RawSense,
        data_in: u64,
    },
    /// No status: the service delivery failed. `resid` is the residual to report.
    Host { error: HostError, resid: u32 },
}

impl Answer {
    pub fn overrun() -> Answer {
        Answer::Host {
            error: HostError::Overrun,
            resid: 0,
        }
    }

    pub fn failure() -> Answer {
        Answer::Host {
            error: HostError::Failure,
            resid: 0,
        }
    }
}

/// What happened to a command a LUN was given.
pub enum Step {
    /// Finished.
    Done(Answer),
    /// Block I/O is in flight; [`LunDevice::io_done`] continues it.
    Pending,
    /// Waiting at the LUN's write gate; [`LunDevice::resume`] retries it, in order.
    Parked,
    /// Sent to a remote device; the answer arrives through the [`ReplyLater`] callback.
    /// The LUN's [`LunDevice::flush`] must run at the end of the worker's batch.
    Forwarded,
}

/// Builds the callback through which a forwarded command is answered (on whatever thread
/// the answer arrives).
pub trait ReplyLater {
    fn callback(&self, id: usize) -> Completer;
}

/// What a LUN may use while it runs a command.
pub struct IoContext<'a> {
    /// The command's id on its worker: its block I/O's tag and its callback's key.
    pub id: usize,
    pub block: &'a mut BlockIo,
    pub data: DataBuffers<'a>,
    /// Room for answers the LUN builds itself (INQUIRY, MODE SENSE, ...).
    pub scratch: &'a mut [u8],
    pub reply: &'a dyn ReplyLater,
    /// Earlier commands of this worker wait at a write gate: a new write must wait behind
    /// them so the guest's writes keep their order.
    pub waiting_ahead: bool,
    /// Set when the command let other workers' parked commands go (a gate opened).
    pub wake_workers: bool,
    inflight: &'a AtomicU32,
}

impl IoContext<'_> {
    /// Counts the command among its LUN's commands in flight (task management waits for
    /// them), until the worker ends it with [`Lun::end`].
    pub fn hold(&self, task: &mut Task) {
        if !task.held {
            task.held = true;
            self.inflight.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The interface every kind of LUN implements. Shared by every worker thread.
pub trait LunDevice: Send + Sync {
    /// Starts a command.
    fn start(&self, cmd: &Command<'_>, task: &mut Task, io: &mut IoContext<'_>) -> Step;

    /// One block I/O operation of the command completed with `res` (bytes or -errno).
    fn io_done(&self, _task: &mut Task, _res: i32, _io: &mut IoContext<'_>) -> Step {
        Step::Done(Answer::Check(Sense::internal_target_failure()))
    }

    /// A command parked at the write gate tries again.
    fn resume(&self, _task: &mut Task, _io: &mut IoContext<'_>) -> Step {
        Step::Done(Answer::Check(Sense::internal_target_failure()))
    }

    /// A forwarded command's answer arrived: place its data and give its answer.
    fn remote_done(&self, _task: &mut Task, _c: ScsiCompletion, _data: DataBuffers<'_>) -> Answer {
        Answer::failure()
    }

    /// The command ended (answered, or failed to start): give back what it held.
    /// Returns true when that lets commands parked on other workers go.
    fn end(&self, _task: &mut Task) -> bool {
        false
    }

    /// Sends what forwarded commands of the batch queued.
    fn flush(&self) {}

    /// A task management function for the remote device: Some(its answer) when this LUN
    /// forwards task management (`remote_id` names the command for ABORT TASK), None when
    /// it has no remote side.
    fn forward_task_management(
        &self,
        _f: TmfFunction,
        _remote_id: Option<u64>,
    ) -> Option<Result<u8, TransportError>> {
        None
    }

    /// Whether task management must be forwarded to a remote device.
    fn forwards_task_management(&self) -> bool {
        false
    }

    /// A logical unit reset drained the LUN: reset its emulated state.
    fn reset(&self) {}

    /// At shutdown: make completed writes durable.
    fn make_durable(&self) {}

    /// The device starts serving a guest: take what makes the LUN this VM's (an image
    /// lock). Idempotent. The error is one line naming the image and who holds it.
    fn activate(&self) -> Result<(), String> {
        Ok(())
    }

    /// The device stopped (every queue; at the end of a migration the destination's
    /// daemon takes over): let go of what `activate` took.
    fn deactivate(&self) {}

    /// At shutdown, after the last command: end the LUN's sessions with a remote device
    /// cleanly (an iSCSI LUN logs out of every path), within `within`.
    fn shut_down(&self, _within: Duration) {}

    /// Paths to the remote device that are down (0 for a LUN without paths).
    fn paths_down(&self) -> usize {
        0
    }

    /// Whether the LUN has paths to a remote device, whose state changes without telling
    /// anyone (the status line looks at them every second).
    fn has_paths(&self) -> bool {
        false
    }

    /// A one-line description for the logs.
    fn describe(&self) -> String;

    /// Lines of detail for the status dump (one per path of a multipath LUN).
    fn detail_lines(&self) -> Vec<String> {
        Vec::new()
    }

    /// What an emulated disk reports about itself; None for passthrough.
    fn disk_properties(&self) -> Option<&DiskProperties> {
        None
    }

    /// Reads the backing store's size again, or (`new_size`) sets a file's size first,
    /// and makes it the LUN's capacity. A smaller capacity only with `force`. Returns the
    /// capacity in blocks before and after.
    fn resize(&self, _new_size: Option<u64>, _force: bool) -> Result<(u64, u64), String> {
        Err("this kind of LUN cannot be resized".into())
    }

    /// The LUN's persistent reservations, when vscsid keeps them (disk LUNs).
    fn reservations(&self) -> Option<reservations::ReservationReport> {
        None
    }

    /// Fails or restores one path of a multipath LUN, by portal (maintenance).
    fn set_path_failed(&self, _portal: &str, _fail: bool) -> Result<(), String> {
        Err("this LUN has no paths".into())
    }

    /// The file or block device behind the LUN, if it has one.
    fn backing_path(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Whether the LUN writes its backing file or device.
    fn writable(&self) -> bool {
        false
    }

    /// The LUN's capacity in bytes and its block size, when vscsid knows them.
    fn capacity(&self) -> Option<(u64, u32)> {
        self.disk_properties()
            .map(|p| (p.capacity_blocks * u64::from(p.block_size), p.block_size))
    }
}

/// Unit attentions a LUN owes the guest (bits of [`Lun`]'s set), highest priority first.
pub mod attention {
    /// A LUN of its target was added or removed: REPORTED LUNS DATA HAS CHANGED.
    pub const REPORTED_LUNS_CHANGED: u32 = 1 << 0;
    /// The LUN was resized: CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_CHANGED: u32 = 1 << 1;
}

/// One configured LUN: its address, its kind, how many of its commands are in flight, the
/// unit attentions it owes the guest, its I/O limits and its I/O statistics.
pub struct Lun {
    pub target: u8,
    pub lun: u16,
    device: Box<dyn LunDevice>,
    inflight: AtomicU32,
    attentions: AtomicU32,
    /// The I/O limits in force (None: unlimited); replaced as a whole at run time.
    throttle: ArcSwapOption<Throttle>,
    /// Commands held back by the limits on any worker: a new command waits behind them.
    deferred: AtomicU32,
    /// Taken out of the table and not closed yet: the last command to end closes it.
    retired: AtomicBool,
    stats: LunStats,
}

/// A LUN taken out of the table with commands still in flight is closed when the last of
/// them lets go of it (on whatever thread that is): its writes made durable, its
/// sessions ended, its image lock released.
impl Drop for Lun {
    fn drop(&mut self) {
        if *self.retired.get_mut() {
            self.device.make_durable();
            self.device.shut_down(Duration::from_secs(5));
            self.device.deactivate();
            tracing::info!(
                target_id = self.target,
                lun = self.lun,
                "removed LUN closed"
            );
        }
    }
}

impl Lun {
    pub fn new(target: u8, lun: u16, device: Box<dyn LunDevice>) -> Lun {
        Lun {
            target,
            lun,
            device,
            inflight: AtomicU32::new(0),
            attentions: AtomicU32::new(0),
            throttle: ArcSwapOption::empty(),
            deferred: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            stats: LunStats::default(),
        }
    }

    /// The I/O limits in force, if any (one atomic load).
    pub fn throttle(&self) -> arc_swap::Guard<Option<Arc<Throttle>>> {
        self.throttle.load()
    }

    /// The configured I/O limits (empty when unlimited).
    pub fn limits(&self) -> IoLimits {
        self.throttle
            .load()
            .as_ref()
            .map_or_else(IoLimits::default, |t| *t.limits())
    }

    /// Puts `limits` in force with empty buckets (none at all when empty). Commands held
    /// back go when their worker next asks.
    pub fn set_limits(&self, limits: IoLimits) {
        let t = (!limits.is_empty()).then(|| Arc::new(Throttle::new(limits)));
        self.throttle.store(t);
    }

    /// A command is held back by the limits before it starts: it counts among the LUN's
    /// commands in flight (task management and removal see it) until [`Lun::end`].
    pub fn defer(&self, task: &mut Task) {
        if !task.held {
            task.held = true;
            self.inflight.fetch_add(1, Ordering::AcqRel);
        }
        self.deferred.fetch_add(1, Ordering::AcqRel);
    }

    /// A held-back command left the wait (it starts, or ends without starting).
    pub fn undefer(&self) {
        let _ = self
            .deferred
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Whether commands of this LUN are held back by its limits on some worker.
    pub fn has_deferred(&self) -> bool {
        self.deferred.load(Ordering::Acquire) > 0
    }

    /// The LUN left the table: closes it now when nothing is in flight (true), or when
    /// the last command in flight ends (false).
    pub fn retire(&self) -> bool {
        if self.inflight() > 0 {
            self.retired.store(true, Ordering::Release);
            // A command may have ended between the check and the store; then the last
            // reference (the caller's) closes it.
            return false;
        }
        self.device.make_durable();
        self.device.shut_down(Duration::from_secs(5));
        self.device.deactivate();
        true
    }

    /// Owes the guest the unit attentions `bits` (of [`attention`]).
    pub fn raise_attention(&self, bits: u32) {
        self.attentions.fetch_or(bits, Ordering::AcqRel);
    }

    /// The unit attention this command is answered with instead of running, if one is
    /// owed: each once, the highest first. INQUIRY, REPORT LUNS and REQUEST SENSE never get
    /// one (SAM-5 5.14); they leave it owed. One atomic load when none is.
    pub fn take_attention(&self, cdb: &[u8]) -> Option<Sense> {
        let owed = self.attentions.load(Ordering::Acquire);
        if owed == 0 {
            return None;
        }
        use crate::scsi::cdb::{INQUIRY, REPORT_LUNS, REQUEST_SENSE};
        if matches!(cdb.first(), Some(&INQUIRY | &REPORT_LUNS | &REQUEST_SENSE)) {
            return None;
        }
        let bit = owed & owed.wrapping_neg();
        if self.attentions.fetch_and(!bit, Ordering::AcqRel) & bit == 0 {
            return None; // another queue's command took it
        }
        Some(if bit == attention::REPORTED_LUNS_CHANGED {
            Sense::reported_luns_data_changed()
        } else {
            Sense::capacity_data_changed()
        })
    }

    pub fn device(&self) -> &dyn LunDevice {
        &*self.device
    }

    /// The LUN's I/O statistics (updated by the request path when a command ends).
    pub fn stats(&self) -> &LunStats {
        &self.stats
    }

    /// Commands of this LUN in flight on any queue.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Acquire)
    }

    /// Starts a command; see [`LunDevice::start`].
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        cmd: &Command<'_>,
        task: &mut Task,
        id: usize,
        block: &mut BlockIo,
        data: DataBuffers<'_>,
        scratch: &mut [u8],
        reply: &dyn ReplyLater,
        waiting_ahead: bool,
    ) -> (Step, bool) {
        let mut io = IoContext {
            id,
            block,
            data,
            scratch,
            reply,
            waiting_ahead,
            wake_workers: false,
            inflight: &self.inflight,
        };
        let step = self.device.start(cmd, task, &mut io);
        (step, io.wake_workers)
    }

    /// Continues a command after a block I/O completion or a parked retry; see
    /// [`LunDevice::io_done`] and [`LunDevice::resume`]. `res` None resumes.
    pub fn continue_task(
        &self,
        task: &mut Task,
        res: Option<i32>,
        id: usize,
        block: &mut BlockIo,
        data: DataBuffers<'_>,
        reply: &dyn ReplyLater,
    ) -> (Step, bool) {
        let mut io = IoContext {
            id,
            block,
            data,
            scratch: &mut [],
            reply,
            waiting_ahead: false,
            wake_workers: false,
            inflight: &self.inflight,
        };
        let step = match res {
            Some(res) => self.device.io_done(task, res, &mut io),
            None => self.device.resume(task, &mut io),
        };
        (step, io.wake_workers)
    }

    /// Ends a command: gives back what it held and stops counting it in flight. Returns
    /// true when other workers must be woken (a gate opened).
    pub fn end(&self, task: &mut Task) -> bool {
        let wake = self.device.end(task);
        if std::mem::take(&mut task.held) {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
        }
        task.reset();
        wake
    }
}

/// Writes a finished emulated command's data (the first `data_in_len` bytes of `scratch`)
/// to the guest and turns the outcome into an answer. `Outcome::Io` is not finished: a
/// caller that cannot run I/O gets LOGICAL UNIT NOT SUPPORTED.
pub fn answer_emulated(outcome: Outcome, scratch: &[u8], data_in: GuestData<'_>) -> Answer {
    match outcome {
        Outcome::Good { data_in_len } => {
            let n = data_in_len.min(scratch.len());
            Answer::Good {
                data_in: data_in.write_at(0, &scratch[..n]) as u64,
            }
        }
        Outcome::Check(sense) => Answer::Check(sense),
        Outcome::Io(_) => Answer::Check(Sense::lun_not_supported()),
    }
}

/// The guest's data-out buffer, read on demand, for the SCSI layer's parameter lists.
impl DataOut for GuestData<'_> {
    fn len(&self) -> usize {
        usize::try_from(GuestData::len(self)).unwrap_or(usize::MAX)
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize {
        GuestData::read_at(self, offset as u64, buf)
    }
}
