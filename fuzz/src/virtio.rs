//! The vhost-user-scsi device served from fuzzer-written guest memory, without a socket:
//! the real `ScsiDevice` with its worker and control queue, driven through its
//! `ScsiDevice::handle_event` exactly as the daemon's epoll loops drive it, with virtqueues whose descriptor tables, rings and buffers are whatever the input
//! wrote. Also the fixed guest memory layout the inputs use, and encoders for seeds.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use vscsid::backend::guest::GuestMem;
use vscsid::lun::{build_lun_table, open_options, LiveLuns};
use vscsid::vhost::{DirtyLog, ScsiDevice, Vring};

use crate::{wait_readable, HANG_BOUND};

/// Guest memory: two adjacent regions, so buffers can straddle a region boundary.
pub const REGION_BYTES: u64 = 0x10000;
pub const MEM_BYTES: u64 = 2 * REGION_BYTES;

/// Where the queues live in guest memory (queue size 16 fits between them; larger sizes
/// overlap, which the device must survive too).
pub const REQ_DESC: u64 = 0x0000;
pub const REQ_AVAIL: u64 = 0x0100;
pub const REQ_USED: u64 = 0x0140;
pub const CTRL_DESC: u64 = 0x0200;
pub const CTRL_AVAIL: u64 = 0x0300;
pub const CTRL_USED: u64 = 0x0340;
/// Request buffers start here.
pub const BUFFERS: u64 = 0x0400;

/// Device shape: one request queue, served by thread 0 with the control and event queues.
const NUM_REQUEST_QUEUES: u16 = 1;
const MAX_QUEUE_SIZE: u16 = 256;
/// Position of each queue in thread 0's vrings (and its `handle_event` token).
pub const CONTROL_VRING: u16 = 0;
const EVENT_VRING: u16 = 1;
pub const REQUEST_VRING: u16 = 2;

/// Queue sizes an input may pick (two bits of its first byte).
const QUEUE_SIZES: [u16; 4] = [16, 2, 64, 256];

/// What the first byte of a device input chooses.
#[derive(Debug, Clone, Copy)]
pub struct QueueFlags {
    pub event_idx: bool,
    pub req_size: u16,
    pub ctrl_size: u16,
    /// Serve the control queue before the request queue.
    pub control_first: bool,
}

impl QueueFlags {
    pub fn from_byte(b: u8) -> QueueFlags {
        QueueFlags {
            event_idx: b & 1 != 0,
            req_size: QUEUE_SIZES[usize::from((b >> 1) & 3)],
            ctrl_size: QUEUE_SIZES[usize::from((b >> 3) & 3)],
            control_first: b & 0x20 != 0,
        }
    }
}

/// The device and its guest memory, built once per process.
pub struct DeviceHarness {
    pub dev: ScsiDevice,
    mem: GuestMem,
    _images: Vec<OwnedFd>,
}

impl DeviceHarness {
    pub fn new() -> DeviceHarness {
        let (cfg, images) = crate::luns::config(NUM_REQUEST_QUEUES, MAX_QUEUE_SIZE);
        let luns = LiveLuns::new(
            build_lun_table(&cfg).expect("LUN table"),
            open_options(&cfg),
            true,
        );
        let regions = [
            (GuestAddress(0), REGION_BYTES as usize),
            (GuestAddress(REGION_BYTES), REGION_BYTES as usize),
        ];
        let mem: GuestMem =
            GuestMemoryAtomic::new(GuestMemoryMmap::<()>::from_ranges(&regions).expect("memory"));
        let dev = ScsiDevice::new(&cfg, luns, mem.clone()).expect("device");
        DeviceHarness {
            dev,
            mem,
            _images: images,
        }
    }

    /// Writes `image` at guest address 0 and zeroes the rest of guest memory.
    fn load(&self, image: &[u8]) {
        let m = self.mem.memory();
        let n = image.len().min(MEM_BYTES as usize);
        m.write_slice(&image[..n], GuestAddress(0)).expect("load");
        let zeroes = vec![0u8; MEM_BYTES as usize - n];
        m.write_slice(&zeroes, GuestAddress(n as u64))
            .expect("zero");
    }

    fn vring(&self, size: u16, desc: u64, avail: u64, used: u64, event_idx: bool) -> Vring {
        let log = Arc::new(DirtyLog::default());
        let v = Vring::new(self.mem.clone(), MAX_QUEUE_SIZE, log).expect("vring");
        v.set_size(size);
        v.set_event_idx(event_idx);
        // A ring outside memory is refused here, as SET_VRING_ADDR would refuse it.
        if v.set_addresses(desc, avail, used).is_ok() {
            v.set_ready(true);
        }
        v.set_enabled(true);
        v
    }

