//! The vhost-user-scsi device: features, config space, queue-to-thread layout and the event
//! dispatch that hands virtqueue kicks and io_uring completions to the right worker.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use super::busy_poll::busy_poll;
use super::control_queue::PendingTmfs;
use super::events;
use super::poll_budget::PollBudget;
use super::queue::{lock, Vring};
use super::shared::{Shared, CONTROL_QUEUE, EVENT_QUEUE};
use super::worker::Worker;
use crate::backend::guest::GuestMem;
use crate::backend::guest_fault;
use crate::config::{Config, PollSetting};
use crate::heartbeat::Heartbeat;
use crate::lun::{LiveLuns, MAX_TRANSFER_BYTES};
use crate::virtio::layout::{feature, CDB_SIZE, SENSE_SIZE};

/// How long the block I/O of an ended connection is waited for (a frozen file system can
/// hold it indefinitely).
const ABANDONED_IO_WAIT: Duration = Duration::from_secs(3600);

/// Highest target the config space offers (QEMU's VIRTIO_SCSI_MAX_TARGET).
const MAX_TARGET: u16 = 255;

/// Virtio feature bit of vhost's "log all writes" (live migration).
pub const VHOST_F_LOG_ALL: u32 = 26;

/// Commands one worker thread serves at once, whatever its number of queues: its io_uring
/// holds as many; more wait in their rings.
const MAX_WORKER_SLOTS: usize = 4096;

/// Worker threads unless configured: one per CPU the daemon may run on (its affinity
/// mask, as systemd's CPUAffinity= or taskset set it), at most one per request queue.
fn default_threads(request_queues: u16) -> u16 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    u16::try_from(cpus)
        .unwrap_or(u16::MAX)
        .min(request_queues)
        .max(1)
}

/// Waits until one of `fds` is readable or `timeout` passes.
fn wait_readable(fds: &[std::os::unix::io::RawFd], timeout: Duration) {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: poll(2) reads and writes exactly `polls.len()` entries of the live vector.
    let _ = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
}

/// The device handed to the vhost-user daemon; cloned into every worker thread.
#[derive(Clone)]
pub struct ScsiDevice {
    pub shared: Arc<Shared>,
    workers: Arc<[Arc<Mutex<Worker>>]>,
    num_request_queues: u16,
    queue_size: u16,
    /// How long stopping a queue waits for its commands.
    stop_timeout: Duration,
    tmfs: Arc<Mutex<PendingTmfs>>,
}

impl ScsiDevice {
    pub fn new(cfg: &Config, luns: Arc<LiveLuns>, mem: GuestMem) -> io::Result<ScsiDevice> {
        guest_fault::install()?;
        let n = cfg.num_queues;
        // One worker thread per request queue unless configured otherwise.
        let threads = usize::from(
            cfg.threads
                .unwrap_or_else(|| default_threads(n))
                .clamp(1, n.max(1)),
        );
        let mut thread_queues = vec![Vec::new(); threads];
        thread_queues[0].extend([CONTROL_QUEUE, EVENT_QUEUE]);
        for i in 0..n {
            thread_queues[usize::from(i) % threads].push(i + 2);
        }
        let mut workers = Vec::with_capacity(threads);
        let mut wakers = Vec::with_capacity(threads);
        for (t, qs) in thread_queues.iter().enumerate() {
            let rq = qs.iter().filter(|&&q| q > EVENT_QUEUE).count().max(1);
            let slots = (rq * usize::from(cfg.queue_size)).min(MAX_WORKER_SLOTS);
            let worker = Worker::new(t, slots, cfg.submit_batch)?;
            wakers.push(worker.waker()?);
            workers.push(Arc::new(Mutex::new(worker)));
        }
        let poll = cfg.poll_us;
        let queues = usize::from(n) + 2;
        // Changes of the LUN table wake the thread of the event queue.
        luns.set_waker(Some(wakers[0].try_clone()?));
        let shared = Arc::new(Shared::new(luns, mem, queues, thread_queues, poll, wakers)?);
        for w in &workers {
            lock(w).attach(Arc::downgrade(&shared), Arc::downgrade(w));
        }
        Ok(ScsiDevice {
            shared,
            workers: workers.into(),
            num_request_queues: n,
            queue_size: cfg.queue_size,
            stop_timeout: Duration::from_millis(u64::from(cfg.stop_timeout_ms)),
            tmfs: Arc::new(Mutex::new(PendingTmfs::default())),
        })
    }

