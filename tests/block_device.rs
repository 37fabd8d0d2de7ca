//! A disk LUN on a real block device (a loop device over a file, so it needs root and
//! losetup): size, thin provisioning as the device allows it, and deallocation that
//! reads back what the guest was promised.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

const SIZE: u64 = 32 << 20;

/// A loop device over a file, detached on drop.
struct LoopDevice {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopDevice {
    fn new() -> LoopDevice {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("backing.img");
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(SIZE))
            .expect("backing file");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .expect("losetup must be installed (util-linux) and the tests run as root");
        assert!(
            out.status.success(),
            "losetup failed (the tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        LoopDevice { dev, _dir: dir }
    }

    /// What the kernel says the device can do: write zeroes itself (so a punched hole
    /// reads as zeroes).
    fn writes_zeroes(&self) -> bool {
        let name = self.dev.file_name().expect("device name").to_string_lossy();
        std::fs::read_to_string(format!("/sys/block/{name}/queue/write_zeroes_max_bytes"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn loop_device_lun_deallocates_as_it_reports() {
    let dev = LoopDevice::new();
    let spec = format!("{},cache=none", dev.dev.display());
    let d = Daemon::start(&[], &["--disk", &spec, "--num-queues", "1"]);
    let mut fe = d.connect(1);
    let r = fe.command(&cmd(0, &read_capacity16(32), &[], 32)).unwrap();
    good(&r);
    assert_eq!(&r.data_in[0..8], &(SIZE / 512 - 1).to_be_bytes());
    let lbprz = r.data_in[14] & 0x40 != 0;
    assert_eq!(r.data_in[14] & 0x80, 0x80, "LBPME");
    assert_eq!(lbprz, dev.writes_zeroes(), "LBPRZ follows the device");

    // WRITE SAME(16) with UNMAP of a zero block reads back as zeroes on any device.
    let data = pattern(5, 128 * 512);
    good(&fe.command(&cmd(0, &write16(0, 128), &data, 0)).unwrap());
    let mut ws = write_same16(0, 64);
    ws[1] = 0x08; // UNMAP
    good(&fe.command(&cmd(0, &ws, &[0u8; 512], 0)).unwrap());
    let r = fe
        .command(&cmd(0, &read16(0, 128), &[], 128 * 512))
        .unwrap();
    good(&r);
    assert!(r.data_in[..64 * 512].iter().all(|&b| b == 0), "zeroed");
    assert_eq!(&r.data_in[64 * 512..], &data[64 * 512..], "untouched");

    // UNMAP succeeds; where LBPRZ is reported the blocks read as zeroes.
    let (c, list) = unmap(64, 64);
    good(&fe.command(&cmd(0, &c, &list, 0)).unwrap());
    let r = fe.command(&cmd(0, &read16(64, 64), &[], 64 * 512)).unwrap();
    good(&r);
    if lbprz {
        assert!(
            r.data_in.iter().all(|&b| b == 0),
            "LBPRZ: unmapped reads zeroes"
        );
    }
    assert_serving(&mut fe);
}
