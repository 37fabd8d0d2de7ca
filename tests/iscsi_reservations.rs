//! Persistent reservations and ISIDs on a multipath iSCSI LUN, against tgtd through two
//! portals (relays on 127.0.0.2 and 127.0.0.3) and through the daemon: the guest's
//! REGISTER lands on every path, a path that logs in again is registered before it
//! carries writes (tgtd makes every new session a new I_T nexus), a key another initiator
//! preempted does not come back that way, RESERVATION CONFLICT reaches the guest
//! unchanged, and each path's ISID is the same after a reconnect and a restart while two
//! daemons at once never share one. A second initiator (vscsid's initiator in the test,
//! with its own initiator name) is the independent witness at the target.

mod common;
mod iscsi_common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use iscsi_common::link::Link;
use iscsi_common::*;
use vscsid::iscsi::{IscsiLun, IscsiOptions, IscsiUrl};
use vscsid::scsi::task::{command, ScsiCompletion};

const MIB: u64 = 1 << 20;
const KEY: u64 = 0x7673_6373_6964_0001;
const OTHER_KEY: u64 = 0x0bad_cafe_0000_0002;
/// PR OUT service actions and reservation types (SPC-4 6.16).
const REGISTER: u8 = 0x00;
const RESERVE: u8 = 0x01;
const RELEASE: u8 = 0x02;
const PREEMPT: u8 = 0x04;
const WRITE_EXCLUSIVE: u8 = 1;
const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
const RESERVATION_CONFLICT: u8 = 0x18;

/// tgtd, two relays in front of its portal, and vscsid with the LUN on both (LUN 0,
/// round-robin turning after every command, so both paths carry the guest's writes).
struct Rig {
    tgtd: Tgtd,
    links: Vec<Link>,
    daemon: Daemon,
    spec: String,
}

fn rig() -> Rig {
    let tgtd = Tgtd::start(16 * MIB, Accounts::default());
    let upstream: SocketAddr = format!("127.0.0.1:{}", tgtd.port).parse().unwrap();
    let links: Vec<Link> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| Link::start(ip, upstream))
        .collect();
    let spec = format!(
        "iscsi://{}/{IQN}/1,path={},policy=round-robin,rr-ios=1,no-path-retry=60",
        links[0].portal(),
        links[1].portal()
    );
    let daemon = start_daemon(&spec);
    Rig {
        tgtd,
        links,
        daemon,
        spec,
    }
}

fn start_daemon(spec: &str) -> Daemon {
    Daemon::start(
        &[],
        &[
            "--iscsi",
            spec,
            "--num-queues",
            "1",
            "--control",
            "{dir}/control.sock",
        ],
    )
}

/// One path as `vscsid ctl paths` shows it.
#[derive(Debug)]
struct PathLine {
    up: bool,
    isid: String,
    ios: u64,
}

fn paths(control: &Path) -> Vec<PathLine> {
    let (ok, out, err) = ctl(control, &["paths", "0:0"]);
    assert!(ok, "ctl paths: {err}");
    out.lines()
        .map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let after = |key: &str| {
                let i = t.iter().position(|w| *w == key).expect(key);
                t[i + 1].to_string()
            };
            PathLine {
                up: t[3] == "up",
                isid: after("isid"),
                ios: after("ios").parse().unwrap(),
            }
        })
        .collect()
}

fn wait_path(control: &Path, i: usize, up: bool) {
    wait_until(
        &format!("path {i} never went {}", if up { "up" } else { "down" }),
        Duration::from_secs(20),
        || paths(control)[i].up == up,
    );
}

/// An initiator of its own (another initiator name) straight to tgtd's portal.
fn other_initiator(t: &Tgtd) -> IscsiLun {
    let opts = IscsiOptions {
        initiator_name: "iqn.2024-01.io.vscsid.test:other-host".into(),
        ..IscsiOptions::default()
    };
    IscsiLun::connect(&IscsiUrl::parse(&t.url()).unwrap(), &opts).expect("second initiator")
}

