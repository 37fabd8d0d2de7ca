//! Confinement of the real daemon: I/O works under the system call filters, every thread
//! has one, a forbidden call ends the daemon with a line naming it (and passes with
//! `--sandbox off`), and `--user` continues as another user once everything is open.

mod common;
mod iscsi_common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use iscsi_common::hostile_target::{HostileTarget, Misbehaviour};
use iscsi_common::link::Link;
use iscsi_common::{Accounts, Tgtd, IQN};

const MIB: u64 = 1 << 20;

/// Exit status after a forbidden call: 128 + SIGSYS.
const SANDBOX_EXIT: i32 = 159;

fn disk() -> [Disk<'static>; 1] {
    [Disk {
        name: "a.img",
        size: 16 * MIB,
        opts: "",
    }]
}

/// Prints the log of a daemon started with `start_logged` when the test fails (declared
/// after the daemon, it runs before the daemon's directory goes).
struct LogOnPanic(std::path::PathBuf);

impl LogOnPanic {
    fn of(d: &Daemon) -> LogOnPanic {
        LogOnPanic(d.path("vscsid.log"))
    }
}

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- the daemon's log ---\n{log}");
        }
    }
}

/// Every thread of `pid`: (name, `Seccomp:` mode, `Seccomp_filters:` count). io_uring's
/// kernel workers (`iou-wrk-*`, `iou-sqp-*`) are left out: they are threads of the
/// process but make no system calls.
fn thread_filters(pid: u32) -> Vec<(String, String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task list");
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| !c.starts_with("iou-"))
        })
        .filter_map(|t| {
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            let filters = field("Seccomp_filters:").parse().unwrap_or(0);
            Some((field("Name:"), field("Seccomp:"), filters))
        })
        .collect()
}

/// `Uid:` and `Gid:` lines of a process (real, effective, saved, filesystem).
fn ids(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (line("Uid:"), line("Gid:"))
}

#[test]
fn io_works_under_the_filters_and_every_thread_has_one() {
    let d = Daemon::start_logged(&disk(), &["--num-queues", "2", "--threads", "2"], &[]);
    let _log = LogOnPanic::of(&d);
    let mut fe = d.connect(2);
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    write_read_back_flushed(&mut fe, 0, 100, &data, &d.path("a.img"));
    let threads = thread_filters(d.child.id());
    let names: Vec<&str> = threads.iter().map(|(n, _, _)| n.as_str()).collect();
    for expected in ["vscsid", "signals", "service", "vscsid-q0", "vscsid-q1"] {
        assert!(names.contains(&expected), "no thread {expected}: {names:?}");
    }
    for (name, mode, filters) in &threads {
        assert_eq!(mode, "2", "thread {name} is not in seccomp filter mode");
        assert!(*filters >= 1, "thread {name} has no filter");
    }
    // Workers run under the main thread's filter and their own.
    let worker = threads
        .iter()
        .find(|(n, _, _)| n == "vscsid-q0")
        .expect("q0");
    assert!(
        worker.2 >= 2,
        "a worker has its own filter on the main one's"
    );
    drop(fe);
    let mut d = d;
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0), "{}", d.log());
    assert!(!d.log().contains("vscsid: sandbox:"), "{}", d.log());
}

#[test]
fn a_forbidden_call_ends_the_daemon_with_a_line_naming_it() {
    let mut d = Daemon::start_logged(&disk(), &[], &[("VSCSID_TEST_FORBIDDEN_SYSCALL", "1")]);
    let _log = LogOnPanic::of(&d);
    let status = d.wait_exit(Duration::from_secs(20));
    let log = d.log();
    assert_eq!(status, Some(SANDBOX_EXIT), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("vscsid: sandbox: thread 'vscsid-q"))
        .unwrap_or_else(|| panic!("no sandbox line in: {log}"));
    assert!(
        line.contains(&format!(
            "made system call ptrace ({}), which its filter does not allow",
            libc::SYS_ptrace
        )),
        "{line}"
    );
}

#[test]
fn with_the_sandbox_off_the_same_call_passes() {
    let d = Daemon::start_logged(
        &disk(),
        &["--sandbox", "off"],
        &[("VSCSID_TEST_FORBIDDEN_SYSCALL", "1")],
    );
    let _log = LogOnPanic::of(&d);
    let mut fe = d.connect(1);
    let data = vec![0x5a; 4096];
    write_read_back_flushed(&mut fe, 0, 8, &data, &d.path("a.img"));
    let log = d.log();
    assert!(
        log.contains("test fault switch"),
        "the switch did not run: {log}"
    );
    assert!(!log.contains("vscsid: sandbox:"), "{log}");
    for (name, mode, _) in thread_filters(d.child.id()) {
        assert_eq!(mode, "0", "thread {name} has a filter with --sandbox off");
    }
}

