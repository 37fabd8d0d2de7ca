//! Per-command state of the LUN layer, kept by the worker in the command's slot and reused
//! from command to command so the hot path does not allocate.

use super::forwarded_io::GuestIoLease;
use super::gate::GateHold;
use super::medium::Job;
use crate::scsi::{IoRequest, Sense};

/// Where a command is, for the LUN that runs it.
#[derive(Default)]
pub struct Task {
    /// The stage of an emulated disk's medium I/O.
    pub(super) job: Job,
    /// First failure seen among the command's operations.
    pub(super) error: Option<Sense>,
    /// Data-in bytes placed in guest memory.
    pub(super) data_in: u64,
    /// EAGAIN/EINTR retries of the current operation.
    pub(super) retries: u32,
    /// What the command holds of its LUN's write gate.
    pub(super) gate: GateHold,
    /// The medium I/O of a command waiting at its LUN's closed write gate.
    pub(super) parked: Option<IoRequest>,
    /// The remote device's id of a forwarded command (for ABORT TASK).
    pub(super) remote_id: Option<u64>,
    /// Counted among the LUN's commands in flight.
    pub(super) held: bool,
    /// Counted among the commands a PREEMPT AND ABORT of the LUN drains.
    pub(super) reservation_counted: bool,
    /// The data-in byte whose bit 7 a read-only passthrough LUN sets in the target's
    /// answer: the WP bit of a MODE SENSE header.
    pub(super) write_protect_byte: Option<usize>,
    /// A passthrough command whose data moves straight between guest memory and the
    /// device (no buffer of the LUN in between).
    pub(super) direct_data: bool,
    /// The guest buffers a forwarded command's data moves through in place; dropping it
    /// ends every write into them.
    pub(super) guest_io: Option<GuestIoLease>,
}

impl Task {
    /// The remote device's id of the command, if it was forwarded.
    pub fn remote_id(&self) -> Option<u64> {
        self.remote_id
    }

    /// Whether the command is out at a remote device.
    pub fn is_forwarded(&self) -> bool {
        self.remote_id.is_some()
    }

    /// Clears the state of an ended command, keeping allocations.
    pub(super) fn reset(&mut self) {
        self.job = Job::Idle;
        self.error = None;
        self.data_in = 0;
        self.retries = 0;
        self.gate = GateHold::None;
        self.parked = None;
        self.remote_id = None;
        self.held = false;
        self.reservation_counted = false;
        self.write_protect_byte = None;
        self.direct_data = false;
        self.guest_io = None;
    }
}