/// A command of the second initiator, again after a UNIT ATTENTION (bounded).
fn run(lun: &IscsiLun, cdb: &[u8], out: Vec<u8>, in_len: u32) -> ScsiCompletion {
    for _ in 0..5 {
        let c = lun.execute(command(cdb, out.clone(), in_len));
        if !unit_attention(&c) {
            return c;
        }
    }
    panic!("endless UNIT ATTENTION");
}

fn status(c: &ScsiCompletion) -> u8 {
    c.result.as_ref().expect("an answer from the target").status
}

/// The keys registered at the target, as the second initiator reads them.
fn keys(other: &IscsiLun) -> Vec<u64> {
    let c = run(other, &persistent_reserve_in(0, 1024), Vec::new(), 1024);
    assert_eq!(status(&c), 0, "READ KEYS");
    registered_keys(&c.data_in)
}

fn count(keys: &[u64], key: u64) -> usize {
    keys.iter().filter(|&&k| k == key).count()
}

/// The guest's PR OUT through vscsid.
fn guest_pr_out(
    fe: &mut vscsid::frontend::ScsiFrontend,
    action: u8,
    kind: u8,
    key: u64,
    sa_key: u64,
) -> u8 {
    let (c, p) = persistent_reserve_out(action, kind, key, sa_key);
    let r = guest_command(fe, &cmd(0, &c, &p, 0));
    assert_eq!(r.response, 0, "{r:?}");
    r.status
}

/// The guest writes `n` blocks from `first`; every write must succeed.
fn guest_writes(fe: &mut vscsid::frontend::ScsiFrontend, first: u64, n: u64) {
    for lba in first..first + n {
        let r = guest_command(fe, &cmd(0, &write16(lba, 1), &pattern(lba, 512), 0));
        good(&r);
    }
}

