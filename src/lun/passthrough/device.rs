//! What a passthrough LUN's command engines share (the helper threads of `pool` and the
//! asynchronous sg interface of `sg_async`): the device's descriptor and how it is opened
//! again after it was gone, the queue of accepted commands, and the LUN's facts.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::reply::DeviceFacts;
use crate::backend::block_io::IoBuffers;
use crate::backend::sg_io::{self, DeviceKind, Direction};
use crate::scsi::task::Completer;

/// Commands a LUN accepts at once (running and queued); past that, TASK SET FULL.
pub const QUEUE_DEPTH: usize = 64;

/// Least time between two attempts to open a gone device again.
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// One command for the helper threads.
pub struct Job {
    /// Its id for ABORT TASK (the task's `remote_id`).
    pub id: u64,
    pub cdb: [u8; 32],
    pub cdb_len: usize,
    pub dir: Direction,
    /// Data-out to send, or room for data-in (empty when `guest` holds the data).
    pub buf: Vec<u8>,
    /// The command's data in guest memory, for an engine that moves it straight (the
    /// iovecs and the guard that keeps that memory mapped until the command ends).
    pub guest: Option<IoBuffers>,
    pub reply: Completer,
}

/// Where the device is and how to open it again.
pub struct DeviceSpec {
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub readonly: bool,
    /// Open flags besides O_CLOEXEC (O_DIRECT for a block device).
    pub extra_flags: libc::c_int,
    /// SG_IO's timeout, in milliseconds.
    pub timeout_ms: u32,
}

pub(super) struct DeviceState {
    /// None while the device is gone.
    pub(super) file: Option<Arc<File>>,
    /// When the path was last opened (or tried).
    pub(super) last_try: Instant,
    /// Counts the successful reopens.
    pub(super) generation: u64,
    /// Another descriptor number of the same device that must follow a reopen (a
    /// block-passthrough LUN's reads and writes go through it): the reopened file is
    /// duplicated onto it. None once the pool is dropped, before that descriptor closes.
    pub(super) mirror_fd: Option<RawFd>,
}

pub(super) struct Queue {
    pub(super) jobs: VecDeque<Job>,
    /// Commands accepted and not answered yet (queued or running).
    pub(super) outstanding: usize,
    pub(super) stopping: bool,
}

pub(super) struct Shared {
    pub(super) spec: DeviceSpec,
    pub(super) device: Mutex<DeviceState>,
    pub(super) queue: Mutex<Queue>,
    pub(super) ready: Condvar,
    pub(super) buffers: Mutex<Vec<Vec<u8>>>,
    pub(super) facts: DeviceFacts,
    pub(super) next_id: AtomicU64,
    /// The kernel refused a command for want of privilege (logged once).
    pub(super) denied_logged: AtomicBool,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The device's descriptor, opened again when it was gone and REOPEN_INTERVAL passed.
pub(super) fn current_file(shared: &Shared) -> Option<Arc<File>> {
    let mut d = lock(&shared.device);
    if let Some(f) = &d.file {
        return Some(f.clone());
    }
    if d.last_try.elapsed() < REOPEN_INTERVAL {
        return None;
    }
    d.last_try = Instant::now();
    let s = &shared.spec;
    match sg_io::open_device(&s.path, s.kind, s.readonly, s.extra_flags) {
        Ok(f) => {
            if let Some(mirror) = d.mirror_fd {
                // SAFETY: dup3 takes two descriptor numbers: `f` is open, and `mirror`
                // stays open while `mirror_fd` is Some (the pool's owner clears it under
                // this lock before closing it). The old file behind `mirror` is closed
                // by the kernel; I/O in flight on it keeps its own reference.
                if unsafe { libc::dup3(f.as_raw_fd(), mirror, libc::O_CLOEXEC) } < 0 {
                    tracing::warn!(
                        "passthrough device reopened, but its read/write descriptor was not replaced: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
            tracing::info!(path = %s.path.display(), "passthrough device is back");
            let f = Arc::new(f);
            d.file = Some(f.clone());
            d.generation += 1;
            Some(f)
        }
        Err(e) => {
            tracing::debug!("passthrough device still gone: {e}");
            None
        }
    }
}

/// The device answered as gone through `file`: forget it (unless it was replaced
/// meanwhile), so the next command opens the path again.
pub(super) fn lost(shared: &Shared, file: &Arc<File>) {
    let mut d = lock(&shared.device);
    if d.file.as_ref().is_some_and(|f| Arc::ptr_eq(f, file)) {
        tracing::warn!(
            path = %shared.spec.path.display(),
            "passthrough device gone; commands get NOT READY until it is back"
        );
        d.file = None;
        d.last_try = Instant::now();
    }
}
