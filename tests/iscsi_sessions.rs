//! Sessions shared by the LUNs of one target, against a real tgtd: 32 LUNs through two
//! portals are two sessions (counted at the target and at the relays), each LUN reads
//! back only its own data, and cutting one portal fails every LUN over with no error to
//! the caller (the stall is printed). Through the daemon: `iscsi://host/iqn/*` attaches
//! every LUN the target reports, numbered from the base, and `vscsid ctl luns` shows the
//! sessions.

mod common;
mod iscsi_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pattern, read16, write16};
use iscsi_common::link::Link;
use iscsi_common::*;
use vscsid::iscsi::{IscsiLun, IscsiOptions, IscsiUrl, MultipathOptions, Policy};
use vscsid::scsi::task::{command, ScsiCompletion};

const MIB: u64 = 1 << 20;
const LUNS: u16 = 32;

/// A command as a guest's SCSI layer runs it: UNIT ATTENTION is retried.
fn run(lun: &IscsiLun, cdb: &[u8], out: Vec<u8>, in_len: u32) -> ScsiCompletion {
    for _ in 0..5 {
        let c = lun.execute(command(cdb, out.clone(), in_len));
        if !unit_attention(&c) {
            return c;
        }
    }
    panic!("endless UNIT ATTENTION");
}

fn ok(c: &ScsiCompletion) -> bool {
    matches!(&c.result, Ok(st) if st.status == 0)
}

/// The pattern LUN `l` keeps at block `lba`: no two LUNs, no two blocks alike.
fn lun_pattern(l: u16, lba: u64, round: u64) -> Vec<u8> {
    pattern(u64::from(l) << 40 | round << 20 | lba, 8 * 512)
}

/// The sessions of the registry through these portals.
fn sessions_on(portals: &[String]) -> Vec<vscsid::iscsi::registry::SessionStatus> {
    vscsid::iscsi::registry::status()
        .into_iter()
        .filter(|s| portals.contains(&s.portal))
        .collect()
}

/// Writers on every LUN, each writing fresh patterns and reading them back; returns the
/// errors, the corrupted blocks and the longest time one write + read took.
fn workload(
    luns: &[Arc<IscsiLun>],
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, u64, Duration)>> {
    luns.iter()
        .enumerate()
        .map(|(i, lun)| {
            let (lun, stop) = (lun.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut errors, mut corrupted, mut worst) = (0, 0, Duration::ZERO);
                let mut round = 1u64;
                // Bounded by count as well as by the stop flag.
                while !stop.load(Ordering::Acquire) && round < 100_000 {
                    let lba = (round % 16) * 8;
                    let data = lun_pattern(i as u16, lba, round);
                    let t = Instant::now();
                    let w = run(&lun, &write16(lba, 8), data.clone(), 0);
                    let r = run(&lun, &read16(lba, 8), Vec::new(), 8 * 512);
                    worst = worst.max(t.elapsed());
                    if !ok(&w) || !ok(&r) {
                        errors += 1;
                    } else if r.data_in != data {
                        corrupted += 1;
                    }
                    round += 1;
                }
                (errors, corrupted, worst)
            })
        })
        .collect()
}

