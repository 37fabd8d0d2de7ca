//! A small ext4 on a loop device, for tests of what a medium that stops (frozen) or loses
//! power (shut down without flushing) does to the daemon. Needs root, mkfs.ext4, mount,
//! fsfreeze and a kernel with loop devices.

use std::path::PathBuf;
use std::process::Command;

/// Runs a command that must succeed; a missing one fails the test (never a skip).
pub fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is missing ({e}): these tests need it"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a file and makes it durable by itself: no global `sync`, which would also write
/// back what a test running beside this one means to lose in a power cut.
pub fn write_durably(path: &std::path::Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
}

/// A small ext4 mounted through a loop device; thawed, unmounted and removed on drop.
pub struct Ext4 {
    dir: tempfile::TempDir,
    pub mnt: PathBuf,
    image: PathBuf,
    frozen: std::cell::Cell<bool>,
}

/// Thaws the file system when dropped. Declared after the daemon, it is dropped before it:
/// a test that fails while the file system is frozen must thaw it before killing and
/// waiting for a daemon whose threads wait in the file system.
pub struct ThawOnDrop<'a>(&'a Ext4);

impl Drop for ThawOnDrop<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

impl Ext4 {
    pub fn new() -> Ext4 {
        let dir = tempfile::tempdir().expect("tmp");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .expect("fs image");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        sh("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        sh(
            "mount",
            &["-o", "loop", image.to_str().unwrap(), mnt.to_str().unwrap()],
        );
        Ext4 {
            dir,
            mnt,
            image,
            frozen: std::cell::Cell::new(false),
        }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    pub fn freeze(&self) {
        sh("fsfreeze", &["-f", self.mnt.to_str().unwrap()]);
        self.frozen.set(true);
    }

    pub fn thaw(&self) {
        if self.frozen.replace(false) {
            let _ = std::process::Command::new("fsfreeze")
                .args(["-u", self.mnt.to_str().unwrap()])
                .status();
        }
    }

    /// See [`ThawOnDrop`].
    pub fn thaw_on_drop(&self) -> ThawOnDrop<'_> {
        ThawOnDrop(self)
    }
}

impl Ext4 {
    /// A power cut: the file system stops at once, without writing back its page cache
    /// or its journal (EXT4_IOC_SHUTDOWN with EXT4_GOING_FLAGS_NOLOGFLUSH). What reached
    /// the loop device stays; everything else is gone.
    pub fn cut_power(&self) {
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        const EXT4_GOING_FLAGS_NOLOGFLUSH: u32 = 0x2;
        let dir = std::fs::File::open(&self.mnt).expect("open the mount point");
        let flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
        // SAFETY: the ioctl reads one u32 from a live local on a descriptor we opened.
        let r = unsafe {
            libc::ioctl(
                std::os::unix::io::AsRawFd::as_raw_fd(&dir),
                EXT4_IOC_SHUTDOWN,
                &flags as *const u32,
            )
        };
        assert_eq!(
            r,
            0,
            "EXT4_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Unmounts and mounts the file system again (replaying its journal), as after a
    /// reboot. Whatever still holds files on it must be gone first.
    pub fn remount(&self) {
        // A daemon killed just before may hold its image a moment longer: the kernel tears
        // its io_uring down after the process is gone. Retry a busy unmount, bounded.
        let mnt = self.mnt.to_str().unwrap();
        for _ in 0..100 {
            let busy = Command::new("umount")
                .arg(mnt)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stderr).contains("busy"));
            if !busy {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if self.is_mounted() {
            sh("umount", &[mnt]);
        }
        sh(
            "mount",
            &[
                "-o",
                "loop",
                self.image.to_str().unwrap(),
                self.mnt.to_str().unwrap(),
            ],
        );
    }
}

impl Ext4 {
    fn is_mounted(&self) -> bool {
        let mnt = self.mnt.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(mnt.as_str()))
        })
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        self.thaw();
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}