    /// The connection ended: every command ends at its LUN, at once or (block I/O still in
    /// the kernel) on a thread that waits for the kernel to finish it, so the LUNs' counts
    /// and write gates are right for the next connection and a late completion touches no
    /// ring. Returns that thread, if one was needed.
    pub fn abandon_commands(&self) -> Option<std::thread::JoinHandle<()>> {
        let sh = self.shared.clone();
        let left: Vec<_> = self
            .workers
            .iter()
            .filter(|w| lock(w).abandon(&sh))
            .cloned()
            .collect();
        if left.is_empty() {
            return None;
        }
        tracing::warn!(
            "connection ended with block I/O in the kernel; its commands end when it completes"
        );
        crate::sandbox::spawn(crate::sandbox::ThreadKind::Worker, "abandoned-io", move || {
                let deadline = Instant::now() + ABANDONED_IO_WAIT;
                let mut left = left;
                while !left.is_empty() && Instant::now() < deadline {
                    let fds: Vec<_> = left.iter().map(|w| lock(w).ring_fd()).collect();
                    wait_readable(&fds, Duration::from_millis(100));
                    left.retain(|w| lock(w).reap_abandoned(&sh));
                }
                if !left.is_empty() {
                    tracing::error!(
                        "block I/O of an ended connection still in the kernel after {ABANDONED_IO_WAIT:?}; its LUNs keep counting it"
                    );
                }
            })
            .ok()
    }

    /// Epoll token of worker thread's io_uring eventfd (above every queue's token).
    pub fn ring_token(&self) -> u64 {
        self.num_queues() as u64 + 1
    }

    /// Epoll token of the task-management wake-up on thread 0.
    pub fn tmf_token(&self) -> u64 {
        self.num_queues() as u64 + 2
    }

    /// Epoll token of each worker thread's I/O limit timer.
    pub fn timer_token(&self) -> u64 {
        self.num_queues() as u64 + 3
    }

    /// The descriptors worker thread `t`'s loop watches besides its queues' kicks, with
    /// their tokens: its io_uring eventfd, its I/O limit timer, and on thread 0 the
    /// task-management wake-up.
    pub fn thread_descriptors(&self, t: usize) -> Vec<(std::os::unix::io::RawFd, u64)> {
        use std::os::unix::io::AsRawFd;
        let mut fds: Vec<_> = self
            .workers
            .get(t)
            .map(|w| {
                let w = lock(w);
                [
                    (w.ring_fd(), self.ring_token()),
                    (w.timer_fd(), self.timer_token()),
                ]
            })
            .into_iter()
            .flatten()
            .collect();
        if t == 0 {
            fds.push((self.shared.tmf_event.as_raw_fd(), self.tmf_token()));
        }
        fds
    }

    /// `virtio_scsi_config`, as the device would present it.
    pub fn config_space(&self) -> [u8; 36] {
        let mut c = [0u8; 36];
        let mut put32 = |at: usize, v: u32| c[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(0, u32::from(self.num_request_queues));
        put32(4, u32::from(self.queue_size) - 2); // seg_max: the header and response take two
        put32(8, (MAX_TRANSFER_BYTES / 512) as u32); // max_sectors
        put32(12, u32::from(self.queue_size)); // cmd_per_lun
        put32(16, 16); // event_info_size: sizeof(virtio_scsi_event)
        put32(20, SENSE_SIZE as u32);
        put32(24, CDB_SIZE as u32);
        // max_channel, max_target, max_lun: as QEMU's virtio-scsi gives them (QEMU presents
        // its own config space to a vhost-user-scsi guest), so a LUN added later at any
        // address is within what the driver accepts.
        c[28..30].copy_from_slice(&0u16.to_le_bytes());
        c[30..32].copy_from_slice(&MAX_TARGET.to_le_bytes());
        c[32..36].copy_from_slice(&u32::from(crate::scsi::lun_id::MAX_LUN).to_le_bytes());
        c
    }
}

/// What the vhost-user protocol asks of the device (see `session.rs`).
impl ScsiDevice {
    /// Every queue the device offers: control, event and the request queues.
    pub fn num_queues(&self) -> usize {
        usize::from(self.num_request_queues) + 2
    }