/// Waits (bounded) until every LUN sees path `i` as `up`.
fn wait_paths(luns: &[Arc<IscsiLun>], i: usize, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while luns.iter().any(|l| l.paths()[i].up != up) {
        assert!(
            Instant::now() < deadline,
            "path {i} never went {up} on every LUN"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn thirty_two_luns_share_two_sessions_and_fail_over_together() {
    let tgtd = Tgtd::start(MIB, Accounts::default());
    for l in 2..=LUNS {
        tgtd.add_lun(l, MIB);
    }
    let upstream: SocketAddr = format!("127.0.0.1:{}", tgtd.port).parse().unwrap();
    let links: Vec<Link> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| Link::start(ip, upstream))
        .collect();
    let portals: Vec<String> = links.iter().map(Link::portal).collect();
    let mp = MultipathOptions {
        extra_portals: vec![portals[1].clone()],
        policy: Policy::RoundRobin,
        rr_ios: 4,
        ..MultipathOptions::default()
    };
    let luns: Vec<Arc<IscsiLun>> = (1..=LUNS)
        .map(|l| {
            let url = IscsiUrl::parse(&format!("iscsi://{}/{IQN}/{l}", portals[0])).unwrap();
            Arc::new(
                IscsiLun::connect_multipath(&url, &IscsiOptions::default(), &mp)
                    .expect("multipath login"),
            )
        })
        .collect();

    // Two sessions, whatever the number of LUNs: at the target, at each relay, and in
    // the registry (each listing all 32 LUNs).
    assert_eq!(tgtd.nexus_count(), 2, "I_T nexuses at tgtd");
    for link in &links {
        assert_eq!(link.logins().len(), 1, "logins through {}", link.portal());
    }
    let sessions = sessions_on(&portals);
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    for s in &sessions {
        assert_eq!(s.luns, (1..=LUNS).collect::<Vec<_>>(), "{s}");
        assert!(s.up, "{s}");
        println!("{s}");
    }
    assert_ne!(sessions[0].isid, sessions[1].isid);
    for lun in &luns {
        let p = lun.paths();
        assert_eq!(p[0].shared_by, usize::from(LUNS), "{}", p[0]);
        assert_eq!(p[0].session, sessions[0].id);
        assert_eq!(p[1].session, sessions[1].id);
    }

    // Every LUN its own pattern on the same blocks, then read back from every LUN: no
    // LUN sees another's data.
    for (i, lun) in luns.iter().enumerate() {
        for lba in [0, 8] {
            let data = lun_pattern(i as u16, lba, 0);
            assert!(
                ok(&run(lun, &write16(lba, 8), data, 0)),
                "write LUN {}",
                i + 1
            );
        }
    }
    for (i, lun) in luns.iter().enumerate() {
        for lba in [0, 8] {
            let r = run(lun, &read16(lba, 8), Vec::new(), 8 * 512);
            assert!(ok(&r), "read LUN {}", i + 1);
            assert!(
                r.data_in == lun_pattern(i as u16, lba, 0),
                "LUN {} block {lba} holds another LUN's data",
                i + 1
            );
        }
    }

    // Cut one portal while every LUN writes and reads: all 32 fail over, no error, no
    // corruption; the longest write + read of any LUN is the failover stall.
    for (how, cut) in [
        ("reset", Link::cut_reset as fn(&Link)),
        ("silent", Link::cut_silent as fn(&Link)),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = workload(&luns, &stop);
        std::thread::sleep(Duration::from_millis(500));
        let cut_at = Instant::now();
        cut(&links[0]);
        wait_paths(&luns, 0, false);
        let detected = cut_at.elapsed();
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Release);
        let (mut errors, mut corrupted, mut worst) = (0, 0, Duration::ZERO);
        for w in writers {
            let (e, c, t) = w.join().expect("writer");
            errors += e;
            corrupted += c;
            worst = worst.max(t);
        }
        let ios = AtomicU64::new(0);
        for lun in &luns {
            ios.fetch_add(lun.paths()[1].ios, Ordering::Relaxed);
        }
        println!(
            "{LUNS} LUNs, path cut ({how}): every LUN saw the path down after {} ms; \
             longest write+read of any LUN {} ms; session's last-failover {} ms",
            detected.as_millis(),
            worst.as_millis(),
            luns[0].paths()[0].last_failover.as_millis()
        );
        assert_eq!(errors, 0, "errors during the {how} cut");
        assert_eq!(corrupted, 0, "corrupted blocks during the {how} cut");
        // Still one session per portal: the cut one logs in again as one session.
        links[0].restore();
        wait_paths(&luns, 0, true);
        assert_eq!(sessions_on(&portals).len(), 2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tgtd.nexus_count() != 2 {
            assert!(
                Instant::now() < deadline,
                "tgtd never went back to 2 nexuses"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // The last LUN to go closes the sessions.
    drop(luns);
    assert!(sessions_on(&portals).is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    while tgtd.nexus_count() != 0 {
        assert!(Instant::now() < deadline, "sessions left at tgtd");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reset_of_one_lun_leaves_the_others_on_the_session_alone() {
    let tgtd = Tgtd::start(MIB, Accounts::default());
    tgtd.add_lun(2, MIB);
    let url = |l| IscsiUrl::parse(&format!("iscsi://127.0.0.1:{}/{IQN}/{l}", tgtd.port)).unwrap();
    let a = IscsiLun::connect(&url(1), &IscsiOptions::default()).expect("LUN 1");
    let b = IscsiLun::connect(&url(2), &IscsiOptions::default()).expect("LUN 2");
    assert_eq!(tgtd.nexus_count(), 1);
    assert!(ok(&run(&b, &read16(0, 1), Vec::new(), 512)));
    // A target reset asked of LUN 1 goes out as a LUN reset: LUN 2 sees no reset.
    let r = a.task_management(vscsid::scsi::task::TmfFunction::TargetWarmReset);
    assert_eq!(r, Ok(0));
    let c = b.execute(command(&read16(0, 1), Vec::new(), 512));
    assert!(ok(&c), "LUN 2 after LUN 1's reset: {:?}", c.result);
    // LUN 1 was reset: its next command reports it.
    let c = a.execute(command(&read16(0, 1), Vec::new(), 512));
    assert!(unit_attention(&c), "LUN 1 after its reset: {:?}", c.result);
    // LUN 1 leaves; LUN 2's session stays.
    drop(a);
    assert!(ok(&run(&b, &read16(0, 1), Vec::new(), 512)));
    assert_eq!(tgtd.nexus_count(), 1);
}

mod through_the_daemon {
    use super::common::{cmd, ctl, good, guest_command, report_luns, wait_until, Daemon, Disk};
    use super::*;

    fn reported(fe: &mut vscsid::frontend::ScsiFrontend) -> Vec<u16> {
        let r = guest_command(fe, &cmd(0, &report_luns(4096), &[], 4096));
        good(&r);
        let n = u32::from_be_bytes([r.data_in[0], r.data_in[1], r.data_in[2], r.data_in[3]]) / 8;
        (0..n as usize)
            .map(|i| u16::from_be_bytes([r.data_in[8 + i * 8], r.data_in[9 + i * 8]]) & 0x3fff)
            .collect()
    }

    #[test]
    fn star_attaches_every_lun_of_the_target_from_the_base() {
        let tgtd = Tgtd::start(MIB, Accounts::default());
        for l in 2..=4 {
            tgtd.add_lun(l, MIB);
        }
        // The local disk is LUN 0; the target's LUNs (0 the controller, 1..=4 disks)
        // come next, from LUN 1.
        let spec = format!("iscsi://127.0.0.1:{}/{IQN}/*", tgtd.port);
        let d = Daemon::start(
            &[Disk {
                name: "local.img",
                size: MIB,
                opts: "",
            }],
            &[
                "--iscsi",
                &spec,
                "--num-queues",
                "1",
                "--control",
                "{dir}/control.sock",
            ],
        );
        let control = d.control_socket();
        let mut fe = d.connect(1);
        assert_eq!(reported(&mut fe), vec![0, 1, 2, 3, 4, 5]);
        // Each guest LUN is its target LUN: distinct data written through each stays there.
        for g in 2..=5u16 {
            let data = pattern(u64::from(g), 512);
            good(&guest_command(&mut fe, &cmd(g, &write16(0, 1), &data, 0)));
        }
        for g in 2..=5u16 {
            let back = guest_command(&mut fe, &cmd(g, &read16(0, 1), &[], 512));
            good(&back);
            assert_eq!(back.data_in, pattern(u64::from(g), 512), "guest LUN {g}");
            let file = tgtd.dir.path().join(format!("lun{}.img", g - 1));
            let on_disk = std::fs::read(&file).expect("backing");
            assert_eq!(&on_disk[..512], &pattern(u64::from(g), 512)[..], "{file:?}");
        }
        // One session for the five LUNs.
        assert_eq!(tgtd.nexus_count(), 1);
        let (ok, out, err) = ctl(&control, &["luns"]);
        assert!(ok, "{err}");
        assert!(out.contains("iSCSI sessions: 1"), "{out}");
        assert!(out.contains("luns 0,1,2,3,4"), "{out}");
        assert!(out.contains("shared-by 5"), "{out}");

        // Hot-add the same target again with '*', from LUN 10: five more LUNs, still one
        // session (the same initiator and options).
        let (ok, out, err) = ctl(&control, &["add", "iscsi", &spec, "--lun", "10"]);
        assert!(ok, "add: {out} {err}");
        assert_eq!(reported(&mut fe)[6..], [10, 11, 12, 13, 14]);
        assert_eq!(tgtd.nexus_count(), 1);
        let back = guest_command(&mut fe, &cmd(14, &read16(0, 1), &[], 512));
        good(&back);
        assert_eq!(
            back.data_in,
            pattern(5, 512),
            "guest LUN 14 is target LUN 4"
        );
        // Removing them all but one keeps the session; removing that one too ends it.
        for g in 1..=5u16 {
            let (ok, _, err) = ctl(&control, &["remove", &format!("0:{g}")]);
            assert!(ok, "{err}");
        }
        assert_eq!(tgtd.nexus_count(), 1);
        for g in 10..=14u16 {
            let (ok, _, err) = ctl(&control, &["remove", &format!("0:{g}")]);
            assert!(ok, "{err}");
        }
        wait_until("the session logged out", Duration::from_secs(10), || {
            tgtd.nexus_count() == 0
        });
    }

    #[test]
    fn a_reload_lists_the_target_again() {
        let tgtd = Tgtd::start(MIB, Accounts::default());
        let dir = tempfile::tempdir().expect("tmp");
        let config = dir.path().join("vscsid.toml");
        std::fs::write(
            &config,
            format!(
                "[daemon]\nnum_queues = 1\ncontrol = \"{}\"\n[[lun]]\nlun = 3\nkind = \"iscsi\"\n\
                 url = \"iscsi://127.0.0.1:{}/{IQN}/0\"\nluns = \"all\"\n",
                dir.path().join("control.sock").display(),
                tgtd.port
            ),
        )
        .unwrap();
        let cfg_arg = config.display().to_string();
        let d = Daemon::start(&[], &["--config", &cfg_arg]);
        let control = dir.path().join("control.sock");
        wait_until("the control socket", Duration::from_secs(10), || {
            control.exists()
        });
        let mut fe = d.connect(1);
        // tgtd's controller (0) and LUN 1, from the base 3.
        assert_eq!(reported(&mut fe), vec![3, 4]);
        // The target gains a LUN; a reload attaches it, on the same session.
        tgtd.add_lun(2, MIB);
        // SAFETY: kill(2) with the PID of the daemon this test started.
        unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
        wait_until("LUN 5 after the reload", Duration::from_secs(10), || {
            let (_, out, _) = ctl(&control, &["luns"]);
            out.lines().any(|l| l.starts_with("0:5 "))
        });
        assert_eq!(reported(&mut fe), vec![3, 4, 5]);
        assert_eq!(tgtd.nexus_count(), 1);
        let (_, out, _) = ctl(&control, &["luns"]);
        assert!(out.contains("luns 0,1,2"), "{out}");
    }
}
