//! Local SCSI passthrough: a host SCSI device behind a LUN, as QEMU's `scsi-generic`
//! ([`sg`]: `/dev/sgN`, every CDB to the device) and `scsi-block` ([`block`]: `/dev/sdX`,
//! READ/WRITE through io_uring, every other CDB to the device). What both share lives
//! here: sending a CDB with SG_IO without blocking the worker, the read-only refusal, the
//! transfer limit, answering, and task management.
//!
//! How a worker avoids blocking on the device. What the kernel offers:
//! - the sg driver's asynchronous interface (write() an `sg_io_hdr` to `/dev/sgN`, read()
//!   the completion; pollable): sg-only, at most 16 commands per descriptor, and read()
//!   returns any finished command (matched by its pack id);
//! - io_uring passthrough (`IORING_OP_URING_CMD`): implemented by NVMe character devices
//!   and ublk only; neither sg nor sd has a `uring_cmd` handler, so it cannot carry a
//!   SCSI CDB;
//! - a bounded pool of helper threads issuing the blocking SG_IO ioctl: works on sd block
//!   devices too, and is what QEMU does (its scsi-generic and scsi-block send SG_IO
//!   through its thread pool).
//!
//! Both are used ([`pool::Engine`]), measured against each other in the passthrough guest
//! test (`passthrough_check --bench`, 4 KiB reads of a RAM-backed scsi_debug disk under
//! TCG, four interleaved runs each, README "Local SCSI passthrough"): an sg LUN uses the
//! asynchronous interface ([`sg_async`]): the worker write()s the command and a completion
//! thread per LUN read()s answers, one hand-off instead of the pool's two. With a device
//! that answers after a delay, as hardware does (scsi_debug `ndelay=50000`), it did a
//! median 1 023 IOPS at QD1 and 1 397 at QD8 against the pool's 158 and 770; with a device
//! that answers inside the submitting call (`delay=0`) 2 224 and 4 091 against 1 207 and
//! 4 383 (the device's work then runs on the worker). A block-passthrough LUN has no
//! asynchronous interface for SG_IO and keeps the pool for its commands other than READ
//! and WRITE (those go through io_uring). Either way at most [`pool::QUEUE_DEPTH`]
//! commands are accepted at once; a command past that is answered TASK SET FULL at once
//! (the guest lowers its queue depth and retries), not queued without bound.
//!
//! Data. With the asynchronous sg engine it moves straight between guest memory and the
//! device: the command names the guest's buffers (iovecs), the kernel copies data-out from
//! them inside our write() and data-in into them inside the read() that returns the
//! command, and the command holds the guest memory map's guard until then, so a frontend
//! that disconnects or replaces its memory meanwhile cannot have it unmapped under the
//! kernel. The exceptions are copied: commands whose data-in vscsid reads or edits on
//! its way (INQUIRY, READ CAPACITY: see `reply`) and lists of more than IOV_MAX pieces.
//! With the helper threads data is copied: data-out from guest memory into a buffer
//! before the command is queued, data-in from the buffer into guest memory when the
//! answer reaches the worker. Buffers are kept for reuse (one per thread), so a steady
//! load does not allocate them.

pub mod block;
mod device;
mod pool;
mod reply;
pub mod sg;
mod sg_async;

use super::{Answer, Command, HostError, IoContext, RawSense, Step, Task};
use crate::backend::guest::DataBuffers;
use crate::backend::sg_io::Direction;
use crate::scsi::cdb;
use crate::scsi::task::{ScsiCompletion, TmfFunction, TransportError};
use crate::scsi::{status, write_class, Sense};
use pool::{Job, Pool};

/// The CDB length of an operation code as Linux reckons it (`COMMAND_SIZE`, by group):
/// virtio-scsi carries a fixed 32-byte CDB field without its length. Variable-length
/// CDBs carry theirs in byte 7.
pub fn cdb_len(c: &[u8; 32]) -> usize {
    let op = c[0];
    if op == cdb::VARIABLE_LENGTH {
        return (8 + usize::from(c[7])).min(32);
    }
    // Groups 0..7: 6, 10, 10, 12 (reserved), 16, 12, 10 and 10 (vendor-specific).
    const BY_GROUP: [usize; 8] = [6, 10, 10, 12, 16, 12, 10, 10];
    BY_GROUP[usize::from(op >> 5)]
}

