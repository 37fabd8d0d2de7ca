//! Upgrade in place (SIGUSR2): the daemon drains, then executes the program now installed
//! at its path with the same arguments and hands it the listening socket. The frontend
//! reconnects (as QEMU 8.2+ does) and finds the new program; a command the old one could
//! not finish is served by the new one, exactly once. Needs root, mkfs.ext4, mount and
//! fsfreeze for the stuck command.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ext4::{write_durably, Ext4};
use common::*;
use vm_memory::{Bytes, GuestAddress};
use vscsid::frontend::{ConnectOptions, ScsiFrontend, VirtioScsiRequest};

const Q: usize = 2;

struct Installed {
    child: Child,
    _dir: tempfile::TempDir,
    program: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a copy of the daemon installed in a temporary directory, as a package would.
fn install_and_start(image: &Path) -> Installed {
    let dir = tempfile::tempdir().expect("tempdir");
    let program = dir.path().join("vscsid");
    std::fs::copy(env!("CARGO_BIN_EXE_vscsid"), &program).expect("install the program");
    let socket = dir.path().join("vscsid.sock");
    let spawn = || {
        Command::new(&program)
            .arg("--socket")
            .arg(&socket)
            .arg("--disk")
            .arg(format!("{},cache=none", image.display()))
            .args(["--num-queues", "1", "--reconnect"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("VSCSID_LOG", "warn")
            .spawn()
    };
    // Another test thread forking while the copy was open for writing keeps the file
    // busy for a moment (ETXTBSY): retry, bounded.
    let mut child = spawn();
    for _ in 0..100 {
        match &child {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20));
                child = spawn();
            }
            _ => break,
        }
    }
    let child = child.expect("start the installed program");
    Installed {
        child,
        _dir: dir,
        program,
        socket,
    }
}

/// Replaces the installed program the way a package upgrade does: a new file renamed over
/// the old path (the running process keeps the old one).
fn upgrade_package(i: &Installed) -> u64 {
    let staged = i.program.with_extension("new");
    std::fs::copy(env!("CARGO_BIN_EXE_vscsid"), &staged).expect("stage the new program");
    std::fs::rename(&staged, &i.program).expect("install the new program");
    std::fs::metadata(&i.program).expect("new program").ino()
}

fn options() -> ConnectOptions {
    ConnectOptions {
        queues: 3,
        memory_size: 48 << 20,
        inflight: true,
        ..ConnectOptions::default()
    }
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

fn used_idx(fe: &ScsiFrontend) -> u16 {
    fe.conn
        .mem
        .read_obj(GuestAddress(fe.conn.queues[Q].used + 2))
        .expect("used index")
}

#[test]
fn sigusr2_hands_over_to_the_new_program_without_losing_a_command() {
    let fs = Ext4::new();
    let image = fs.file("lun.img");
    write_durably(&image, &vec![0u8; 4 << 20]);
    let _thaw = fs.thaw_on_drop();
    let mut d = install_and_start(&image);
    let pid = d.child.id();
    let mut fe = ScsiFrontend::connect(&d.socket, &options()).expect("connect");
    fe.timeout = Duration::from_secs(30);
    let before = pattern(21, 4096);
    good(
        &fe.command_on(Q, &write_req(&write16(0, 8), &before, 1))
            .expect("write"),
    );

    // A command the old program cannot finish: its medium is frozen.
    let stuck = pattern(22, 4096);
    fs.freeze();
    let head = fe
        .submit(Q, &write_req(&write16(8, 8), &stuck, 2))
        .expect("submit");
    wait_until(
        "the write reaches the kernel",
        Duration::from_secs(10),
        || io_waiting_in_kernel(pid),
    );
    let new_inode = upgrade_package(&d);
    // SAFETY: kill(2) sends a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
    // The old program gives up draining after 5 s and executes the new one; its io_uring
    // lets go of the process only once the medium answers.
    std::thread::sleep(Duration::from_secs(7));
    fs.thaw();
    let runs_new =
        || std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|m| m.ino() == new_inode);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runs_new() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        runs_new(),
        "the new program does not run: {:?} {:?}",
        d.child.try_wait(),
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
    );
    assert!(
        matches!(d.child.try_wait(), Ok(None)),
        "same process, new program"
    );

    fe.conn
        .reattach(&d.socket, &options())
        .expect("reconnect to the new program");
    let (h, r) = fe
        .complete(Q)
        .expect("the stuck write completes on the new program");
    assert_eq!(h, head);
    good(&r);
    assert_eq!(used_idx(&fe), 2, "each command completed once");
    let r = fe
        .command_on(Q, &cmd(0, &read16(0, 16), &[], 8192))
        .expect("READ");
    good(&r);
    assert_eq!(&r.data_in[..4096], &before[..]);
    assert_eq!(&r.data_in[4096..], &stuck[..]);
}

#[test]
fn an_upgrade_to_a_missing_program_is_refused_and_serving_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("lun.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 << 20))
        .expect("image");
    let d = install_and_start(&image);
    let mut fe = ScsiFrontend::connect(&d.socket, &options()).expect("connect");
    fe.timeout = Duration::from_secs(20);
    std::fs::remove_file(&d.program).expect("uninstall");
    // SAFETY: kill(2) sends a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGUSR2) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    good(
        &fe.command_on(Q, &cmd(0, &test_unit_ready(), &[], 0))
            .expect("still serving"),
    );
}
