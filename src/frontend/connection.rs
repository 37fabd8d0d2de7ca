//! The vhost-user connection: memfd guest memory, the handshake QEMU 7.2 performs for
//! vhost-user-scsi, and queue set-up and teardown.

use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

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
    /// Ask for an in-flight region (INFLIGHT_SHMFD) and hand it to every daemon this
    /// frontend connects to, as QEMU 8.2+ does.
    pub inflight: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            memory_size: 64 << 20,
            queues: 3,
            queue_size: 128,
            event_idx: true,
            connect_timeout: Duration::from_secs(10),
            inflight: false,
        }
    }
}

/// A connected, started device: guest memory, its queues, and a bump allocator for buffers.
pub struct Connection {
    pub frontend: Frontend,
    pub mem: FrontendMemory,
    pub queues: Vec<SplitQueue>,
    pub features: u64,
    /// The in-flight region the daemon gave, kept for the next daemon.
    pub inflight: Option<(VhostUserInflight, File)>,
    next_free: u64,
}

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Connects to `socket`, retrying until it appears (bounded).
fn open(socket: &Path, opts: &ConnectOptions) -> Result<Frontend, FrontendError> {
    let deadline = Instant::now() + opts.connect_timeout;
    loop {
        match Frontend::connect(socket, u64::from(opts.queues)) {
            Ok(f) => return Ok(f),
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
    }
}

impl Connection {
    /// Connects to `socket` (retrying until it appears, bounded) and starts `opts.queues`
    /// queues the way QEMU does.
    pub fn connect(socket: &Path, opts: &ConnectOptions) -> Result<Connection, FrontendError> {
        let frontend = open(socket, opts)?;
        let mem = memfd_memory(opts.memory_size)?;
        let mut conn = Connection {
            frontend,
            mem,
            queues: Vec::new(),
            features: 0,
            inflight: None,
            next_free: 0x1000,
        };
        conn.handshake(opts)?;
        let event_idx = conn.features & VIRTIO_RING_F_EVENT_IDX != 0;
        for _ in 0..opts.queues {
            let base = conn.alloc(SplitQueue::footprint(opts.queue_size), 4096)?;
            let queue = SplitQueue::new(&conn.mem, base, opts.queue_size, event_idx)
                .map_err(|e| FrontendError::Memory(e.to_string()))?;
            conn.queues.push(queue);
        }
        conn.start_queues(opts)?;
        Ok(conn)
    }

    /// Connects again, to a daemon restarted on `socket`, with the same guest memory,
    /// rings and in-flight region, as QEMU does when its backend comes back: each ring
    /// resumes from the used index in guest memory (QEMU cannot ask a dead backend).
    pub fn reattach(&mut self, socket: &Path, opts: &ConnectOptions) -> Result<(), FrontendError> {
        self.frontend = open(socket, opts)?;
        self.handshake(opts)?;
        self.start_queues(opts)
    }

    /// Features, protocol features, owner, memory table and in-flight region.
    fn handshake(&mut self, opts: &ConnectOptions) -> Result<(), FrontendError> {
        let frontend = &mut self.frontend;
        let offered = frontend.get_features().map_err(proto)?;
        let mut wanted =
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VHOST_USER_F_PROTOCOL_FEATURES;
        if opts.event_idx {
            wanted |= VIRTIO_RING_F_EVENT_IDX;
        }
        self.features = offered & wanted;
        let pf = frontend.get_protocol_features().map_err(proto)?;
        // LOG_SHMFD as QEMU does: the log is handed over only when the guest migrates.
        let mut acked = pf & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::LOG_SHMFD);
        if opts.inflight {
            if !pf.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD) {
                return Err(FrontendError::Protocol(
                    "the backend offers no in-flight region".into(),
                ));
            }
            acked |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
        }
        frontend.set_protocol_features(acked).map_err(proto)?;
        let max = frontend.get_queue_num().map_err(proto)?;
        if u64::from(opts.queues) > max {
            return Err(FrontendError::Protocol(format!(
                "backend offers {max} queues, {} wanted",
                opts.queues
            )));
        }
        frontend.set_owner().map_err(proto)?;
        frontend.set_features(self.features).map_err(proto)?;
        let regions: Vec<VhostUserMemoryRegionInfo> = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<_, _>>()
            .map_err(proto)?;
        frontend.set_mem_table(&regions).map_err(proto)?;
        if opts.inflight {
            if self.inflight.is_none() {
                let want = VhostUserInflight {
                    num_queues: opts.queues,
                    queue_size: opts.queue_size,
                    ..Default::default()
                };
                self.inflight = Some(frontend.get_inflight_fd(&want).map_err(proto)?);
            }
            if let Some((info, file)) = &self.inflight {
                frontend
                    .set_inflight_fd(info, file.as_raw_fd())
                    .map_err(proto)?;
            }
        }
        Ok(())
    }

    /// Sets every queue up and starts it, from the used index its ring holds.
    fn start_queues(&mut self, opts: &ConnectOptions) -> Result<(), FrontendError> {
        for q in 0..self.queues.len() {
            let used = self.queues[q].used;
            let base: u16 = self
                .mem
                .read_obj(GuestAddress(used + 2))
                .map_err(|e| FrontendError::Memory(e.to_string()))?;
            self.start_queue(q, base, opts.queue_size)?;
        }
        Ok(())
    }

    /// Sets queue `q` up and starts it with available index `base` (what GET_VRING_BASE
    /// returned when it was stopped), as QEMU does.
    pub fn start_queue(&mut self, q: usize, base: u16, max_size: u16) -> Result<(), FrontendError> {
        let (desc, avail, used, size) = {
            let v = self
                .queues
                .get(q)
                .ok_or_else(|| FrontendError::Protocol(format!("no queue {q}")))?;
            (v.desc, v.avail, v.used, v.size)
        };
        let cfg = VringConfigData {
            queue_max_size: max_size,
            queue_size: size,
            flags: 0,
            desc_table_addr: self.host_address(desc)?,
            used_ring_addr: self.host_address(used)?,
            avail_ring_addr: self.host_address(avail)?,
            log_addr: None,
        };
        let f = &mut self.frontend;
        f.set_vring_num(q, size).map_err(proto)?;
        f.set_vring_addr(q, &cfg).map_err(proto)?;
        f.set_vring_base(q, base).map_err(proto)?;
        f.set_vring_call(q, &self.queues[q].call).map_err(proto)?;
        f.set_vring_kick(q, &self.queues[q].kick).map_err(proto)?;
        f.set_vring_enable(q, true).map_err(proto)?;
        Ok(())
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
