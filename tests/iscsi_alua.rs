//! ALUA followed after login, against the scripted ALUA target (tgtd cannot change a port
//! group's state): one LUN through two portals in two target port groups. A writer writes
//! and reads back patterns while the test switches the groups' states; it counts every
//! answer that is not GOOD as an error, so a unit attention or NOT READY the LUN let
//! through counts too.

mod common;
mod iscsi_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pattern, read16, write16};
use iscsi_common::alua_target::*;
use vscsid::iscsi::{IscsiLun, IscsiOptions, IscsiUrl, MultipathOptions, Policy};
use vscsid::scsi::task::{command, ScsiCompletion, TransportError};

const MIB: usize = 1 << 20;

fn ok(c: &ScsiCompletion) -> bool {
    matches!(&c.result, Ok(st) if st.status == 0)
}

/// What the writer saw.
#[derive(Default)]
struct Tally {
    ios: AtomicU64,
    errors: AtomicU64,
    corrupted: AtomicU64,
}

struct Writer {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Writes a fresh pattern, reads it back, compares; over 64 places of 8 KiB.
    fn start(lun: &Arc<IscsiLun>) -> Writer {
        let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
        let (l, s, t) = (lun.clone(), stop.clone(), tally.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Acquire) && i < 1_000_000 {
                let lba = (i % 64) * 16;
                let data = pattern(i, 16 * 512);
                let w = l.execute(command(&write16(lba, 16), data.clone(), 0));
                let r = l.execute(command(&read16(lba, 16), Vec::new(), 16 * 512));
                t.ios.fetch_add(2, Ordering::Relaxed);
                if !ok(&w) || !ok(&r) {
                    eprintln!("error: write {:?} read {:?}", w.result, r.result);
                    t.errors.fetch_add(1, Ordering::Relaxed);
                } else if r.data_in != data {
                    t.corrupted.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        });
        Writer {
            stop,
            tally,
            thread,
        }
    }

    fn finish(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("writer panicked");
        self.tally
    }
}

fn connect(target: &AluaTarget, no_path_retry: Duration) -> Arc<IscsiLun> {
    let opts = IscsiOptions {
        recovery_timeout: no_path_retry,
        ..IscsiOptions::default()
    };
    let mp = MultipathOptions {
        extra_portals: vec![target.portal(1)],
        policy: Policy::RoundRobin,
        rr_ios: 4,
        ..MultipathOptions::default()
    };
    let url = IscsiUrl::parse(&target.url()).unwrap();
    Arc::new(IscsiLun::connect_multipath(&url, &opts, &mp).expect("multipath login"))
}

/// Waits (bounded) for `cond`.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn states(lun: &IscsiLun) -> Vec<&'static str> {
    lun.paths().iter().map(|p| p.alua).collect()
}

fn io(target: &AluaTarget, port: usize) -> u64 {
    target.counters(port).io.load(Ordering::Relaxed)
}

fn wait_both_up(lun: &IscsiLun) {
    wait_for("both paths up with their ALUA states", || {
        lun.paths().iter().all(|p| p.up) && !states(lun).contains(&"no-alua")
    });
}

