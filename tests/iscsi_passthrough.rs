//! iSCSI LUNs in the daemon: `--iscsi <url>` makes a tgtd LUN a passthrough LUN next to an
//! emulated one; the guest's CDBs reach the target unchanged, REPORT LUNS still comes from
//! vscsid's table, a read-only one (`--iscsi <url>,readonly`) refuses writes itself and
//! shows the disk write-protected, and failed logins stop the daemon with one clear line.

mod common;
mod iscsi_common;

use std::process::Command;

use common::*;
use iscsi_common::*;

const MIB: u64 = 1 << 20;

fn start_with_iscsi(url: &str) -> Daemon {
    Daemon::start(
        &[Disk {
            name: "local.img",
            size: 8 * MIB,
            opts: "",
        }],
        &["--iscsi", url, "--num-queues", "1"],
    )
}

/// Sends a command until it is not a UNIT ATTENTION (a new nexus reports one first).
fn settle(fe: &mut vscsid::frontend::ScsiFrontend, l: u16) {
    for _ in 0..5 {
        let r = fe.command(&cmd(l, &test_unit_ready(), &[], 0)).unwrap();
        if r.status == 0 {
            return;
        }
    }
    panic!("LUN {l} never became ready");
}

#[test]
fn passthrough_lun_serves_the_targets_data() {
    let t = Tgtd::start(32 * MIB, Accounts::default());
    let d = start_with_iscsi(&t.url());
    let mut fe = d.connect(1);
    settle(&mut fe, 1);
    // INQUIRY comes from the target itself.
    let r = fe.command(&cmd(1, &inquiry(96), &[], 96)).unwrap();
    good(&r);
    assert_eq!(&r.data_in[8..11], b"IET");
    // LUN 0 is still the emulated disk.
    let r = fe.command(&cmd(0, &inquiry(96), &[], 96)).unwrap();
    assert_eq!(&r.data_in[8..14], b"VSCSID");
    // READ CAPACITY(16) is the target's capacity.
    let r = fe.command(&cmd(1, &read_capacity16(32), &[], 32)).unwrap();
    good(&r);
    assert_eq!(
        u64::from_be_bytes(r.data_in[0..8].try_into().unwrap()) + 1,
        32 * MIB / 512
    );
    // Data written through the guest path lands in the target's backing file.
    let data = pattern(77, 256 * 1024);
    write_read_back_flushed(&mut fe, 1, 2048, &data, &t.backing);
    // Errors are the target's own sense.
    let r = fe.command(&cmd(1, &read16(1 << 40, 1), &[], 512)).unwrap();
    assert_eq!(r.status, 2);
    assert_eq!(r.sense_key().map(|k| k.0), Some(5));
    // REPORT LUNS is vscsid's table: LUNs 0 and 1.
    let r = fe.command(&cmd(1, &report_luns(64), &[], 64)).unwrap();
    good(&r);
    assert_eq!(&r.data_in[0..4], &16u32.to_be_bytes());
    // A writable LUN's MODE SENSE is the target's: WP clear.
    assert_eq!(mode_sense_wp(&mut fe, 1), (false, false));
    // A LOGICAL UNIT RESET is forwarded and answered.
    assert_eq!(fe.tmf(5, lun(1), 0).unwrap(), 0);
    assert_serving(&mut fe);
}

/// WP (bit 7 of the device-specific parameter) in LUN `l`'s MODE SENSE(6) and (10)
/// answers, all pages.
fn mode_sense_wp(fe: &mut vscsid::frontend::ScsiFrontend, l: u16) -> (bool, bool) {
    let r = guest_command(fe, &cmd(l, &[0x1a, 0, 0x3f, 0, 0xff, 0], &[], 0xff));
    good(&r);
    let six = r.data_in[2] & 0x80 != 0;
    let r = guest_command(
        fe,
        &cmd(l, &[0x5a, 0, 0x3f, 0, 0, 0, 0, 0x01, 0x00, 0], &[], 0x100),
    );
    good(&r);
    (six, r.data_in[3] & 0x80 != 0)
}

