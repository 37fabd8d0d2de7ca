//! Opening a LUN's backing store: a regular file, a partition or a whole block device.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::CacheMode;

/// `BLKGETSIZE64`: size in bytes of a block device.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `BLKSSZGET`: logical sector size of a block device.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `BLKDISCARD`: discard a byte range of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;

/// An opened backing store and the facts about it the SCSI layer needs.
#[derive(Debug)]
pub struct Backing {
    pub file: File,
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    pub is_block_device: bool,
    pub cache: CacheMode,
    pub readonly: bool,
    /// Alignment O_DIRECT requires of buffer addresses, lengths and offsets (1 when the
    /// file is not opened O_DIRECT).
    pub dio_align: u64,
}

/// Why a backing store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open {path}: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path} is neither a regular file nor a block device")]
    NotFileOrBlock { path: String },
    #[error("cannot read the size of {path}: {source}")]
    Size { path: String, source: io::Error },
}

impl Backing {
    /// Opens `path` with the flags `cache` asks for.
    pub fn open(path: &Path, cache: CacheMode, readonly: bool) -> Result<Backing, OpenError> {
        let shown = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(cache.open_flags() | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| OpenError::Open {
                path: shown.clone(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| OpenError::Open {
            path: shown.clone(),
            source,
        })?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
            return Err(OpenError::NotFileOrBlock { path: shown });
        }
        let size = if is_block_device {
            block_device_size(&file).map_err(|source| OpenError::Size {
                path: shown.clone(),
                source,
            })?
        } else {
            meta.len()
        };
        let dio_align = if cache.is_direct() {
            direct_io_alignment(&file, is_block_device)
        } else {
            1
        };
        Ok(Backing {
            file,
            path: path.to_path_buf(),
            size,
            is_block_device,
            cache,
            readonly,
            dio_align,
        })
    }

    /// Whether blocks UNMAP deallocates read back as zeroes. Hole punching gives that on a
    /// file; on a block device it is a write of zeroes with unmap, which the kernel refuses
    /// unless the device can write zeroes itself. A device that can only discard returns
    /// whatever it likes for discarded blocks, so the disk must not claim LBPRZ.
    /// The size in bytes now (a resize reads it again; `size` is the size at open).
    pub fn current_size(&self) -> io::Result<u64> {
        if self.is_block_device {
            block_device_size(&self.file)
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    /// Sets a regular file's length (a resize to a given size). A block device's size is
    /// its owner's to change.
    pub fn set_file_size(&self, bytes: u64) -> io::Result<()> {
        if self.is_block_device {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a block device's size is set where it comes from; resize without a size re-reads it",
            ));
        }
        self.file.set_len(bytes)
    }

    /// The logical block size of a block device (BLKSSZGET); None for a file.
    pub fn logical_block_size(&self) -> Option<u64> {
        if !self.is_block_device {
            return None;
        }
        let mut ssz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int to the pointer, which points at `ssz`.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                BLKSSZGET,
                &mut ssz as *mut libc::c_int,
            )
        };
        (rc == 0 && ssz > 0).then_some(ssz as u64)
    }

    pub fn unmapped_blocks_read_zeroes(&self) -> bool {
        if !self.is_block_device {
            return true;
        }
        self.sysfs_dir()
            .is_some_and(|dir| device_writes_zeroes(&dir))
    }

    /// Whether the medium rotates, as the kernel reports it: for a block device its own
    /// queue, for a file the device holding it. `None` when the kernel does not say (a
    /// file on tmpfs, btrfs or overlayfs has no single device behind it).
    pub fn rotational(&self) -> Option<bool> {
        self.sysfs_dir().and_then(|dir| device_rotates(&dir))
    }

    /// `/sys/dev/block/M:m` of the block device, or of the device holding the file.
    fn sysfs_dir(&self) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let meta = self.file.metadata().ok()?;
        let dev = if self.is_block_device {
            meta.rdev()
        } else {
            meta.dev()
        };
        Some(PathBuf::from(format!(
            "/sys/dev/block/{}:{}",
            libc::major(dev),
            libc::minor(dev)
        )))
    }

    /// Discards a byte range of a block device with `BLKDISCARD`. Used when the device
    /// rejects hole punching (it cannot write zeroes with unmap).
    pub fn blk_discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let range = [offset, len];
        // SAFETY: BLKDISCARD reads two u64 from the pointer, which points at `range`.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKDISCARD, range.as_ptr()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Whether the block device whose sysfs directory is `dev_dir` (`/sys/dev/block/M:m`)
