//! Multipath for one iSCSI LUN: one session per portal (path), a path selector
//! (round-robin, least queue depth, or priority groups for active/passive), ALUA states
//! when the target reports them, failover of the commands a failed path held, and a
//! queue for the time no path is up (`no_path_retry`).
//!
//! A single-portal LUN is the one-path case of the same machinery: a dropped connection
//! queues its commands until the session logs in again, within the same bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::session::{Done, LostPath, PathEvents, Session};
use super::{alua, LoginError};
use super::{IscsiOptions, IscsiUrl};
use crate::scsi::task::{ScsiCommand, ScsiCompletion, TmfFunction, TransportError};
use crate::scsi::LunId;

/// Most paths one LUN may have.
pub const MAX_PATHS: usize = 16;

/// How a LUN spreads commands over its usable paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Active/active: turn to the next path after `rr_ios` commands.
    #[default]
    RoundRobin,
    /// Active/active: the path with the fewest commands outstanding.
    QueueLength,
    /// Active/passive: every path its own priority group (unless priorities say
    /// otherwise); only the best group with a usable path carries I/O.
    Failover,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(Policy::RoundRobin),
            "queue-length" => Ok(Policy::QueueLength),
            "failover" => Ok(Policy::Failover),
            o => Err(format!(
                "unknown policy '{o}' (expected round-robin, queue-length or failover)"
            )),
        }
    }
}

/// When traffic returns to a better priority group that came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Failback {
    /// As soon as a path of the better group is up again.
    #[default]
    Immediate,
    /// Never by itself: traffic stays on the group it failed over to until that group
    /// fails (or the daemon restarts).
    Manual,
}

impl std::str::FromStr for Failback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "immediate" => Ok(Failback::Immediate),
            "manual" => Ok(Failback::Manual),
            o => Err(format!(
                "unknown failback '{o}' (expected immediate or manual)"
            )),
        }
    }
}

/// Paths and path policy of one LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipathOptions {
    /// Portals (`host:port`) besides the URL's own, all leading to the same target and LUN.
    pub extra_portals: Vec<String>,
    pub policy: Policy,
    /// Commands sent down one path before round-robin turns to the next.
    pub rr_ios: u32,
    pub failback: Failback,
    /// Priority group of each path, URL's portal first; lower is preferred. Missing
    /// entries: 0 for active/active policies, the path's index for failover.
    pub priorities: Vec<u32>,
}

impl Default for MultipathOptions {
    fn default() -> Self {
        MultipathOptions {
            extra_portals: Vec::new(),
            policy: Policy::default(),
            rr_ios: 16,
            failback: Failback::default(),
            priorities: Vec::new(),
        }
    }
}

/// Whether a command that may already have run at the target can be sent again without
/// changing its outcome. Reads, writes of the guest's own data, and queries are; commands
/// whose second run differs (COMPARE AND WRITE, reservations, firmware, formatting ...)
/// are not: those go back to the guest as a transport failure, and its SCSI layer
/// decides, as it would with a real HBA.
pub fn reissue_is_safe(cdb: &[u8]) -> bool {
    use crate::scsi::cdb::*;
    matches!(
        cdb.first().copied(),
        Some(
            TEST_UNIT_READY
                | REQUEST_SENSE
                | READ_6
                | READ_10
                | READ_12
                | READ_16
                | WRITE_6
                | WRITE_10
                | WRITE_12
                | WRITE_16
                | WRITE_AND_VERIFY_10
                | WRITE_AND_VERIFY_16
                | VERIFY_10
                | VERIFY_16
                | INQUIRY
                | MODE_SENSE_6
                | MODE_SENSE_10
                | START_STOP_UNIT
                | PREVENT_ALLOW_MEDIUM_REMOVAL
                | READ_CAPACITY_10
                | SYNCHRONIZE_CACHE_10
                | SYNCHRONIZE_CACHE_16
                | WRITE_SAME_10
                | WRITE_SAME_16
                | UNMAP
                | LOG_SENSE
                // READ CAPACITY(16), GET LBA STATUS
                | SERVICE_ACTION_IN_16
                | REPORT_LUNS
                // REPORT TARGET PORT GROUPS, REPORT SUPPORTED OPERATION CODES
                | MAINTENANCE_IN
        )
    )
}