    /// One connection's worth of work: a device reset, the input's memory, a kick of each
    /// queue in `kicks`, then every completion and waiting task management function until
    /// nothing is left in flight. Panics if that does not happen within [`HANG_BOUND`].
    pub fn run(&self, flags: QueueFlags, image: &[u8], kicks: &[u16]) {
        self.dev.reset_device();
        self.load(image);
        let vrings = [
            self.vring(
                flags.ctrl_size,
                CTRL_DESC,
                CTRL_AVAIL,
                CTRL_USED,
                flags.event_idx,
            ),
            self.vring(16, 0x8000, 0x8100, 0x8200, false),
            self.vring(
                flags.req_size,
                REQ_DESC,
                REQ_AVAIL,
                REQ_USED,
                flags.event_idx,
            ),
        ];
        debug_assert_eq!(usize::from(EVENT_VRING), 1);
        for &k in kicks {
            self.dev.handle_event(k, &vrings, 0);
        }
        self.drain(&vrings);
    }

    /// Reaps completions and retries task management until nothing is in flight.
    fn drain(&self, vrings: &[Vring]) {
        let sh = &self.dev.shared;
        let ring_fd = self.dev.thread_descriptors(0)[0].0;
        let deadline = Instant::now() + HANG_BOUND;
        loop {
            let commands = sh.inflight.total();
            let tmfs = sh.tmf_waiting.load(Ordering::Acquire);
            if commands == 0 && tmfs == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "hang: {commands} commands and {tmfs} task management functions still waiting after {HANG_BOUND:?}"
            );
            wait_readable(ring_fd, Duration::from_millis(5));
            self.dev
                .handle_event(self.dev.ring_token() as u16, vrings, 0);
            self.dev
                .handle_event(self.dev.tmf_token() as u16, vrings, 0);
        }
    }
}

impl Default for DeviceHarness {
    fn default() -> Self {
        Self::new()
    }
}

/// Descriptor flags.
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;
pub const DESC_INDIRECT: u16 = 4;

/// Builds a guest memory image for seeds: descriptors, available rings and buffers.
#[derive(Default)]
pub struct ImageBuilder {
    pub bytes: Vec<u8>,
}

impl ImageBuilder {
    pub fn put(&mut self, at: u64, data: &[u8]) {
        let end = at as usize + data.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[at as usize..end].copy_from_slice(data);
    }

    /// Writes descriptor `index` of the table at `table`.
    pub fn desc(&mut self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.put(table + 16 * u64::from(index), &d);
    }

    /// Writes an available ring offering `heads`.
    pub fn avail(&mut self, ring: u64, heads: &[u16]) {
        let mut a = vec![0u8; 4 + 2 * heads.len()];
        a[2..4].copy_from_slice(&(heads.len() as u16).to_le_bytes());
        for (i, h) in heads.iter().enumerate() {
            a[4 + 2 * i..6 + 2 * i].copy_from_slice(&h.to_le_bytes());
        }
        self.put(ring, &a);
    }

    /// Writes a chain of `(addr, len, device-writable)` segments starting at descriptor
    /// `first` of the table at `table`; returns the next free descriptor.
    pub fn chain(&mut self, table: u64, first: u16, segs: &[(u64, u32, bool)]) -> u16 {
        for (i, &(addr, len, write)) in segs.iter().enumerate() {
            let idx = first + i as u16;
            let last = i + 1 == segs.len();
            let flags = if write { DESC_WRITE } else { 0 } | if last { 0 } else { DESC_NEXT };
            self.desc(table, idx, addr, len, flags, if last { 0 } else { idx + 1 });
        }
        first + segs.len() as u16
    }
}

/// A `virtio_scsi_cmd_req` header for `cdb` to `(target, lun)`.
pub fn cmd_header(target: u8, lun: u16, tag: u64, cdb: &[u8]) -> [u8; 51] {
    let mut h = [0u8; 51];
    h[0..8].copy_from_slice(&crate::luns::lun_address(target, lun));
    h[8..16].copy_from_slice(&tag.to_le_bytes());
    let n = cdb.len().min(32);
    h[19..19 + n].copy_from_slice(&cdb[..n]);
    h
}

/// Response header length and the data-in room the seeds give each command.
pub const CMD_RESP_LEN: u32 = 108;

/// Places one command request (header, data-out) at `at` in the image as a chain from
/// descriptor `first` of the request table, with a response and `data_in` bytes of data-in
/// further on. Returns `(next free descriptor, next free address)`.
pub fn place_command(
    img: &mut ImageBuilder,
    first: u16,
    at: u64,
    header: &[u8; 51],
    data_out: &[u8],
    data_in: u32,
) -> (u16, u64) {
    img.put(at, header);
    let mut segs = vec![(at, 51u32, false)];
    let mut next = at + 64;
    if !data_out.is_empty() {
        img.put(next, data_out);
        segs.push((next, data_out.len() as u32, false));
        next += (data_out.len() as u64 + 63) & !63;
    }
    segs.push((next, CMD_RESP_LEN, true));
    next += 128;
    if data_in > 0 {
        segs.push((next, data_in, true));
        next += (u64::from(data_in) + 63) & !63;
    }
    let d = img.chain(REQ_DESC, first, &segs);
    (d, next)
}
