//! The vhost-user protocol as the device answers it: one `FrontendSession` per connection
//! takes the frontend's messages (features, memory table, ring set-up, start and stop) and
//! applies them to the device's vrings and worker loops. The `vhost` crate parses the
//! messages; what they mean for this device is decided here, including what the generic
//! rust-vmm handler leaves out: sizes a split ring cannot have are refused, a memory table
//! is checked before any thread can touch it, and queues are not limited to 64.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error as ProtocolError, Result as ProtocolResult};
use vhost::vhost_user::{GpuBackend, VhostUserBackendReqHandlerMut};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::device::{ScsiDevice, VHOST_F_LOG_ALL};
use super::dirty_log::DirtyLog;
use super::event_loop::QueueThread;
use super::inflight_region::InflightRegion;
use super::vring::{valid_queue_size, Vring};
use crate::backend::guest::GuestMem;
use crate::backend::guest_fault;
use crate::heartbeat::Heartbeats;

/// Where a region of guest memory sits in the frontend's address space (ring addresses
/// arrive as frontend virtual addresses).
struct Mapping {
    frontend_addr: u64,
    size: u64,
    guest_addr: u64,
}

/// Where each queue is served: its worker thread and its token there.
#[derive(Clone, Copy)]
struct QueuePlace {
    thread: usize,
    position: u16,
}

pub struct FrontendSession {
    device: ScsiDevice,
    mem: GuestMem,
    vrings: Vec<Vring>,
    places: Vec<QueuePlace>,
    threads: Vec<QueueThread>,
    mappings: Vec<Mapping>,
    owned: bool,
    acked_features: u64,
    acked_protocol_features: u64,
    /// The frontend's in-flight region (INFLIGHT_SHMFD), kept across its reconnects.
    inflight: Option<Arc<InflightRegion>>,
    /// The dirty log every vring marks while the frontend migrates the guest.
    log: Arc<DirtyLog>,
}

fn internal<E: std::fmt::Display>(e: E) -> ProtocolError {
    ProtocolError::ReqHandlerError(io::Error::other(e.to_string()))
}

