//! Image locks, compatible with QEMU's: a second daemon (or a QEMU, here qemu-io) that
//! would write an image another one writes is refused with one line naming the image and
//! the process that holds it; readers share; `shared` disks are shared on purpose; the
//! destination of a migration (`--incoming`) takes its locks only when its device starts,
//! after the source's device stopped. Needs qemu-io (Debian qemu-utils).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Starts vscsid on `image` with `opts` and waits (bounded) for it to exit; returns its
/// status and what it printed.
fn start_expecting_exit(
    image: &std::path::Path,
    opts: &str,
    extra: &[&str],
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--disk")
        .arg(format!("{}{opts}", image.display()))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let running = matches!(child.try_wait(), Ok(None));
    if running {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    let code = if running { None } else { out.status.code() };
    (code, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn first(opts: &'static str, extra: &[&str]) -> Daemon {
    Daemon::start(
        &[Disk {
            name: "shared.img",
            size: 4 << 20,
            opts,
        }],
        extra,
    )
}

#[test]
fn a_second_writer_is_refused_naming_the_image_and_the_holder() {
    let d = first("", &[]);
    let image = d.path("shared.img");
    let (code, err) = start_expecting_exit(&image, "", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&image.display().to_string()), "{err}");
    assert!(err.contains(&format!("PID {}", d.child.id())), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // A reader is refused too while it is written.
    let (code, err) = start_expecting_exit(&image, ",readonly", &[]);
    assert_eq!(code, Some(2), "{err}");
}

#[test]
fn readers_share_an_image_and_shared_disks_are_shared() {
    let d = first("readonly", &[]);
    let (code, err) = start_expecting_exit(&d.path("shared.img"), ",readonly", &[]);
    assert_eq!(code, None, "a second reader runs: {err}");
    // Shared disks keep their reservations in a state directory both daemons use.
    let d = first("shared", &["--state-dir", "{dir}/state"]);
    let state = d.path("state").display().to_string();
    let (code, err) =
        start_expecting_exit(&d.path("shared.img"), ",shared", &["--state-dir", &state]);
    assert_eq!(code, None, "a second shared writer runs: {err}");
}

#[test]
fn qemu_sees_the_lock_and_vscsid_sees_qemus() {
    let d = first("", &[]);
    let image = d.path("shared.img");
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k"])
        .arg(&image)
        .output()
        .expect("qemu-io (Debian qemu-utils) must be installed");
    assert!(
        !out.status.success(),
        "qemu-io wrote an image vscsid writes"
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("lock"), "qemu-io: {text}");
    drop(d);

    // qemu-io holding the image open for writing (it waits on its stdin) refuses vscsid.
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("q.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 << 20))
        .expect("image");
    let mut qemu = Command::new("qemu-io")
        .args(["-f", "raw"])
        .arg(&image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-io");
    std::thread::sleep(Duration::from_millis(500));
    let (code, err) = start_expecting_exit(&image, "", &[]);
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert_eq!(code, Some(2), "vscsid opened an image QEMU writes: {err}");
    assert!(err.contains("qemu-io"), "names the holder: {err}");
}

#[test]
fn an_incoming_daemon_takes_the_lock_when_its_device_starts() {
    let d = first("", &["--reconnect"]);
    let image = d.path("shared.img");
    let mut source = d.connect(1);
    good(
        &source
            .command(&cmd(0, &test_unit_ready(), &[], 0))
            .expect("TUR"),
    );
    // The destination starts beside the running source.
    let dest = Daemon::start(
        &[Disk {
            name: image.to_str().expect("path"),
            size: 4 << 20,
            opts: "",
        }],
        &["--incoming", "--reconnect"],
    );
    // The source's device stops (the end of a migration): every queue is taken back.
    for q in 0..source.conn.queues.len() {
        source.conn.stop_queue(q).expect("stop");
    }
    let mut fe = dest.connect(1);
    good(
        &fe.command(&cmd(0, &test_unit_ready(), &[], 0))
            .expect("TUR on the destination"),
    );
    // Now the destination holds the image: a third writer is refused.
    let (code, err) = start_expecting_exit(&image, "", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("PID {}", dest.child.id())), "{err}");
}