#[test]
fn registration_on_every_path_holds_across_failover_and_rejoin() {
    let r = rig();
    let control = r.daemon.control_socket();
    let mut fe = r.daemon.connect(1);
    let other = other_initiator(&r.tgtd);
    assert_eq!(keys(&other), Vec::<u64>::new());

    // REGISTER through one path is repeated on the other: one registration per nexus.
    assert_eq!(guest_pr_out(&mut fe, REGISTER, 0, 0, KEY), 0);
    assert_eq!(
        keys(&other),
        vec![KEY, KEY],
        "registered through both paths"
    );
    // The guest's own READ KEYS (through vscsid) sees the same.
    let rk = guest_command(&mut fe, &cmd(0, &persistent_reserve_in(0, 1024), &[], 1024));
    good(&rk);
    assert_eq!(registered_keys(&rk.data_in), vec![KEY, KEY]);
    // A REGISTER the target refuses (wrong key) is the guest's answer, and not repeated.
    assert_eq!(
        guest_pr_out(&mut fe, REGISTER, 0, 0xdead, 0xbeef),
        RESERVATION_CONFLICT
    );
    assert_eq!(keys(&other), vec![KEY, KEY]);

    // A registrants-only reservation: the unregistered initiator may read, not write.
    assert_eq!(
        guest_pr_out(&mut fe, RESERVE, WRITE_EXCLUSIVE_REGISTRANTS_ONLY, KEY, 0),
        0
    );
    let c = run(&other, &write16(100, 1), pattern(1, 512), 0);
    assert_eq!(
        status(&c),
        RESERVATION_CONFLICT,
        "the other initiator's write"
    );
    assert_eq!(status(&run(&other, &read16(100, 1), Vec::new(), 512)), 0);

    // RELEASE reaches the path that reserved, whichever path carries it: round-robin turns
    // after every command, so the guest's RELEASE right after its RESERVE goes down the
    // other path, whose nexus does not hold the reservation (a RELEASE there alone
    // succeeds and does nothing). The other initiator may write once it is released.
    assert_eq!(
        guest_pr_out(&mut fe, RELEASE, WRITE_EXCLUSIVE_REGISTRANTS_ONLY, KEY, 0),
        0
    );
    assert_eq!(
        status(&run(&other, &write16(100, 1), pattern(1, 512), 0)),
        0,
        "released"
    );
    assert_eq!(
        guest_pr_out(&mut fe, RESERVE, WRITE_EXCLUSIVE_REGISTRANTS_ONLY, KEY, 0),
        0
    );
    assert_eq!(
        status(&run(&other, &write16(100, 1), pattern(1, 512), 0)),
        RESERVATION_CONFLICT
    );

    // The guest writes through both paths.
    let before: Vec<u64> = paths(&control).iter().map(|p| p.ios).collect();
    guest_writes(&mut fe, 0, 8);
    let after: Vec<u64> = paths(&control).iter().map(|p| p.ios).collect();
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "both paths carried writes: {before:?} -> {after:?}"
    );

    // Path 0 fails: the writes go on through path 1, which is registered too.
    r.links[0].cut_reset();
    wait_path(&control, 0, false);
    guest_writes(&mut fe, 8, 8);
    assert_eq!(
        status(&run(&other, &write16(100, 1), pattern(1, 512), 0)),
        RESERVATION_CONFLICT,
        "the reservation holds across the failover"
    );

    // Path 0 logs in again: a new session, so a new and unregistered I_T nexus to tgtd.
    // vscsid registers it before it serves, so its share of the writes succeeds.
    r.links[0].restore();
    wait_path(&control, 0, true);
    let on0 = paths(&control)[0].ios;
    let mut lba = 16;
    wait_until(
        "path 0 carries writes again",
        Duration::from_secs(20),
        || {
            guest_writes(&mut fe, lba, 4);
            lba += 4;
            paths(&control)[0].ios > on0
        },
    );
    guest_writes(&mut fe, lba, 8);
    // tgtd keeps the ended session's registration: the first path's old nexus, path 1,
    // and the new session of path 0.
    assert_eq!(count(&keys(&other), KEY), 3, "{:x?}", keys(&other));

    // RESERVATION CONFLICT from the target reaches the guest unchanged: the other
    // initiator registers and preempts the guest's key, taking a write-exclusive
    // reservation; the guest's writes are refused on every path.
    let (c, p) = persistent_reserve_out(REGISTER, 0, 0, OTHER_KEY);
    assert_eq!(status(&run(&other, &c, p, 0)), 0);
    let (c, p) = persistent_reserve_out(PREEMPT, WRITE_EXCLUSIVE, OTHER_KEY, KEY);
    assert_eq!(status(&run(&other, &c, p, 0)), 0);
    assert_eq!(keys(&other), vec![OTHER_KEY]);
    for lba in 0..4 {
        let w = guest_command(&mut fe, &cmd(0, &write16(lba, 1), &pattern(lba, 512), 0));
        assert_eq!((w.response, w.status), (0, RESERVATION_CONFLICT), "{w:?}");
        assert!(
            w.sense.is_empty(),
            "no sense with RESERVATION CONFLICT: {w:?}"
        );
    }
    let rd = guest_command(&mut fe, &cmd(0, &read16(0, 1), &[], 512));
    good(&rd);
}