/// A read-only LUN answers a command that would change the medium itself.
fn refuse_on_readonly(readonly: bool, c: &[u8]) -> Option<Answer> {
    (readonly && write_class::changes_data(c)).then(|| Answer::Check(Sense::write_protected()))
}

/// TASK SET FULL: the LUN has as many commands as it accepts.
fn task_set_full() -> Answer {
    Answer::Status {
        status: status::TASK_SET_FULL,
        sense: RawSense::new(&[]),
        data_in: 0,
    }
}

/// The SG_IO side of a passthrough LUN.
pub struct Forwarder {
    pool: Pool,
    readonly: bool,
}

impl Forwarder {
    /// Sends `cmd` to the device through the helper threads.
    pub fn start(&self, cmd: &Command<'_>, task: &mut Task, io: &mut IoContext<'_>) -> Step {
        if let Some(answer) = refuse_on_readonly(self.readonly, cmd.cdb) {
            return Step::Done(answer);
        }
        let (out_len, in_len) = (io.data.out.len(), io.data.inn.len());
        // SG_IO v3 moves data one way per command.
        let (dir, len) = match (out_len, in_len) {
            (0, 0) => (Direction::None, 0),
            (n, 0) => (Direction::ToDevice, n),
            (0, n) => (Direction::FromDevice, n),
            _ => return Step::Done(Answer::Check(Sense::invalid_field_in_cdb())),
        };
        if len > self.pool.facts().max_transfer {
            return Step::Done(Answer::Check(Sense::invalid_field_in_cdb()));
        }
        if !self.pool.reserve() {
            return Step::Done(task_set_full());
        }
        let guest = self.guest_buffers(cmd.cdb, dir, len, &io.data);
        task.direct_data = guest.is_some();
        let mut buf = Vec::new();
        if guest.is_none() {
            buf = self.pool.buffer(len as usize);
            if dir == Direction::ToDevice && io.data.out.read_at(0, &mut buf) != buf.len() {
                self.pool.cancel_reservation();
                self.pool.recycle(buf);
                return Step::Done(Answer::failure());
            }
        }
        let id = self.pool.next_id();
        io.hold(task);
        // The answer can only be consumed by this worker after this store: the worker
        // holds its lock until its batch ends.
        task.remote_id = Some(id);
        self.pool.submit(Job {
            id,
            cdb: *cmd.cdb,
            cdb_len: cdb_len(cmd.cdb),
            dir,
            buf,
            guest,
            reply: io.reply.callback(io.id),
        });
        Step::Forwarded
    }

    /// The command's data as iovecs into guest memory, when it can move straight between
    /// guest memory and the device: with the asynchronous sg engine (the kernel copies
    /// through its own pages inside our write() and read(), so guest memory is touched only
    /// there, while the guard keeps it mapped), for a command whose data vscsid does not
    /// read or edit on the way (`DeviceFacts::observe`), in at most IOV_MAX pieces.
    fn guest_buffers(
        &self,
        c: &[u8; 32],
        dir: Direction,
        len: u64,
        data: &DataBuffers<'_>,
    ) -> Option<crate::backend::block_io::IoBuffers> {
        let engine = self.pool.sg_engine()?;
        let observed = matches!(
            c[0],
            cdb::INQUIRY | cdb::READ_CAPACITY_10 | cdb::SERVICE_ACTION_IN_16
        );
        let side = match dir {
            Direction::ToDevice => data.out,
            Direction::FromDevice => data.inn,
            Direction::None => return None,
        };
        if observed || len == 0 {
            return None;
        }
        let mut b = engine.io_buffers();
        // Alignment 1: the kernel copies, so any buffer will do; a bounce buffer (more
        // than IOV_MAX pieces) is not straight: copy as usual then.
        if b.map_guest(side, data.guard, 0, len, 0, 1, false) && b.bounce().is_none() {
            return Some(b);
        }
        engine.recycle(b);
        None
    }

