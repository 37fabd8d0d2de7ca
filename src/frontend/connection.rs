//! The vhost-user connection: memfd guest memory, the handshake QEMU 7.2 performs for
//! vhost-user-scsi, and queue set-up and teardown.

use std::fs::File;
use std::os::unix::io::FromRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::vring::SplitQueue;
use super::FrontendMemory;

/// Why the frontend could not set up or talk to the backend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("vhost-user: {0}")]
    Protocol(String),
    #[error("guest memory: {0}")]
    Memory(String),
}

fn proto<E: std::fmt::Display>(e: E) -> FrontendError {
    FrontendError::Protocol(e.to_string())
}

/// How to set the device up.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub memory_size: usize,
    pub queues: u16,
    pub queue_size: u16,
    pub event_idx: bool,
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            memory_size: 64 << 20,
            queues: 3,
            queue_size: 128,
            event_idx: true,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A connected, started device: guest memory, its queues, and a bump allocator for buffers.
pub struct Connection {
    pub frontend: Frontend,
    pub mem: FrontendMemory,
    pub queues: Vec<SplitQueue>,
    pub features: u64,
    next_free: u64,
}

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

impl Connection {
    /// Connects to `socket` (retrying until it appears, bounded) and starts `opts.queues`
    /// queues the way QEMU does.
    pub fn connect(socket: &Path, opts: &ConnectOptions) -> Result<Connection, FrontendError> {
        let deadline = Instant::now() + opts.connect_timeout;
        let mut frontend = loop {
            match Frontend::connect(socket, u64::from(opts.queues)) {
                Ok(f) => break f,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(FrontendError::Connect(
                        socket.display().to_string(),
                        e.to_string(),
                    ))
                }
            }
        };
        let mem = memfd_memory(opts.memory_size)?;

        let offered = frontend.get_features().map_err(proto)?;
        let mut wanted =
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VHOST_USER_F_PROTOCOL_FEATURES;
        if opts.event_idx {
            wanted |= VIRTIO_RING_F_EVENT_IDX;
        }
        let features = offered & wanted;
        let pf = frontend.get_protocol_features().map_err(proto)?;
        frontend
            .set_protocol_features(pf & VhostUserProtocolFeatures::MQ)
            .map_err(proto)?;
        let max = frontend.get_queue_num().map_err(proto)?;
        if u64::from(opts.queues) > max {
            return Err(FrontendError::Protocol(format!(
                "backend offers {max} queues, {} wanted",
                opts.queues
            )));
        }
        frontend.set_owner().map_err(proto)?;
        frontend.set_features(features).map_err(proto)?;
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<_, _>>()
            .map_err(proto)?;
        frontend.set_mem_table(&regions).map_err(proto)?;

        let mut conn = Connection {
            frontend,
            mem,
            queues: Vec::new(),
            features,
            next_free: 0x1000,
        };
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        for q in 0..usize::from(opts.queues) {
            let base = conn.alloc(SplitQueue::footprint(opts.queue_size), 4096)?;
            let queue = SplitQueue::new(&conn.mem, base, opts.queue_size, event_idx)
                .map_err(|e| FrontendError::Memory(e.to_string()))?;
            let host = |gpa: u64| conn.host_address(gpa);
            let cfg = VringConfigData {
                queue_max_size: opts.queue_size,
                queue_size: opts.queue_size,
                flags: 0,
                desc_table_addr: host(queue.desc)?,
                used_ring_addr: host(queue.used)?,
                avail_ring_addr: host(queue.avail)?,
                log_addr: None,
            };
            conn.frontend
                .set_vring_num(q, opts.queue_size)
                .map_err(proto)?;
            conn.frontend.set_vring_addr(q, &cfg).map_err(proto)?;
            conn.frontend.set_vring_base(q, 0).map_err(proto)?;
            conn.frontend
                .set_vring_call(q, &queue.call)
                .map_err(proto)?;
            conn.frontend
                .set_vring_kick(q, &queue.kick)
                .map_err(proto)?;
            conn.frontend.set_vring_enable(q, true).map_err(proto)?;
            conn.queues.push(queue);
        }
        Ok(conn)
    }

    /// Reserves `len` bytes of guest memory aligned to `align`; returns the guest address.
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<u64, FrontendError> {
        let at = self.next_free.next_multiple_of(align.max(1));
        let end = at + len;
        let size: u64 = self.mem.iter().map(|r| r.len()).sum();
        if end > size {
            return Err(FrontendError::Memory(format!(
                "out of guest memory ({size} bytes)"
            )));
        }
        self.next_free = end;
        Ok(at)
    }

    /// Size of guest memory in bytes.
    pub fn memory_size(&self) -> u64 {
        self.mem.iter().map(|r| r.len()).sum()
    }

    fn host_address(&self, gpa: u64) -> Result<u64, FrontendError> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| FrontendError::Memory(e.to_string()))
    }

    /// Stops a queue as QEMU does on reset (ENABLE 0, GET_VRING_BASE); returns the base.
    pub fn stop_queue(&mut self, q: usize) -> Result<u32, FrontendError> {
        self.frontend.set_vring_enable(q, false).map_err(proto)?;
        self.frontend.get_vring_base(q).map_err(proto)
    }
}

/// Guest memory on a memfd, so the backend can map it.
fn memfd_memory(size: usize) -> Result<FrontendMemory, FrontendError> {
    // SAFETY: the name is a valid C string; memfd_create has no other preconditions.
    let fd = unsafe { libc::memfd_create(c"vscsid-frontend".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FrontendError::Memory(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: fd is a freshly created descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size as u64)
        .map_err(|e| FrontendError::Memory(e.to_string()))?;
    FrontendMemory::from_ranges_with_files([(
        GuestAddress(0),
        size,
        Some(FileOffset::new(file, 0)),
    )])
    .map_err(|e| FrontendError::Memory(e.to_string()))
}