/// Root only: the daemon opens everything as root and continues as nobody.
#[test]
fn user_continues_as_nobody_after_opening_everything() {
    // SAFETY: geteuid only reads the process's ID.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: --user needs root");
        return;
    }
    let d = Daemon::start_logged(&disk(), &["--user", "nobody:nogroup"], &[]);
    let _log = LogOnPanic::of(&d);
    let mut fe = d.connect(1);
    let pid = d.child.id();
    let (uid, gid) = ids(pid);
    assert_eq!(uid, "65534 65534 65534 65534", "Uid: {uid}");
    assert_eq!(gid, "65534 65534 65534 65534", "Gid: {gid}");
    // The image is in a directory only root may enter: it was opened before the change.
    let data = vec![0xa5; 8192];
    write_read_back_flushed(&mut fe, 0, 64, &data, &d.path("a.img"));
    for (name, mode, _) in thread_filters(pid) {
        assert_eq!(mode, "2", "thread {name} is not filtered");
    }
    assert!(!d.log().contains("vscsid: sandbox:"), "{}", d.log());
}

/// Root only: the iSCSI threads already run when the IDs change (glibc has every thread
/// change them), so their filter lets exactly those IDs through; the session keeps
/// serving as nobody.
#[test]
fn user_with_an_iscsi_lun_changes_the_ids_of_the_running_session_threads() {
    // SAFETY: geteuid only reads the process's ID.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: --user needs root");
        return;
    }
    let target = HostileTarget::start(Misbehaviour::WellBehaved);
    let d = Daemon::start_logged(
        &[],
        &[
            "--iscsi",
            &target.url(),
            "--num-queues",
            "1",
            "--user",
            "nobody",
        ],
        &[],
    );
    let _log = LogOnPanic::of(&d);
    let mut fe = d.connect(1);
    good(
        &fe.command(&cmd(0, &inquiry(96), &[], 96))
            .expect("INQUIRY through the target"),
    );
    let pid = d.child.id();
    let threads = thread_filters(pid);
    assert!(
        threads.iter().any(|(n, _, _)| n.starts_with("iscsi-")),
        "{threads:?}"
    );
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status =
            std::fs::read_to_string(task.expect("task").path().join("status")).expect("status");
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
        assert_eq!(
            uid.split_whitespace().skip(1).collect::<Vec<_>>(),
            ["65534"; 4],
            "{status}"
        );
    }
    assert!(!d.log().contains("vscsid: sandbox:"), "{}", d.log());
}

/// An upgrade in place executes the new program under the signal thread's filter (the
/// kernel keeps it across execve); the new program confines itself on top and serves, and
/// a second upgrade does not deepen the filters (the signal thread adds none of its own).
#[test]
fn upgrades_in_place_run_the_new_program_confined() {
    let mut d = Daemon::start_logged(&disk(), &["--reconnect"], &[]);
    let _log = LogOnPanic::of(&d);
    let pid = d.child.id();
    let mut fe = d.connect(1);
    let data = vec![0x3c; 4096];
    write_read_back_flushed(&mut fe, 0, 16, &data, &d.path("a.img"));
    let main_filters = || {
        thread_filters(pid)
            .into_iter()
            .find(|(n, _, _)| n == "vscsid")
            .map_or(0, |(_, _, f)| f)
    };
    assert_eq!(main_filters(), 1);
    // SAFETY: kill(2) sends SIGUSR2 to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
    wait_until(
        "the new program confines its main thread",
        Duration::from_secs(20),
        || main_filters() == 2,
    );
    drop(fe);
    let mut fe = d.connect(1);
    let data = vec![0xc3; 4096];
    write_read_back_flushed(&mut fe, 0, 24, &data, &d.path("a.img"));
    let depth = |name: &str| {
        thread_filters(pid)
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, f)| f)
    };
    assert_eq!(depth("signals"), Some(1), "the old signal filter only");
    assert_eq!(depth("vscsid-q0"), Some(3), "old signal, main, worker");
    // A second upgrade: new threads, the same depths.
    let worker_tid = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .filter_map(|t| t.ok())
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "vscsid-q0")
            })
            .map(|t| t.file_name())
    };
    wait_until("the worker names itself", Duration::from_secs(10), || {
        worker_tid().is_some()
    });
    let first = worker_tid().expect("worker");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
    // The frontend stays until the new program runs, as QEMU's connection does (it ends
    // with the old program): one that left during the upgrade would have the old
    // program's main thread start a new session while the process is being replaced.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // The same process with a new worker; the main thread's filters come back to 2 once
    // the new program has confined it.
    while !(worker_tid().is_some_and(|t| t != first)
        && main_filters() == 2
        && depth("vscsid-q0") == Some(3))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the second upgrade: {:?} {:?}\n{}",
            d.child.try_wait(),
            thread_filters(pid),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(fe);
    let mut fe = d.connect(1);
    write_read_back_flushed(&mut fe, 0, 32, &data, &d.path("a.img"));
    for (name, mode, filters) in thread_filters(pid) {
        assert_eq!(mode, "2", "thread {name}");
        assert!(
            (1..=3).contains(&filters),
            "thread {name} has {filters} filters"
        );
    }
    assert!(d.is_running());
    assert!(!d.log().contains("vscsid: sandbox:"), "{}", d.log());
}

