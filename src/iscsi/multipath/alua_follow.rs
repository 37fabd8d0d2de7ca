//! Following the array's ALUA states after login (implicit ALUA: the target changes them,
//! vscsid never sets them).
//!
//! A target port tells of a state change in a command's sense: UNIT ATTENTION ASYMMETRIC
//! ACCESS STATE CHANGED (2Ah/06h), or NOT READY because the port is in transition
//! (04h/0Ah), in standby (04h/0Bh) or unavailable (04h/0Ch). The session gives such a
//! guest command back ([`port_refused`]) instead of completing it:
//! - the refusing path takes the state the sense names at once, so the selector stops
//!   using it before anything else is known;
//! - REPORT TARGET PORT GROUPS is read again on a logged-in path (the answer covers every
//!   group, so every path whose group or relative port is known gets its state from one
//!   answer), on a thread of its own; requests while a read runs are coalesced into one
//!   more read, and failed reads are retried a bounded number of times;
//! - the command is sent again when it may be. A unit attention is reported instead of
//!   running the command, so that command is always sent again (down another path, or
//!   down the same one when failover would not reissue it), and the attention, vscsid's
//!   news, never reaches the guest. After NOT READY the command goes down another path
//!   (or queues while none is usable, as in an outage) when failover would reissue it
//!   (`reissue_is_safe`); otherwise the guest gets the target's answer. Each resend
//!   counts against failover's bound (`MAX_REISSUES`).
//!
//! While a port is transitioning the states are read again every [`POLL_TRANSITION`];
//! while no logged-in path is in a usable state, every [`POLL_NO_PATH`] ([`tick`], from
//! the LUN's expiry loop): a port that carries no commands reports nothing. A transition
//! on a logged-in path holds queued commands past `no_path_retry` for at most the
//! target's implicit transition time (RTPG's extended header) or
//! [`DEFAULT_TRANSITION_BOUND`] ([`transition_holds`]); then `no_path_retry` applies as in
//! any outage.
//!
//! The guest sees one path, vscsid's LUN: standard INQUIRY reaches it with TPGS cleared
//! ([`guest_view`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::options::MAX_PATHS;
use crate::iscsi::alua::{self, PortGroups, Refusal};
use crate::iscsi::session::{Done, PathCommand};
use crate::scsi::task::ScsiCompletion;

/// How long a transition may last when the target does not say (RTPG's IMPLICIT
/// TRANSITION TIME absent or zero).
pub const DEFAULT_TRANSITION_BOUND: Duration = Duration::from_secs(60);
/// How often the states are read while a port is transitioning.
pub const POLL_TRANSITION: Duration = Duration::from_millis(150);
/// How often the states are read while no logged-in path is in a usable state.
pub const POLL_NO_PATH: Duration = Duration::from_millis(500);
/// Pause after a read that no path answered.
const RETRY_FAILED: Duration = Duration::from_millis(200);
/// Reads in a row that no path answered before the refresher gives up (until the next
/// refusal asks again).
const MAX_FAILED_READS: u32 = 5;
/// Reads of one refresher thread at most, whatever else bounds it.
const MAX_ROUNDS: u32 = 5000;

/// What the ALUA follower needs of the LUN (implemented by the LUN's core).
pub(super) trait AluaPaths: Send + Sync + Sized + 'static {
    fn follow(&self) -> &AluaFollow;
    fn path_count(&self) -> usize;
    /// The path's ALUA state (`alua`'s codes).
    fn state(&self, path: usize) -> u8;
    fn set_state(&self, path: usize, state: u8);
    /// Logged in and serving: the states are read through such a path only.
    fn serving(&self, path: usize) -> bool;
    /// One of vscsid's own commands down `path` (blocking), unit attentions taken.
    fn ask(&self, path: usize, cdb: &[u8], len: u32) -> Option<ScsiCompletion>;
    /// Whether failover sends `cdb` again once it may have run (`reissue_is_safe`).
    fn reissue_is_safe(&self, cdb: &[u8]) -> bool;
    /// How many times failover sends a command again at most (`MAX_REISSUES`).
    fn max_reissues(&self) -> u32;
    /// Sends a command down a usable path, or queues it while none is.
    fn resend(&self, command: PathCommand);
    /// Sends a command down `path` again (or as `resend` when that path is not up).
    fn resend_on(&self, path: usize, command: PathCommand);
    /// Sends the queued commands again (the states changed).
    fn flush(&self);
    fn portal(&self, path: usize) -> String;
    fn handle(&self) -> Option<Arc<Self>>;
    fn closing(&self) -> bool;
}