#[test]
fn a_readonly_passthrough_lun_refuses_writes_and_reads() {
    let t = Tgtd::start(16 * MIB, Accounts::default());
    // What the target holds: a pattern in the first 64 KiB.
    let before = pattern(41, 64 * 1024);
    let mut image = std::fs::read(&t.backing).unwrap();
    image[..before.len()].copy_from_slice(&before);
    std::fs::write(&t.backing, &image).unwrap();
    let d = start_with_iscsi(&format!("{},readonly", t.url()));
    let mut fe = d.connect(1);
    settle(&mut fe, 1);
    // Reads reach the target.
    let r = guest_command(&mut fe, &cmd(1, &read16(0, 128), &[], 64 * 1024));
    good(&r);
    assert_eq!(r.data_in, before);
    // Every command that changes data is refused with DATA PROTECT, WRITE PROTECTED.
    let block = pattern(42, 512);
    let r = guest_command(&mut fe, &cmd(1, &write16(0, 1), &block, 0));
    assert_eq!(sense(&r), (7, 0x27, 0), "WRITE(16): {r:?}");
    let r = guest_command(&mut fe, &cmd(1, &write_same16(8, 8), &block, 0));
    assert_eq!(sense(&r), (7, 0x27, 0), "WRITE SAME(16): {r:?}");
    let (c, list) = unmap(16, 8);
    let r = guest_command(&mut fe, &cmd(1, &c, &list, 0));
    assert_eq!(sense(&r), (7, 0x27, 0), "UNMAP: {r:?}");
    // The target's data did not change, by the target's own account and in its file.
    let r = guest_command(&mut fe, &cmd(1, &read16(0, 128), &[], 64 * 1024));
    good(&r);
    assert_eq!(r.data_in, before);
    let on_file = std::fs::read(&t.backing).unwrap();
    assert_eq!(&on_file[..before.len()], &before[..]);
    // The guest's kernel sees the disk write-protected: WP in both MODE SENSE headers.
    assert_eq!(mode_sense_wp(&mut fe, 1), (true, true));
    // The emulated LUN beside it stays writable.
    assert_eq!(mode_sense_wp(&mut fe, 0), (false, false));
    good(&guest_command(&mut fe, &cmd(0, &write16(0, 1), &block, 0)));
}

fn login_error(url: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .args(["--socket", sock.to_str().unwrap(), "--iscsi", url])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<_> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

#[test]
fn failed_logins_say_why() {
    let t = Tgtd::start(
        8 * MIB,
        Accounts {
            incoming: Some(("vmuser".into(), "right-secret-123".into())),
            outgoing: None,
        },
    );
    let wrong = format!(
        "iscsi://vmuser%wrong-secret-456@127.0.0.1:{}/{IQN}/1",
        t.port
    );
    let e = login_error(&wrong, &[]);
    assert!(e.contains("CHAP") && e.contains("authentication"), "{e}");
    assert!(
        !e.contains("wrong-secret-456"),
        "the secret leaked into the message: {e}"
    );
    // The secret from the environment works.
    let from_env = format!("iscsi://vmuser@127.0.0.1:{}/{IQN}/1", t.port);
    let d = Daemon::start_with_env(
        &[],
        &["--iscsi", &from_env],
        &[("VSCSID_CHAP_SECRET", "right-secret-123")],
    );
    let mut fe = d.connect(1);
    let r = fe.command(&cmd(0, &inquiry(96), &[], 96)).unwrap();
    assert_eq!(&r.data_in[8..11], b"IET");
    drop(fe);
    let e = login_error(
        &format!("iscsi://127.0.0.1:{}/iqn.2024-01.nope:x/1", t.port),
        &[],
    );
    assert!(e.contains("not found"), "{e}");
    let port = free_port();
    let e = login_error(&format!("iscsi://127.0.0.1:{port}/{IQN}/1"), &[]);
    assert!(e.contains("unreachable"), "{e}");
}