/// offloads writing zeroes; a partition's limits are those of its disk (the parent
/// directory).
fn device_writes_zeroes(dev_dir: &Path) -> bool {
    queue_attribute(dev_dir, "write_zeroes_max_bytes")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// The `queue/rotational` flag of the block device whose sysfs directory is `dev_dir`.
fn device_rotates(dev_dir: &Path) -> Option<bool> {
    match queue_attribute(dev_dir, "rotational")?.as_str() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// One attribute of a block device's request queue, trimmed; a partition has no queue of
/// its own, so its disk's (the parent directory's) is read.
fn queue_attribute(dev_dir: &Path, name: &str) -> Option<String> {
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    read(dev_dir.join("queue").join(name))
        .or_else(|| read(dev_dir.join("../queue").join(name)))
        .map(|v| v.trim().to_string())
}

fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// The alignment O_DIRECT needs here: the device's logical sector size for a block
/// device; for a file, what statx reports (STATX_DIOALIGN), else a safe 4096.
fn direct_io_alignment(file: &File, is_block_device: bool) -> u64 {
    if is_block_device {
        let mut ssz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int to the pointer, which points at `ssz`.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut ssz as *mut libc::c_int) };
        if rc == 0 && ssz > 0 {
            return ssz as u64;
        }
        return 4096;
    }
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    const STATX_DIOALIGN: u32 = 0x2000;
    // SAFETY: the path is an empty C string used with AT_EMPTY_PATH on our own fd, and
    // `stx` is a valid out-pointer.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc == 0 && stx.stx_mask & STATX_DIOALIGN != 0 {
        let mem = u64::from(stx.stx_dio_mem_align);
        let off = u64::from(stx.stx_dio_offset_align);
        let a = mem.max(off);
        if a.is_power_of_two() {
            return a;
        }
    }
    4096
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn opens_a_regular_file_with_its_size() {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(&[0u8; 8192]).expect("write");
        let b = Backing::open(f.path(), CacheMode::Writeback, true).expect("open");
        assert_eq!(b.size, 8192);
        assert!(!b.is_block_device);
        assert_eq!(b.dio_align, 1);
    }

    #[test]
    fn unmapped_blocks_of_a_file_read_zeroes() {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        let b = Backing::open(f.path(), CacheMode::Writeback, true).expect("open");
        assert!(b.unmapped_blocks_read_zeroes());
    }

    #[test]
    fn write_zeroes_support_comes_from_the_disk_or_its_parent() {
        let sys = tempfile::tempdir().expect("tempdir");
        let disk = |name: &str, limit: &str| {
            let q = sys.path().join(name).join("queue");
            std::fs::create_dir_all(&q).expect("mkdir");
            std::fs::write(q.join("write_zeroes_max_bytes"), limit).expect("write");
            sys.path().join(name)
        };
        assert!(device_writes_zeroes(&disk("nvme0n1", "33550336\n")));
        // A disk that can only discard (like this project's test VM's virtio disk).
        let vda = disk("vda", "0\n");
        assert!(!device_writes_zeroes(&vda));
        // A partition has no queue of its own: its disk's limits apply.
        let part = vda.join("vda1");
        std::fs::create_dir_all(&part).expect("mkdir");
        assert!(!device_writes_zeroes(&part));
        let part = sys.path().join("nvme0n1").join("nvme0n1p1");
        std::fs::create_dir_all(&part).expect("mkdir");
        assert!(device_writes_zeroes(&part));
        assert!(!device_writes_zeroes(&sys.path().join("missing")));
    }

    #[test]
    fn rotation_comes_from_the_disk_or_its_parent() {
        let sys = tempfile::tempdir().expect("tempdir");
        let disk = |name: &str, flag: &str| {
            let q = sys.path().join(name).join("queue");
            std::fs::create_dir_all(&q).expect("mkdir");
            std::fs::write(q.join("rotational"), flag).expect("write");
            sys.path().join(name)
        };
        assert_eq!(device_rotates(&disk("sda", "1\n")), Some(true));
        let nvme = disk("nvme0n1", "0\n");
        assert_eq!(device_rotates(&nvme), Some(false));
        let part = nvme.join("nvme0n1p1");
        std::fs::create_dir_all(&part).expect("mkdir");
        assert_eq!(device_rotates(&part), Some(false));
        assert_eq!(device_rotates(&disk("odd", "2\n")), None);
        assert_eq!(device_rotates(&sys.path().join("missing")), None);
    }

    #[test]
    fn a_file_reports_its_device_or_nothing() {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        let b = Backing::open(f.path(), CacheMode::Writeback, true).expect("open");
        // Whatever the file system, the answer is the kernel's flag or unknown; it must
        // match what sysfs says for the file's device.
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(f.path()).expect("stat").dev();
        let dir = PathBuf::from(format!(
            "/sys/dev/block/{}:{}",
            libc::major(dev),
            libc::minor(dev)
        ));
        assert_eq!(b.rotational(), device_rotates(&dir));
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = Backing::open(Path::new("/nonexistent/x.img"), CacheMode::None, false)
            .expect_err("must fail");
        assert!(err.to_string().contains("/nonexistent/x.img"));
    }

    #[test]
    fn directory_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let err = Backing::open(d.path(), CacheMode::Writeback, true).expect_err("dir");
        assert!(
            matches!(
                err,
                OpenError::NotFileOrBlock { .. } | OpenError::Open { .. }
            ),
            "{err}"
        );
    }
}
