//! The login options of an `--iscsi` LUN against a real target (tgtd on 127.0.0.0/8),
//! through the daemon's command line: mutual CHAP from `mutual_user` and a secret file, a
//! target that cannot prove itself, the CHAP algorithms offered (tgtd knows MD5 only, and
//! takes CHAP_A=7 for SHA-1), digests, and SendTargets discovery of a second portal.

mod common;
mod iscsi_common;

use std::process::Command;

use common::*;
use iscsi_common::*;

const MIB: u64 = 1 << 20;
const USER: &str = "guestvm";
const SECRET: &str = "initiator-secret-1";
const TARGET_USER: &str = "sanarray";
const TARGET_SECRET: &str = "target-secret-22";

fn mutual_target() -> Tgtd {
    Tgtd::start(
        8 * MIB,
        Accounts {
            incoming: Some((USER.into(), SECRET.into())),
            outgoing: Some((TARGET_USER.into(), TARGET_SECRET.into())),
        },
    )
}

/// `--iscsi` with CHAP credentials in the URL and `opts` after it.
fn spec(t: &Tgtd, opts: &str) -> String {
    format!(
        "iscsi://{USER}%{SECRET}@127.0.0.1:{}/{IQN}/1,{opts}",
        t.port
    )
}

/// Starts the daemon on one `--iscsi` LUN and checks that the target answers through it.
fn serves(spec: &str) -> (Daemon, vscsid::frontend::ScsiFrontend) {
    let d = Daemon::start_logged(
        &[],
        &["--iscsi", spec, "--num-queues", "1"],
        &[("VSCSID_LOG", "info")],
    );
    let mut fe = d.connect(1);
    let mut ok = false;
    // A new nexus reports a unit attention first.
    for _ in 0..5 {
        let r = fe.command(&cmd(0, &inquiry(96), &[], 96)).unwrap();
        if r.status == 0 {
            assert_eq!(&r.data_in[8..11], b"IET");
            ok = true;
            break;
        }
    }
    assert!(ok, "the LUN never answered INQUIRY");
    (d, fe)
}

/// The daemon's one error line for a LUN that cannot log in.
fn login_error(spec: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .args(["--socket", sock.to_str().unwrap(), "--iscsi", spec])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<_> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

fn secret_file(dir: &tempfile::TempDir, secret: &str) -> String {
    let p = dir.path().join("mutual-secret");
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    p.display().to_string()
}

#[test]
fn mutual_chap_from_the_command_line() {
    let t = mutual_target();
    let dir = tempfile::tempdir().unwrap();
    let right = secret_file(&dir, TARGET_SECRET);
    let (d, _) = serves(&spec(
        &t,
        &format!("mutual_user={TARGET_USER},mutual_secret_file={right}"),
    ));
    assert!(!d.log().contains(TARGET_SECRET), "the secret was logged");
    drop(d);
    // The target proves a secret other than the one configured: no login.
    let wrong = secret_file(&dir, "another-secret-33");
    let e = login_error(&spec(
        &t,
        &format!("mutual_user={TARGET_USER},mutual_secret_file={wrong}"),
    ));
    assert!(e.contains("mutual CHAP"), "{e}");
    assert!(!e.contains("another-secret-33"), "{e}");
    // Or under another name.
    let e = login_error(&spec(
        &t,
        &format!("mutual_user=impostor,mutual_secret_file={right}"),
    ));
    assert!(e.contains("did not prove itself as 'impostor'"), "{e}");
}

#[test]
fn chap_algorithms_against_a_target_that_knows_md5_only() {
    let t = Tgtd::start(
        8 * MIB,
        Accounts {
            incoming: Some((USER.into(), SECRET.into())),
            outgoing: None,
        },
    );
    // The default order offers 8,7,6,5: tgt takes 7 as SHA-1 and refuses the SHA-256
    // response; the login is made again without SHA-256 and ends in MD5.
    let (d, _) = serves(&spec(&t, ""));
    assert!(
        d.log().contains("logging in again without sha256"),
        "{}",
        d.log()
    );
    drop(d);
    serves(&spec(&t, "chap_algorithms=md5"));
    // Without MD5 there is nothing tgt can take.
    let e = login_error(&spec(&t, "chap_algorithms=sha3-256:sha1"));
    assert!(
        e.contains("none of the CHAP algorithms offered (sha3-256, sha1)"),
        "{e}"
    );
}

#[test]
fn digests_from_the_command_line() {
    let t = Tgtd::start(8 * MIB, Accounts::default());
    let url = t.url();
    let (_d, mut fe) = serves(&format!("{url},header_digest=on,data-digest=on"));
    let data = pattern(5, 64 * 1024);
    write_read_back_flushed(&mut fe, 0, 64, &data, &t.backing);
}

/// tgt answers SendTargets with the portal the discovery came in on only (other portals
/// of the target are left out), so against it `discover` adds no path: the LUN keeps its
/// one path and nothing is added twice. A target listing several portals is in the login
/// tests (`discovery`).
#[test]
fn discovery_against_tgtd_adds_nothing_twice() {
    let t = Tgtd::start(8 * MIB, Accounts::default());
    let url = vscsid::iscsi::IscsiUrl::parse(&t.url()).unwrap();
    let found =
        vscsid::iscsi::discover_portals(&url, &vscsid::iscsi::IscsiOptions::default()).unwrap();
    assert_eq!(found, vec![format!("127.0.0.1:{}", t.port)]);
    let (d, _) = serves(&format!("{},discover", t.url()));
    let log = d.log();
    assert!(!log.contains("discovered path"), "{log}");
    assert!(log.contains(": one path"), "{log}");
    // A target that is not there: discovery fails, the configured path is kept (and its
    // login gives the error).
    let other = vscsid::iscsi::IscsiUrl::parse(&format!(
        "iscsi://127.0.0.1:{}/iqn.2024-01.nope:x/1",
        t.port
    ))
    .unwrap();
    let e = vscsid::iscsi::discover_portals(&other, &vscsid::iscsi::IscsiOptions::default())
        .expect_err("no such target");
    assert!(e.to_string().contains("lists no portal"), "{e}");
}
