//! Multipath against a real target: one tgtd LUN reached through two portals (relays on
//! 127.0.0.2 and 127.0.0.3 that the test can break). Writers verify every block they
//! wrote (crc32c of the pattern) while a path is reset or goes silent, then both paths go
//! down for less and for more than no_path_retry. With one path left the workload must see
//! no error and no corrupted block; the stall each failover caused is printed.

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
use vscsid::scsi::task::{command, ScsiCompletion, TransportError};

const MIB: u64 = 1 << 20;

/// Runs a command the way a guest's SCSI layer does: UNIT ATTENTION is retried (a new
/// nexus reports one); anything else is the answer. Returns it and how long it took.
fn run(lun: &IscsiLun, cdb: &[u8], out: Vec<u8>, in_len: u32) -> (ScsiCompletion, Duration) {
    let t = Instant::now();
    for _ in 0..5 {
        let c = lun.execute(command(cdb, out.clone(), in_len));
        if !unit_attention(&c) {
            return (c, t.elapsed());
        }
    }
    panic!("endless UNIT ATTENTION");
}

fn ok(c: &ScsiCompletion) -> bool {
    matches!(&c.result, Ok(st) if st.status == 0)
}

/// What the writers saw.
#[derive(Default)]
struct Tally {
    ios: AtomicU64,
    errors: AtomicU64,
    corrupted: AtomicU64,
    max_stall_us: AtomicU64,
}

