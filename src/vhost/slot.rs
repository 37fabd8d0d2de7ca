//! Per-request state that lives while a command is in flight: the parsed chain, where it
//! came from, the memory mapping its buffers lie in, its LUN and the LUN's state of it, and
//! what its LUN's statistics count when it ends.

use std::sync::Arc;
use std::time::Instant;

use crate::backend::guest::MemGuard;
use crate::lun::{Answer, IoKind, Lun, Task};
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
    /// What the LUN's statistics count when the command ends.
    pub tally: Tally,
}

/// When a command reached its LUN, its kind and its data-out length: what its LUN's
/// statistics need when it ends.
#[derive(Default)]
pub struct Tally {
    started: Option<Instant>,
    kind: IoKind,
    data_out: u64,
    /// The worker's number: which copy of the LUN's counters it updates.
    shard: usize,
}

impl Tally {
    /// A command of worker `shard` reaches its LUN now.
    pub fn start(cdb: &[u8], data_out: u64, shard: usize) -> Tally {
        Tally {
            started: Some(Instant::now()),
            kind: IoKind::of(cdb),
            data_out,
            shard,
        }
    }

    /// Counts the command's end with `answer` in `lun`'s statistics.
    pub fn count(&self, lun: &Lun, answer: &Answer) {
        let elapsed = self.started.map(|t| t.elapsed()).unwrap_or_default();
        lun.stats()
            .record(self.shard, self.kind, answer, self.data_out, elapsed);
    }
}

impl Slot {
    /// Releases what the finished request held, keeping the reusable allocations.
    pub fn release(&mut self) {
        self.lun = None;
        self.mem = None;
    }
}
