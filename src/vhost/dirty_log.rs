//! Dirty-page logging for live migration (VHOST_F_LOG_ALL with protocol feature
//! LOG_SHMFD): while the frontend has logging on, every guest page the device writes is
//! marked in a bitmap the frontend shares (one bit per 4 KiB page of guest physical
//! memory), so QEMU copies it again. The device writes guest memory in three ways, all
//! covered by marking at the used-ring update: the buffers of a completed chain (response
//! and data-in, whoever wrote them: the kernel's io_uring, the iSCSI reader or the daemon
//! itself; the used length says how many bytes), and the used ring's entry and index.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

use crate::backend::guest_fault;

/// Bytes of guest memory one bit of the log stands for (vhost-user's VHOST_LOG_PAGE).
pub const LOG_PAGE: u64 = 4096;

/// The frontend's log and whether logging is on; shared by every vring of a connection.
pub struct DirtyLog {
    on: AtomicBool,
    map: Mutex<Option<Arc<MmapRegion<()>>>>,
    /// False only with `VSCSID_DEBUG_UNLOGGED_DATA=1`: the data buffers of completed
    /// chains are not marked (the used ring still is). A fault switch that shows the
    /// marking matters: a guest migrated so reads stale data on the destination.
    marks_data: bool,
}

impl Default for DirtyLog {
    fn default() -> Self {
        DirtyLog {
            on: AtomicBool::new(false),
            map: Mutex::new(None),
            marks_data: std::env::var_os("VSCSID_DEBUG_UNLOGGED_DATA").is_none_or(|v| v != "1"),
        }
    }
}

impl DirtyLog {
    /// Whether data buffers are marked (always, unless the debug fault switch is on).
    pub fn marks_data(&self) -> bool {
        self.marks_data
    }

    /// Maps the log the frontend hands over (SET_LOG_BASE), replacing the previous one.
    pub fn set_base(&self, file: &File, offset: u64, size: u64) -> io::Result<()> {
        let len = usize::try_from(size).map_err(|_| io::Error::other("log too large"))?;
        if len == 0 {
            return Err(io::Error::other("empty dirty log"));
        }
        let meta = file.metadata()?;
        if meta.file_type().is_file() && offset.checked_add(size).is_none_or(|e| e > meta.len()) {
            return Err(io::Error::other(format!(
                "dirty log of {size} bytes at offset {offset} extends past its file ({} bytes)",
                meta.len()
            )));
        }
        let map = MmapRegion::from_file(FileOffset::new(file.try_clone()?, offset), len)
            .map_err(io::Error::other)?;
        guest_fault::watch_range(map.as_ptr() as usize, len);
        *self.map.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(map));
        Ok(())
    }

    /// Logging on or off (the frontend's VHOST_F_LOG_ALL).
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Release);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// The log to mark, when logging is on and a log was given.
    pub fn active(&self) -> Option<Arc<MmapRegion<()>>> {
        if !self.is_on() {
            return None;
        }
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Marks every page of `[gpa, gpa + len)` dirty in `log`. Pages past the log's end (a log
/// smaller than guest memory) are not marked; QEMU sizes it for all of guest memory.
pub fn mark(log: &MmapRegion<()>, gpa: u64, len: u64) {
    if len == 0 {
        return;
    }
    let first = gpa / LOG_PAGE;
    let last = gpa.saturating_add(len - 1) / LOG_PAGE;
    let slice = log.as_volatile_slice();
    for page in first..=last {
        let Ok(byte) = usize::try_from(page / 8) else {
            return;
        };
        match slice.get_atomic_ref::<AtomicU8>(byte) {
            Ok(b) => {
                b.fetch_or(1 << (page % 8), Ordering::AcqRel);
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::FromRawFd;
    use vm_memory::Bytes;

    fn memfd(len: u64) -> File {
        // SAFETY: a valid C string name; no other preconditions.
        let fd = unsafe { libc::memfd_create(c"dirty-log-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor owned by nothing else.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).expect("size");
        f
    }

    fn bits(log: &MmapRegion<()>, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        log.as_volatile_slice().read_slice(&mut v, 0).expect("read");
        v
    }

    #[test]
    fn pages_written_are_marked_and_only_those() {
        let f = memfd(64);
        let log = DirtyLog::default();
        assert!(log.active().is_none());
        log.set_base(&f, 0, 64).expect("map");
        assert!(
            log.active().is_none(),
            "logging is off until the frontend turns it on"
        );
        log.set_on(true);
        let m = log.active().expect("on");
        mark(&m, 0x1000, 1); // page 1
        mark(&m, 0x9fff, 2); // pages 9 and 10
        mark(&m, 0x20000, 0); // nothing
        assert_eq!(bits(&m, 3), vec![0b0000_0010, 0b0000_0110, 0]);
        mark(&m, 64 * 8 * LOG_PAGE, 4096); // past the log: ignored
        mark(&m, u64::MAX - 10, 100); // no overflow
    }

    #[test]
    fn a_log_past_its_file_is_refused() {
        let f = memfd(64);
        let log = DirtyLog::default();
        assert!(log.set_base(&f, 0, 4096).is_err());
        assert!(log.set_base(&f, 60, 8).is_err());
        assert!(log.set_base(&f, 0, 0).is_err());
    }
}
