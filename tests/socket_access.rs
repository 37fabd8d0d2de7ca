//! The socket for a QEMU running as another user: `--socket-owner`, `--socket-group` and
//! `--socket-mode`. A frontend running as user `nobody` (this test's program, copied where
//! that user can run it, and started with nobody's user and group IDs) connects and is
//! served when the socket's group or owner lets it, and is refused otherwise; the default
//! mode 0600 lets only the daemon's user in. Needs root (to switch users).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const MIB: u64 = 1 << 20;
/// `nobody` and `nogroup` on Debian.
const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// A group `nobody` is not in.
const OTHER_GROUP: u32 = 54321;

/// The environment variable that makes [`frontend_helper`] connect to a socket.
const HELPER_SOCKET: &str = "VSCSID_TEST_HELPER_SOCKET";
/// Exit codes of the helper.
const SERVED: i32 = 0;
const REFUSED: i32 = 3;
const FAILED: i32 = 4;

/// Not a test of its own: the frontend the other user runs (this program started again
/// with `--ignored --exact frontend_helper`). Without the variable it does nothing.
#[test]
#[ignore]
fn frontend_helper() {
    let Some(socket) = std::env::var_os(HELPER_SOCKET) else {
        return;
    };
    let opts = vscsid::frontend::ConnectOptions {
        queues: 3,
        memory_size: (16 << 20) + (36 << 20),
        connect_timeout: Duration::from_millis(500),
        ..vscsid::frontend::ConnectOptions::default()
    };
    let code = match vscsid::frontend::ScsiFrontend::connect(Path::new(&socket), &opts) {
        Err(e) if e.to_string().contains("os error 13") => REFUSED,
        Err(e) => {
            eprintln!("helper: {e}");
            FAILED
        }
        Ok(mut fe) => {
            fe.timeout = Duration::from_secs(10);
            let r = fe.command(&cmd(0, &inquiry(96), &[], 96));
            match r {
                Ok(r) if r.status == 0 && &r.data_in[8..14] == b"VSCSID" => SERVED,
                other => {
                    eprintln!("helper: INQUIRY {other:?}");
                    FAILED
                }
            }
        }
    };
    std::process::exit(code);
}

/// This test program, copied into a directory every user may enter.
struct Helper {
    dir: tempfile::TempDir,
    program: PathBuf,
}

impl Helper {
    fn install() -> Helper {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let program = dir.path().join("frontend-helper");
        std::fs::copy(std::env::current_exe().expect("this program"), &program).expect("copy");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Helper { dir, program }
    }

    /// Runs the frontend as `uid`:`gid` (no supplementary groups) against `socket`.
    fn connect_as(&self, uid: u32, gid: u32, socket: &Path) -> Option<i32> {
        let out = Command::new(&self.program)
            .args(["--ignored", "--exact", "frontend_helper", "--nocapture"])
            .env(HELPER_SOCKET, socket)
            .current_dir(self.dir.path())
            .uid(uid)
            .gid(gid)
            .output()
            .expect("run the helper");
        if out.status.code() == Some(FAILED) {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        out.status.code()
    }
}

/// Starts the daemon and waits for its READY=1: the socket exists as soon as it is bound,
/// and gets its owner, group and mode a moment later.
fn start(extra: &[&str]) -> Daemon {
    let mut args = vec!["--num-queues", "1", "--reconnect"];
    args.extend_from_slice(extra);
    let notify_dir = tempfile::tempdir().expect("tmp");
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let d = Daemon::start_with_env(
        &[Disk {
            name: "a.img",
            size: 8 * MIB,
            opts: "",
        }],
        &args,
        &[("NOTIFY_SOCKET", notify_path.to_str().expect("path"))],
    );
    let mut buf = [0u8; 1024];
    let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // Other users may reach the socket's directory; the socket itself decides.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    d
}

#[test]
fn a_frontend_of_the_sockets_group_is_served_and_others_are_refused() {
    let helper = Helper::install();
    let d = start(&["--socket-group", "nogroup", "--socket-mode", "0660"]);
    let meta = std::fs::symlink_metadata(&d.socket).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, NOGROUP));
    assert_eq!(
        helper.connect_as(NOBODY, OTHER_GROUP, &d.socket),
        Some(REFUSED),
        "a user outside the socket's group"
    );
    assert_eq!(
        helper.connect_as(NOBODY, NOGROUP, &d.socket),
        Some(SERVED),
        "a user of the socket's group"
    );
}

#[test]
fn the_default_socket_lets_only_its_owner_in() {
    let helper = Helper::install();
    let d = start(&[]);
    let meta = std::fs::symlink_metadata(&d.socket).expect("socket");
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(helper.connect_as(NOBODY, NOGROUP, &d.socket), Some(REFUSED));
    let d = start(&["--socket-owner", "nobody"]);
    assert_eq!(
        helper.connect_as(NOBODY, OTHER_GROUP, &d.socket),
        Some(SERVED),
        "the socket's owner"
    );
}

#[test]
fn an_unknown_group_or_a_bad_mode_stops_the_daemon() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("s.sock");
    for (args, says) in [
        (
            vec!["--socket-group", "no-such-group-vscsid"],
            "no group 'no-such-group-vscsid'",
        ),
        (vec!["--socket-mode", "0866"], "--socket-mode"),
        (vec!["--socket-owner", "a:b"], "--socket-owner"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vscsid"))
            .arg("--socket")
            .arg(&socket)
            .args(["--null", "1M"])
            .args(&args)
            .output()
            .expect("run vscsid");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!socket.exists(), "{args:?} left a socket behind");
    }
}

/// Runs `vscsid ctl luns` as `uid`:`gid` against `control`: its exit code and stderr.
fn ctl_as(helper: &Helper, uid: u32, gid: u32, control: &Path) -> (Option<i32>, String) {
    let program = helper.dir.path().join("vscsid");
    if !program.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_vscsid"), &program).expect("copy vscsid");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let out = Command::new(&program)
        .args(["ctl", "--control"])
        .arg(control)
        .arg("luns")
        .current_dir(helper.dir.path())
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run vscsid ctl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_control_socket_serves_its_group_and_refuses_other_users() {
    let helper = Helper::install();
    let d = start(&[
        "--control",
        "{dir}/control.sock",
        "--control-group",
        "nogroup",
        "--control-mode",
        "0660",
    ]);
    let control = d.control_socket();
    let meta = std::fs::symlink_metadata(&control).expect("control socket");
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, NOGROUP));
    let (code, err) = ctl_as(&helper, NOBODY, NOGROUP, &control);
    assert_eq!(code, Some(0), "a member of the control group: {err}");
    let (code, err) = ctl_as(&helper, NOBODY, OTHER_GROUP, &control);
    assert_eq!(
        code,
        Some(2),
        "outside the group, the socket's mode refuses: {err}"
    );
    assert!(err.contains("os error 13"), "{err}");

    // A socket anyone may open: the daemon itself refuses another user.
    let d = start(&["--control", "{dir}/control.sock", "--control-mode", "0666"]);
    let control = d.control_socket();
    let (code, err) = ctl_as(&helper, NOBODY, OTHER_GROUP, &control);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refused a client of uid 65534"), "{err}");
    let (code, _) = ctl_as(&helper, 0, 0, &control);
    assert_eq!(code, Some(0), "root may");
}