/// What the selector knows about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathView {
    pub usable: bool,
    /// Priority group, then ALUA preference: lower is better.
    pub rank: (u32, u8),
    pub outstanding: usize,
}

/// Selector state: round-robin position and the group manual failback sticks to.
#[derive(Debug, Default)]
pub(crate) struct Selector {
    current: usize,
    left: u32,
    group: Option<u32>,
}

impl Selector {
    /// The path for the next command, or None when no path is usable.
    pub(crate) fn choose(
        &mut self,
        policy: Policy,
        failback: Failback,
        rr_ios: u32,
        paths: &[PathView],
    ) -> Option<usize> {
        let best = paths.iter().filter(|p| p.usable).map(|p| p.rank).min()?;
        let mut tier = best;
        if failback == Failback::Manual {
            // Stay in the group in use while it has a usable path.
            if let Some(g) = self.group {
                if let Some(r) = paths
                    .iter()
                    .filter(|p| p.usable && p.rank.0 == g)
                    .map(|p| p.rank)
                    .min()
                {
                    tier = r;
                }
            }
        }
        self.group = Some(tier.0);
        let eligible = |i: usize| paths[i].usable && paths[i].rank == tier;
        if policy == Policy::QueueLength {
            let n = paths.len();
            // Start after the last choice so ties rotate.
            return (1..=n)
                .map(|k| (self.current + k) % n)
                .filter(|&i| eligible(i))
                .min_by_key(|&i| paths[i].outstanding)
                .inspect(|&i| self.current = i);
        }
        if self.left > 0 && self.current < paths.len() && eligible(self.current) {
            self.left -= 1;
            return Some(self.current);
        }
        let n = paths.len();
        let next = (1..=n)
            .map(|k| (self.current + k) % n)
            .find(|&i| eligible(i))?;
        self.current = next;
        self.left = rr_ios.max(1) - 1;
        Some(next)
    }
}

/// One path: its session, priority group and ALUA state.
struct Path {
    session: Arc<Session>,
    priority: u32,
    /// [`alua::State`] as u8; `alua::UNKNOWN` when the target reports no TPGS.
    alua: AtomicU8,
}

struct Queued {
    id: u64,
    cmd: ScsiCommand,
    done: Done,
}

struct CoreState {
    selector: Selector,
    /// Commands waiting for a path, oldest first.
    queued: VecDeque<Queued>,
    /// When the LUN last found no usable path; None while some path works.
    outage_since: Option<Instant>,
}

/// The LUN: its paths and everything shared between them.
pub(crate) struct Core {
    lun: LunId,
    paths: Vec<Path>,
    opts: MultipathOptions,
    no_path_retry: Duration,
    next_id: AtomicU64,
    state: Mutex<CoreState>,
    changed: Condvar,
    closing: AtomicBool,
}