/// The shipped unit's `SystemCallFilter=@system-service` answers seccomp(2) with EPERM:
/// the daemon installs its filters with prctl(PR_SET_SECCOMP) and serves under such a
/// filter too (inherited here from the test, as from systemd).
#[test]
fn the_filters_install_where_seccomp_2_is_refused() {
    use std::os::unix::process::CommandExt;
    let arch = std::env::consts::ARCH.try_into().expect("arch");
    let refuse_seccomp = seccompiler::SeccompFilter::new(
        [(libc::SYS_seccomp, vec![])].into_iter().collect(),
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .expect("filter");
    let program: seccompiler::BpfProgram = refuse_seccomp.try_into().expect("compile");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("a.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("image");
    let socket = dir.path().join("s.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vscsid"));
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--disk")
        .arg(&img)
        .env("VSCSID_LOG", "warn")
        .stdout(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only makes the
    // prctl and seccomp calls of apply_filter on a program compiled before the fork.
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&program).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(cmd.spawn().expect("spawn vscsid"));
    wait_until("the socket appears", Duration::from_secs(10), || {
        socket.exists()
    });
    let opts = vscsid::frontend::ConnectOptions {
        queues: 3,
        memory_size: 64 << 20,
        ..vscsid::frontend::ConnectOptions::default()
    };
    let mut fe = vscsid::frontend::ScsiFrontend::connect(&socket, &opts).expect("connect");
    fe.timeout = Duration::from_secs(20);
    let data = vec![0x77; 4096];
    write_read_back_flushed(&mut fe, 0, 4, &data, &img);
    assert!(
        matches!(child.0.try_wait(), Ok(None)),
        "the daemon ended under a filter refusing seccomp(2)"
    );
    for (name, mode, filters) in thread_filters(child.0.id()) {
        assert_eq!(mode, "2", "thread {name}");
        assert!(filters >= 2, "thread {name}: the outer filter and its own");
    }
}

/// Root only: after `--user`, an upgrade in place executes the new program as that user,
/// which opens the images again: it serves when they are accessible to the user.
#[test]
fn an_upgrade_after_user_reopens_the_images_as_that_user() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid only reads the process's ID.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: --user needs root");
        return;
    }
    let mut d = Daemon::start_logged(&disk(), &["--user", "nobody:nogroup", "--reconnect"], &[]);
    let _log = LogOnPanic::of(&d);
    let pid = d.child.id();
    let mut fe = d.connect(1);
    assert_eq!(ids(pid).0, "65534 65534 65534 65534");
    // The new program opens the image as nobody.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("dir");
    std::fs::set_permissions(d.path("a.img"), std::fs::Permissions::from_mode(0o666))
        .expect("image");
    let worker_tid = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .filter_map(|t| t.ok())
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "vscsid-q0")
            })
            .map(|t| t.file_name())
    };
    // A thread names itself once it runs: wait for that.
    wait_until("the worker names itself", Duration::from_secs(10), || {
        worker_tid().is_some()
    });
    let Some(first) = worker_tid() else {
        panic!("no worker: {:?}", d.child.try_wait());
    };
    // SAFETY: kill(2) sends SIGUSR2 to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR2) }, 0);
    // The frontend stays until the new program runs (see the test above).
    wait_until("the new program's workers", Duration::from_secs(20), || {
        worker_tid().is_some_and(|t| t != first)
    });
    drop(fe);
    fe = d.connect(1);
    let data = vec![0x42; 4096];
    write_read_back_flushed(&mut fe, 0, 40, &data, &d.path("a.img"));
    assert_eq!(ids(pid).0, "65534 65534 65534 65534");
    assert!(!d.log().contains("vscsid: sandbox:"), "{}", d.log());
}