#[test]
fn states_are_read_at_login_and_a_switch_moves_io_without_errors() {
    let target = AluaTarget::start(16 * MIB, 10);
    let lun = connect(&target, Duration::from_secs(30));
    wait_both_up(&lun);
    assert_eq!(states(&lun), ["active/optimized", "active/non-optimized"]);
    let paths = lun.paths();
    assert_eq!(
        (paths[0].alua_group, paths[1].alua_group),
        (Some(1), Some(2))
    );
    println!("{}\n{}", paths[0], paths[1]);
    // The caller sees one path: the target's TPGS is hidden (vscsid does ALUA).
    let inq = lun.execute(command(&[0x12, 0, 0, 0, 36, 0], Vec::new(), 36));
    assert!(ok(&inq) && inq.data_in[5] & 0x30 == 0, "{inq:?}");

    let w = Writer::start(&lun);
    wait_for("I/O on the optimized port", || io(&target, 0) > 50);
    assert_eq!(io(&target, 1), 0, "the non-optimized port waits");
    target.set_states([STANDBY, ACTIVE_OPTIMIZED]);
    wait_for("the states followed", || {
        states(&lun) == ["standby", "active/optimized"]
    });
    let on_b = io(&target, 1);
    wait_for("I/O on the newly optimized port", || {
        io(&target, 1) > on_b + 50
    });
    let on_a = io(&target, 0);
    let on_b = io(&target, 1);
    wait_for("more I/O on B", || io(&target, 1) > on_b + 50);
    assert_eq!(io(&target, 0), on_a, "no I/O goes to the standby port");
    let t = w.finish();

    let paths = lun.paths();
    println!("{}\n{}", paths[0], paths[1]);
    assert!(t.ios.load(Ordering::Relaxed) > 200);
    assert_eq!(
        t.errors.load(Ordering::Relaxed),
        0,
        "errors reached the caller"
    );
    assert_eq!(t.corrupted.load(Ordering::Relaxed), 0);
    assert!(paths[0].alua_refreshes >= 2 && paths[1].alua_refreshes >= 2);
    // The writer's command in flight on A was refused and went to B; B's nexus reported
    // the state change, consumed by the LUN.
    assert!(target.counters(0).refused.load(Ordering::Relaxed) >= 1);
    assert!(paths[0].alua_redirected >= 1);
    assert!(target.counters(1).state_attentions.load(Ordering::Relaxed) >= 1);

    // And back: B goes standby, A optimized again.
    let w = Writer::start(&lun);
    target.set_states([ACTIVE_OPTIMIZED, STANDBY]);
    wait_for("the states followed back", || {
        states(&lun) == ["active/optimized", "standby"]
    });
    let on_a = io(&target, 0);
    wait_for("I/O back on A", || io(&target, 0) > on_a + 50);
    let t = w.finish();
    assert_eq!(
        t.errors.load(Ordering::Relaxed),
        0,
        "errors reached the caller"
    );
    assert_eq!(t.corrupted.load(Ordering::Relaxed), 0);
}

#[test]
fn a_transition_delays_commands_past_no_path_retry_without_failing_them() {
    // no_path_retry is 1 s; the target announces transitions of up to 20 s.
    let target = AluaTarget::start(16 * MIB, 20);
    let lun = connect(&target, Duration::from_secs(1));
    wait_both_up(&lun);
    let w = Writer::start(&lun);
    wait_for("I/O on A", || io(&target, 0) > 20);
    target.set_states([TRANSITIONING, STANDBY]);
    wait_for("A seen transitioning", || {
        states(&lun)[0] == "transitioning"
    });
    let ios = w.tally.ios.load(Ordering::Relaxed);
    // Longer than no_path_retry: commands wait for the transition, not for a path.
    std::thread::sleep(Duration::from_millis(2500));
    let during = w.tally.ios.load(Ordering::Relaxed) - ios;
    assert!(during <= 2, "no I/O completes while no port can serve it");
    target.set_states([ACTIVE_OPTIMIZED, STANDBY]);
    let ios = w.tally.ios.load(Ordering::Relaxed);
    wait_for("I/O after the transition", || {
        w.tally.ios.load(Ordering::Relaxed) > ios + 50
    });
    let t = w.finish();
    assert!(target.counters(0).refused.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        t.errors.load(Ordering::Relaxed),
        0,
        "errors reached the caller"
    );
    assert_eq!(t.corrupted.load(Ordering::Relaxed), 0);
    println!("{}\n{}", lun.paths()[0], lun.paths()[1]);
}

#[test]
fn with_every_port_unavailable_no_path_retry_applies_then_io_returns() {
    let target = AluaTarget::start(16 * MIB, 0);
    let lun = connect(&target, Duration::from_secs(1));
    wait_both_up(&lun);
    let write = || lun.execute(command(&write16(8, 8), pattern(7, 8 * 512), 0));
    assert!(ok(&write()));
    target.set_states([UNAVAILABLE, UNAVAILABLE]);
    // Queued like in an outage, then failed as no path.
    let c = write();
    assert_eq!(c.result, Err(TransportError::Timeout), "{c:?}");
    wait_for("both ports seen unavailable", || {
        states(&lun) == ["unavailable", "unavailable"]
    });
    target.set_states([ACTIVE_NON_OPTIMIZED, UNAVAILABLE]);
    // Nothing is sent while no port serves: the LUN reads the states on its own.
    wait_for("A seen active again", || {
        states(&lun)[0] == "active/non-optimized"
    });
    let c = write();
    assert!(ok(&c), "{c:?}");
    assert_eq!(target.read(8 * 512, 8 * 512), pattern(7, 8 * 512));
}
