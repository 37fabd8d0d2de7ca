//! Ending the daemon: SIGTERM still ends it after its stderr became a closed pipe (a log
//! line that cannot be written must not take the signal thread or a worker down), and its
//! iSCSI sessions are logged out, at SIGTERM and when the frontend leaves.

mod common;
mod iscsi_common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use iscsi_common::hostile_target::{HostileTarget, Misbehaviour};

const MIB: u64 = 1 << 20;

/// A daemon whose stderr is a pipe the test reads and then closes; killed on drop.
struct PipedDaemon {
    child: Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl PipedDaemon {
    /// Starts the daemon with two request queues on one worker thread, reads its log
    /// until it listens, and closes the pipe's reading end.
    fn start_and_close_stderr() -> PipedDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("a.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(8 * MIB))
            .expect("image");
        let socket = dir.path().join("s.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vscsid"))
            .arg("--socket")
            .arg(&socket)
            .arg("--disk")
            .arg(&img)
            .args(["--num-queues", "2", "--threads", "1"])
            .env("VSCSID_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vscsid");
        let stderr = child.stderr.take().expect("stderr pipe");
        // Read on a thread, so a daemon that never says it listens cannot hang the test.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            let listening = lines.any(|l| l.is_ok_and(|l| l.contains("listening")));
            // Dropping `lines` here closes the reading end.
            let _ = tx.send(listening);
        });
        let d = PipedDaemon {
            child,
            socket,
            _dir: dir,
        };
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(20)),
            Ok(true),
            "the daemon never said it listens"
        );
        d
    }

    fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) sends a signal to the daemon this test started.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill");
    }

    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for PipedDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_ends_the_daemon_after_its_stderr_pipe_closed() {
    let mut d = PipedDaemon::start_and_close_stderr();
    // SIGUSR1 logs every LUN from the signal thread: a line nobody can read.
    d.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(200));
    d.signal(libc::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(15)),
        Some(0),
        "SIGTERM must end the daemon (exit 0) though its log cannot be written"
    );
}

#[test]
fn a_worker_that_logs_into_a_closed_pipe_keeps_serving() {
    let mut d = PipedDaemon::start_and_close_stderr();
    let opts = vscsid::frontend::ConnectOptions {
        queues: 4,
        memory_size: (16 << 20) + 2 * (36 << 20),
        ..vscsid::frontend::ConnectOptions::default()
    };
    let mut fe = vscsid::frontend::ScsiFrontend::connect(&d.socket, &opts).expect("connect");
    fe.timeout = Duration::from_secs(10);
    assert_serving(&mut fe);
    // Request queue 1 (virtqueue 3) gets an available index far ahead: the worker that
    // serves both request queues logs an error and stops serving that queue only.
    {
        let mem = &fe.conn.mem;
        let q = &mut fe.conn.queues[3];
        q.set_avail_idx(mem, 1000);
        q.kick();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_serving(&mut fe);
    drop(fe);
    assert_eq!(
        d.wait_exit(Duration::from_secs(15)),
        Some(0),
        "the daemon ends when its frontend leaves"
    );
}

/// Waits (bounded) until the target has answered `n` Logout Requests.
fn wait_logouts(t: &HostileTarget, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.logouts() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    t.logouts()
}

#[test]
fn sigterm_logs_out_of_the_iscsi_sessions() {
    let target = HostileTarget::start(Misbehaviour::WellBehaved);
    let mut d = Daemon::start(&[], &["--iscsi", &target.url(), "--num-queues", "1"]);
    // The socket is there before the LUNs are open: wait for the login.
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.logins() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(target.logins(), 1);
    let pid = i32::try_from(d.child.id()).expect("pid");
    // SAFETY: kill(2) sends SIGTERM to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(
        wait_logouts(&target, 1),
        1,
        "the session must be logged out"
    );
}

#[test]
fn the_iscsi_sessions_log_out_when_the_frontend_leaves() {
    let target = HostileTarget::start(Misbehaviour::WellBehaved);
    let mut d = Daemon::start(&[], &["--iscsi", &target.url(), "--num-queues", "1"]);
    let mut fe = d.connect(1);
    let r = fe
        .command(&cmd(0, &inquiry(96), &[], 96))
        .expect("INQUIRY through the target");
    good(&r);
    drop(fe);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(
        wait_logouts(&target, 1),
        1,
        "the session must be logged out"
    );
}
