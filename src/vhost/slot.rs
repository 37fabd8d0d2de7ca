//! Per-request state that lives while a command is in flight: the parsed chain, where it
//! came from, the memory mapping its buffers lie in, its LUN and the LUN's state of it.

use std::sync::Arc;

use crate::backend::guest::MemGuard;
use crate::lun::{Lun, Task};
use crate::scsi::task::TaskAttr;
use crate::virtio::ParsedChain;

/// One request's resources; slots are reused so the hot path does not allocate.
#[derive(Default)]
pub struct Slot {
    pub chain: ParsedChain,
    /// Position of the request's queue in the worker thread's vring slice.
    pub vring: usize,
    /// Global queue index (for drain accounting).
    pub queue: u16,
    /// The queue's epoch when the request was popped (see `Shared::epoch`).
    pub epoch: u32,
    pub tag: u64,
    /// The LUN running the command (None for answers the target gives itself).
    pub lun: Option<Arc<Lun>>,
    /// Keeps guest memory mapped until the response is written.
    pub mem: Option<MemGuard>,
    pub task: Task,
    /// The CDB and task attribute of a command held back by its LUN's I/O limits, to
    /// start it with later (the guest's copy may have changed by then).
    pub cdb: [u8; 32],
    pub attr: TaskAttr,
}

impl Slot {
    /// Releases what the finished request held, keeping the reusable allocations.
    pub fn release(&mut self) {
        self.lun = None;
        self.mem = None;
    }
}
