//! The follower against a scripted LUN: what a refused command becomes, how one RTPG
//! answer sets every path, and that concurrent requests share reads.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize};
use std::sync::Weak;

use super::*;
use crate::iscsi::multipath::MAX_REISSUES;
use crate::scsi::cdb;
use crate::scsi::status::CHECK_CONDITION;
use crate::scsi::task::{command, Residual, ScsiStatus};

/// Two paths: path i leads to target port group i + 1 (relative port i + 1).
struct Fake {
    follow: AluaFollow,
    states: [AtomicU8; 2],
    /// The groups' states the target reports.
    target: [AtomicU8; 2],
    rtpg_reads: AtomicUsize,
    resent: Mutex<Vec<u64>>,
    resent_on: Mutex<Vec<usize>>,
    /// Makes each RTPG take a while, so requests pile up behind it.
    slow: AtomicBool,
    me: Weak<Fake>,
}

fn fake() -> Arc<Fake> {
    Arc::new_cyclic(|me| Fake {
        follow: AluaFollow::default(),
        states: [
            AtomicU8::new(alua::ACTIVE_OPTIMIZED),
            AtomicU8::new(alua::ACTIVE_NON_OPTIMIZED),
        ],
        target: [
            AtomicU8::new(alua::ACTIVE_OPTIMIZED),
            AtomicU8::new(alua::ACTIVE_NON_OPTIMIZED),
        ],
        rtpg_reads: AtomicUsize::new(0),
        resent: Mutex::new(Vec::new()),
        resent_on: Mutex::new(Vec::new()),
        slow: AtomicBool::new(false),
        me: me.clone(),
    })
}

fn good(data: Vec<u8>) -> Option<ScsiCompletion> {
    Some(ScsiCompletion {
        result: Ok(ScsiStatus {
            status: 0,
            sense: Vec::new(),
        }),
        data_in: data,
        residual: Residual::default(),
    })
}

fn check(key: u8, asc: u8, ascq: u8) -> ScsiCompletion {
    let mut sense = vec![0u8; 18];
    sense[0] = 0x70;
    sense[2] = key;
    sense[7] = 10;
    sense[12] = asc;
    sense[13] = ascq;
    ScsiCompletion {
        result: Ok(ScsiStatus {
            status: CHECK_CONDITION,
            sense,
        }),
        data_in: Vec::new(),
        residual: Residual::default(),
    }
}

impl Fake {
    fn rtpg(&self) -> Vec<u8> {
        // Extended header, implicit transition time 2 s, two groups of one port each.
        let mut v = vec![0, 0, 0, 0, 0x10, 2, 0, 0];
        for (i, t) in self.target.iter().enumerate() {
            let id = i as u8 + 1;
            v.extend_from_slice(&[0x80 | t.load(Ordering::Relaxed), 0x0f, 0, id]);
            v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, id]);
        }
        let n = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&n.to_be_bytes());
        v
    }
}

impl AluaPaths for Fake {
    fn follow(&self) -> &AluaFollow {
        &self.follow
    }
    fn path_count(&self) -> usize {
        2
    }
    fn state(&self, path: usize) -> u8 {
        self.states[path].load(Ordering::Relaxed)
    }
    fn set_state(&self, path: usize, state: u8) {
        self.states[path].store(state, Ordering::Relaxed);
    }
    fn serving(&self, _path: usize) -> bool {
        true
    }
    fn ask(&self, path: usize, c: &[u8], _len: u32) -> Option<ScsiCompletion> {
        match (c[0], c[1] & 0x1f) {
            (cdb::INQUIRY, 0) => {
                let mut inq = vec![0u8; 36];
                inq[5] = 0x10;
                good(inq)
            }
            (cdb::INQUIRY, 1) => {
                let id = path as u8 + 1;
                good(vec![
                    0, 0x83, 0, 16, 0x61, 0x94, 0, 4, 0, 0, 0, id, 0x61, 0x95, 0, 4, 0, 0, 0, id,
                ])
            }
            (cdb::MAINTENANCE_IN, cdb::MI_REPORT_TARGET_PORT_GROUPS) => {
                self.rtpg_reads.fetch_add(1, Ordering::Relaxed);
                if self.slow.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                good(self.rtpg())
            }
            _ => None,
        }
    }
    fn resend(&self, command: PathCommand) {
        self.resent
            .lock()
            .unwrap()
            .push(u64::from(command.reissues));
        command.done.complete(good(Vec::new()).unwrap());
    }
    fn resend_on(&self, path: usize, command: PathCommand) {
        self.resent_on.lock().unwrap().push(path);
        command.done.complete(good(Vec::new()).unwrap());
    }
    fn flush(&self) {}
    fn reissue_is_safe(&self, cdb: &[u8]) -> bool {
        crate::iscsi::multipath::reissue_is_safe(cdb)
    }
    fn max_reissues(&self) -> u32 {
        MAX_REISSUES
    }
    fn portal(&self, path: usize) -> String {
        format!("path{path}")
    }
    fn handle(&self) -> Option<Arc<Fake>> {
        self.me.upgrade()
    }
    fn closing(&self) -> bool {
        false
    }
}

/// A command whose answer lands in the returned slot.
fn path_command(cdb: &[u8]) -> (PathCommand, Arc<Mutex<Option<ScsiCompletion>>>) {
    let slot = Arc::new(Mutex::new(None));
    let s = slot.clone();
    let c = PathCommand {
        id: 1,
        cmd: command(cdb, Vec::new(), 0),
        done: crate::scsi::task::Completer::new(move |c| *s.lock().unwrap() = Some(c)),
        reissues: 0,
        probe: false,
    };
    (c, slot)
}

