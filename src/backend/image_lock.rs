//! Image locking, compatible with QEMU's: two VMs must not write one image unless both say
//! they share it. Locks are open file description (OFD) byte-range locks, the scheme QEMU's
//! file driver uses, so a vscsid and a QEMU (or qemu-img) see each other's locks:
//! byte 100 + i is held (shared) by every user that has permission i, byte 200 + i by
//! every user that does not let others have permission i. Permissions, QEMU's numbering:
//! 0 consistent read, 1 write, 2 write unchanged, 3 resize, 4 graph change.
//!
//! A writable LUN has read, write, write-unchanged and resize and lets others read only; a
//! read-only LUN reads and lets others read (so readers share an image, but not with a
//! writer); a `shared` LUN (a cluster disk several VMs use at once, with reservations)
//! lets others read and write too. A conflict names the image and the processes that
//! hold it.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::ofd_lock::{set, taken_by_other, LockKind};

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
const CONSISTENT_READ: u8 = 1 << 0;
const WRITE: u8 = 1 << 1;
const WRITE_UNCHANGED: u8 = 1 << 2;
const RESIZE: u8 = 1 << 3;
const ALL: u8 = 0x1f;
const NAMES: [&str; 5] = [
    "consistent read",
    "write",
    "write unchanged",
    "resize",
    "graph change",
];

/// How a LUN uses its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockMode {
    pub writable: bool,
    /// Others may write too (a cluster disk).
    pub shared: bool,
}

impl LockMode {
    fn held(self) -> u8 {
        match (self.writable, self.shared) {
            (true, false) => CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE,
            (true, true) => CONSISTENT_READ | WRITE | WRITE_UNCHANGED,
            (false, _) => CONSISTENT_READ,
        }
    }

    fn shared_with_others(self) -> u8 {
        if self.shared {
            CONSISTENT_READ | WRITE | WRITE_UNCHANGED
        } else {
            CONSISTENT_READ | WRITE_UNCHANGED
        }
    }
}

/// Why an image cannot be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is in use by {holders}: it needs \"{wanted}\", which they do not share (another VM's disk? add `shared` only for a cluster disk)")]
    Conflict {
        path: String,
        holders: String,
        wanted: &'static str,
    },
    #[error("{path} is in use by {holders}, which has \"{held}\" and this LUN does not share it (another VM writes it?)")]
    Refused {
        path: String,
        holders: String,
        held: &'static str,
    },
    #[error("cannot lock {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Takes the locks of `mode` on `file` (the image at `path`), or explains who is in the way.
/// Idempotent; the locks go with the file's last descriptor, or with [`unlock`].
pub fn lock(file: &File, path: &Path, mode: LockMode) -> Result<(), LockError> {
    let shown = path.display().to_string();
    let io_err = |source| LockError::Io {
        path: shown.clone(),
        source,
    };
    let held = mode.held();
    let unshared = ALL & !mode.shared_with_others();
    for i in 0..5u8 {
        let bit = 1 << i;
        if held & bit != 0 && taken_by_other(file, SHARED_BASE + i64::from(i)).map_err(io_err)? {
            return Err(LockError::Conflict {
                path: shown.clone(),
                holders: holders(file, path),
                wanted: NAMES[usize::from(i)],
            });
        }
        if unshared & bit != 0 && taken_by_other(file, PERM_BASE + i64::from(i)).map_err(io_err)? {
            return Err(LockError::Refused {
                path: shown.clone(),
                holders: holders(file, path),
                held: NAMES[usize::from(i)],
            });
        }
    }
    for i in 0..5u8 {
        let bit = 1 << i;
        let perm = if held & bit != 0 {
            LockKind::Read
        } else {
            LockKind::Unlock
        };
        set(file, perm, PERM_BASE + i64::from(i)).map_err(io_err)?;
        let share = if unshared & bit != 0 {
            LockKind::Read
        } else {
            LockKind::Unlock
        };
        set(file, share, SHARED_BASE + i64::from(i)).map_err(io_err)?;
    }
    Ok(())
}

/// Drops every lock this file description holds on the image.
pub fn unlock(file: &File) {
    for i in 0..5 {
        let _ = set(file, LockKind::Unlock, PERM_BASE + i);
        let _ = set(file, LockKind::Unlock, SHARED_BASE + i);
    }
}

/// The processes that hold OFD locks on the image, as "PID (command)", read from their
/// descriptors' fdinfo; bounded to a few names. "another process" when none can be told
/// (another PID namespace, no permission).
fn holders(file: &File, path: &Path) -> String {
    let Ok(meta) = file.metadata().or_else(|_| std::fs::metadata(path)) else {
        return "another process".into();
    };
    let me = std::process::id();
    let ino = meta.ino();
    let mut found: Vec<String> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "another process".into();
    };
    for p in procs.filter_map(|e| e.ok()).take(65536) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        let holds = fds.filter_map(|e| e.ok()).take(4096).any(|fd| {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                return false;
            };
            info.lines().any(|l| {
                l.starts_with("lock:")
                    && l.contains("OFDLCK")
                    && l.split_whitespace().any(|f| {
                        f.rsplit(':').next().and_then(|n| n.parse::<u64>().ok()) == Some(ino)
                    })
            })
        });
        if holds && pid == me {
            found.push("another LUN of this vscsid".into());
        } else if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            found.push(format!("PID {pid} ({})", comm.trim()));
            if found.len() >= 4 {
                break;
            }
        }
    }
    if found.is_empty() {
        "another process".into()
    } else {
        found.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(p: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .expect("open")
    }

    const RW: LockMode = LockMode {
        writable: true,
        shared: false,
    };
    const RO: LockMode = LockMode {
        writable: false,
        shared: false,
    };
    const SHARED_RW: LockMode = LockMode {
        writable: true,
        shared: true,
    };

    #[test]
    fn two_writers_conflict_and_the_first_one_is_named() {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        let a = open(f.path());
        let b = open(f.path());
        lock(&a, f.path(), RW).expect("first writer");
        let e = lock(&b, f.path(), RW).expect_err("second writer");
        let text = e.to_string();
        assert!(text.contains(&f.path().display().to_string()), "{text}");
        assert!(text.contains("another LUN of this vscsid"), "{text}");
        unlock(&a);
        lock(&b, f.path(), RW).expect("free once the first let go");
    }

    #[test]
    fn readers_share_but_not_with_a_writer() {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        let (a, b, c) = (open(f.path()), open(f.path()), open(f.path()));
        lock(&a, f.path(), RO).expect("reader");
        lock(&b, f.path(), RO).expect("second reader");
        assert!(
            lock(&c, f.path(), RW).is_err(),
            "a writer while readers hold it"
        );
        unlock(&a);
        unlock(&b);
        lock(&c, f.path(), RW).expect("writer alone");
        assert!(
            lock(&a, f.path(), RO).is_err(),
            "a reader while a writer holds it"
        );
    }

    #[test]
    fn shared_writers_coexist_but_exclude_an_exclusive_one() {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        let (a, b, c) = (open(f.path()), open(f.path()), open(f.path()));
        lock(&a, f.path(), SHARED_RW).expect("shared writer");
        lock(&b, f.path(), SHARED_RW).expect("second shared writer");
        assert!(lock(&c, f.path(), RW).is_err());
    }
}
