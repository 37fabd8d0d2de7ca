//! A real iSCSI target for tests: `tgtd` (Debian package tgt) started by the test on
//! 127.0.0.1 with its own portal and control port, configured through `tgtadm`, and killed
//! by its PID on drop. A missing tgtd fails the test: it is never skipped.
#![allow(dead_code)]

pub mod alua_target;
pub mod hostile_target;
pub mod link;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const IQN: &str = "iqn.2024-01.io.vscsid.test:disk";

/// True for CHECK CONDITION with UNIT ATTENTION (a new nexus, or a target that restarted):
/// initiators retry those, and so do the tests.
pub fn unit_attention(c: &vscsid::scsi::task::ScsiCompletion) -> bool {
    matches!(&c.result, Ok(st) if st.status == 2 && st.sense.get(2).is_some_and(|k| k & 0x0f == 6))
}

/// CHAP accounts of a target: (user, secret), plus the target's own for mutual CHAP.
#[derive(Clone, Default)]
pub struct Accounts {
    pub incoming: Option<(String, String)>,
    pub outgoing: Option<(String, String)>,
}

pub struct Tgtd {
    child: Option<Child>,
    pub port: u16,
    control: u32,
    pub dir: tempfile::TempDir,
    pub backing: PathBuf,
    size: u64,
    accounts: Accounts,
}

/// A TCP port on 127.0.0.1 that was free a moment ago: nothing listens on it until
/// someone binds it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Tgtd {
    pub fn start(size: u64, accounts: Accounts) -> Tgtd {
        assert!(
            Path::new("/usr/sbin/tgtd").exists(),
            "tgtd is missing: install the Debian package tgt (scripts/install-deps.sh)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("lun1.img");
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(size))
            .expect("backing");
        let mut t = Tgtd {
            child: None,
            port: 0,
            control: 0,
            dir,
            backing,
            size,
            accounts,
        };
        // The port was free when picked, but a test running beside this one may take it
        // before tgtd binds it: tgtd then serves without that portal, and another port
        // is tried.
        for _ in 0..5 {
            t.port = free_port();
            // tgtd's control "port" is a small number naming its management socket:
            // derived from the TCP port (ephemeral ports are above 32768), so unique.
            t.control = u32::from(t.port) % 32768 + 1;
            if t.try_launch() {
                return t;
            }
        }
        panic!("tgtd did not come up on any of five free ports");
    }

    /// Starts tgtd (again) on the same portal and re-creates the target.
    pub fn launch(&mut self) {
        assert!(self.try_launch(), "tgtd did not start on its portal");
    }

    /// [`Tgtd::launch`]; false when tgtd could not bind its portal (it logs that and goes
    /// on with its default portals, or exits) and is stopped again.
    fn try_launch(&mut self) -> bool {
        let child = Command::new("/usr/sbin/tgtd")
            .args(["-f", "-C", &self.control.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tgtd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self.tgtadm(&["--op", "show", "--mode", "sys"]) {
                break;
            }
            assert!(Instant::now() < deadline, "tgtd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let portal = format!("127.0.0.1:{},", self.port);
        let portals = self.tgtadm_output(&["--op", "show", "--mode", "portal"]);
        if !portals.is_some_and(|p| p.contains(&portal)) {
            self.kill();
            return false;
        }
        assert!(self.tgtadm(&["--op", "new", "--mode", "target", "--tid", "1", "-T", IQN]));
        let b = self.backing.display().to_string();
        assert!(self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &b
        ]));
        assert!(self.tgtadm(&["--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL"]));
        if let Some((u, p)) = &self.accounts.incoming {
            self.add_account(u, p, false);
        }
        if let Some((u, p)) = &self.accounts.outgoing {
            self.add_account(u, p, true);
        }
        // The portal accepts connections once configured.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tgtd portal did not open");
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Creates a CHAP account and binds it to the target: the initiator's, or with
    /// `outgoing` the target's own (mutual CHAP).
    fn add_account(&self, user: &str, password: &str, outgoing: bool) {
        assert!(self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            user,
            "--password",
            password
        ]));
        let mut bind = vec![
            "--op", "bind", "--mode", "account", "--tid", "1", "--user", user,
        ];
        if outgoing {
            bind.push("--outgoing");
        }
        assert!(self.tgtadm(&bind));
    }

    /// Adds LUN `lun` to the target, backed by a file of its own of `size` bytes (not
    /// re-created by [`Tgtd::launch`]).
    pub fn add_lun(&self, lun: u16, size: u64) -> PathBuf {
        let backing = self.dir.path().join(format!("lun{lun}.img"));
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(size))
            .expect("backing");
        let b = backing.display().to_string();
        let n = lun.to_string();
        assert!(self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            &n,
            "-b",
            &b
        ]));
        backing
    }

    /// The I_T nexuses (sessions) the target has now, as `tgtadm --mode target --op show`
    /// lists them.
    pub fn nexus_count(&self) -> usize {
        let out = Command::new("/usr/sbin/tgtadm")
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(["--op", "show", "--mode", "target"])
            .output()
            .expect("tgtadm");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with("I_T nexus:"))
            .count()
    }

    /// What tgtadm prints, when it succeeds.
    fn tgtadm_output(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("/usr/sbin/tgtadm")
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn tgtadm(&self, args: &[&str]) -> bool {
        self.tgtadm_output(args).is_some()
    }

    /// Kills tgtd by its PID (a target crash) and waits for it to go.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{IQN}/1", self.port)
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.kill();
    }
}
