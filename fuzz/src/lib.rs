//! Shared pieces of vscsid's fuzz targets: LUNs on memfd images, a device served from
//! fuzzer-written guest memory, an in-memory iSCSI target stream, and the encoders the
//! seed writer (`examples/write_seeds.rs`) uses to build well-formed inputs.
//!
//! Every wait in here is bounded: a command, a task management function or a session
//! that does not finish in time is reported as a hang (a panic with what was waited for).

pub mod cdb;
pub mod iscsi_target;
pub mod luns;
pub mod virtio;

use std::time::Duration;

/// The longest any single wait of a target may take before it counts as a hang.
pub const HANG_BOUND: Duration = Duration::from_secs(5);

/// Waits until `fd` is readable or `timeout` passes.
pub fn wait_readable(fd: std::os::unix::io::RawFd, timeout: Duration) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd that lives on this stack frame.
    let _ = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
}