impl FrontendSession {
    /// Creates the device's vrings and starts one event loop per worker thread, each with
    /// a heartbeat in `heartbeats`.
    pub fn new(
        device: ScsiDevice,
        mem: GuestMem,
        heartbeats: &Heartbeats,
    ) -> io::Result<FrontendSession> {
        let max = device.max_queue_size();
        let log = Arc::new(DirtyLog::default());
        let vrings = (0..device.num_queues())
            .map(|_| Vring::new(mem.clone(), max, log.clone()).map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        let mut places = vec![
            QueuePlace {
                thread: 0,
                position: 0
            };
            vrings.len()
        ];
        let mut threads = Vec::new();
        for (t, queues) in device.shared.thread_queues.iter().enumerate() {
            let mut own = Vec::with_capacity(queues.len());
            for (pos, &q) in queues.iter().enumerate() {
                if let (Some(v), Ok(position)) = (vrings.get(usize::from(q)), u16::try_from(pos)) {
                    own.push(v.clone());
                    places[usize::from(q)] = QueuePlace {
                        thread: t,
                        position,
                    };
                }
            }
            let extra = device.thread_descriptors(t);
            threads.push(QueueThread::start(
                device.clone(),
                t,
                own,
                &extra,
                heartbeats,
            )?);
        }
        Ok(FrontendSession {
            device,
            mem,
            vrings,
            places,
            threads,
            mappings: Vec::new(),
            owned: false,
            acked_features: 0,
            acked_protocol_features: 0,
            inflight: None,
            log,
        })
    }

    /// Stops every worker loop (the connection ended).
    pub fn stop_threads(&mut self) {
        for t in self.threads.drain(..) {
            t.stop();
        }
    }

    fn vring(&self, index: u32) -> ProtocolResult<&Vring> {
        self.vrings
            .get(index as usize)
            .ok_or(ProtocolError::InvalidParam)
    }

    /// Watches the queue's kick in its thread's loop exactly while it is live.
    fn update_watch(&self, index: u32) -> ProtocolResult<()> {
        let vring = self.vring(index)?;
        let Some(place) = self.places.get(index as usize).copied() else {
            return Err(ProtocolError::InvalidParam);
        };
        let (kick, live) = {
            let st = vring.get_ref();
            (st.kick().map(|f| f.as_raw_fd()), st.is_live())
        };
        if let (Some(fd), Some(thread)) = (kick, self.threads.get(place.thread)) {
            thread
                .watch_kick(place.position, fd, live)
                .map_err(ProtocolError::ReqHandlerError)?;
        }
        Ok(())
    }

    /// A ring starts when it has a kick (and the frontend set the call first or not at all).
    /// With an in-flight region, what a previous device left in flight is served first.
    fn start_if_ready(&self, index: u32) -> ProtocolResult<()> {
        let vring = self.vring(index)?;
        if !vring.is_ready() && vring.has_kick() {
            if !self.vrings.iter().any(Vring::is_ready) {
                self.activate_luns()?;
            }
            if let (Some(region), Ok(q)) = (&self.inflight, u16::try_from(index)) {
                let n = vring.attach_inflight(region, q);
                if n > 0 {
                    tracing::info!(
                        queue = index,
                        commands = n,
                        "serving again what was in flight"
                    );
                }
            }
            vring.set_ready(true);
            self.update_watch(index)?;
        }
        Ok(())
    }

    /// The device starts (its first ring): every LUN takes its image lock. The source of
    /// a migration lets go when it stops its device, before this side starts; a lock
    /// still held elsewhere after [`LOCK_WAIT`] refuses the start and ends the connection.
    fn activate_luns(&self) -> ProtocolResult<()> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            let tried = self
                .device
                .shared
                .luns
                .snapshot()
                .luns()
                .try_for_each(|(_, _, l)| l.device().activate());
            match tried {
                Ok(()) => return Ok(()),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    let why = format!("the device cannot start: {e}");
                    self.device.shared.connection.drop_connection(&why);
                    return Err(internal(why));
                }
            }
        }
    }

    /// The device stopped (its last ring): the LUNs let go of their image locks, so the
    /// destination of a migration can take them.
    fn deactivate_luns(&self) {
        for (_, _, l) in self.device.shared.luns.snapshot().luns() {
            l.device().deactivate();
        }
    }

    fn frontend_to_guest(&self, addr: u64) -> ProtocolResult<u64> {
        self.mappings
            .iter()
            .find(|m| addr >= m.frontend_addr && addr - m.frontend_addr < m.size)
            .map(|m| addr - m.frontend_addr + m.guest_addr)
            .ok_or(ProtocolError::InvalidParam)
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }
}