    /// Places a forwarded command's data-in (unless it went straight to guest memory:
    /// `direct`) and gives the device's answer.
    pub fn remote_done(&self, c: ScsiCompletion, data: DataBuffers<'_>, direct: bool) -> Answer {
        let in_cap = data.inn.len();
        let answer = match c.result {
            Ok(st) => {
                let written = if direct {
                    // What arrived: the transfer less the device's residual.
                    in_cap.saturating_sub(u64::from(c.residual.count))
                } else {
                    let n = c
                        .data_in
                        .len()
                        .min(usize::try_from(in_cap).unwrap_or(usize::MAX));
                    data.inn.write_at(0, &c.data_in[..n]) as u64
                };
                Answer::Status {
                    status: st.status,
                    sense: RawSense::new(&st.sense),
                    data_in: written,
                }
            }
            Err(e) => {
                let error = match e {
                    TransportError::Aborted => HostError::Aborted,
                    TransportError::Disrupted => HostError::TransportDisrupted,
                    _ => HostError::Failure,
                };
                Answer::Host {
                    error,
                    resid: u32::try_from(in_cap).unwrap_or(u32::MAX),
                }
            }
        };
        self.pool.recycle(c.data_in);
        answer
    }

    /// Task management: queued commands are taken back (they end aborted), commands in an
    /// ioctl cannot be and the caller waits for them; a logical unit reset also resets the
    /// device where the kernel allows it.
    pub fn task_management(
        &self,
        f: TmfFunction,
        remote_id: Option<u64>,
    ) -> Result<u8, TransportError> {
        match (f, remote_id) {
            (TmfFunction::AbortTask, Some(id)) => {
                self.pool.cancel(Some(id));
            }
            // Not in flight here: nothing to abort.
            (TmfFunction::AbortTask, None) => {}
            (TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet, _) => {
                self.pool.cancel(None);
            }
            (TmfFunction::LogicalUnitReset | TmfFunction::TargetWarmReset, _) => {
                self.pool.cancel(None);
                if let Err(e) = self.pool.reset_device() {
                    // Without CAP_SYS_ADMIN and CAP_SYS_RAWIO the kernel refuses; the
                    // reset still drains the LUN's commands.
                    tracing::warn!("logical unit reset not passed to the device: {e}");
                }
            }
            // ACA is not supported: FUNCTION NOT SUPPORTED.
            (TmfFunction::ClearAca, _) => return Ok(5),
        }
        Ok(0)
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// A line of detail for the status dump.
    pub fn detail(&self) -> String {
        let f = self.pool.facts();
        format!(
            "device {}, reopened {} times, max transfer {} bytes, {} commands outstanding",
            if self.pool.present() {
                "present"
            } else {
                "gone"
            },
            self.pool.generation(),
            f.max_transfer,
            self.pool.outstanding()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdb_lengths_follow_the_group() {
        let len = |op: u8, b7: u8| {
            let mut c = [0u8; 32];
            c[0] = op;
            c[7] = b7;
            cdb_len(&c)
        };
        assert_eq!(len(cdb::TEST_UNIT_READY, 0), 6);
        assert_eq!(len(cdb::READ_10, 0), 10);
        assert_eq!(len(cdb::READ_16, 0), 16);
        assert_eq!(len(cdb::READ_12, 0), 12);
        // Tape: REWIND, WRITE FILEMARKS(6), READ POSITION.
        assert_eq!(len(0x01, 0), 6);
        assert_eq!(len(0x10, 0), 6);
        assert_eq!(len(0x34, 0), 10);
        // Vendor-specific groups.
        assert_eq!(len(0xc5, 0), 10);
        assert_eq!(len(0xff, 0), 10);
        assert_eq!(len(cdb::VARIABLE_LENGTH, 0x18), 32);
        assert_eq!(len(cdb::VARIABLE_LENGTH, 0xff), 32);
    }

    #[test]
    fn a_readonly_passthrough_lun_refuses_writes_before_the_device_sees_them() {
        let mut c = [0u8; 32];
        for (op, refused) in [
            (cdb::WRITE_10, true),
            (0x10, true), // WRITE FILEMARKS(6)
            (0xc1, true), // vendor-specific
            (cdb::READ_10, false),
            (cdb::INQUIRY, false),
        ] {
            c[0] = op;
            assert_eq!(
                refuse_on_readonly(true, &c),
                refused.then_some(Answer::Check(Sense::write_protected())),
                "{op:#04x}"
            );
            assert_eq!(refuse_on_readonly(false, &c), None);
        }
    }

    #[test]
    fn a_full_lun_answers_task_set_full() {
        assert_eq!(
            task_set_full(),
            Answer::Status {
                status: 0x28,
                sense: RawSense::new(&[]),
                data_in: 0
            }
        );
    }
}