/// `vscsid ctl add` on the control thread opens an image and logs in to an iSCSI target
/// (starting the session's threads) under the control filter, as nobody after `--user`.
#[test]
fn luns_added_through_the_control_socket_are_served_under_the_filters() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid only reads the process's ID.
    let root = unsafe { libc::geteuid() } == 0;
    let target = HostileTarget::start(Misbehaviour::WellBehaved);
    let mut args = vec!["--num-queues", "1", "--control", "{dir}/control.sock"];
    if root {
        args.extend(["--user", "nobody:nogroup"]);
    }
    let d = Daemon::start_logged(&disk(), &args, &[]);
    let _log = LogOnPanic::of(&d);
    let control = d.control_socket();
    // An image the daemon's user may open.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("dir");
    let b = d.path("b.img");
    std::fs::File::create(&b)
        .and_then(|f| f.set_len(8 * MIB))
        .expect("image");
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o666)).expect("image mode");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vscsid"))
            .arg("ctl")
            .arg("--control")
            .arg(&control)
            .args(args)
            .output()
            .expect("run vscsid ctl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = ctl(&["add", "disk", &b.display().to_string()]);
    assert!(ok, "add disk: {out}");
    let (ok, out) = ctl(&["add", "iscsi", &target.url()]);
    assert!(ok, "add iscsi: {out}");
    let mut fe = d.connect(1);
    for l in [0, 1, 2] {
        // The adds leave unit attentions (REPORTED LUNS DATA HAS CHANGED, a new nexus):
        // TEST UNIT READY takes them first.
        let ready = (0..4).any(|_| {
            fe.command(&cmd(l, &test_unit_ready(), &[], 0))
                .is_ok_and(|r| (r.response, r.status) == (0, 0))
        });
        assert!(ready, "LUN {l} is not ready");
        good(
            &fe.command(&cmd(l, &inquiry(96), &[], 96))
                .unwrap_or_else(|e| panic!("INQUIRY on LUN {l}: {e}")),
        );
    }
    let data = vec![0x99; 4096];
    write_read_back_flushed(&mut fe, 1, 8, &data, &b);
    let threads = thread_filters(d.child.id());
    assert!(
        threads.iter().any(|(n, _, _)| n.starts_with("iscsi-")),
        "{threads:?}"
    );
    for (name, mode, _) in threads {
        assert_eq!(mode, "2", "thread {name}");
    }
    assert!(!d.log().contains("vscsid: sandbox:"), "{}", d.log());
}

/// The deepest chain of filters a thread may run under: the main thread's, a worker's
/// and an iSCSI thread's (a recovery a worker started when a path failed under it); the
/// library's unit tests check the kinds' chains of starts against the same bound.
const MAX_FILTER_DEPTH: u32 = 3;

/// A path that reconnects again and again: each loss starts the recovery thread from the
/// reader, and each login starts the next reader from the recovery thread, all iSCSI
/// threads. No thread may run under more filters than its chain of kinds has: the kernel
/// limits the instructions of a thread's filters, and a thread that cannot install its
/// filter ends the daemon.
#[test]
fn reconnects_do_not_pile_up_filters() {
    const RECONNECTS: usize = 20;
    let tgtd = Tgtd::start(16 * MIB, Accounts::default());
    let upstream = format!("127.0.0.1:{}", tgtd.port)
        .parse()
        .expect("portal address");
    let link = Link::start("127.0.0.2", upstream);
    let url = format!("iscsi://{}/{IQN}/1", link.portal());
    let d = Daemon::start_logged(&[], &["--iscsi", &url, "--num-queues", "1"], &[]);
    let _log = LogOnPanic::of(&d);
    let pid = d.child.id();
    let mut fe = d.connect(1);
    // A READ through the target, again after a unit attention (a new nexus reports one).
    let mut read = || {
        (0..5).any(|_| {
            fe.command(&cmd(0, &read16(0, 8), &[], 4096))
                .is_ok_and(|r| (r.response, r.status) == (0, 0))
        })
    };
    assert!(read(), "no READ through the target");
    for i in 1..=RECONNECTS {
        let logins = link.logins().len();
        link.cut_reset();
        std::thread::sleep(Duration::from_millis(20));
        link.restore();
        wait_until(
            &format!("no login after cut {i}"),
            Duration::from_secs(20),
            || link.logins().len() > logins,
        );
        // A command completed on the new connection: the path is up again, and its end
        // at the next cut is not counted as a failure (no growing back-off).
        assert!(read(), "no READ after reconnect {i}");
        for (name, _, filters) in thread_filters(pid) {
            assert!(
                filters <= MAX_FILTER_DEPTH,
                "after reconnect {i}, thread {name} runs under {filters} filters"
            );
        }
    }
    assert!(!d.log().contains("vscsid: sandbox:"), "{}", d.log());
}

/// The daemon's exit status and stderr for a command line that must be refused.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("a.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(MIB))
        .expect("image");
    let out = Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--disk")
        .arg(&img)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vscsid");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_users_and_bad_sandbox_values_are_refused() {
    let (code, err) = refused(&["--user", "no-such-user-vscsid"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--user: no user 'no-such-user-vscsid'"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, err) = refused(&["--user", "nobody:no-such-group-vscsid"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--user: no group 'no-such-group-vscsid'"),
        "{err}"
    );
    let (code, err) = refused(&["--sandbox", "maybe"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--sandbox: 'maybe' is not on, off or log"),
        "{err}"
    );
}