    pub fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    pub fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | feature::HOTPLUG
            | feature::CHANGE
            | vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            // Live migration: the device logs the guest pages it writes.
            | (1 << VHOST_F_LOG_ALL)
    }

    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // Not CONFIG: QEMU builds a vhost-user-scsi device's config space from its own
        // properties, never asks for ours, and warns at every start when it is offered.
        // INFLIGHT_SHMFD: the frontend keeps a record of what is in flight across
        // restarts of the daemon (QEMU 8.2+ for vhost-user-scsi).
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
            | VhostUserProtocolFeatures::LOG_SHMFD
    }

    /// The config space for a frontend that asks (GET_CONFIG); QEMU does not, and CONFIG is
    /// not offered, so this is what QEMU's own properties must agree with.
    pub fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_space();
        let start = (offset as usize).min(c.len());
        let end = start.saturating_add(size as usize).min(c.len());
        c[start..end].to_vec()
    }

    pub fn reset_device(&self) {
        self.shared.clear_broken(None);
        self.shared.end_epoch(None);
    }

    /// The frontend stops a queue (GET_VRING_BASE): waits, bounded, for its commands; then
    /// the ring is the frontend's again. `tracked`: the ring records its heads in an
    /// in-flight region, so what is still running is served again when it restarts.
    pub fn stop_vring(&self, queue_index: u32, tracked: bool) -> io::Result<()> {
        self.shared.clear_broken(Some(queue_index));
        // Commands held back by I/O limits go now, so the queue can drain.
        self.shared.suspend_limits(true);
        let idle = self
            .shared
            .inflight
            .wait_queue_idle(queue_index as usize, self.stop_timeout);
        self.shared.suspend_limits(false);
        if !idle {
            if tracked {
                tracing::warn!(
                    queue = queue_index,
                    "commands still running {:?} after the queue was stopped; they are served again when it restarts",
                    self.stop_timeout
                );
            } else {
                tracing::error!(
                    queue = queue_index,
                    "commands still running {:?} after the queue was stopped; their answers are dropped (the guest retries them after its timeout)",
                    self.stop_timeout
                );
            }
        }
        // The ring goes back to the frontend: from here on no command popped before
        // answers on it; those still in flight end at their LUN without touching it.
        self.shared.end_epoch(Some(queue_index));
        Ok(())
    }

    /// How the worker threads poll after work (`--poll-us`).
    pub fn poll_setting(&self) -> PollSetting {
        self.shared.poll
    }

    /// Worker thread `thread_id` woke from epoll with events; it polls for `window` after
    /// serving them (guest notifications stay off meanwhile when the window is not zero).
    pub fn woke(&self, thread_id: usize, window: Duration) {
        self.shared.luns.queue_stats().woke();
        if let Some(worker) = self.workers.get(thread_id) {
            lock(worker).set_polling(!window.is_zero());
        }
    }

    /// After serving a wake-up's events: busy-polls thread `thread_id`'s queues and
    /// completions until `budget`'s window passes without work, then turns guest
    /// notifications back on. Returns when the thread last found work. Beats `beat` on
    /// every pass.
    pub fn poll_after_events(
        &self,
        vrings: &[Vring],
        thread_id: usize,
        beat: &Heartbeat,
        budget: &mut PollBudget,
    ) -> Instant {
        match self.workers.get(thread_id) {
            Some(worker) => busy_poll(&self.shared, worker, vrings, thread_id, beat, budget),
            None => Instant::now(),
        }
    }

    /// Serves one event of worker thread `thread_id`: a kick of the queue at that position
    /// in `vrings` (the thread's queues), io_uring completions or a task-management wake-up.
    pub fn handle_event(&self, device_event: u16, vrings: &[Vring], thread_id: usize) {
        let sh = &self.shared;
        let Some(worker) = self.workers.get(thread_id) else {
            return;
        };
        if sh.connection.broken_by_frontend() {
            return;
        }
        let ev = u64::from(device_event);
        if ev == self.ring_token() {
            lock(worker).complete(sh, vrings);
        } else if ev == self.timer_token() {
            lock(worker).on_timer(sh, vrings);
        } else if ev == self.tmf_token() {
            let _ = sh.tmf_event.read();
        } else if let Some(&queue) = sh
            .thread_queues
            .get(thread_id)
            .and_then(|qs| qs.get(usize::from(device_event)))
        {
            let vpos = usize::from(device_event);
            match queue {
                CONTROL_QUEUE => {
                    lock(&self.tmfs).process_control(sh, &self.workers, vrings, vpos, queue);
                }
                EVENT_QUEUE => {
                    // Buffers stay posted until there is an event to report (below).
                }
                _ => lock(worker).process_queue(sh, vrings, vpos, queue),
            }
        }
        if thread_id == 0 {
            lock(&self.tmfs).retry(sh, &self.workers, vrings);
            // The event queue is thread 0's second queue (after the control queue).
            events::deliver(sh, &sh.luns, vrings, 1);
        }
        // A fault on guest memory while serving ends the connection now, not at the next
        // event.
        sh.connection.broken_by_frontend();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LunConfig;
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    fn device(threads: Option<u16>) -> (tempfile::TempDir, ScsiDevice) {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("d.img");
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(1 << 20))
            .expect("img");
        let mut cfg = Config {
            num_queues: 4,
            queue_size: 256,
            threads,
            ..Config::default()
        };
        let mut a = LunConfig::disk(0, 0, p.clone());
        let mut b = LunConfig::disk(2, 7, p);
        a.shared = true;
        b.shared = true;
        cfg.state_dir = Some(dir.path().join("state"));
        cfg.luns.extend([a, b]);
        let table = crate::lun::build_lun_table(&cfg).expect("luns");
        let luns = LiveLuns::new(table, crate::lun::open_options(&cfg), true);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let dev = ScsiDevice::new(&cfg, luns, mem).expect("device");
        (dir, dev)
    }

    #[test]
    fn config_space_is_truthful() {
        let (_d, dev) = device(None);
        let c = dev.config_space();
        let u32_at = |i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
        assert_eq!(u32_at(0), 4); // num_queues
        assert_eq!(u32_at(4), 254); // seg_max
        assert_eq!(u32_at(8), (MAX_TRANSFER_BYTES / 512) as u32);
        assert_eq!(u32_at(12), 256); // cmd_per_lun
        assert_eq!(u32_at(20), 96); // sense_size
        assert_eq!(u32_at(24), 32); // cdb_size
                                    // max_target, max_lun: QEMU's, whatever the table holds now (LUNs come and go).
        assert_eq!(u16::from_le_bytes([c[30], c[31]]), 255);
        assert_eq!(u32_at(32), 16383);
        assert_eq!(dev.get_config(20, 8), c[20..28].to_vec());
        assert!(dev.get_config(40, 4).is_empty());
    }

    #[test]
    fn queues_are_dealt_out_to_the_threads_in_turn() {
        let (_d, dev) = device(Some(4));
        assert_eq!(dev.num_queues(), 6);
        // Thread 0: control, event and request queue 0; then one request queue each.
        assert_eq!(
            dev.shared.thread_queues,
            vec![vec![0, 1, 2], vec![3], vec![4], vec![5]]
        );
        let (_d, dev) = device(Some(2));
        assert_eq!(dev.shared.thread_queues, vec![vec![0, 1, 2, 4], vec![3, 5]]);
    }

    #[test]
    fn threads_follow_the_cpus_not_the_queues() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (_d, dev) = device(None);
        assert_eq!(dev.shared.thread_queues.len(), cpus.min(4));
        assert_eq!(usize::from(default_threads(1022)), cpus.min(1022));
        assert_eq!(default_threads(1), 1);
    }

    #[test]
    fn features_include_what_qemu_forwards() {
        let (_d, dev) = device(None);
        let f = dev.features();
        for bit in [32, 29, 28, 30, 1, 2] {
            assert!(f & (1u64 << bit) != 0, "feature bit {bit}");
        }
        let pf = dev.protocol_features();
        assert!(pf.contains(VhostUserProtocolFeatures::MQ));
        assert!(!pf.contains(VhostUserProtocolFeatures::CONFIG));
    }
}
