//! Running under systemd, with systemd's side played by the test: READY=1, STATUS= and
//! STOPPING=1 on a notification socket; the watchdog fed only while every worker thread
//! makes progress (a worker is stopped with ptrace, the others keep running; a worker that
//! busy-polls under steady load still feeds it); logs through
//! journald's native protocol when stderr is the journal stream (a private mount namespace
//! puts the test's socket at /run/systemd/journal/socket); socket activation (the socket
//! passed as descriptor 3, kept when the daemon ends) and notifications that still work
//! after an upgrade in place; an idle daemon whose threads all sleep while its status line
//! still follows a LUN added and the frontend leaving; a reload's outcome shown, then the
//! status line again. Needs root (ptrace, mount namespaces).

mod common;

use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// The test's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        NotifySocket { socket, path }
    }

    /// Every message received within `within`, each split into its lines.
    fn collect(&self, within: Duration) -> Vec<Vec<String>> {
        let deadline = Instant::now() + within;
        let mut messages = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                messages.push(text.lines().map(str::to_string).collect());
            }
        }
        messages
    }

    /// Waits (bounded) for a message holding `line`; returns that message.
    fn wait_for(&self, line: &str, within: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let lines: Vec<String> = text.lines().map(str::to_string).collect();
                if lines.iter().any(|l| l == line) {
                    return Some(lines);
                }
            }
        }
        None
    }
}

fn pings(messages: &[Vec<String>]) -> usize {
    messages
        .iter()
        .filter(|m| m.iter().any(|l| l == "WATCHDOG=1"))
        .count()
}

fn sigterm(child: &Child) {
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) sends SIGTERM to a daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn disk() -> [Disk<'static>; 1] {
    [Disk {
        name: "a.img",
        size: 8 * MIB,
        opts: "",
    }]
}

/// A daemon on `disk()` started with `args` and `NOTIFY_SOCKET` at the test's socket (and
/// `WATCHDOG_USEC` when given), once it sent READY=1.
struct Notified {
    daemon: Daemon,
    notify: NotifySocket,
    /// The READY=1 message.
    ready: Vec<String>,
    /// The notification socket's directory, removed with it.
    _dir: tempfile::TempDir,
}

fn start_notified(args: &[&str], watchdog_usec: Option<&str>) -> Notified {
    let dir = tempfile::tempdir().expect("tmp");
    let notify = NotifySocket::bind(dir.path());
    let path = notify.path.display().to_string();
    let mut env = vec![("NOTIFY_SOCKET", path.as_str())];
    if let Some(w) = watchdog_usec {
        env.push(("WATCHDOG_USEC", w));
    }
    let daemon = Daemon::start_with_env(&disk(), args, &env);
    let ready = notify
        .wait_for("READY=1", Duration::from_secs(10))
        .expect("READY=1");
    Notified {
        daemon,
        notify,
        ready,
        _dir: dir,
    }
}

#[test]
fn ready_status_and_stopping_are_notified() {
    let mut started = start_notified(&["--num-queues", "1"], None);
    let Notified {
        daemon: d,
        notify,
        ready,
        ..
    } = &mut started;
    assert!(d.socket.exists(), "READY=1 before the socket exists");
    assert!(
        ready.contains(&"STATUS=1 LUN, waiting for QEMU".to_string()),
        "{ready:?}"
    );
    let mut fe = d.connect(1);
    assert_serving(&mut fe);
    notify
        .wait_for("STATUS=1 LUN, QEMU connected", Duration::from_secs(5))
        .expect("the status says QEMU is connected");
    sigterm(&d.child);
    let stopping = notify
        .wait_for("STOPPING=1", Duration::from_secs(10))
        .expect("STOPPING=1");
    assert!(stopping.iter().any(|l| l.starts_with("STATUS=stopping")));
    drop(fe);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
}