impl Core {
    /// Creates the paths and logs in on each. At least one login must succeed; the others
    /// keep retrying in the background. With one path, its login error is returned.
    pub(crate) fn connect(
        url: &IscsiUrl,
        opts: &IscsiOptions,
        mp: &MultipathOptions,
    ) -> Result<Arc<Core>, LoginError> {
        if mp.extra_portals.len() + 1 > MAX_PATHS {
            return Err(LoginError::Protocol(format!(
                "at most {MAX_PATHS} paths per LUN"
            )));
        }
        let mut urls = vec![url.clone()];
        for portal in &mp.extra_portals {
            let (host, port) = split_portal(portal).map_err(LoginError::Protocol)?;
            urls.push(IscsiUrl {
                host,
                port,
                ..url.clone()
            });
        }
        let core = Arc::new_cyclic(|me: &Weak<Core>| {
            let events: Weak<dyn PathEvents> = me.clone();
            let paths = urls
                .iter()
                .enumerate()
                .map(|(i, u)| Path {
                    session: Session::new(u, opts, i, events.clone()),
                    priority: mp.priorities.get(i).copied().unwrap_or(
                        if mp.policy == Policy::Failover {
                            i as u32
                        } else {
                            0
                        },
                    ),
                    alua: AtomicU8::new(alua::UNKNOWN),
                })
                .collect();
            Core {
                lun: url.lun,
                paths,
                opts: mp.clone(),
                no_path_retry: opts.recovery_timeout,
                next_id: AtomicU64::new(1),
                state: Mutex::new(CoreState {
                    selector: Selector::default(),
                    queued: VecDeque::new(),
                    outage_since: None,
                }),
                changed: Condvar::new(),
                closing: AtomicBool::new(false),
            }
        });
        let multipath = core.paths.len() > 1;
        let mut first_error = None;
        let mut up = 0;
        for p in &core.paths {
            match p.session.start(multipath) {
                Ok(()) => up += 1,
                Err(e) => {
                    if multipath {
                        tracing::warn!(portal = %p.session.portal(), "iSCSI path login failed, retrying in the background: {e}");
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        if up == 0 {
            core.close();
            return Err(first_error.unwrap_or(LoginError::Protocol("no path".into())));
        }
        let weak = Arc::downgrade(&core);
        std::thread::Builder::new()
            .name("iscsi-multipath".into())
            .spawn(move || expiry_loop(weak))
            .map_err(|e| LoginError::Protocol(e.to_string()))?;
        Ok(core)
    }

    fn lock(&self) -> MutexGuard<'_, CoreState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the selector needs of each path, on the stack (this runs per command).
    fn views(&self) -> ([PathView; MAX_PATHS], usize) {
        let mut out = [PathView {
            usable: false,
            rank: (0, 0),
            outstanding: 0,
        }; MAX_PATHS];
        for (v, p) in out.iter_mut().zip(&self.paths) {
            let state = p.alua.load(Ordering::Relaxed);
            *v = PathView {
                usable: p.session.is_up() && alua::usable(state),
                rank: (p.priority, alua::preference(state)),
                outstanding: p.session.outstanding(),
            };
        }
        (out, self.paths.len().min(MAX_PATHS))
    }

    fn choose(&self) -> Option<usize> {
        if let [only] = self.paths.as_slice() {
            // One path: nothing to choose, no allocation or lock per command.
            let usable = only.session.is_up() && alua::usable(only.alua.load(Ordering::Relaxed));
            return usable.then_some(0);
        }
        let (views, n) = self.views();
        self.lock().selector.choose(
            self.opts.policy,
            self.opts.failback,
            self.opts.rr_ios,
            &views[..n],
        )
    }

    /// Queues a command; returns its id (for ABORT TASK). `done` runs exactly once. With
    /// `cork` its PDUs wait for [`Core::flush`], so a burst goes out in one write per path.
    pub(crate) fn submit(&self, cmd: ScsiCommand, done: Done, cork: bool) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.dispatch(Queued { id, cmd, done }, cork);
        id
    }

    /// Sends what corked submissions left behind, on every path.
    pub(crate) fn flush_paths(&self) {
        for p in &self.paths {
            p.session.flush();
        }
    }

    /// Sends a command down a usable path, or queues it while none is (within
    /// `no_path_retry`), or fails it.
    fn dispatch(&self, mut q: Queued, cork: bool) {
        for _ in 0..=self.paths.len() {
            let Some(i) = self.choose() else {
                break;
            };
            match self.paths[i]
                .session
                .submit(q.id, self.lun, q.cmd, q.done, cork)
            {
                Ok(()) => return,
                Err((cmd, done)) => {
                    q.cmd = cmd;
                    q.done = done;
                }
            }
        }
        let mut st = self.lock();
        if self.closing.load(Ordering::Acquire) {
            drop(st);
            (q.done)(ScsiCompletion::failed(TransportError::Closed));
            return;
        }
        let since = *st.outage_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.no_path_retry {
            drop(st);
            (q.done)(ScsiCompletion::failed(TransportError::Timeout));
            return;
        }
        st.queued.push_back(q);
        drop(st);
        // A path may have come up between the choice and the queueing: its flush could
        // have missed this command.
        let (views, n) = self.views();
        if views[..n].iter().any(|v| v.usable) {
            self.flush();
        }
    }

    /// Sends every queued command again (a path came up).
    fn flush(&self) {
        let queued = {
            let mut st = self.lock();
            st.outage_since = None;
            std::mem::take(&mut st.queued)
        };
        for q in queued {
            self.dispatch(q, false);
        }
    }

    /// Fails queued commands once the outage outlasts `no_path_retry`.
    fn expire(&self) {
        let expired = {
            let mut st = self.lock();
            match st.outage_since {
                Some(t) if t.elapsed() >= self.no_path_retry && !st.queued.is_empty() => {
                    std::mem::take(&mut st.queued)
                }
                _ => return,
            }
        };
        tracing::error!(
            lun = self.lun.value(),
            commands = expired.len(),
            "iSCSI: no path came back within no_path_retry; failing queued commands"
        );
        for q in expired {
            (q.done)(ScsiCompletion::failed(TransportError::Timeout));
        }
    }

    /// ABORT TASK of command `id` wherever it is; Ok(0) also when it is gone already.
    pub(crate) fn abort_task(&self, id: u64) -> Result<u8, TransportError> {
        let queued = {
            let mut st = self.lock();
            st.queued
                .iter()
                .position(|q| q.id == id)
                .and_then(|i| st.queued.remove(i))
        };
        if let Some(q) = queued {
            (q.done)(ScsiCompletion::failed(TransportError::Aborted));
            return Ok(0);
        }
        for p in &self.paths {
            if let Some(r) = p.session.abort_task(id) {
                return r;
            }
        }
        // Completed meanwhile: "task does not exist" is success for the guest.
        Ok(0)
    }

    /// ABORT TASK SET, CLEAR TASK SET or LOGICAL UNIT RESET: on every path that is up
    /// (each is its own I_T nexus), and for commands waiting for a path.
    pub(crate) fn reset(&self, f: TmfFunction) -> Result<u8, TransportError> {
        let queued = std::mem::take(&mut self.lock().queued);
        for q in queued {
            (q.done)(ScsiCompletion::failed(TransportError::Aborted));
        }
        let mut result = Ok(0);
        for p in &self.paths {
            let r = p.session.reset_lun(self.lun, f);
            if result == Ok(0) {
                result = r;
            }
        }
        result
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.paths.iter().any(|p| p.session.is_up())
    }

    pub(crate) fn outstanding(&self) -> usize {
        self.lock().queued.len()
            + self
                .paths
                .iter()
                .map(|p| p.session.outstanding())
                .sum::<usize>()
    }

    /// One line per path: portal, state, counters.
    pub(crate) fn status(&self) -> Vec<PathStatus> {
        self.paths
            .iter()
            .map(|p| PathStatus {
                portal: p.session.portal(),
                up: p.session.is_up(),
                priority: p.priority,
                alua: alua::name(p.alua.load(Ordering::Relaxed)),
                outstanding: p.session.outstanding(),
                ios: p.session.stats.ios.load(Ordering::Relaxed),
                errors: p.session.stats.errors.load(Ordering::Relaxed),
                failovers: p.session.stats.failovers.load(Ordering::Relaxed),
                last_failover: Duration::from_micros(
                    p.session.stats.last_failover_us.load(Ordering::Relaxed),
                ),
            })
            .collect()
    }

    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.changed.notify_all();
        for p in &self.paths {
            p.session.close();
        }
        let queued = std::mem::take(&mut self.lock().queued);
        for q in queued {
            (q.done)(ScsiCompletion::failed(TransportError::Closed));
        }
    }

    /// Reads the path's ALUA state when the target supports TPGS (blocking; called from
    /// the thread that logged the path in).
    fn refresh_alua(&self, path: usize) {
        let Some(p) = self.paths.get(path) else {
            return;
        };
        let state = alua::query(|cdb, len| {
            let (tx, rx) = std::sync::mpsc::channel();
            let cmd = crate::scsi::task::command(cdb, Vec::new(), len);
            let done: Done = Box::new(move |c| {
                let _ = tx.send(c);
            });
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            p.session.submit(id, self.lun, cmd, done, false).ok()?;
            rx.recv_timeout(Duration::from_secs(10)).ok()
        });
        let old = p.alua.swap(state, Ordering::Relaxed);
        if old != state {
            tracing::info!(portal = %p.session.portal(), state = alua::name(state), "ALUA state");
        }
    }
}

/// A path as the status interface and the logs show it.
#[derive(Debug, Clone)]
pub struct PathStatus {
    pub portal: String,
    pub up: bool,
    pub priority: u32,
    pub alua: &'static str,
    pub outstanding: usize,
    pub ios: u64,
    pub errors: u64,
    pub failovers: u64,
    pub last_failover: Duration,
}

impl std::fmt::Display for PathStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} priority {} alua {} outstanding {} ios {} errors {} failovers {} \
             last-failover-ms {}",
            self.portal,
            if self.up { "up" } else { "down" },
            self.priority,
            self.alua,
            self.outstanding,
            self.ios,
            self.errors,
            self.failovers,
            self.last_failover.as_millis()
        )
    }
}