impl Drop for FrontendSession {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// How long a starting device waits for image locks held elsewhere.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const UNSUPPORTED: ProtocolError = ProtocolError::InvalidOperation("not supported");

impl VhostUserBackendReqHandlerMut for FrontendSession {
    fn set_owner(&mut self) -> ProtocolResult<()> {
        if self.owned {
            return Err(ProtocolError::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> ProtocolResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> ProtocolResult<()> {
        for i in 0..self.vrings.len() as u32 {
            self.vring(i)?.set_enabled(false);
            self.update_watch(i)?;
        }
        self.acked_features = 0;
        self.device.reset_device();
        Ok(())
    }

    fn get_features(&mut self) -> ProtocolResult<u64> {
        Ok(self.device.features())
    }

    fn set_features(&mut self, features: u64) -> ProtocolResult<()> {
        if features & !self.device.features() != 0 {
            return Err(ProtocolError::InvalidParam);
        }
        self.acked_features = features;
        let logging = features & (1 << VHOST_F_LOG_ALL) != 0;
        if logging != self.log.is_on() {
            tracing::info!(on = logging, "dirty page logging (live migration)");
        }
        self.log.set_on(logging);
        let event_idx =
            features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        for v in &self.vrings {
            v.set_event_idx(event_idx);
        }
        // Without protocol features, rings are enabled from the start (vhost-user spec,
        // "Ring states").
        if !self.protocol_features_acked() {
            for i in 0..self.vrings.len() as u32 {
                self.vring(i)?.set_enabled(true);
                self.update_watch(i)?;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> ProtocolResult<Option<Vec<vhost::VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(UNSUPPORTED);
        }
        let mut regions = Vec::with_capacity(ctx.len());
        let mut mappings = Vec::with_capacity(ctx.len());
        for (region, file) in ctx.iter().zip(files) {
            let mapped = region.mmap_region::<()>(file)?;
            let r = GuestRegionMmap::new(mapped, GuestAddress(region.guest_phys_addr))
                .ok_or(ProtocolError::InvalidParam)?;
            regions.push(r);
            mappings.push(Mapping {
                frontend_addr: region.user_addr,
                size: region.memory_size,
                guest_addr: region.guest_phys_addr,
            });
        }
        let table = GuestMemoryMmap::from_regions(regions).map_err(internal)?;
        // Checked before any thread can see it: touching a page past its file's end
        // would raise SIGBUS.
        if let Err(e) = guest_fault::check_regions(&table) {
            self.device
                .shared
                .connection
                .drop_connection(&e.to_string());
            return Err(internal(e));
        }
        guest_fault::watch(&table);
        self.mem
            .lock()
            .map_err(|_| ProtocolError::BackendInternalError)?
            .replace(table);
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> ProtocolResult<()> {
        let max = self.device.max_queue_size();
        if !valid_queue_size(num, max) {
            let why = format!(
                "the frontend set a size of {num} for virtqueue {index}: a split ring's size is a power of two up to {max}"
            );
            self.device.shared.connection.drop_connection(&why);
            return Err(ProtocolError::InvalidParam);
        }
        self.vring(index)?.set_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> ProtocolResult<()> {
        let desc = self.frontend_to_guest(descriptor)?;
        let avail = self.frontend_to_guest(available)?;
        let used = self.frontend_to_guest(used)?;
        self.vring(index)?
            .set_addresses(desc, avail, used)
            .map_err(|_| ProtocolError::InvalidParam)
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> ProtocolResult<()> {
        let base = u16::try_from(base).map_err(|_| ProtocolError::InvalidParam)?;
        self.vring(index)?.set_next_avail(base);
        Ok(())
    }

    /// Stops the ring (vhost-user: GET_VRING_BASE stops it) and returns where the device
    /// stopped consuming it.
    fn get_vring_base(&mut self, index: u32) -> ProtocolResult<VhostUserVringState> {
        let vring = self.vring(index)?.clone();
        let was_ready = vring.is_ready();
        vring.set_ready(false);
        self.update_watch(index)?;
        self.device
            .stop_vring(index, vring.tracks_inflight())
            .map_err(ProtocolError::ReqHandlerError)?;
        let next_avail = vring.next_avail();
        vring.set_kick(None);
        vring.set_call(None);
        if was_ready && !self.vrings.iter().any(Vring::is_ready) {
            self.deactivate_luns();
        }
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> ProtocolResult<()> {
        let i = u32::from(index);
        let vring = self.vring(i)?.clone();
        // The old kick leaves the loop before it is closed.
        if vring.has_kick() {
            let was_live = vring.get_ref().is_live();
            if was_live {
                vring.set_ready(false);
                self.update_watch(i)?;
            }
        }
        vring.set_kick(fd);
        self.start_if_ready(i)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> ProtocolResult<()> {
        let i = u32::from(index);
        let has_fd = fd.is_some();
        let vring = self.vring(i)?;
        vring.set_call(fd);
        // A started ring that gets a new call interrupts the guest once. After a
        // reconnection the guest may wait for used entries it was never told about: the
        // previous backend put them on the ring and died before its call, or this one
        // completed them while QEMU still had the call on its masked notifier (QEMU 10 sets
        // the real one last, after SET_VRING_ENABLE, and does not look at the masked one).
        // With EVENT_IDX the guest's used_event then lies behind the used index and no later
        // completion would interrupt it; virtio-scsi never times a command out, so its
        // requests would wait for ever. A spurious interrupt costs the guest one look at
        // the used ring.
        if has_fd && vring.is_ready() {
            let _ = vring.signal_used_queue();
        }
        self.start_if_ready(i)
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> ProtocolResult<()> {
        // The device never reports ring errors through this descriptor.
        self.vring(u32::from(index)).map(|_| ())
    }

    fn get_protocol_features(&mut self) -> ProtocolResult<VhostUserProtocolFeatures> {
        Ok(self.device.protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> ProtocolResult<()> {
        self.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> ProtocolResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> ProtocolResult<()> {
        if !self.protocol_features_acked() {
            return Err(ProtocolError::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        self.vring(index)?.set_enabled(enable);
        self.update_watch(index)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> ProtocolResult<Vec<u8>> {
        Ok(self.device.get_config(offset, size))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> ProtocolResult<()> {
        // virtio-scsi's writable fields (sense and CDB sizes) are fixed by this device.
        Ok(())
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> ProtocolResult<()> {
        Err(UNSUPPORTED)
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> ProtocolResult<File> {
        Err(UNSUPPORTED)
    }

    /// A new in-flight region for the frontend to keep (it hands it back to every device
    /// it connects to, after a restart too).
    fn get_inflight_fd(
        &mut self,
        want: &VhostUserInflight,
    ) -> ProtocolResult<(VhostUserInflight, File)> {
        if usize::from(want.num_queues) > self.vrings.len()
            || want.queue_size > self.device.max_queue_size()
        {
            return Err(ProtocolError::InvalidParam);
        }
        let (region, file) =
            InflightRegion::create(want.num_queues, want.queue_size).map_err(internal)?;
        let size = file
            .metadata()
            .map_err(ProtocolError::ReqHandlerError)?
            .len();
        self.inflight = Some(region);
        let reply = VhostUserInflight {
            mmap_size: size,
            mmap_offset: 0,
            num_queues: want.num_queues,
            queue_size: want.queue_size,
        };
        Ok((reply, file))
    }

    fn set_inflight_fd(&mut self, given: &VhostUserInflight, file: File) -> ProtocolResult<()> {
        let region = InflightRegion::open(
            &file,
            given.mmap_offset,
            given.mmap_size,
            given.num_queues,
            given.queue_size,
        );
        match region {
            Ok(r) => {
                self.inflight = Some(r);
                Ok(())
            }
            Err(e) => {
                self.device
                    .shared
                    .connection
                    .drop_connection(&e.to_string());
                Err(internal(e))
            }
        }
    }

    fn get_max_mem_slots(&mut self) -> ProtocolResult<u64> {
        Err(UNSUPPORTED)
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> ProtocolResult<Option<vhost::VhostUserMemoryRegionBase>> {
        Err(UNSUPPORTED)
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> ProtocolResult<()> {
        Err(UNSUPPORTED)
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> ProtocolResult<Option<File>> {
        Err(UNSUPPORTED)
    }

    fn check_device_state(&mut self) -> ProtocolResult<()> {
        Err(UNSUPPORTED)
    }

    fn get_shmem_config(&mut self) -> ProtocolResult<VhostUserShMemConfig> {
        Err(UNSUPPORTED)
    }

    /// The bitmap to mark dirty pages in while logging is on (live migration).
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> ProtocolResult<()> {
        self.log
            .set_base(&file, log.mmap_offset, log.mmap_size)
            .map_err(ProtocolError::ReqHandlerError)
    }
}
