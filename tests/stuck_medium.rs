//! A medium that stops answering: the LUN's image lives on a loop-mounted ext4 that the
//! test freezes (`fsfreeze`), so its writes wait in the kernel until the file system is
//! thawed. What must hold: a connection that ends with such writes in flight leaves the
//! LUN usable for the next one (task management and COMPARE AND WRITE complete once the
//! writes do), and a task management function is answered within its timeout even when
//! nothing else wakes the daemon. Needs root, mkfs.ext4, mount and fsfreeze.

mod common;

use std::time::{Duration, Instant};

use common::ext4::{write_durably, Ext4};
use common::*;
use vscsid::frontend::{ScsiFrontend, VirtioScsiRequest};

const CLEAR_TASK_SET: u32 = 3;
const ABORT_TASK_SET: u32 = 1;
const FUNCTION_COMPLETE: u8 = 0;
const FAILURE: u8 = 9;

/// Starts vscsid on an image in `fs` (allocated, so writes do not wait for block
/// allocation alone).
fn daemon_on(fs: &Ext4, extra: &[&str]) -> Daemon {
    let image = fs.file("lun.img");
    write_durably(&image, &vec![0u8; 4 << 20]);
    let name = image.to_str().unwrap().to_string();
    Daemon::start(
        &[Disk {
            name: &name,
            size: 4 << 20,
            opts: "cache=none",
        }],
        extra,
    )
}

fn write_req<'a>(cdb: &'a [u8], data: &'a [u8], tag: u64) -> VirtioScsiRequest<'a> {
    VirtioScsiRequest {
        lun: lun(0),
        tag,
        cdb,
        data_out: data,
        data_in_len: 0,
    }
}

/// Connects again (bounded): the daemon accepts the next frontend once the previous
/// connection is torn down.
fn reconnect(d: &Daemon) -> ScsiFrontend {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.connect(1)));
        match fe {
            Ok(fe) => return fe,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

#[test]
fn a_connection_ending_with_stuck_writes_leaves_the_lun_usable() {
    let fs = Ext4::new();
    let mut d = daemon_on(&fs, &["--reconnect"]);
    let _thaw = fs.thaw_on_drop();
    let data = pattern(7, 4096);
    {
        let mut fe = d.connect(1);
        good(&fe.command(&write_req(&write16(0, 8), &data, 1)).unwrap());
        fs.freeze();
        for i in 0..8u64 {
            let cdb = write16(8 + i * 8, 8);
            fe.submit(2, &write_req(&cdb, &data, 10 + i))
                .expect("submit");
        }
        wait_until(
            "writes never reached the kernel",
            Duration::from_secs(10),
            || d.io_waiting_in_kernel(),
        );
        // The frontend goes away with the writes in flight.
    }
    std::thread::sleep(Duration::from_millis(500));
    fs.thaw();
    let mut fe = reconnect(&d);
    fe.timeout = Duration::from_secs(40);
    // The old connection's writes completed after it ended: nothing of them is left in
    // flight, so the task set clears at once and writes and COMPARE AND WRITE pass the
    // LUN's gate.
    assert_eq!(
        fe.tmf(CLEAR_TASK_SET, lun(0), 0).unwrap(),
        FUNCTION_COMPLETE
    );
    good(&fe.command(&write_req(&write16(0, 8), &data, 2)).unwrap());
    let mut caw = data[..512].to_vec();
    caw.extend_from_slice(&[0x5a; 512]);
    good(
        &fe.command(&write_req(&compare_and_write(0, 1), &caw, 3))
            .unwrap(),
    );
    assert!(d.is_running());
}

/// Freezes the file system and sends a write that then waits in the kernel.
fn stick_a_write(fs: &Ext4, d: &mut Daemon, fe: &mut ScsiFrontend) {
    fs.freeze();
    let data = pattern(9, 4096);
    let cdb = write16(0, 8);
    fe.submit(2, &write_req(&cdb, &data, 1)).expect("submit");
    wait_until(
        "the write never reached the kernel",
        Duration::from_secs(10),
        || d.io_waiting_in_kernel(),
    );
}

#[test]
fn task_management_is_answered_within_its_timeout_on_a_stuck_medium() {
    let fs = Ext4::new();
    let mut d = daemon_on(&fs, &[]);
    let _thaw = fs.thaw_on_drop();
    let mut fe = d.connect(1);
    fe.timeout = Duration::from_secs(60);
    stick_a_write(&fs, &mut d, &mut fe);
    // Nothing completes while the file system is frozen: the function fails when its
    // 30-second bound passes, not whenever something else happens to wake the daemon.
    assert_eq!(fe.tmf(ABORT_TASK_SET, lun(0), 0).unwrap(), FAILURE);
    fs.thaw();
    let (_, r) = fe.complete(2).expect("the write completes after the thaw");
    good(&r);
}

#[test]
fn sigterm_on_a_stuck_medium_ends_within_the_unit_stop_timeout() {
    let fs = Ext4::new();
    let mut d = daemon_on(&fs, &[]);
    let _thaw = fs.thaw_on_drop();
    let mut fe = d.connect(1);
    stick_a_write(&fs, &mut d, &mut fe);
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    // The daemon gives up on the stuck write and removes its socket on the way out before
    // the unit's TimeoutStopSec (45 s) would have it killed. (Its threads stuck in the
    // frozen file system can only leave once it thaws.)
    wait_until(
        "the daemon did not finish its shutdown within the stop timeout",
        Duration::from_secs(44),
        || !d.socket.exists(),
    );
    fs.thaw();
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)),
        Some(1),
        "a shutdown that could not drain must not report success"
    );
    drop(fe);
}

#[test]
fn a_lun_removed_with_a_write_stuck_closes_after_the_write_is_acknowledged() {
    let fs = Ext4::new();
    let image = fs.file("lun.img");
    write_durably(&image, &vec![0u8; 4 << 20]);
    let name = image.to_str().unwrap().to_string();
    let mut d = Daemon::start_logged(
        &[Disk {
            name: &name,
            size: 4 << 20,
            opts: "cache=none",
        }],
        &["--control", "{dir}/control.sock"],
        &[("VSCSID_LOG", "info")],
    );
    let _thaw = fs.thaw_on_drop();
    let control = d.control_socket();
    let mut fe = d.connect(1);
    stick_a_write(&fs, &mut d, &mut fe);
    // Removed while its write waits in the kernel: the reply says one is still in flight.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .args(["ctl", "--control"])
        .arg(&control)
        .args(["remove", "0:0", "--wait-ms", "300"])
        .output()
        .expect("vscsid ctl");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("still_in_flight=1"),
        "{said}"
    );
    assert!(!d.log().contains("removed LUN closed"));
    fs.thaw();
    // The write completes and is acknowledged; then the LUN closes (flushed), and the
    // data is in the image.
    let (_, r) = fe.complete(2).expect("the stuck write's answer");
    good(&r);
    wait_until("the removed LUN closed", Duration::from_secs(10), || {
        d.log().contains("removed LUN closed")
    });
    let on_disk = std::fs::read(&image).expect("image");
    assert_eq!(&on_disk[..4096], &pattern(9, 4096)[..]);
    assert!(d.is_running());
}
