//! The LUNs the device and CDB targets serve: emulated disks on memfd images (through the
//! real backing-file and io_uring code, with O_DIRECT and the page cache) and a null LUN.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use vscsid::backend::CacheMode;
use vscsid::config::{Config, LunConfig, LunKind};

/// Size of each disk image: 2048 blocks of 512 bytes, 256 of 4096.
pub const IMAGE_BYTES: u64 = 1 << 20;

/// The LUNs every device target has, as `(target, lun)`:
/// - 0/0: disk, 512-byte blocks, cache=writeback, discard on;
/// - 0/1: disk, 4096-byte blocks, cache=none (O_DIRECT, which needs 4096-byte alignment
///   on a memfd), discard on;
/// - 0/2: disk, 512-byte blocks, cache=writethrough, discard off, read-only;
/// - 1/0: null LUN of 64 MiB.
pub const LUNS: [(u8, u16); 4] = [(0, 0), (0, 1), (0, 2), (1, 0)];

/// A memfd of [`IMAGE_BYTES`], kept open for the life of the process; its path is the
/// `/proc/self/fd` link, which the backend opens like any regular file.
fn memfd_image(name: &str) -> (OwnedFd, PathBuf) {
    let cname = std::ffi::CString::new(name).expect("memfd name");
    // SAFETY: memfd_create reads the NUL-terminated name and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = std::fs::File::from(owned);
    file.set_len(IMAGE_BYTES).expect("memfd size");
    let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
    (OwnedFd::from(file), path)
}

/// The configuration of [`LUNS`] on fresh images; the images stay open as long as the
/// returned descriptors live.
pub fn config(num_queues: u16, queue_size: u16) -> (Config, Vec<OwnedFd>) {
    let mut cfg = Config {
        num_queues,
        queue_size,
        threads: Some(1),
        ..Config::default()
    };
    let mut keep = Vec::new();
    let disks = [
        (0u16, 512u32, CacheMode::Writeback, true, false),
        (1, 4096, CacheMode::None, true, false),
        (2, 512, CacheMode::Writethrough, false, true),
    ];
    for (lun, block_size, cache, discard, readonly) in disks {
        let (fd, path) = memfd_image(&format!("vscsid-fuzz-lun{lun}"));
        keep.push(fd);
        let mut l = LunConfig::disk(0, lun, path.clone());
        l.kind = LunKind::Disk { path, cache };
        l.block_size = block_size;
        l.discard = discard;
        l.readonly = readonly;
        l.serial = Some(format!("FUZZ{lun}"));
        cfg.luns.push(l);
    }
    let mut null = LunConfig::disk(1, 0, PathBuf::new());
    null.kind = LunKind::Null { size: 64 << 20 };
    cfg.luns.push(null);
    (cfg, keep)
}

/// The 8-byte virtio-scsi address of `(target, lun)`.
pub fn lun_address(target: u8, lun: u16) -> [u8; 8] {
    [1, target, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0]
}