#[test]
fn a_preempted_key_does_not_come_back_through_a_rejoining_path() {
    let r = rig();
    let control = r.daemon.control_socket();
    let mut fe = r.daemon.connect(1);
    let other = other_initiator(&r.tgtd);
    assert_eq!(guest_pr_out(&mut fe, REGISTER, 0, 0, KEY), 0);
    let (c, p) = persistent_reserve_out(REGISTER, 0, 0, OTHER_KEY);
    assert_eq!(status(&run(&other, &c, p, 0)), 0);
    r.links[0].cut_reset();
    wait_path(&control, 0, false);
    // The other initiator fences the guest: PREEMPT removes every registration of KEY.
    let (c, p) = persistent_reserve_out(PREEMPT, WRITE_EXCLUSIVE_REGISTRANTS_ONLY, OTHER_KEY, KEY);
    assert_eq!(status(&run(&other, &c, p, 0)), 0);
    assert_eq!(keys(&other), vec![OTHER_KEY]);
    // (No reservation existed, so PREEMPT made none: the other initiator takes one.)
    let (c, p) = persistent_reserve_out(RESERVE, WRITE_EXCLUSIVE_REGISTRANTS_ONLY, OTHER_KEY, 0);
    assert_eq!(status(&run(&other, &c, p, 0)), 0);
    // Path 0 logs in again and must not register the preempted key.
    r.links[0].restore();
    wait_path(&control, 0, true);
    // Until path 0 serves (it reads the keys first), then a few more commands.
    let w = |fe: &mut vscsid::frontend::ScsiFrontend, lba| {
        guest_command(fe, &cmd(0, &write16(lba, 1), &pattern(lba, 512), 0))
    };
    let on0 = paths(&control)[0].ios;
    wait_until("path 0 serves again", Duration::from_secs(20), || {
        let c = w(&mut fe, 0);
        assert_eq!((c.response, c.status), (0, RESERVATION_CONFLICT), "{c:?}");
        paths(&control)[0].ios > on0
    });
    for lba in 0..4 {
        let c = w(&mut fe, lba);
        assert_eq!(
            (c.response, c.status),
            (0, RESERVATION_CONFLICT),
            "fenced: {c:?}"
        );
    }
    assert_eq!(keys(&other), vec![OTHER_KEY], "the key stayed preempted");
}

#[test]
fn isids_are_stable_per_path_and_apart_between_daemons() {
    let mut r = rig();
    let control = r.daemon.control_socket();
    let logged_in = |links: &[Link], n: usize| {
        wait_until(
            &format!("{n} logins on each path"),
            Duration::from_secs(20),
            || links.iter().all(|l| l.logins().len() >= n),
        )
    };
    logged_in(&r.links, 1);
    let (a, b) = (r.links[0].logins()[0], r.links[1].logins()[0]);
    assert_ne!(a, b, "each portal its own ISID");
    for isid in [a, b] {
        assert_eq!(isid[0] >> 6, 0b10, "random format: {isid:02x?}");
        assert_eq!(isid[0] & 0x3f, 0, "A field reserved: {isid:02x?}");
    }
    // The status shows the ISIDs the target saw.
    let hex = |i: [u8; 6]| vscsid::iscsi::isid::hex(&i);
    let shown: Vec<String> = paths(&control).into_iter().map(|p| p.isid).collect();
    assert_eq!(shown, vec![hex(a), hex(b)]);

    // A reconnect logs in with the same ISID.
    r.links[0].cut_reset();
    wait_path(&control, 0, false);
    r.links[0].restore();
    wait_path(&control, 0, true);
    assert_eq!(r.links[0].logins(), vec![a, a]);

    // So does the restarted daemon (same command line, so the same socket path).
    r.daemon.respawn();
    wait_until(
        "the restarted daemon logs in",
        Duration::from_secs(20),
        || r.links[0].logins().len() >= 3 && r.links[1].logins().len() >= 2,
    );
    assert_eq!(r.links[0].logins(), vec![a, a, a]);
    assert_eq!(r.links[1].logins(), vec![b, b]);

    // A second daemon at the same time (a migration's destination: same initiator name,
    // its own socket) has ISIDs of its own, so neither ends the other's sessions
    // (session reinstatement would show as logins over and over).
    let second = start_daemon(&r.spec);
    wait_until("the second daemon logs in", Duration::from_secs(20), || {
        r.links[0].logins().len() >= 4 && r.links[1].logins().len() >= 3
    });
    let (c, d) = (r.links[0].logins()[3], r.links[1].logins()[2]);
    assert!(
        c != a && c != b && d != a && d != b && c != d,
        "{c:02x?} {d:02x?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(r.links[0].logins().len(), 4, "no session was reinstated");
    assert_eq!(r.links[1].logins().len(), 3, "no session was reinstated");
    let control2 = second.control_socket();
    assert!(paths(&control).iter().all(|p| p.up));
    assert!(paths(&control2).iter().all(|p| p.up));
}