/// Context switches of every thread of `pid` so far, voluntary or not: a thread that wakes
/// counts at least one.
fn context_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let status =
            std::fs::read_to_string(task.expect("task").path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

#[test]
fn an_idle_daemon_under_systemd_sleeps_and_its_status_follows_changes() {
    let started = start_notified(
        &[
            "--num-queues",
            "1",
            "--reconnect",
            "--control",
            "{dir}/control.sock",
        ],
        None,
    );
    let Notified {
        daemon: d, notify, ..
    } = &started;
    let control = d.control_socket();
    let mut fe = d.connect(1);
    assert_serving(&mut fe);
    notify
        .wait_for("STATUS=1 LUN, QEMU connected", Duration::from_secs(5))
        .expect("the status says QEMU is connected");
    // Connected and idle, no watchdog: no thread of the daemon wakes. (The status line
    // used to be recomputed every second, a wake-up per second per idle daemon.)
    std::thread::sleep(Duration::from_millis(300));
    let before = context_switches(d.child.id());
    std::thread::sleep(Duration::from_secs(3));
    let woke = context_switches(d.child.id()) - before;
    assert!(woke <= 1, "{woke} context switches in 3 idle seconds");
    // What changes the line rings for it: a LUN added, the frontend leaving.
    let (ok, _, err) = ctl(&control, &["add", "null", "64M"]);
    assert!(ok, "add: {err}");
    notify
        .wait_for("STATUS=2 LUNs, QEMU connected", Duration::from_secs(5))
        .expect("the status counts the added LUN");
    drop(fe);
    notify
        .wait_for("STATUS=2 LUNs, waiting for QEMU", Duration::from_secs(5))
        .expect("the status says the frontend left");
}

#[test]
fn a_reload_shows_its_outcome_then_the_status_line_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let notify = NotifySocket::bind(dir.path());
    let path = notify.path.display().to_string();
    for name in ["a.img", "b.img"] {
        std::fs::File::create(dir.path().join(name))
            .and_then(|f| f.set_len(8 * MIB))
            .expect("image");
    }
    let lun = |n: u16, file: &str| {
        format!(
            "[[lun]]\nlun = {n}\npath = \"{}\"\ncache = \"none\"\n",
            dir.path().join(file).display()
        )
    };
    let config = dir.path().join("vscsid.toml");
    let head = "[daemon]\nnum_queues = 1\nreconnect = true\n";
    std::fs::write(&config, format!("{head}{}", lun(0, "a.img"))).expect("config");
    let cfg_arg = config.display().to_string();
    let d = Daemon::start_with_env(
        &[],
        &["--config", &cfg_arg],
        &[("NOTIFY_SOCKET", path.as_str())],
    );
    notify
        .wait_for("READY=1", Duration::from_secs(10))
        .expect("READY=1");
    let two = format!("{head}{}{}", lun(0, "a.img"), lun(1, "b.img"));
    std::fs::write(&config, two).expect("config");
    // SAFETY: kill(2) sends SIGHUP to the daemon this test started.
    assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) }, 0);
    // The outcome first (it stays a few seconds), then the line with the LUN it added.
    // (Where the status thread sees the added LUN before the outcome is sent, the line
    // must still come back after it: `notify.rs` has the unit test for that order.)
    notify
        .wait_for(
            "STATUS=configuration reloaded: 1 change(s) applied, 0 left as they were",
            Duration::from_secs(10),
        )
        .expect("the reload's outcome");
    notify
        .wait_for("STATUS=2 LUNs, waiting for QEMU", Duration::from_secs(15))
        .expect("the status line after the outcome");
}

/// The thread IDs of the daemon's threads called `name`.
fn thread_ids(pid: u32, name: &str) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| t.ok())
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| t.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