/// Waits (bounded) until the refresher is idle.
fn settle(f: &Fake) {
    for _ in 0..500 {
        if !f.follow.refresher().running {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the refresher never finished");
}

#[test]
fn login_learns_the_port_and_every_known_path_follows_one_answer() {
    let f = fake();
    at_login(&*f, 0);
    at_login(&*f, 1);
    assert_eq!(f.follow.counters(1).group, Some(2));
    assert_eq!(f.state(1), alua::ACTIVE_NON_OPTIMIZED);
    assert_eq!(f.follow.transition_bound(), Duration::from_secs(2));
    f.target[0].store(alua::STANDBY, Ordering::Relaxed);
    f.target[1].store(alua::ACTIVE_OPTIMIZED, Ordering::Relaxed);
    assert!(refresh_once(&*f));
    assert_eq!(
        (f.state(0), f.state(1)),
        (alua::STANDBY, alua::ACTIVE_OPTIMIZED)
    );
    // Login of path 1 read once and this read once: two answers for each path.
    assert_eq!(f.follow.counters(0).refreshes, 3);
}

#[test]
fn a_standby_refusal_moves_a_safe_command_and_returns_an_unsafe_one() {
    let f = fake();
    at_login(&*f, 0);
    at_login(&*f, 1);
    f.target[0].store(alua::STANDBY, Ordering::Relaxed);
    f.target[1].store(alua::ACTIVE_OPTIMIZED, Ordering::Relaxed);
    let (write, answer) = path_command(&[cdb::WRITE_10]);
    port_refused(&*f, 0, write, check(2, 4, 0x0b));
    // The path is standby at once, before any read.
    assert!(!alua::usable(f.state(0)));
    assert_eq!(*f.resent.lock().unwrap(), [1]);
    assert!(matches!(&answer.lock().unwrap().as_ref().unwrap().result, Ok(s) if s.status == 0));
    let (unsafe_cmd, answer) = path_command(&[cdb::COMPARE_AND_WRITE]);
    port_refused(&*f, 0, unsafe_cmd, check(2, 4, 0x0b));
    assert_eq!(
        alua::refusal(answer.lock().unwrap().as_ref().unwrap()),
        Some(Refusal::Standby)
    );
    assert_eq!(f.follow.counters(0).redirected, 1);
    settle(&f);
    assert_eq!(f.state(1), alua::ACTIVE_OPTIMIZED);
}

#[test]
fn a_state_change_attention_resends_any_command_within_the_bound() {
    let f = fake();
    let (c, _) = path_command(&[cdb::COMPARE_AND_WRITE]);
    port_refused(&*f, 1, c, check(6, 0x2a, 0x06));
    // Not one to run twice: down the same nexus, whose attention is consumed.
    assert_eq!(*f.resent_on.lock().unwrap(), [1]);
    let (c, _) = path_command(&[cdb::WRITE_16]);
    port_refused(&*f, 1, c, check(6, 0x2a, 0x06));
    assert_eq!(*f.resent.lock().unwrap(), [1]);
    // The path's state is not guessed from an attention.
    assert_eq!(f.state(1), alua::ACTIVE_NON_OPTIMIZED);
    let (mut c, answer) = path_command(&[cdb::READ_10]);
    c.reissues = MAX_REISSUES;
    port_refused(&*f, 1, c, check(6, 0x2a, 0x06));
    assert_eq!(
        f.resent.lock().unwrap().len(),
        1,
        "past MAX_REISSUES it is answered"
    );
    assert!(answer.lock().unwrap().is_some());
    settle(&f);
}

#[test]
fn concurrent_refusals_share_reads() {
    let f = fake();
    at_login(&*f, 0);
    at_login(&*f, 1);
    let before = f.rtpg_reads.load(Ordering::Relaxed);
    f.slow.store(true, Ordering::Relaxed);
    for _ in 0..50 {
        let (c, _) = path_command(&[cdb::READ_10]);
        port_refused(&*f, 0, c, check(6, 0x2a, 0x06));
    }
    settle(&f);
    let reads = f.rtpg_reads.load(Ordering::Relaxed) - before;
    assert!((1..=3).contains(&reads), "{reads} reads for 50 refusals");
}

#[test]
fn a_transition_is_polled_until_it_ends_and_holds_the_queue_meanwhile() {
    let f = fake();
    at_login(&*f, 0);
    at_login(&*f, 1);
    f.target[0].store(alua::TRANSITIONING, Ordering::Relaxed);
    f.target[1].store(alua::UNAVAILABLE, Ordering::Relaxed);
    let (c, _) = path_command(&[cdb::READ_10]);
    port_refused(&*f, 0, c, check(2, 4, 0x0a));
    assert!(f.follow.transition_holds());
    // The refresher keeps reading while the port transitions.
    let start = f.rtpg_reads.load(Ordering::Relaxed);
    for _ in 0..500 {
        if f.rtpg_reads.load(Ordering::Relaxed) >= start + 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(f.rtpg_reads.load(Ordering::Relaxed) >= start + 3);
    f.target[0].store(alua::ACTIVE_OPTIMIZED, Ordering::Relaxed);
    settle(&f);
    assert_eq!(f.state(0), alua::ACTIVE_OPTIMIZED);
    assert!(!f.follow.transition_holds());
}
