//! The iSCSI initiator against a real target (tgtd on 127.0.0.1): discovery, login with and
//! without CHAP, refused logins, reads and writes of patterns across R2T bursts, immediate
//! data and digests both ways, many commands in flight, and recovery from a target crash.

mod iscsi_common;
mod scsi_common;

use std::sync::mpsc;
use std::time::Duration;

use iscsi_common::*;
use scsi_common::*;
use vscsid::iscsi::{discover, Chap, IscsiLun, IscsiOptions, IscsiUrl};
use vscsid::scsi::task::{command, ScsiCompletion, TmfFunction};

const MIB: u64 = 1 << 20;

fn opts() -> IscsiOptions {
    IscsiOptions {
        nop_interval: Duration::from_millis(500),
        nop_timeout: Duration::from_secs(2),
        recovery_timeout: Duration::from_secs(20),
        ..IscsiOptions::default()
    }
}

/// Executes a command, retrying (bounded) while the target reports a unit attention.
fn run(lun: &IscsiLun, cmd: vscsid::scsi::task::ScsiCommand) -> ScsiCompletion {
    for _ in 0..5 {
        let c = lun.execute(cmd.clone());
        if !unit_attention(&c) {
            return c;
        }
    }
    lun.execute(cmd)
}

fn good(c: &ScsiCompletion) {
    let st = c.result.as_ref().expect("transport");
    assert_eq!(st.status, 0, "status {st:?}");
}

fn connect(t: &Tgtd, o: &IscsiOptions) -> IscsiLun {
    IscsiLun::connect(&IscsiUrl::parse(&t.url()).unwrap(), o).expect("login")
}

fn write_read_back(lun: &IscsiLun, lba: u64, len: usize, seed: u64) {
    let data = pattern(seed, len);
    let blocks = (len / 512) as u32;
    good(&run(lun, command(&write16(lba, blocks), data.clone(), 0)));
    let c = run(lun, command(&read16(lba, blocks), Vec::new(), len as u32));
    good(&c);
    assert_eq!(
        c.data_in, data,
        "data read back differs (lba {lba}, {len} bytes)"
    );
}

#[test]
fn discovery_lists_the_target() {
    let t = Tgtd::start(16 * MIB, Accounts::default());
    let found = discover(&format!("127.0.0.1:{}", t.port), &opts()).expect("discovery");
    assert!(
        found.iter().any(|(name, portals)| name == IQN
            && portals.iter().any(|p| p.contains(&t.port.to_string()))),
        "{found:?}"
    );
}

#[test]
fn inquiry_capacity_and_patterns_without_chap() {
    let t = Tgtd::start(64 * MIB, Accounts::default());
    let lun = connect(&t, &opts());
    let c = run(&lun, command(&inquiry(96), Vec::new(), 96));
    good(&c);
    assert_eq!(&c.data_in[8..11], b"IET");
    let c = run(&lun, command(&read_capacity16(32), Vec::new(), 32));
    good(&c);
    assert_eq!(
        u64::from_be_bytes(c.data_in[0..8].try_into().unwrap()) + 1,
        64 * MIB / 512
    );
    // Small, and larger than MaxBurstLength (R2T sequences).
    write_read_back(&lun, 0, 4096, 1);
    write_read_back(&lun, 1000, 2 << 20, 2);
    // VERIFY(16) BYTCHK=1 of what was written.
    good(&run(&lun, command(&verify16(1000, 8), pattern(2, 4096), 0)));
    // A CHECK CONDITION comes back with its sense.
    let c = run(&lun, command(&read16(1 << 40, 1), Vec::new(), 512));
    let st = c.result.expect("transport");
    assert_eq!(st.status, 2);
    assert_eq!(st.sense[2] & 0x0f, 5);
    assert_eq!(lun.task_management(TmfFunction::LogicalUnitReset), Ok(0));
}

#[test]
fn immediate_data_and_initial_r2t_both_ways_with_digests() {
    let t = Tgtd::start(32 * MIB, Accounts::default());
    for (imm, r2t, digests) in [
        (false, true, false),
        (true, false, true),
        (false, false, true),
        (true, true, false),
    ] {
        let o = IscsiOptions {
            immediate_data: imm,
            initial_r2t: r2t,
            header_digest: digests,
            data_digest: digests,
            ..opts()
        };
        let lun = connect(&t, &o);
        write_read_back(&lun, 64, 512 * 1024, u64::from(imm) * 2 + u64::from(r2t));
        write_read_back(&lun, 4096, 512, 9);
        lun.close(Duration::from_secs(2));
    }
}

#[test]
fn many_commands_in_flight() {
    let t = Tgtd::start(32 * MIB, Accounts::default());
    let lun = connect(&t, &opts());
    good(&run(&lun, command(&test_unit_ready(), Vec::new(), 0)));
    let (tx, rx) = mpsc::channel();
    for i in 0..64u64 {
        let tx = tx.clone();
        lun.submit(
            command(&write16(i * 16, 16), pattern(100 + i, 8192), 0),
            Box::new(move |c| {
                let _ = tx.send((i, c));
            }),
        );
    }
    for _ in 0..64 {
        let (_, c) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("completion");
        good(&c);
    }
    for i in 0..64u64 {
        let tx = tx.clone();
        lun.submit(
            command(&read16(i * 16, 16), Vec::new(), 8192),
            Box::new(move |c| {
                let _ = tx.send((i, c));
            }),
        );
    }
    for _ in 0..64 {
        let (i, c) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("completion");
        good(&c);
        assert_eq!(c.data_in, pattern(100 + i, 8192));
    }
}