#[test]
fn the_watchdog_is_fed_only_while_every_worker_thread_makes_progress() {
    // WatchdogSec=1: checks every 500 ms, idle workers wake every 250 ms.
    let started = start_notified(&["--num-queues", "2", "--threads", "2"], Some("1000000"));
    let Notified {
        daemon: d, notify, ..
    } = &started;
    // Idle, and no frontend: the workers wait for work and still beat.
    let idle = pings(&notify.collect(Duration::from_millis(2500)));
    assert!(idle >= 3, "{idle} pings in 2.5 idle seconds");
    // Worker 1 stops where it is (as if stuck in a call); everything else runs on.
    let tids = thread_ids(d.child.id(), "vscsid-q1");
    assert_eq!(tids.len(), 1, "one thread vscsid-q1");
    let tid = tids[0];
    // SAFETY: ptrace(2) on a thread of the daemon this test started; PTRACE_SEIZE attaches
    // without stopping it, PTRACE_INTERRUPT stops that thread only.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0), 0, "seize");
        assert_eq!(
            libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
            0,
            "interrupt"
        );
    }
    let mut status = 0;
    // SAFETY: waitpid(2) on the seized thread writes its status into `status`.
    let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    assert_eq!(waited, tid, "the thread stopped");
    // One check may still see the beats from before the stop.
    notify.collect(Duration::from_millis(1200));
    let stuck = pings(&notify.collect(Duration::from_secs(2)));
    // SAFETY: detaching lets the thread run on.
    let detached = unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
    assert_eq!(detached, 0, "detach");
    assert_eq!(stuck, 0, "the watchdog was fed while a worker was stopped");
    let again = pings(&notify.collect(Duration::from_secs(2)));
    assert!(
        again >= 2,
        "{again} pings in 2 s after the worker ran again"
    );
}

/// One journal entry of the native protocol: `NAME=value` lines, or `NAME`, a 64-bit
/// little-endian length and the value.
fn journal_fields(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let Some(end) = data.iter().position(|&b| b == b'\n') else {
            break;
        };
        let line = &data[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let name = String::from_utf8_lossy(&line[..eq]).into_owned();
            fields.push((name, line[eq + 1..].to_vec()));
            data = &data[end + 1..];
        } else {
            let name = String::from_utf8_lossy(line).into_owned();
            let rest = &data[end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("length")) as usize;
            fields.push((name, rest[8..8 + len].to_vec()));
            data = &rest[8 + len + 1..];
        }
    }
    fields
}

fn field<'a>(entry: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    entry
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

#[test]
fn logs_go_to_the_journal_when_stderr_is_the_journal_stream() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tmp");
    // What the daemon sees as /run: the journal's socket, bound by the test.
    let run = dir.path().join("run");
    std::fs::create_dir_all(run.join("systemd/journal")).expect("dirs");
    let journal = UnixDatagram::bind(run.join("systemd/journal/socket")).expect("journal");
    journal
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let img = dir.path().join("a.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 * MIB))
        .expect("image");
    let stderr_path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let meta = stderr.metadata().expect("stat");
    let socket = dir.path().join("vm7.sock");
    let script = r#"mount --bind "$0" /run && exec "$@""#;
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(&run)
        .arg(env!("CARGO_BIN_EXE_vscsid"))
        .arg("--socket")
        .arg(&socket)
        .arg("--disk")
        .arg(&img)
        .args(["--num-queues", "1"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .env("VSCSID_LOG", "info")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("unshare (util-linux)");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        if let Ok(n) = journal.recv(&mut buf) {
            let entry = journal_fields(&buf[..n]);
            let done = field(&entry, "MESSAGE") == Some("listening");
            entries.push(entry);
            if done {
                break;
            }
        }
    }
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
    let ready = entries
        .iter()
        .find(|e| field(e, "MESSAGE").is_some_and(|m| m.starts_with("LUN ready")))
        .unwrap_or_else(|| panic!("no 'LUN ready' entry in {} entries", entries.len()));
    assert_eq!(field(ready, "PRIORITY"), Some("6"), "info is priority 6");
    assert_eq!(field(ready, "LUN"), Some("0"));
    assert_eq!(field(ready, "TARGET_ID"), Some("0"));
    assert_eq!(
        field(ready, "VM"),
        Some("vm7"),
        "the VM defaults to the socket's name"
    );
    assert_eq!(field(ready, "SYSLOG_IDENTIFIER"), Some("vscsid"));
    let text = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        !text.contains("LUN ready"),
        "lines went to stderr as text too: {text}"
    );
}

#[test]
fn plain_text_on_stderr_when_it_is_not_the_journal_stream() {
    let d = Daemon::start_logged(
        &disk(),
        &["--num-queues", "1"],
        // A stream inherited from a parent that systemd started, not this stderr.
        &[("JOURNAL_STREAM", "8:12345"), ("VSCSID_LOG", "info")],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("listening") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.log().contains("LUN ready"), "{}", d.log());
}

