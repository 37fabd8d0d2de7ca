//! Shared helpers of the integration tests: start the real `vscsid` binary on temporary
//! backing files and connect the in-process vhost-user frontend to it. The SCSI commands
//! and data patterns of `scsi_common` come along.
#![allow(dead_code)]

#[path = "../scsi_common/mod.rs"]
mod scsi_common;

pub mod ext4;
pub use scsi_common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vscsid::frontend::{lun_address, CmdResponse, ConnectOptions, ScsiFrontend, VirtioScsiRequest};

/// The file a daemon started with [`Daemon::start_logged`] logs to, in its directory.
const LOG_FILE: &str = "vscsid.log";

/// A running daemon on its own temporary directory; killed (by its PID) on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// How it was started, to start it again.
    command: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
}

/// One backing file: name, size in bytes, and the `--disk` options after the path.
pub struct Disk<'a> {
    pub name: &'a str,
    pub size: u64,
    pub opts: &'a str,
}

impl Daemon {
    pub fn start(disks: &[Disk], extra: &[&str]) -> Daemon {
        Daemon::start_with_env(disks, extra, &[])
    }

    pub fn start_with_env(disks: &[Disk], extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::launch(disks, extra, env, false)
    }

    /// [`Daemon::start_with_env`] with the daemon's log (stderr) in a file of its
    /// directory, for [`Daemon::log`].
    pub fn start_logged(disks: &[Disk], extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::launch(disks, extra, env, true)
    }

    fn launch(disks: &[Disk], extra: &[&str], env: &[(&str, &str)], log_to_file: bool) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("vscsid.sock");
        let mut args: Vec<std::ffi::OsString> = vec!["--socket".into(), socket.clone().into()];
        for d in disks {
            let p = dir.path().join(d.name);
            if !p.exists() {
                std::fs::File::create(&p)
                    .and_then(|f| f.set_len(d.size))
                    .expect("backing file");
            }
            let spec = if d.opts.is_empty() {
                p.display().to_string()
            } else {
                format!("{},{}", p.display(), d.opts)
            };
            args.push("--disk".into());
            args.push(spec.into());
        }
        // "{dir}" in an argument: the daemon's directory (for paths of its own).
        let here = dir.path().display().to_string();
        args.extend(extra.iter().map(|a| a.replace("{dir}", &here).into()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let log = log_to_file.then(|| dir.path().join(LOG_FILE));
        let child = spawn(&args, &env, log.as_deref());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(socket.exists(), "vscsid did not create its socket");
        Daemon {
            child,
            dir,
            socket,
            command: args,
            env,
            log,
        }
    }

    /// Starts the daemon again with the same command line, once the previous process has
    /// ended (killed by the caller or not). The socket file of a dead daemon is stale:
    /// the new one replaces it.
    pub fn respawn(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.command, &self.env, self.log.as_deref());
    }

    /// Whether the daemon has block I/O waiting in the kernel (a frozen file system): its
    /// io_uring worker threads show up as tasks in D state.
    pub fn io_waiting_in_kernel(&self) -> bool {
        io_waiting_in_kernel(self.child.id())
    }

    /// What a daemon started with [`Daemon::start_logged`] has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }

    /// CPU time (user + system) the daemon has used so far, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("daemon's /proc stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits for the control socket the daemon was given as `{dir}/control.sock` (it comes
    /// up once the LUNs are open, after the vhost-user socket) and returns its path.
    pub fn control_socket(&self) -> PathBuf {
        let control = self.path("control.sock");
        wait_until("the control socket", Duration::from_secs(10), || {
            control.exists()
        });
        control
    }

    pub fn connect(&self, request_queues: u16) -> ScsiFrontend {
        let opts = ConnectOptions {
            queues: 2 + request_queues,
            memory_size: (16 << 20) + usize::from(request_queues) * (36 << 20),
            ..ConnectOptions::default()
        };
        let mut fe = ScsiFrontend::connect(&self.socket, &opts).expect("connect frontend");
        fe.timeout = Duration::from_secs(20);
        fe
    }

