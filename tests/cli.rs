//! The command-line contract: bad arguments and configuration give one line naming the
//! field and a non-zero exit; the shipped example configuration parses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .args(args)
        .output()
        .expect("run vscsid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs vscsid with `args`, which must fail with one line naming `field`; returns it.
fn one_line_error(args: &[&str], field: &str) -> String {
    let (code, err) = run(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {err:?}");
    assert!(
        lines[0].contains(field),
        "{args:?}: {:?} does not name {field}",
        lines[0]
    );
    lines[0].to_string()
}

/// Starts vscsid on a fresh 1 MiB disk image in `dir` (`setup` adds arguments, environment
/// or pipes) and waits (bounded) for its socket.
fn start_daemon(dir: &Path, setup: impl FnOnce(&mut Command)) -> (Child, PathBuf) {
    let img = dir.join("d.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let sock = dir.join("s.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vscsid"));
    cmd.arg("--socket").arg(&sock).arg("--disk").arg(&img);
    setup(&mut cmd);
    let child = cmd.spawn().unwrap();
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    (child, sock)
}

#[test]
fn bad_arguments_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let img = img.to_str().unwrap();
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().unwrap();
    one_line_error(
        &["--socket", sock, "--disk", &format!("{img},cache=fast")],
        "cache",
    );
    one_line_error(
        &[
            "--socket",
            sock,
            "--disk",
            &format!("{img},block-size=1000"),
        ],
        "block-size",
    );
    one_line_error(
        &["--socket", sock, "--disk", &format!("{img},colour=red")],
        "colour",
    );
    one_line_error(&["--disk", img], "socket");
    one_line_error(&["--socket", sock], "lun");
    one_line_error(
        &["--socket", sock, "--disk", img, "--num-queues", "0"],
        "num_queues",
    );
    one_line_error(
        &["--socket", sock, "--disk", "/nonexistent/x.img"],
        "/nonexistent/x.img",
    );
    one_line_error(&["--socket", sock, "--bogus"], "--bogus");
    one_line_error(&["--socket", sock, "--num-queues", "many"], "num-queues");
    one_line_error(
        &["--socket", sock, "--disk", img, "--poll-us", "5000000"],
        "--poll-us",
    );
    one_line_error(
        &["--socket", sock, "--disk", img, "--submit-batch", "0"],
        "--submit-batch",
    );
    one_line_error(
        &[
            "--socket",
            sock,
            "--iscsi",
            "iscsi://127.0.0.1/iqn.x:y/0,path=127.0.0.2:3260,policy=random",
        ],
        "policy",
    );
    one_line_error(
        &[
            "--socket",
            sock,
            "--iscsi",
            "iscsi://127.0.0.1/iqn.x:y/0,no-path-retry=forever",
        ],
        "no-path-retry",
    );
    // Two paths to one portal (the URL's, with its default port written out).
    one_line_error(
        &[
            "--socket",
            sock,
            "--iscsi",
            "iscsi://127.0.0.1/iqn.x:y/0,path=127.0.0.2,path=127.0.0.1:3260",
        ],
        "path '127.0.0.1:3260' is the same portal as the URL's 127.0.0.1:3260",
    );
    // A URL with a CHAP password: the error names the field, not the secret.
    for bad in [
        "iscsi://alice%s3cret@127.0.0.1:99999/iqn.x:y/0",
        "iscsi://alice%s3cret@127.0.0.1/iqn.x:y/0,bogus=1",
    ] {
        let err = one_line_error(&["--socket", sock, "--iscsi", bad], "alice%***@127.0.0.1");
        assert!(!err.contains("s3cret"), "the password is shown: {err}");
    }
    let cfg = dir.path().join("c.toml");
    let config_error = |text: &str, field: &str| {
        std::fs::write(&cfg, text).unwrap();
        one_line_error(
            &["--socket", sock, "--config", cfg.to_str().unwrap()],
            field,
        );
    };
    config_error(
        "[[lun]]\nlun = 0\npath = \"/x\"\ncache = \"sometimes\"\n",
        "lun[0].cache",
    );
    // A value of the wrong type, in the second LUN.
    config_error(
        "[[lun]]\nlun = 0\npath = \"/x\"\n[[lun]]\nlun = 1\npath = \"/y\"\nreadonly = 3\n",
        "line 7: lun[1].readonly",
    );
    let (code, _) = run(&["--socket", sock, "--disk", img, "--num-queues", "0"]);
    assert_eq!(code, 2);
}

#[test]
fn example_configuration_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/qemu-examples/vscsid.toml");
    let cfg =
        vscsid::config::parse_config_file(std::path::Path::new(path)).expect("example parses");
    assert_eq!(cfg.luns.len(), 4);
    assert_eq!(cfg.num_queues, 4);
    assert!(cfg.reconnect);
    cfg.validate().expect("example validates");
}

#[test]
fn socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock) = start_daemon(dir.path(), |_| {});
    let mode = std::fs::metadata(&sock).map(|m| m.permissions().mode() & 0o777);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode.expect("socket created"), 0o600);
}

#[test]
fn sigusr1_logs_every_luns_state() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = start_daemon(dir.path(), |c| {
        c.args(["--null", "1M"])
            .env("VSCSID_LOG", "info")
            .stderr(std::process::Stdio::piped());
    });
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("status: ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait = std::time::Duration::from_secs(10);
    let first = rx.recv_timeout(wait).expect("a status line");
    let second = rx.recv_timeout(wait).expect("a second status line");
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("target 0 LUN 0: disk"), "{first}");
    assert!(second.contains("target 0 LUN 1: null disk"), "{second}");
}

#[test]
fn socket_path_that_is_not_a_stale_socket_is_refused_before_any_lun() {
    let dir = tempfile::tempdir().unwrap();
    // A typo naming a disk image as the socket: refused, the image intact, and the error is
    // the socket's although the LUN could not have been opened either.
    let image = dir.path().join("root.img");
    std::fs::write(&image, b"the guest's disk").unwrap();
    let (code, err) = run(&[
        "--socket",
        image.to_str().unwrap(),
        "--disk",
        "/nonexistent/x.img",
    ]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("socket") && err.contains("regular file"),
        "{err}"
    );
    assert_eq!(std::fs::read(&image).unwrap(), b"the guest's disk");
    // A live daemon's socket is not taken over; the first daemon keeps it.
    let (mut first, sock) = start_daemon(dir.path(), |_| {});
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&sock).map(|m| m.ino()).unwrap();
    let img = dir.path().join("d.img");
    let (code, err) = run(&[
        "--socket",
        sock.to_str().unwrap(),
        "--disk",
        img.to_str().unwrap(),
    ]);
    let still = std::fs::metadata(&sock).map(|m| m.ino()).ok();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("in use"), "{err}");
    assert_eq!(still, Some(inode), "the live daemon's socket was replaced");
}

#[test]
fn sigterm_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock) = start_daemon(dir.path(), |_| {});
    assert!(sock.exists());
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "the socket outlived the daemon");
}