fn chap_accounts(mutual: bool) -> Accounts {
    Accounts {
        incoming: Some(("guestvm".into(), "initiator-secret-1".into())),
        outgoing: mutual.then(|| ("sanarray".into(), "target-secret-22".into())),
    }
}

#[test]
fn chap_one_way_and_mutual_and_wrong_secret() {
    let t = Tgtd::start(8 * MIB, chap_accounts(true));
    let url = IscsiUrl::parse(&t.url()).unwrap();
    let mutual = Chap {
        user: "guestvm".into(),
        secret: "initiator-secret-1".into(),
        mutual: Some(Box::new(Chap {
            user: "sanarray".into(),
            secret: "target-secret-22".into(),
            mutual: None,
        })),
    };
    let lun = IscsiLun::connect(
        &url,
        &IscsiOptions {
            chap: Some(mutual.clone()),
            ..opts()
        },
    )
    .expect("mutual CHAP login");
    write_read_back(&lun, 0, 4096, 5);
    lun.close(Duration::from_secs(2));
    // One-way CHAP with the credentials in the URL.
    let with_user = IscsiUrl::parse(&format!(
        "iscsi://guestvm%initiator-secret-1@127.0.0.1:{}/{IQN}/1",
        t.port
    ))
    .unwrap();
    let lun = IscsiLun::connect(&with_user, &opts()).expect("one-way CHAP login");
    write_read_back(&lun, 8, 512, 6);
    lun.close(Duration::from_secs(2));
    // Wrong secret.
    let bad = Chap {
        secret: "not-the-secret".into(),
        ..mutual.clone()
    };
    let err = IscsiLun::connect(
        &url,
        &IscsiOptions {
            chap: Some(bad),
            ..opts()
        },
    )
    .err()
    .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("CHAP") && msg.contains("authentication"),
        "{msg}"
    );
    // The target proving the wrong mutual secret.
    let wrong_target = Chap {
        mutual: Some(Box::new(Chap {
            user: "sanarray".into(),
            secret: "another-secret-3".into(),
            mutual: None,
        })),
        ..mutual
    };
    let err = IscsiLun::connect(
        &url,
        &IscsiOptions {
            chap: Some(wrong_target),
            ..opts()
        },
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("authentication"), "{err}");
}

#[test]
fn unknown_target_and_unreachable_portal() {
    let t = Tgtd::start(8 * MIB, Accounts::default());
    let url = IscsiUrl::parse(&format!(
        "iscsi://127.0.0.1:{}/iqn.2024-01.io.vscsid.test:nope/1",
        t.port
    ))
    .unwrap();
    let err = IscsiLun::connect(&url, &opts()).err().expect("refused");
    assert!(err.to_string().contains("not found"), "{err}");
    let port = free_port();
    let url = IscsiUrl::parse(&format!("iscsi://127.0.0.1:{port}/{IQN}/1")).unwrap();
    let err = IscsiLun::connect(&url, &opts()).err().expect("refused");
    assert!(err.to_string().contains("unreachable"), "{err}");
}

#[test]
fn the_new_nexus_reset_attention_never_reaches_the_guest() {
    let t = Tgtd::start(8 * MIB, Accounts::default());
    for round in 0..2 {
        // A new login is a new I_T nexus to tgtd, which reports POWER ON OCCURRED to its
        // first command; the initiator takes it before the first guest command.
        let lun = connect(&t, &opts());
        let c = lun.execute(command(&[0u8; 6], Vec::new(), 0));
        assert!(!unit_attention(&c), "round {round}: {c:?}");
        good(&c);
        lun.close(Duration::from_secs(5));
    }
}

#[test]
fn target_restart_mid_io_is_transparent() {
    let mut t = Tgtd::start(32 * MIB, Accounts::default());
    let lun = connect(&t, &opts());
    write_read_back(&lun, 0, 65536, 40);
    let (tx, rx) = mpsc::channel();
    // Writes in flight while the target dies.
    for i in 0..32u64 {
        let tx = tx.clone();
        lun.submit(
            command(&write16(1024 + i * 64, 64), pattern(200 + i, 32768), 0),
            Box::new(move |c| {
                let _ = tx.send((i, c));
            }),
        );
        if i == 8 {
            t.kill();
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    t.launch();
    for _ in 0..32 {
        let (i, c) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("completion after recovery");
        // The restarted target's reset attention to the new nexus is the initiator's to
        // take, not the guest's: every reissued write completes GOOD.
        assert!(!unit_attention(&c), "write {i} met a unit attention: {c:?}");
        good(&c);
    }
    assert!(lun.is_connected());
    for i in 0..32u64 {
        let c = run(&lun, command(&read16(1024 + i * 64, 64), Vec::new(), 32768));
        good(&c);
        assert_eq!(
            c.data_in,
            pattern(200 + i, 32768),
            "block {i} after recovery"
        );
    }
    let c = run(&lun, command(&read16(0, 128), Vec::new(), 65536));
    assert_eq!(c.data_in, pattern(40, 65536));
}

#[test]
fn outage_past_the_bound_fails_commands() {
    let mut t = Tgtd::start(8 * MIB, Accounts::default());
    let o = IscsiOptions {
        recovery_timeout: Duration::from_secs(2),
        ..opts()
    };
    let lun = connect(&t, &o);
    t.kill();
    let c = run(&lun, command(&read16(0, 1), Vec::new(), 512));
    assert!(
        c.result.is_err(),
        "a command succeeded with the target gone: {c:?}"
    );
}