    /// Waits (bounded) for the daemon to exit; returns its exit status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Starts the binary; its stderr goes to `log` (appended) when given.
fn spawn(args: &[std::ffi::OsString], env: &[(String, String)], log: Option<&Path>) -> Child {
    let stderr = match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .expect("log file"),
        ),
        None => Stdio::inherit(),
    };
    Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(stderr)
        .env("VSCSID_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .spawn()
        .expect("spawn vscsid")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn lun(l: u16) -> [u8; 8] {
    lun_address(0, l)
}

pub fn cmd<'a>(
    l: u16,
    cdb: &'a [u8],
    data_out: &'a [u8],
    data_in_len: u32,
) -> VirtioScsiRequest<'a> {
    VirtioScsiRequest {
        lun: lun(l),
        tag: 1,
        cdb,
        data_out,
        data_in_len,
    }
}

/// A READ of LBA 0 that must succeed: the daemon is still serving.
pub fn assert_serving(fe: &mut ScsiFrontend) {
    let r = fe
        .command(&cmd(0, &inquiry(96), &[], 96))
        .expect("INQUIRY after hostile input");
    assert_eq!((r.response, r.status), (0, 0), "INQUIRY failed: {r:?}");
    assert_eq!(&r.data_in[8..14], b"VSCSID");
    let r = fe
        .command(&cmd(0, &read16(0, 1), &[], 512))
        .expect("READ after hostile input");
    assert_eq!((r.response, r.status), (0, 0), "READ failed: {r:?}");
}

/// Writes `descs` (address, length, flags, next) at descriptor indices 0.. of request
/// queue `q`, publishes head 0 and waits (bounded) for its used entry.
pub fn raw_chain(
    fe: &mut ScsiFrontend,
    q: usize,
    descs: &[(u64, u32, u16, u16)],
) -> Option<(u16, u32)> {
    let mem = &fe.conn.mem;
    let vq = &mut fe.conn.queues[q];
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        vq.write_desc(mem, i as u16, addr, len, flags, next);
    }
    vq.push_avail(mem, 0);
    vq.kick();
    vq.wait_used(mem, Duration::from_secs(10))
}

/// Writes `data` at `lba` of LUN `l` (512-byte blocks) and reads it back, then flushes it
/// (SYNCHRONIZE CACHE) and checks that the bytes are in the backing `file` at that LBA.
pub fn write_read_back_flushed(fe: &mut ScsiFrontend, l: u16, lba: u64, data: &[u8], file: &Path) {
    let blocks = (data.len() / 512) as u32;
    good(&fe.command(&cmd(l, &write16(lba, blocks), data, 0)).unwrap());
    let r = fe
        .command(&cmd(l, &read16(lba, blocks), &[], data.len() as u32))
        .unwrap();
    good(&r);
    assert_eq!(r.data_in, data);
    good(&fe.command(&cmd(l, &synchronize_cache10(), &[], 0)).unwrap());
    let on_file = std::fs::read(file).unwrap();
    let at = lba as usize * 512;
    assert_eq!(&on_file[at..at + data.len()], data);
}

/// A command as a guest driver sends it: again after a UNIT ATTENTION (bounded).
pub fn guest_command(fe: &mut ScsiFrontend, req: &VirtioScsiRequest) -> CmdResponse {
    for _ in 0..5 {
        let r = fe.command(req).expect("answer");
        let ua = r.status == 2 && r.sense_key().is_some_and(|k| k.0 == 6);
        if !ua {
            return r;
        }
    }
    panic!("endless UNIT ATTENTION");
}

pub fn good(r: &CmdResponse) {
    assert_eq!((r.response, r.status), (0, 0), "expected GOOD, got {r:?}");
}

pub fn sense(r: &CmdResponse) -> (u8, u8, u8) {
    assert_eq!(r.response, 0, "virtio response {r:?}");
    assert_eq!(r.status, 2, "expected CHECK CONDITION, got {r:?}");
    r.sense_key().expect("sense data")
}

pub fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Whether process `pid` has block I/O waiting in the kernel (a frozen file system): its
/// io_uring worker threads show up as tasks in D state.
pub fn io_waiting_in_kernel(pid: u32) -> bool {
    std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("task")).is_ok_and(|ts| {
        ts.filter_map(|t| t.ok()).any(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('D'))
            })
        })
    })
}

/// Waits (bounded) until `done`; fails the test with `what` otherwise.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `vscsid ctl --control <control> <args>`: whether it succeeded, its stdout, its
/// stderr.
pub fn ctl(control: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .arg("ctl")
        .arg("--control")
        .arg(control)
        .args(args)
        .output()
        .expect("run vscsid ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