/// Starts the daemon as systemd would for a socket unit: `listener` as descriptor 3,
/// `LISTEN_FDS=1`, `LISTEN_PID` its own process ID (set by a shell that then executes the
/// daemon), `LISTEN_FDNAMES` the socket unit's name.
fn start_activated(
    listener: &UnixListener,
    socket: &Path,
    img: &Path,
    notify: &Path,
    extra: &[&str],
    stderr: &Path,
) -> Child {
    let stderr = std::fs::File::create(stderr).expect("stderr file");
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"LISTEN_PID=$$ exec "$@""#, "sh"])
        .arg(env!("CARGO_BIN_EXE_vscsid"))
        .arg("--socket")
        .arg(socket)
        .arg("--disk")
        .arg(img)
        .args(extra)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "vscsid@vm1.socket")
        .env("NOTIFY_SOCKET", notify)
        .env("VSCSID_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: runs between fork and exec and only calls dup2 and fcntl, which are
    // async-signal-safe; descriptor 3 ends up the listener, not close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn vscsid")
}

#[test]
fn socket_activation_serves_on_the_passed_socket_and_leaves_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let notify = NotifySocket::bind(dir.path());
    let img = dir.path().join("a.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 * MIB))
        .expect("image");
    let socket = dir.path().join("vm1.sock");
    let listener = UnixListener::bind(&socket).expect("the socket unit's socket");
    let mut child = start_activated(
        &listener,
        &socket,
        &img,
        &notify.path,
        &["--num-queues", "1", "--reconnect"],
        &dir.path().join("stderr"),
    );
    notify
        .wait_for("READY=1", Duration::from_secs(10))
        .expect("READY=1");
    let opts = vscsid::frontend::ConnectOptions {
        queues: 3,
        memory_size: (16 << 20) + (36 << 20),
        ..vscsid::frontend::ConnectOptions::default()
    };
    let mut fe = vscsid::frontend::ScsiFrontend::connect(&socket, &opts).expect("connect");
    fe.timeout = Duration::from_secs(10);
    assert_serving(&mut fe);
    drop(fe);
    // An upgrade in place: the same process executes the program again, keeps the
    // socket, and tells systemd it is ready once more.
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) sends SIGUSR2 to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    notify
        .wait_for("READY=1", Duration::from_secs(40))
        .expect("READY=1 again after the upgrade");
    assert!(matches!(child.try_wait(), Ok(None)), "same process");
    let mut fe = vscsid::frontend::ScsiFrontend::connect(&socket, &opts).expect("reconnect");
    fe.timeout = Duration::from_secs(10);
    assert_serving(&mut fe);
    drop(fe);
    sigterm(&child);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
    assert!(socket.exists(), "the socket unit's socket must stay");
    // And it still listens (systemd's copy): a new daemon could be started on it.
    drop(listener);
}

#[test]
fn a_passed_socket_for_another_path_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("a.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(MIB))
        .expect("image");
    let other = dir.path().join("other.sock");
    let listener = UnixListener::bind(&other).expect("listener");
    let log = dir.path().join("stderr");
    let mut child = start_activated(
        &listener,
        &dir.path().join("vm1.sock"),
        &img,
        &dir.path().join("no-notify.sock"),
        &[],
        &log,
    );
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(2));
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said.contains(&format!(
            "the passed socket is bound to {}",
            other.display()
        )),
        "{said}"
    );
}

#[test]
fn the_watchdog_is_fed_while_a_worker_busy_polls_under_load() {
    // The worker keeps polling for a second after each piece of work: under steady load
    // it never goes back to its epoll loop, and still beats.
    let started = start_notified(
        &[
            "--num-queues",
            "1",
            "--threads",
            "1",
            "--poll-us",
            "1000000",
        ],
        Some("1000000"),
    );
    let Notified {
        daemon: d, notify, ..
    } = &started;
    let mut fe = d.connect(1);
    let load = Instant::now();
    let mut received = Vec::new();
    while load.elapsed() < Duration::from_millis(3000) {
        good(&fe.command(&cmd(0, &read16(0, 8), &[], 4096)).expect("READ"));
        received.extend(notify.collect(Duration::from_millis(1)));
    }
    let fed = pings(&received);
    assert!(fed >= 3, "{fed} pings in 3 s of load");
}