impl PathEvents for Core {
    fn path_down(&self, path: usize, lost: LostPath) {
        let started = Instant::now();
        let portal = self.paths.get(path).map(|p| p.session.portal());
        let (mut reissued, mut failed) = (0usize, 0usize);
        for o in lost.orphans {
            if o.sent && !reissue_is_safe(&o.cmd.cdb[..o.cmd.cdb_len.min(32)]) {
                failed += 1;
                (o.done)(ScsiCompletion::failed(TransportError::Disrupted));
            } else {
                reissued += 1;
                self.dispatch(
                    Queued {
                        id: o.id,
                        cmd: o.cmd,
                        done: o.done,
                    },
                    false,
                );
            }
        }
        let stall = lost.silent_for + started.elapsed();
        if let Some(p) = self.paths.get(path) {
            p.session
                .stats
                .last_failover_us
                .store(stall.as_micros() as u64, Ordering::Relaxed);
            p.session
                .stats
                .errors
                .fetch_add(failed as u64, Ordering::Relaxed);
        }
        let others_up = self.paths.iter().any(|p| p.session.is_up());
        tracing::warn!(
            portal = portal.as_deref().unwrap_or("?"),
            silent_ms = lost.silent_for.as_millis() as u64,
            stall_ms = stall.as_millis() as u64,
            reissued,
            failed,
            paths_left = self.paths.iter().filter(|p| p.session.is_up()).count(),
            "iSCSI path failed{}",
            if others_up {
                ""
            } else {
                "; no path left, queueing I/O"
            }
        );
    }