/// What is known of one path's target port, and its counters.
#[derive(Default)]
struct Port {
    /// Target port group + 1; 0: not known.
    group: AtomicU32,
    /// Relative target port + 1; 0: not known.
    rel_port: AtomicU32,
    /// RTPG answers that set this path's state.
    refreshes: AtomicU64,
    /// Guest commands this port refused that were sent again (elsewhere, or later).
    redirected: AtomicU64,
}

fn known(v: &AtomicU32) -> Option<u16> {
    v.load(Ordering::Relaxed)
        .checked_sub(1)
        .and_then(|n| u16::try_from(n).ok())
}

#[derive(Default)]
struct Refresher {
    running: bool,
    /// A read was asked for since the current one began.
    wanted: bool,
}

/// The LUN's ALUA follower state.
#[derive(Default)]
pub(crate) struct AluaFollow {
    ports: [Port; MAX_PATHS],
    /// The target's IMPLICIT TRANSITION TIME in seconds; 0: not given.
    transition_secs: AtomicU32,
    /// Since when some path has been transitioning.
    transition_since: Mutex<Option<Instant>>,
    refresher: Mutex<Refresher>,
    wake: Condvar,
    /// When the states were last read (or tried).
    last_read: Mutex<Option<Instant>>,
}

/// A path's port identity and counters, for its status line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PortCounters {
    pub group: Option<u16>,
    pub refreshes: u64,
    pub redirected: u64,
}