/// Writers, each on its own blocks: write a fresh pattern, read it back, compare crc32c.
struct Workload {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workload {
    fn start(lun: &Arc<IscsiLun>, writers: u64) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..writers)
            .map(|w| {
                let (lun, stop, tally) = (lun.clone(), stop.clone(), tally.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    // Bounded by count as well as by the stop flag.
                    while !stop.load(Ordering::Acquire) && i < 1_000_000 {
                        let lba = w * 4096 + (i % 64) * 16;
                        let data = pattern(w << 32 | i, 16 * 512);
                        let (c, t1) = run(&lun, &write16(lba, 16), data.clone(), 0);
                        let wrote = ok(&c);
                        let (r, t2) = run(&lun, &read16(lba, 16), Vec::new(), 16 * 512);
                        tally
                            .max_stall_us
                            .fetch_max(t1.max(t2).as_micros() as u64, Ordering::Relaxed);
                        tally.ios.fetch_add(2, Ordering::Relaxed);
                        if !wrote || !ok(&r) {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                        } else if crc32c::crc32c(&r.data_in) != crc32c::crc32c(&data) {
                            tally.corrupted.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Workload {
            stop,
            tally,
            threads,
        }
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().expect("writer panicked");
        }
        self.tally
    }
}

struct Rig {
    _tgtd: Tgtd,
    links: Vec<Link>,
    lun: Arc<IscsiLun>,
}

fn rig(policy: Policy, opts: IscsiOptions) -> Rig {
    let tgtd = Tgtd::start(64 * MIB, Accounts::default());
    let upstream: SocketAddr = format!("127.0.0.1:{}", tgtd.port).parse().unwrap();
    let links: Vec<Link> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| Link::start(ip, upstream))
        .collect();
    let url = format!("iscsi://{}/{IQN}/1", links[0].portal());
    let mp = MultipathOptions {
        extra_portals: vec![links[1].portal()],
        policy,
        rr_ios: 4,
        ..MultipathOptions::default()
    };
    let lun = IscsiLun::connect_multipath(&IscsiUrl::parse(&url).unwrap(), &opts, &mp)
        .expect("multipath login");
    Rig {
        _tgtd: tgtd,
        links,
        lun: Arc::new(lun),
    }
}

/// Waits (bounded) until path `i` is up, or down.
fn wait_path(lun: &IscsiLun, i: usize, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while lun.paths()[i].up != up {
        assert!(Instant::now() < deadline, "path {i} never went {up}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ios_on(lun: &IscsiLun, i: usize) -> u64 {
    lun.paths()[i].ios
}

/// Cuts path 0 one way while the workload runs on both paths, then restores it.
fn one_path_fails(cut: impl Fn(&Link), what: &str) {
    let r = rig(Policy::RoundRobin, IscsiOptions::default());
    let w = Workload::start(&r.lun, 4);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ios_on(&r.lun, 0) > 0 && ios_on(&r.lun, 1) > 0,
        "both paths carry I/O"
    );
    let before = w.tally.max_stall_us.swap(0, Ordering::Relaxed);
    cut(&r.links[0]);
    wait_path(&r.lun, 0, false);
    std::thread::sleep(Duration::from_millis(1500));
    let during = w.tally.max_stall_us.swap(0, Ordering::Relaxed);
    // Path 1 alone carries the workload now.
    let on1 = ios_on(&r.lun, 1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ios_on(&r.lun, 1) > on1);
    r.links[0].restore();
    wait_path(&r.lun, 0, true);
    let on0 = ios_on(&r.lun, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(ios_on(&r.lun, 0) > on0, "the healed path rejoins");
    let t = w.finish();
    let p0 = &r.lun.paths()[0];
    println!(
        "failover ({what}): {} I/Os, {} errors, {} corrupted; worst command before the cut \
         {:.1} ms, during it {:.1} ms; path reports a {:.1} ms failover",
        t.ios.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
        t.corrupted.load(Ordering::Relaxed),
        before as f64 / 1000.0,
        during as f64 / 1000.0,
        p0.last_failover.as_secs_f64() * 1000.0
    );
    assert_eq!(t.errors.load(Ordering::Relaxed), 0, "guest-visible errors");
    assert_eq!(t.corrupted.load(Ordering::Relaxed), 0, "corrupted blocks");
    assert!(p0.failovers >= 1);
}

#[test]
fn reset_path_fails_over_without_errors() {
    one_path_fails(Link::cut_reset, "reset path");
}

#[test]
fn silent_path_fails_over_without_errors() {
    one_path_fails(Link::cut_silent, "silent path");
}

#[test]
fn failover_policy_uses_the_preferred_path_and_fails_back() {
    let r = rig(Policy::Failover, IscsiOptions::default());
    // (Each path ran its own ALUA probe at login.)
    let passive = ios_on(&r.lun, 1);
    let w = Workload::start(&r.lun, 2);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ios_on(&r.lun, 0) > 0);
    assert_eq!(
        ios_on(&r.lun, 1),
        passive,
        "the passive path carries nothing"
    );
    r.links[0].cut_reset();
    wait_path(&r.lun, 0, false);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ios_on(&r.lun, 1) > 0, "the passive path took over");
    r.links[0].restore();
    wait_path(&r.lun, 0, true);
    let (a, b) = (ios_on(&r.lun, 0), ios_on(&r.lun, 1));
    std::thread::sleep(Duration::from_millis(300));
    assert!(ios_on(&r.lun, 0) > a, "failback to the preferred path");
    // In-flight commands of the moment may still end on path 1, nothing new goes there.
    assert!(ios_on(&r.lun, 1) <= b + 2);
    let t = w.finish();
    assert_eq!(t.errors.load(Ordering::Relaxed), 0);
    assert_eq!(t.corrupted.load(Ordering::Relaxed), 0);
}

#[test]
fn a_path_failed_by_the_operator_takes_nothing_until_restored() {
    let r = rig(Policy::RoundRobin, IscsiOptions::default());
    let w = Workload::start(&r.lun, 2);
    std::thread::sleep(Duration::from_millis(200));
    let portal0 = r.lun.paths()[0].portal.clone();
    assert!(r.lun.set_path_failed("192.0.2.1:3260", true).is_err());
    r.lun.set_path_failed(&portal0, true).expect("fail path 0");
    assert!(r.lun.paths()[0].admin_failed);
    assert!(r.lun.paths()[0].to_string().contains("failed-by-operator"));
    // What path 0 had in flight ends there; nothing new goes to it.
    std::thread::sleep(Duration::from_millis(200));
    let (a, b) = (ios_on(&r.lun, 0), ios_on(&r.lun, 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ios_on(&r.lun, 0), a, "a failed path takes no commands");
    assert!(ios_on(&r.lun, 1) > b, "the other path carries the I/O");
    // With both failed, commands wait (an outage), and go on once one is restored.
    let portal1 = r.lun.paths()[1].portal.clone();
    r.lun.set_path_failed(&portal1, true).expect("fail path 1");
    std::thread::sleep(Duration::from_millis(300));
    r.lun
        .set_path_failed(&portal0, false)
        .expect("restore path 0");
    r.lun
        .set_path_failed(&portal1, false)
        .expect("restore path 1");
    let c = ios_on(&r.lun, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(ios_on(&r.lun, 0) > c, "a restored path carries I/O again");
    let t = w.finish();
    assert_eq!(t.errors.load(Ordering::Relaxed), 0);
    assert_eq!(t.corrupted.load(Ordering::Relaxed), 0);
}

#[test]
fn all_paths_down_shorter_than_no_path_retry_is_only_a_delay() {
    let opts = IscsiOptions {
        recovery_timeout: Duration::from_secs(4),
        ..IscsiOptions::default()
    };
    let r = rig(Policy::RoundRobin, opts);
    let w = Workload::start(&r.lun, 2);
    std::thread::sleep(Duration::from_millis(300));
    r.links[0].cut_reset();
    r.links[1].cut_silent();
    wait_path(&r.lun, 0, false);
    wait_path(&r.lun, 1, false);
    std::thread::sleep(Duration::from_millis(800));
    r.links[0].restore();
    r.links[1].restore();
    wait_path(&r.lun, 0, true);
    let done = r.lun.paths()[0].ios;
    std::thread::sleep(Duration::from_millis(300));
    assert!(r.lun.paths()[0].ios > done, "I/O resumed");
    let t = w.finish();
    println!(
        "all paths down for less than no_path_retry: worst command {:.1} ms, {} errors",
        t.max_stall_us.load(Ordering::Relaxed) as f64 / 1000.0,
        t.errors.load(Ordering::Relaxed)
    );
    assert_eq!(t.errors.load(Ordering::Relaxed), 0);
    assert_eq!(t.corrupted.load(Ordering::Relaxed), 0);
}

#[test]
fn all_paths_down_longer_than_no_path_retry_fails_then_resumes() {
    let opts = IscsiOptions {
        recovery_timeout: Duration::from_secs(1),
        ..IscsiOptions::default()
    };
    let r = rig(Policy::RoundRobin, opts);
    let (c, _) = run(&r.lun, &read16(0, 1), Vec::new(), 512);
    assert!(ok(&c));
    r.links[0].cut_silent();
    r.links[1].cut_silent();
    wait_path(&r.lun, 0, false);
    wait_path(&r.lun, 1, false);
    // A command now waits for a path, then fails once the outage is older than the bound.
    let (c, took) = run(&r.lun, &read16(0, 1), Vec::new(), 512);
    assert_eq!(c.result.err(), Some(TransportError::Timeout));
    assert!(took < Duration::from_secs(30));
    // Past the bound, new commands fail at once instead of queueing.
    let (c, _) = run(&r.lun, &read16(0, 1), Vec::new(), 512);
    assert_eq!(c.result.err(), Some(TransportError::Timeout));
    r.links[1].restore();
    wait_path(&r.lun, 1, true);
    let (c, _) = run(&r.lun, &read16(0, 1), Vec::new(), 512);
    assert!(ok(&c), "I/O resumes when a path returns");
    r.links[0].restore();
    wait_path(&r.lun, 0, true);
}

#[test]
fn unreachable_secondary_path_does_not_stop_the_lun() {
    let tgtd = Tgtd::start(8 * MIB, Accounts::default());
    let url = format!("iscsi://127.0.0.1:{}/{IQN}/1", tgtd.port);
    // Nothing listens on this one (a port of our own that we close again).
    let dead = std::net::TcpListener::bind("127.0.0.4:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let mp = MultipathOptions {
        extra_portals: vec![dead.to_string()],
        ..MultipathOptions::default()
    };
    let lun = IscsiLun::connect_multipath(
        &IscsiUrl::parse(&url).unwrap(),
        &IscsiOptions::default(),
        &mp,
    )
    .expect("one working path is enough");
    let p = lun.paths();
    assert!(p[0].up && !p[1].up);
    let (c, _) = run(&lun, &read16(0, 1), Vec::new(), 512);
    assert!(ok(&c));
    // Both unreachable: the login error is reported.
    let mp = MultipathOptions {
        extra_portals: vec![dead.to_string()],
        ..MultipathOptions::default()
    };
    let bad = IscsiUrl::parse(&format!("iscsi://{dead}/{IQN}/1")).unwrap();
    assert!(IscsiLun::connect_multipath(&bad, &IscsiOptions::default(), &mp).is_err());
}

mod through_the_daemon {
    //! The same through vscsid: the CLI's path options, a guest driver's view of a path
    //! failing, and the guest's aborts of commands that wait for a path.
    use super::common::{cmd, good, guest_command, lun, Daemon, Disk};
    use super::*;
    use vscsid::frontend::{ScsiFrontend, VirtioScsiRequest};

    #[test]
    fn path_cut_and_aborts_through_the_daemon() {
        let tgtd = Tgtd::start(32 * MIB, Accounts::default());
        let upstream: SocketAddr = format!("127.0.0.1:{}", tgtd.port).parse().unwrap();
        let links: Vec<Link> = ["127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|ip| Link::start(ip, upstream))
            .collect();
        let spec = format!(
            "iscsi://{}/{IQN}/1,path={},policy=round-robin,rr-ios=2,no-path-retry=60",
            links[0].portal(),
            links[1].portal()
        );
        let d = Daemon::start(
            &[Disk {
                name: "local.img",
                size: MIB,
                opts: "",
            }],
            &["--iscsi", &spec, "--num-queues", "1"],
        );
        let mut fe = d.connect(1);
        let write_verify = |fe: &mut ScsiFrontend, i: u64| {
            let data = pattern(i, 8 * 512);
            let w = write16(i * 8, 8);
            good(&guest_command(fe, &cmd(1, &w, &data, 0)));
            let r = read16(i * 8, 8);
            let back = guest_command(fe, &cmd(1, &r, &[], 8 * 512));
            good(&back);
            assert_eq!(
                crc32c::crc32c(&back.data_in),
                crc32c::crc32c(&data),
                "block {i}"
            );
        };
        for i in 0..20 {
            write_verify(&mut fe, i);
        }
        links[0].cut_reset();
        for i in 20..60 {
            write_verify(&mut fe, i);
        }
        links[0].restore();
        // Every block written before, during and after the cut reads back.
        for i in 0..60 {
            let r = read16(i * 8, 8);
            let back = guest_command(&mut fe, &cmd(1, &r, &[], 8 * 512));
            assert_eq!(back.data_in, pattern(i, 8 * 512), "block {i}");
        }

        // Both paths silent: commands wait for a path; the guest aborts them.
        links[0].cut_silent();
        links[1].cut_silent();
        // Past the NOP timeout (0.6 s by default) both paths are known to be down.
        std::thread::sleep(Duration::from_millis(2000));
        let read = read16(0, 1);
        let req = |tag| VirtioScsiRequest {
            lun: lun(1),
            tag,
            cdb: &read,
            data_out: &[],
            data_in_len: 512,
        };
        fe.submit(2, &req(77)).unwrap();
        fe.submit(2, &req(78)).unwrap();
        fe.submit(2, &req(79)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // ABORT TASK for tag 78, then ABORT TASK SET for the rest.
        assert_eq!(fe.tmf(0, lun(1), 78).unwrap(), 0, "ABORT TASK");
        let (_, r) = fe.complete(2).expect("aborted command answered");
        assert_eq!(r.response, 2, "ABORTED: {r:?}");
        assert_eq!(fe.tmf(1, lun(1), 0).unwrap(), 0, "ABORT TASK SET");
        for _ in 0..2 {
            let (_, r) = fe.complete(2).expect("aborted command answered");
            assert_eq!(r.response, 2, "ABORTED: {r:?}");
        }
        // The paths come back and so does I/O.
        links[0].restore();
        links[1].restore();
        let back = guest_command(&mut fe, &cmd(1, &read, &[], 512));
        good(&back);
    }

    /// READs in flight on a path when it fails are reissued on the other path, and their
    /// data lands in the guest's buffers (in place, from the second path's reader).
    #[test]
    fn reads_in_flight_on_a_failed_path_land_after_the_reissue() {
        const READS: u64 = 16;
        const BLOCKS: u32 = 128;
        let tgtd = Tgtd::start(32 * MIB, Accounts::default());
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
        let d = Daemon::start(&[], &["--iscsi", &spec, "--num-queues", "1"]);
        let mut fe = d.connect(1);
        let len = BLOCKS * 512;
        for i in 0..READS {
            let w = write16(i * u64::from(BLOCKS), BLOCKS);
            good(&guest_command(
                &mut fe,
                &cmd(0, &w, &pattern(i, len as usize), 0),
            ));
        }
        // Path 0 goes silent before the READs go out: the daemon does not know yet, sends
        // every other one down it, and reissues those once the path is declared dead.
        links[0].cut_silent();
        let mut heads = std::collections::HashMap::new();
        for i in 0..READS {
            let r = read16(i * u64::from(BLOCKS), BLOCKS);
            heads.insert(fe.submit(2, &cmd(0, &r, &[], len)).unwrap(), i);
        }
        for _ in 0..READS {
            let (head, r) = fe.complete(2).expect("answered after the reissue");
            let i = heads.remove(&head).expect("a submitted command");
            good(&r);
            assert_eq!(r.data_in, pattern(i, len as usize), "read {i}");
        }
        links[0].restore();
    }
}