    fn path_up(&self, path: usize) {
        if let Some(p) = self.paths.get(path) {
            tracing::info!(portal = %p.session.portal(), "iSCSI path up");
        }
        self.refresh_alua(path);
        self.flush();
    }
}

fn expiry_loop(core: Weak<Core>) {
    loop {
        let Some(c) = core.upgrade() else {
            return;
        };
        if c.closing.load(Ordering::Acquire) {
            return;
        }
        c.expire();
        let tick =
            (c.no_path_retry / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
        let st = c.lock();
        // Sleep on the condvar so close() ends the wait at once.
        let _ = c.changed.wait_timeout(st, tick);
    }
}

/// `host:port` or `[v6]:port` (port defaults to 3260).
pub fn split_portal(portal: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = portal.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("portal '{portal}': missing ']'"))?;
        (h.to_string(), tail.strip_prefix(':'))
    } else {
        match portal.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (portal.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("portal '{portal}': empty host"));
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("portal '{portal}': bad port '{p}'"))?,
        None => 3260,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(usable: bool, prio: u32, outstanding: usize) -> PathView {
        PathView {
            usable,
            rank: (prio, 0),
            outstanding,
        }
    }

    #[test]
    fn round_robin_turns_after_rr_ios() {
        let paths = [view(true, 0, 0), view(true, 0, 0)];
        let mut s = Selector::default();
        let picks: Vec<usize> = (0..6)
            .filter_map(|_| s.choose(Policy::RoundRobin, Failback::Immediate, 2, &paths))
            .collect();
        assert_eq!(picks, [1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn round_robin_skips_failed_paths_and_none_is_none() {
        let mut paths = [view(true, 0, 0), view(false, 0, 0), view(true, 0, 0)];
        let mut s = Selector::default();
        let picks: Vec<usize> = (0..4)
            .filter_map(|_| s.choose(Policy::RoundRobin, Failback::Immediate, 1, &paths))
            .collect();
        assert_eq!(picks, [2, 0, 2, 0]);
        for p in &mut paths {
            p.usable = false;
        }
        assert_eq!(
            s.choose(Policy::RoundRobin, Failback::Immediate, 1, &paths),
            None
        );
    }

    #[test]
    fn queue_length_takes_the_least_busy_path() {
        let paths = [view(true, 0, 5), view(true, 0, 2), view(false, 0, 0)];
        let mut s = Selector::default();
        assert_eq!(
            s.choose(Policy::QueueLength, Failback::Immediate, 1, &paths),
            Some(1)
        );
    }

    #[test]
    fn failover_uses_the_best_group_and_fails_back_immediately() {
        let mut paths = [view(true, 0, 0), view(true, 1, 0)];
        let mut s = Selector::default();
        let c = |s: &mut Selector, p: &[PathView]| {
            s.choose(Policy::Failover, Failback::Immediate, 1, p)
        };
        assert_eq!(c(&mut s, &paths), Some(0));
        assert_eq!(c(&mut s, &paths), Some(0));
        paths[0].usable = false;
        assert_eq!(c(&mut s, &paths), Some(1));
        paths[0].usable = true;
        assert_eq!(c(&mut s, &paths), Some(0));
    }

    #[test]
    fn manual_failback_stays_on_the_surviving_group() {
        let mut paths = [view(true, 0, 0), view(true, 1, 0)];
        let mut s = Selector::default();
        let c =
            |s: &mut Selector, p: &[PathView]| s.choose(Policy::Failover, Failback::Manual, 1, p);
        assert_eq!(c(&mut s, &paths), Some(0));
        paths[0].usable = false;
        assert_eq!(c(&mut s, &paths), Some(1));
        paths[0].usable = true;
        assert_eq!(c(&mut s, &paths), Some(1));
        paths[1].usable = false;
        assert_eq!(c(&mut s, &paths), Some(0));
    }

    #[test]
    fn alua_preference_orders_paths_within_a_group() {
        let paths = [
            PathView {
                usable: true,
                rank: (0, 1),
                outstanding: 0,
            },
            PathView {
                usable: true,
                rank: (0, 0),
                outstanding: 0,
            },
        ];
        let mut s = Selector::default();
        for _ in 0..3 {
            assert_eq!(
                s.choose(Policy::RoundRobin, Failback::Immediate, 1, &paths),
                Some(1)
            );
        }
    }

    #[test]
    fn reissue_classification() {
        use crate::scsi::cdb;
        assert!(reissue_is_safe(&[cdb::READ_10]));
        assert!(reissue_is_safe(&[cdb::WRITE_16]));
        assert!(reissue_is_safe(&[cdb::SYNCHRONIZE_CACHE_10]));
        assert!(!reissue_is_safe(&[cdb::COMPARE_AND_WRITE]));
        assert!(!reissue_is_safe(&[cdb::PERSISTENT_RESERVE_OUT]));
        assert!(!reissue_is_safe(&[cdb::WRITE_BUFFER]));
        assert!(!reissue_is_safe(&[]));
    }

    #[test]
    fn portals_parse() {
        assert_eq!(
            split_portal("127.0.0.2:3261"),
            Ok(("127.0.0.2".into(), 3261))
        );
        assert_eq!(split_portal("host"), Ok(("host".into(), 3260)));
        assert_eq!(split_portal("[::1]:3262"), Ok(("::1".into(), 3262)));
        assert!(split_portal(":1").is_err());
        assert!(split_portal("h:x").is_err());
        assert!(split_portal("[::1").is_err());
    }

    #[test]
    fn path_status_line_names_state_and_counters() {
        let p = PathStatus {
            portal: "10.0.2.10:3260".into(),
            up: false,
            priority: 1,
            alua: alua::name(alua::STANDBY),
            outstanding: 3,
            ios: 42,
            errors: 1,
            failovers: 2,
            last_failover: Duration::from_millis(610),
        };
        assert_eq!(
            p.to_string(),
            "10.0.2.10:3260: down priority 1 alua standby outstanding 3 ios 42 errors 1 \
             failovers 2 last-failover-ms 610"
        );
    }

    #[test]
    fn policies_parse_and_name_the_choices() {
        assert_eq!("failover".parse::<Policy>(), Ok(Policy::Failover));
        assert!("x".parse::<Policy>().unwrap_err().contains("round-robin"));
        assert_eq!("manual".parse::<Failback>(), Ok(Failback::Manual));
    }
}
