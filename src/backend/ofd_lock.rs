//! Open file description (OFD) byte-range locks: held per open file, not per process, so
//! two opens in one process exclude each other as two processes would, and released when
//! the file's last descriptor closes. Image locks and the reservation state file use them.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

/// Which lock to take on a byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

fn flock(kind: LockKind, start: i64) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value; the fields that matter are set below.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
        LockKind::Unlock => libc::F_UNLCK,
    } as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = start;
    l.l_len = 1;
    l
}

/// Takes (or changes, or drops) the lock on byte `start` without waiting: a conflicting
/// lock gives EAGAIN.
pub fn set(file: &File, kind: LockKind, start: i64) -> io::Result<()> {
    fcntl(file, libc::F_OFD_SETLK, kind, start)
}

/// Takes the lock on byte `start`, waiting for conflicting locks to go.
pub fn wait(file: &File, kind: LockKind, start: i64) -> io::Result<()> {
    loop {
        match fcntl(file, libc::F_OFD_SETLKW, kind, start) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn fcntl(file: &File, cmd: i32, kind: LockKind, start: i64) -> io::Result<()> {
    let mut l = flock(kind, start);
    // SAFETY: F_OFD_SETLK(W) reads the flock it is given; the descriptor is the open file's.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut l) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on byte `start` (one a write lock
/// would conflict with).
pub fn taken_by_other(file: &File, start: i64) -> io::Result<bool> {
    let mut l = flock(LockKind::Write, start);
    // SAFETY: F_OFD_GETLK reads and writes the flock it is given.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut l) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(l.l_type != libc::F_UNLCK as libc::c_short)
}
