//! A disk LUN's reservations: the SPC-4 rules of [`crate::scsi::reservation`] on a state
//! kept in memory (a disk only this daemon uses) or in a state file every daemon sharing
//! the disk opens ([`SharedState`]).
//!
//! The I/O path asks [`LunReservations::check`] before each command: one atomic load of
//! the shared change counter and one of the cached state, and nothing else while the disk
//! is not reserved and no unit attention is owed. When another daemon changed the state,
//! the next command reads it again.
//!
//! PREEMPT AND ABORT across daemons: the preempting daemon leaves an abort request for
//! each preempted nexus in the state and answers only when the daemons serving them have
//! drained that LUN's commands and removed their requests, when their daemon is gone, or
//! after [`ABORT_WAIT`]. A thread per shared LUN looks for such requests every
//! [`WATCH_PERIOD`] while its nexus is registered or a preemption is pending: the bound on
//! noticing is that period, the rest is the drain. Otherwise it looks every
//! [`IDLE_WATCH_PERIOD`] (a nexus registered less than that before it is preempted may
//! notice that much later; its new commands are refused from the preemption on, as each
//! command checks the state's change counter).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{Answer, RawSense};
use crate::backend::shared_state::SharedState;
use crate::scsi::reservation::{
    self, access, persistent_reserve_in, persistent_reserve_out, reserve_release, Access, PrAnswer,
    ReservationState,
};
use crate::scsi::task::{Completer, ScsiCompletion, ScsiStatus};
use crate::scsi::{cdb, status, DataOut, Sense};

/// How often a shared LUN's thread looks for abort requests and finished preemptions while
/// its nexus is registered (a possible victim of PREEMPT AND ABORT) or something is pending.
pub const WATCH_PERIOD: Duration = Duration::from_millis(10);
/// How often it looks otherwise: each look is a wake-up (on a small VM 100 a second cost
/// 0.5 % of a core per shared LUN, idle), and an unregistered nexus has nothing to abort.
pub const IDLE_WATCH_PERIOD: Duration = Duration::from_millis(500);
/// How long a PREEMPT AND ABORT waits for the preempted daemons to drain.
pub const ABORT_WAIT: Duration = Duration::from_secs(30);

/// Where a LUN's reservations are kept, and who this daemon is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReservationSetup {
    /// This daemon's nexus name (`initiator_id`).
    pub nexus: String,
    /// The state directory (`state_dir`): shared disks keep their state there, and any
    /// disk's survives a restart when APTPL is set. None: in memory, without APTPL.
    pub state_dir: Option<PathBuf>,
}

enum Store {
    Memory(Mutex<ReservationState>),
    File(SharedState),
}

/// The cached state and the change count it belongs to.
struct Snapshot {
    changes: u64,
    state: ReservationState,
    /// Nothing is reserved and nothing is owed to this nexus: every command may go.
    quiet: bool,
}

/// A PREEMPT AND ABORT waiting for other daemons to drain.
struct Waiting {
    id: u64,
    victims: Vec<String>,
    deadline: Instant,
    reply: Completer,
}

/// A LUN's reservations for the operator (`vscsid ctl reservations`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReservationReport {
    pub nexus: String,
    pub state_file: Option<PathBuf>,
    pub state: ReservationState,
}

/// What a reservation command came to.
pub enum PrStep {
    Done(Answer),
    /// A PREEMPT AND ABORT whose answer waits for other daemons ([`LunReservations::wait_for`]).
    WaitForAborts {
        id: u64,
        victims: Vec<String>,
    },
}

pub struct LunReservations {
    me: String,
    store: Store,
    cache: ArcSwap<Snapshot>,
    next_abort: AtomicU64,
    waiting: Mutex<Vec<Waiting>>,
    /// The thread watching a state file, woken when this daemon changes the state or
    /// waits for a preemption (it may be in a long sleep).
    watcher: Mutex<Option<std::thread::Thread>>,
    /// Commands of the LUN between start and end (the drain a PREEMPT AND ABORT waits for).
    pub(super) active: AtomicU32,
    stopping: AtomicBool,
}

fn decode(payload: &[u8]) -> ReservationState {
    if payload.is_empty() {
        return ReservationState::default();
    }
    serde_json::from_slice(payload).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the reservation state file is unreadable; starting from no reservations");
        ReservationState::default()
    })
}

fn encode(state: &ReservationState) -> Vec<u8> {
    serde_json::to_vec(state).unwrap_or_default()
}

