//! Per-request state that lives while a command's I/O is in flight: the parsed chain, the
//! host iovecs pointing into guest memory, the memory mapping that keeps them valid, and
//! where the command is in its sequence of io_uring operations.

use std::sync::Arc;

use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

use super::gate::GateHold;
use super::lun::Lun;
use crate::backend::AlignedBuf;
use crate::scsi::{IoRequest, Sense};
use crate::virtio::ParsedChain;

pub type Mem = GuestMemoryMmap<()>;
pub type MemGuard = GuestMemoryLoadGuard<Mem>;

/// Host iovecs into guest memory. They are only dereferenced by the kernel while the slot's
/// memory guard keeps the mapping alive.
#[derive(Default)]
pub struct IoVecs(pub Vec<libc::iovec>);

// SAFETY: the pointers refer to guest memory kept mapped by the owning slot's `MemGuard`
// (an Arc), and only the worker that owns the slot hands them to the kernel.
unsafe impl Send for IoVecs {}

/// The stage a command is in.
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
    /// One or more operations whose results only need to succeed (flush, hole punching).
    /// `ranges` are kept for deallocation, so that a block device which cannot punch holes
    /// can have them done another way; `redone` once that has been started.
    Batch {
        ranges: Vec<(u64, u64)>,
        redone: bool,
    },
    /// WRITE SAME of a pattern in `bounce`: next byte to write and the end of the range.
    Pattern {
        pos: u64,
        end: u64,
    },
    /// VERIFY with BYTCHK: read chunk at `pos` into `bounce`, compare with data-out.
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
    /// Forwarded to a passthrough LUN; completes through the worker's passthrough queue.
    Passthrough,
}

/// One request's resources; slots are reused so the hot path does not allocate.
pub struct Slot {
    pub chain: ParsedChain,
    /// Position of the request's queue in the worker thread's vring slice.
    pub vring: usize,
    /// Global queue index (for drain accounting).
    pub queue: u16,
    pub tag: u64,
    pub lun: Option<Arc<Lun>>,
    pub mem: Option<MemGuard>,
    pub iov: IoVecs,
    pub job: Job,
    /// io_uring operations submitted and not yet completed.
    pub pending: u32,
    /// First failure seen among this command's operations.
    pub error: Option<Sense>,
    pub bounce: Option<AlignedBuf>,
    /// Data-in bytes placed in guest memory (for the used length and the residual).
    pub data_in: u64,
    /// EAGAIN/EINTR retries of the current operation.
    pub retries: u32,
    /// The passthrough LUN's id of the forwarded command (for ABORT TASK).
    pub passthrough_id: u64,
    /// What the command holds of its LUN's write gate (released when it ends).
    pub gate: GateHold,
    /// The medium I/O of a command waiting at its LUN's closed write gate.
    pub parked: Option<IoRequest>,
}

impl Slot {
    pub fn new() -> Slot {
        Slot {
            chain: ParsedChain::new(),
            vring: 0,
            queue: 0,
            tag: 0,
            lun: None,
            mem: None,
            iov: IoVecs(Vec::new()),
            job: Job::Idle,
            pending: 0,
            error: None,
            bounce: None,
            data_in: 0,
            retries: 0,
            passthrough_id: 0,
            gate: GateHold::None,
            parked: None,
        }
    }

    /// Releases what the finished request held (the LUN, the memory mapping, a bounce
    /// buffer), keeping the reusable allocations.
    pub fn release(&mut self) {
        self.lun = None;
        self.mem = None;
        self.iov.0.clear();
        self.job = Job::Idle;
        self.pending = 0;
        self.error = None;
        self.bounce = None;
        self.data_in = 0;
        self.retries = 0;
        self.passthrough_id = 0;
        self.gate = GateHold::None;
        self.parked = None;
    }
}

impl Default for Slot {
    fn default() -> Self {
        Self::new()
    }
}

/// Guest memory as the vrings see it.
pub type GuestMem = vm_memory::GuestMemoryAtomic<Mem>;
/// One virtqueue of the device.
pub type Vring = vhost_user_backend::VringRwLock<GuestMem>;