impl AluaFollow {
    fn refresher(&self) -> MutexGuard<'_, Refresher> {
        self.refresher.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn since(&self) -> MutexGuard<'_, Option<Instant>> {
        self.transition_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn counters(&self, path: usize) -> PortCounters {
        self.ports
            .get(path)
            .map(|p| PortCounters {
                group: known(&p.group),
                refreshes: p.refreshes.load(Ordering::Relaxed),
                redirected: p.redirected.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    /// How long a transition may hold commands.
    fn transition_bound(&self) -> Duration {
        match self.transition_secs.load(Ordering::Relaxed) {
            0 => DEFAULT_TRANSITION_BOUND,
            s => Duration::from_secs(u64::from(s)),
        }
    }

    /// Whether a transition in progress holds queued commands (past `no_path_retry`).
    fn transition_holds(&self) -> bool {
        self.since()
            .is_some_and(|t| t.elapsed() < self.transition_bound())
    }

    fn note_transitioning(&self, any: bool) {
        let mut since = self.since();
        match (any, since.is_some()) {
            (true, false) => *since = Some(Instant::now()),
            (false, true) => *since = None,
            _ => {}
        }
    }

    fn identity(&self, path: usize) -> (Option<u16>, Option<u16>) {
        self.ports
            .get(path)
            .map_or((None, None), |p| (known(&p.group), known(&p.rel_port)))
    }
}

/// Whether a transition holds the LUN's queued commands past `no_path_retry`: a
/// logged-in path's port is transitioning, within the transition's bound. (Paths whose
/// sessions are down hold nothing: their outage is the network's.)
pub(super) fn transition_holds<C: AluaPaths>(core: &C) -> bool {
    core.follow().transition_holds()
        && (0..core.path_count()).any(|i| core.serving(i) && core.state(i) == alua::TRANSITIONING)
}

/// After a login, before the path serves: which port group the path leads to, and every
/// known path's state from the target's answer.
pub(super) fn at_login<C: AluaPaths>(core: &C, path: usize) {
    let id = alua::query(|cdb, len| core.ask(path, cdb, len));
    if let Some(p) = core.follow().ports.get(path) {
        let plus_one = |v: Option<u16>| v.map_or(0, |v| u32::from(v) + 1);
        p.group.store(plus_one(id.group), Ordering::Relaxed);
        p.rel_port.store(plus_one(id.rel_port), Ordering::Relaxed);
    }
    match &id.groups {
        Some(groups) if groups.state_of(id.group, id.rel_port).is_some() => apply(core, groups),
        _ => set_state(core, path, alua::UNKNOWN),
    }
}

/// Sets a path's state, logging a change.
fn set_state<C: AluaPaths>(core: &C, path: usize, state: u8) {
    let old = core.state(path);
    core.set_state(path, state);
    if old != state {
        tracing::info!(
            portal = %core.portal(path),
            from = alua::name(old),
            state = alua::name(state),
            "ALUA state"
        );
    }
}

/// Every path whose port is known takes its state from `groups`.
fn apply<C: AluaPaths>(core: &C, groups: &PortGroups) {
    let f = core.follow();
    if let Some(t) = groups.transition_time {
        let secs = u32::try_from(t.as_secs()).unwrap_or(u32::MAX);
        f.transition_secs.store(secs, Ordering::Relaxed);
    }
    let mut transitioning = false;
    for path in 0..core.path_count().min(MAX_PATHS) {
        let (group, rel_port) = f.identity(path);
        if group.is_none() && rel_port.is_none() {
            continue;
        }
        if let Some(state) = groups.state_of(group, rel_port) {
            set_state(core, path, state);
            f.ports[path].refreshes.fetch_add(1, Ordering::Relaxed);
        }
        transitioning |= core.state(path) == alua::TRANSITIONING;
    }
    f.note_transitioning(transitioning);
}

/// A guest's command refused by path `path`'s port for its ALUA state (see the module
/// comment): the path takes the state named, the states are read again, and the command
/// is sent again when it may be, else completed with the target's answer.
pub(super) fn port_refused<C: AluaPaths>(
    core: &C,
    path: usize,
    mut command: PathCommand,
    answer: ScsiCompletion,
) {
    let Some(refusal) = alua::refusal(&answer) else {
        return command.done.complete(answer);
    };
    if let Some(state) = refusal.state() {
        if core.state(path) != state {
            tracing::warn!(
                portal = %core.portal(path),
                state = alua::name(state),
                "iSCSI: the target port refuses commands in its ALUA state; using other paths"
            );
        }
        core.set_state(path, state);
        if state == alua::TRANSITIONING {
            core.follow().note_transitioning(true);
        }
    }
    request_refresh(core);
    let cdb = &command.cmd.cdb[..command.cmd.cdb_len.min(32)];
    // A unit attention is reported instead of running the command: sending it again runs
    // it once. NOT READY follows the rules of failover.
    let may_resend = refusal == Refusal::StateChanged || core.reissue_is_safe(cdb);
    command.reissues += 1;
    if !may_resend || command.reissues > core.max_reissues() {
        return command.done.complete(answer);
    }
    if let Some(p) = core.follow().ports.get(path) {
        p.redirected.fetch_add(1, Ordering::Relaxed);
    }
    if core.reissue_is_safe(cdb) {
        core.resend(command);
    } else {
        // Down the nexus whose attention it met (now consumed): a command that must run
        // once, and where (a reservation's registration is repeated on the other paths).
        core.resend_on(path, command);
    }
}

/// The guest's completion of a standard INQUIRY, with TPGS hidden (`alua::hide_tpgs`);
/// any other command's `done` as it is (no allocation).
pub(super) fn guest_view(cdb: &[u8], done: Done) -> Done {
    if !alua::is_standard_inquiry(cdb) {
        return done;
    }
    Done::new(move |mut c: ScsiCompletion| {
        alua::hide_tpgs(&mut c.data_in);
        done.complete(c)
    })
}

/// Asks for the states to be read again: starts the refresher, or has the running one
/// read once more.
pub(super) fn request_refresh<C: AluaPaths>(core: &C) {
    let f = core.follow();
    {
        let mut r = f.refresher();
        r.wanted = true;
        if r.running {
            f.wake.notify_all();
            return;
        }
        r.running = true;
    }
    let Some(me) = core.handle() else {
        f.refresher().running = false;
        return;
    };
    let span = tracing::Span::current();
    let spawned =
        crate::sandbox::spawn(crate::sandbox::ThreadKind::Iscsi, "iscsi-alua", move || {
            let _span = span.entered();
            refresh_loop(&*me)
        });
    if let Err(e) = spawned {
        f.refresher().running = false;
        tracing::error!("iSCSI: cannot start the thread that reads ALUA states: {e}");
    }
}

/// Reads the states through the best logged-in path that answers; false if none did.
fn refresh_once<C: AluaPaths>(core: &C) -> bool {
    *core
        .follow()
        .last_read
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    let mut candidates: Vec<usize> = (0..core.path_count())
        .filter(|&i| core.serving(i))
        .collect();
    candidates.sort_by_key(|&i| {
        (
            !alua::usable(core.state(i)),
            alua::preference(core.state(i)),
        )
    });
    for path in candidates {
        if let Some(groups) = alua::read_port_groups(|cdb, len| core.ask(path, cdb, len)) {
            apply(core, &groups);
            return true;
        }
    }
    false
}

/// How long to wait before the next read, or None when none is needed.
fn next_read<C: AluaPaths>(
    core: &C,
    read: bool,
    failed: u32,
    started: Instant,
) -> Option<Duration> {
    if !read {
        return (failed < MAX_FAILED_READS).then_some(RETRY_FAILED);
    }
    let transitioning =
        (0..core.path_count()).any(|i| core.serving(i) && core.state(i) == alua::TRANSITIONING);
    let bound = core.follow().transition_bound();
    (transitioning && core.follow().transition_holds() && started.elapsed() < bound)
        .then_some(POLL_TRANSITION)
}

/// From the LUN's expiry loop: while paths are logged in but none is in a usable state,
/// the states are read every [`POLL_NO_PATH`] (nothing else would tell of their return).
pub(super) fn tick<C: AluaPaths>(core: &C) {
    let n = core.path_count();
    let any_serving = (0..n).any(|i| core.serving(i));
    if !any_serving || (0..n).any(|i| core.serving(i) && alua::usable(core.state(i))) {
        return;
    }
    let last = *core
        .follow()
        .last_read
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if last.is_some_and(|t| t.elapsed() < POLL_NO_PATH) {
        return;
    }
    request_refresh(core);
}

/// The refresher: reads the states while asked to, or while a transition or an ALUA
/// outage lasts (bounded in time, failures and rounds), sending queued commands after each
/// read.
fn refresh_loop<C: AluaPaths>(core: &C) {
    let f = core.follow();
    let started = Instant::now();
    let mut failed = 0;
    for _ in 0..MAX_ROUNDS {
        if core.closing() {
            break;
        }
        f.refresher().wanted = false;
        let read = refresh_once(core);
        failed = if read { 0 } else { failed + 1 };
        core.flush();
        let pause = next_read(core, read, failed, started);
        let mut r = f.refresher();
        match pause {
            // A request that came during a failed read must not make the reads spin.
            None if !r.wanted || failed >= MAX_FAILED_READS => {
                r.running = false;
                return;
            }
            None => {}
            Some(d) if !r.wanted || !read => {
                let _ = f.wake.wait_timeout(r, d);
            }
            Some(_) => {}
        }
    }
    f.refresher().running = false;
}

#[cfg(test)]
#[path = "alua_follow_tests.rs"]
mod tests;