fn snapshot(changes: u64, state: ReservationState, me: &str) -> Snapshot {
    let quiet =
        state.reservation.is_none() && state.spc2_holder.is_none() && !state.owes_attention(me);
    Snapshot {
        changes,
        state,
        quiet,
    }
}

/// RESERVATION CONFLICT: a status without sense.
pub fn conflict() -> Answer {
    Answer::Status {
        status: status::RESERVATION_CONFLICT,
        sense: RawSense::new(&[]),
        data_in: 0,
    }
}

impl LunReservations {
    /// The reservations of a LUN identified by `identity` (its NAA, in hex). `shared`: several
    /// daemons use the disk, so the state lives in `setup.state_dir` (required). A
    /// disk only this daemon uses keeps it there too when a state directory is set (for
    /// APTPL), else in memory.
    pub fn open(
        setup: &ReservationSetup,
        identity: &str,
        shared: bool,
    ) -> Result<Arc<LunReservations>, String> {
        let me = setup.nexus.clone();
        let store = match &setup.state_dir {
            Some(dir) => {
                // Created at start-up when missing; a LUN added later (under the system
                // call filters, which leave mkdir out) finds it there.
                if !dir.is_dir() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        format!("state_dir {}: cannot create it: {e}", dir.display())
                    })?;
                }
                let path = state_path(dir, identity);
                let opened = SharedState::open(&path, &me, |current| {
                    // The first daemon in: a power-on for the LUN.
                    let mut s = decode(current.unwrap_or(&[]));
                    s.power_on();
                    Some(encode(&s))
                })
                .map_err(|e| format!("reservation state {}: {e}", path.display()))?;
                Store::File(opened.state)
            }
            None if shared => {
                return Err("a shared disk keeps its reservations in a state file: set --state-dir (daemon.state_dir)".into())
            }
            None => Store::Memory(Mutex::new(ReservationState::default())),
        };
        let r = Arc::new(LunReservations {
            cache: ArcSwap::from_pointee(snapshot(0, ReservationState::default(), &me)),
            me,
            store,
            next_abort: AtomicU64::new(1),
            waiting: Mutex::new(Vec::new()),
            watcher: Mutex::new(None),
            active: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
        });
        r.refresh();
        if matches!(r.store, Store::File(_)) {
            let weak = Arc::downgrade(&r);
            crate::sandbox::spawn(
                crate::sandbox::ThreadKind::Reservations,
                "vscsid-pr",
                move || {
                    watch(weak);
                },
            )
            .map_err(|e| format!("cannot start the reservation thread: {e}"))?;
        }
        Ok(r)
    }

    /// The state file, if the state is kept in one.
    pub fn state_file(&self) -> Option<&Path> {
        match &self.store {
            Store::File(f) => Some(f.path()),
            Store::Memory(_) => None,
        }
    }

    /// The state now, read again if another daemon changed it.
    pub fn report(&self) -> ReservationReport {
        ReservationReport {
            nexus: self.me.clone(),
            state_file: self.state_file().map(Path::to_path_buf),
            state: self.current().state.clone(),
        }
    }

    fn aptpl_capable(&self) -> bool {
        matches!(self.store, Store::File(_))
    }

    /// Reads the state again into the cache.
    fn refresh(&self) -> Arc<Snapshot> {
        let snap = match &self.store {
            Store::Memory(m) => {
                let s = m.lock().unwrap_or_else(|e| e.into_inner()).clone();
                snapshot(0, s, &self.me)
            }
            Store::File(f) => match f.read() {
                Ok((changes, payload)) => snapshot(changes, decode(&payload), &self.me),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the reservation state");
                    return self.cache.load_full();
                }
            },
        };
        let snap = Arc::new(snap);
        self.cache.store(snap.clone());
        snap
    }

    fn current(&self) -> Arc<Snapshot> {
        let snap = self.cache.load_full();
        match &self.store {
            Store::File(f) if f.changes() != snap.changes => self.refresh(),
            _ => snap,
        }
    }

    /// Whether the command may run: None when it may, else its answer (RESERVATION
    /// CONFLICT, or a unit attention owed to this nexus). Cheap when nothing is reserved.
    pub fn check(&self, cdb: &[u8]) -> Option<Answer> {
        let snap = self.cache.load();
        let stale = match &self.store {
            Store::File(f) => f.changes() != snap.changes,
            Store::Memory(_) => false,
        };
        if snap.quiet && !stale {
            return None;
        }
        drop(snap);
        let snap = self.current();
        if snap.quiet {
            return None;
        }
        if snap.state.owes_attention(&self.me)
            && !matches!(
                cdb.first(),
                Some(&cdb::INQUIRY | &cdb::REPORT_LUNS | &cdb::REQUEST_SENSE)
            )
        {
            if let Some(sense) = self.take_attention() {
                return Some(Answer::Check(sense));
            }
        }
        match access(&self.current().state, &self.me, cdb) {
            Access::Allowed => None,
            Access::Conflict => Some(conflict()),
        }
    }

    fn take_attention(&self) -> Option<Sense> {
        let me = self.me.clone();
        self.modify(move |s| {
            let sense = s.take_attention(&me);
            (sense.is_some(), false, sense)
        })
        .ok()
        .flatten()
    }

    /// Changes the state with `f` (which says whether it changed it and whether the
    /// change must be durable) and refreshes the cache.
    fn modify<R>(
        &self,
        f: impl FnOnce(&mut ReservationState) -> (bool, bool, R),
    ) -> Result<R, String> {
        let r = match &self.store {
            Store::Memory(m) => {
                let mut s = m.lock().unwrap_or_else(|e| e.into_inner());
                f(&mut s).2
            }
            Store::File(file) => {
                let (r, _) = file
                    .update(|payload| {
                        let mut s = decode(payload);
                        let was_aptpl = s.aptpl;
                        let (changed, durable, r) = f(&mut s);
                        let new = changed.then(|| (encode(&s), durable || was_aptpl || s.aptpl));
                        (new, r)
                    })
                    .map_err(|e| e.to_string())?;
                r
            }
        };
        self.refresh();
        self.wake_watcher();
        Ok(r)
    }

    fn wake_watcher(&self) {
        if let Some(t) = &*self.watcher.lock().unwrap_or_else(|e| e.into_inner()) {
            t.unpark();
        }
    }

    /// Runs a reservation command (PERSISTENT RESERVE IN/OUT, RESERVE, RELEASE); None for
    /// any other command. Access was checked by [`check`](Self::check).
    pub fn execute(
        &self,
        cdb: &[u8],
        data_out: &dyn DataOut,
        data_in: &mut [u8],
    ) -> Option<PrStep> {
        let op = *cdb.first()?;
        let answer = match op {
            reservation::PERSISTENT_RESERVE_IN => {
                let snap = self.current();
                persistent_reserve_in(&snap.state, cdb, self.aptpl_capable(), data_in)
            }
            reservation::PERSISTENT_RESERVE_OUT => {
                let id = self.next_abort.fetch_add(1, Ordering::Relaxed)
                    ^ (u64::from(std::process::id()) << 32);
                let me = self.me.clone();
                let aptpl = self.aptpl_capable();
                let res = self.modify(|s| {
                    let mut next = s.clone();
                    match persistent_reserve_out(&mut next, &me, cdb, data_out, aptpl, id) {
                        Ok(effect) => {
                            let changed = effect.changed;
                            if changed {
                                *s = next;
                            }
                            (changed, false, Ok(effect))
                        }
                        Err(a) => (false, false, Err(a)),
                    }
                });
                match res {
                    Err(e) => {
                        tracing::error!(error = %e, "cannot store the reservation state");
                        PrAnswer::Check(Sense::internal_target_failure())
                    }
                    Ok(Err(a)) => a,
                    Ok(Ok(effect)) if !effect.aborted.is_empty() => {
                        return Some(PrStep::WaitForAborts {
                            id,
                            victims: effect.aborted,
                        })
                    }
                    Ok(Ok(_)) => PrAnswer::Good(0),
                }
            }
            reservation::RESERVE_6
            | reservation::RELEASE_6
            | reservation::RESERVE_10
            | reservation::RELEASE_10 => {
                let me = self.me.clone();
                match self.modify(|s| match reserve_release(s, &me, cdb) {
                    Ok(changed) => (changed, false, PrAnswer::Good(0)),
                    Err(a) => (false, false, a),
                }) {
                    Ok(a) => a,
                    Err(_) => PrAnswer::Check(Sense::internal_target_failure()),
                }
            }
            _ => return None,
        };
        Some(PrStep::Done(match answer {
            PrAnswer::Good(n) => Answer::Good { data_in: n as u64 },
            PrAnswer::Conflict => conflict(),
            PrAnswer::Check(s) => Answer::Check(s),
        }))
    }

    /// Answers a PREEMPT AND ABORT through `reply` once the daemons serving `victims` have
    /// drained (or are gone, or [`ABORT_WAIT`] passed).
    pub fn wait_for(&self, id: u64, victims: Vec<String>, reply: Completer) {
        let w = Waiting {
            id,
            victims,
            deadline: Instant::now() + ABORT_WAIT,
            reply,
        };
        if matches!(self.store, Store::Memory(_)) {
            // Nobody else serves a nexus of this state: nothing to wait for.
            self.finish_waiting(vec![w], id);
            return;
        }
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(w);
        self.wake_watcher();
    }

    fn finish_waiting(&self, done: Vec<Waiting>, _id: u64) {
        for w in done {
            let ids = w.id;
            let _ = self.modify(move |s| {
                let before = s.aborts.len();
                s.aborts.retain(|a| a.id != ids);
                (s.aborts.len() != before, false, ())
            });
            w.reply.complete(ScsiCompletion {
                result: Ok(ScsiStatus {
                    status: status::GOOD,
                    sense: Vec::new(),
                }),
                data_in: Vec::new(),
                residual: Default::default(),
            });
        }
    }

    /// One look of the watching thread: drain for abort requests against this nexus, and
    /// answer preemptions whose victims are done.
    /// How long the watching thread may sleep before its next look.
    fn watch_period(&self) -> Duration {
        let pending = !self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        let snap = self.current();
        if pending || snap.state.key_of(&self.me).is_some() || !snap.state.aborts.is_empty() {
            WATCH_PERIOD
        } else {
            IDLE_WATCH_PERIOD
        }
    }

    fn watch_once(&self) {
        let Store::File(file) = &self.store else {
            return;
        };
        let snap = self.current();
        if snap.state.aborts.iter().any(|a| a.nexus == self.me) {
            // Commands that passed their check before the preemption may still run; new
            // ones get RESERVATION CONFLICT (or go, if this nexus may still access).
            let until = Instant::now() + ABORT_WAIT;
            while self.active.load(Ordering::Acquire) > 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            let me = self.me.clone();
            let _ = self.modify(move |s| {
                let before = s.aborts.len();
                s.aborts.retain(|a| a.nexus != me);
                (s.aborts.len() != before, false, ())
            });
            tracing::info!("commands drained for a PREEMPT AND ABORT by another nexus");
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.is_empty() {
            return;
        }
        let state = &self.current().state;
        let now = Instant::now();
        let (done, left): (Vec<Waiting>, Vec<Waiting>) = waiting.drain(..).partition(|w| {
            now >= w.deadline
                || w.victims.iter().all(|v| {
                    !file.nexus_alive(v)
                        || !state.aborts.iter().any(|a| a.id == w.id && a.nexus == *v)
                })
        });
        *waiting = left;
        drop(waiting);
        for w in &done {
            if now >= w.deadline {
                tracing::error!(victims = ?w.victims, "PREEMPT AND ABORT answered before the preempted daemons drained");
            }
        }
        let id = done.first().map_or(0, |w| w.id);
        self.finish_waiting(done, id);
    }

    /// A logical unit reset: releases an SPC-2 reservation.
    pub fn reset(&self) {
        let _ = self.modify(|s| {
            let had = s.spc2_holder.is_some();
            s.lu_reset();
            (had, false, ())
        });
    }

    /// The daemon lets go of the LUN: its thread stops. The state stays as it is, as a
    /// real LUN's does when one initiator goes (registrations and reservations are the
    /// cluster's; a daemon restarted with the same `initiator_id` is the same nexus).
    pub fn close(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

/// The state file of the LUN whose NAA is `identity` (hex digits).
pub fn state_path(dir: &Path, identity: &str) -> PathBuf {
    let name: String = identity
        .trim_start_matches("0x")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    dir.join(format!("reservations-{name}.state"))
}

fn watch(weak: Weak<LunReservations>) {
    if let Some(r) = weak.upgrade() {
        *r.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
    }
    let mut period = WATCH_PERIOD;
    loop {
        // Woken early when this daemon changes the state (it may have just registered).
        std::thread::park_timeout(period);
        let Some(r) = weak.upgrade() else {
            return;
        };
        if r.stopping.load(Ordering::Acquire) {
            return;
        }
        r.watch_once();
        period = r.watch_period();
    }
}
