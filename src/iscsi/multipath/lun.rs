//! One iSCSI LUN over its paths: logging in on each, sending every command down the path
//! the selector picks, queueing commands while no path is up and failing them past
//! `no_path_retry`, failing over the commands a lost path held (those that are safe to run
//! twice, at most `MAX_REISSUES` times each), ALUA state per path, and task management
//! across the paths.
//!
//! A guest's persistent reservation registration is applied on every path, and on paths
//! that log in later (`reservation`).
//!
//! An outage (no usable path) ends when a path proves healthy (`Session::is_healthy`), not
//! when one merely logs in: a path that logs in and fails again at once does not keep
//! `no_path_retry` from running out.

mod events;
mod pr;
mod status;

pub use status::PathStatus;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::alua_follow::{self, AluaFollow, AluaPaths};
use super::attention::{self, HeldAttention};
use super::options::{check_distinct_portals, split_portal, MultipathOptions, Policy, MAX_PATHS};
use super::reservation::{self, PrOut, Registration, Remembered, Repeat};
use super::selector::{PathView, Selector};
use crate::iscsi::alua;
use crate::iscsi::login::LoginError;
use crate::iscsi::options::IscsiOptions;
use crate::iscsi::registry::{self, Attachment};
use crate::iscsi::session::{Done, LostPath, PathCommand, PathEvents, Session};
use crate::iscsi::url::IscsiUrl;
use crate::scsi::task::{
    Residual, ScsiCommand, ScsiCompletion, ScsiStatus, TmfFunction, TransportError,
};
use crate::scsi::LunId;

/// How many times a command that reached the target is sent again after its path failed
/// with it. A path that fails each time the command is sent (a target that breaks the
/// protocol on it, say) would otherwise take it round forever: past this bound the command
/// fails as it would after `no_path_retry` (CHECK CONDITION, HARDWARE ERROR, LOGICAL UNIT
/// COMMUNICATION FAILURE). Real failovers reissue a command once or twice.
pub const MAX_REISSUES: u32 = 5;

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

/// One path: its session (shared with the target's other LUNs on that portal), priority
/// group and ALUA state, which are this LUN's own.
struct Path {
    /// This LUN's place on the session: its commands go through it.
    attachment: Attachment,
    session: Arc<Session>,
    priority: u32,
    /// The path's ALUA state (one of `alua`'s codes); `alua::UNKNOWN` when the target
    /// reports no TPGS.
    alua: AtomicU8,
    /// Logged in, with the new nexus's unit attentions taken and ALUA read: guest
    /// commands go down it only then (the session is up a little earlier, for those).
    serving: AtomicBool,
    /// Failed by the operator (`vscsid ctl path ... fail`, for maintenance): no new
    /// command goes down it until it is restored; the session stays logged in.
    admin_failed: AtomicBool,
}

impl Path {
    fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
            && !self.admin_failed.load(Ordering::Acquire)
            && self.session.is_up()
    }
}

struct CoreState {
    selector: Selector,
    /// Commands waiting for a path, oldest first.
    queued: VecDeque<PathCommand>,
    /// When the LUN last found no usable path; None once some path has proved healthy.
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
    /// A unit attention met while clearing a new nexus's, for the guest's next command.
    held_attention: HeldAttention,
    /// The guest's persistent reservation registration, for paths that log in later.
    registration: Mutex<Remembered>,
    /// ALUA states followed after login (`alua_follow`).
    alua_follow: AluaFollow,
    /// This LUN, for completions that act on it after the guest's command.
    me: Weak<Core>,
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
        check_distinct_portals((&url.host, url.port), &mp.extra_portals)
            .map_err(LoginError::Protocol)?;
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
                .map(|(i, u)| {
                    let attachment = registry::attach(u, opts, i, events.clone());
                    Path {
                        session: attachment.session().clone(),
                        attachment,
                        priority: mp.priorities.get(i).copied().unwrap_or(
                            if mp.policy == Policy::Failover {
                                i as u32
                            } else {
                                0
                            },
                        ),
                        alua: AtomicU8::new(alua::UNKNOWN),
                        serving: AtomicBool::new(false),
                        admin_failed: AtomicBool::new(false),
                    }
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
                held_attention: HeldAttention::default(),
                registration: Mutex::new(Remembered::Nothing),
                alua_follow: AluaFollow::default(),
                me: me.clone(),
            }
        });
        let multipath = core.paths.len() > 1;
        let mut first_error = None;
        let mut up = 0;
        for p in &core.paths {
            match p.attachment.start(multipath) {
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
            core.close(Duration::ZERO);
            return Err(first_error.unwrap_or(LoginError::Protocol("no path".into())));
        }
        let weak = Arc::downgrade(&core);
        let span = tracing::Span::current();
        crate::sandbox::spawn(
            crate::sandbox::ThreadKind::Iscsi,
            "iscsi-multipath",
            move || {
                let _span = span.entered();
                expiry_loop(weak)
            },
        )
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
                usable: p.is_serving() && alua::usable(state),
                rank: (p.priority, alua::preference(state)),
                outstanding: p.session.outstanding(),
            };
        }
        (out, self.paths.len().min(MAX_PATHS))
    }

    fn choose(&self) -> Option<usize> {
        if let [only] = self.paths.as_slice() {
            // One path: nothing to choose, no allocation or lock per command.
            let usable = only.is_serving() && alua::usable(only.alua.load(Ordering::Relaxed));
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
        if let Some(sense) = self
            .held_attention
            .take_for(&cmd.cdb[..cmd.cdb_len.min(32)])
        {
            done.complete(ScsiCompletion {
                result: Ok(ScsiStatus {
                    status: crate::scsi::status::CHECK_CONDITION,
                    sense,
                }),
                data_in: Vec::new(),
                residual: Residual::default(),
            });
            return id;
        }
        let done = alua_follow::guest_view(&cmd.cdb[..cmd.cdb_len.min(32)], done);
        let pr_out = reservation::classify(&cmd.cdb[..cmd.cdb_len.min(32)], &cmd.data_out);
        let done = match pr_out {
            Some(PrOut::Register(r)) => {
                return self.submit_everywhere(id, cmd, done, r.repeat(), Some(r), cork)
            }
            Some(PrOut::Release(r)) => return self.submit_everywhere(id, cmd, done, r, None, cork),
            Some(PrOut::Clear) => {
                // Every registration is gone, the guest's too: joining paths stay so.
                let me = self.me.clone();
                Done::new(move |c: ScsiCompletion| {
                    if let Some(core) = me.upgrade().filter(|_| is_good(&c)) {
                        *core.remembered() = Remembered::Nothing;
                    }
                    done.complete(c)
                })
            }
            _ => done,
        };
        let c = PathCommand {
            id,
            cmd,
            done,
            reissues: 0,
            probe: false,
        };
        self.dispatch(c, cork);
        id
    }

    /// Runs one of vscsid's own commands down path `p` until no unit attention answers it:
    /// a new nexus's reset attention is taken, any other held for the guest.
    fn own_command(
        &self,
        p: &Path,
        cdb: &[u8],
        data_out: Vec<u8>,
        len: u32,
    ) -> Option<ScsiCompletion> {
        for _ in 0..attention::MAX_TRIES {
            let c = self.probe(p, cdb, data_out.clone(), len)?;
            match attention::classify(&c) {
                attention::Outcome::NexusReset => {}
                attention::Outcome::AccessStateChanged => alua_follow::request_refresh(self),
                attention::Outcome::Other(sense) => self.held_attention.hold(sense),
                attention::Outcome::Clear => return Some(c),
            }
        }
        None
    }

    /// Sends what corked submissions left behind, on every path.
    pub(crate) fn flush_paths(&self) {
        for p in &self.paths {
            p.session.flush();
        }
    }

    /// Sends a command down a usable path, or queues it while none is (within
    /// `no_path_retry`), or fails it.
    fn dispatch(&self, mut q: PathCommand, cork: bool) {
        for _ in 0..=self.paths.len() {
            let Some(i) = self.choose() else {
                break;
            };
            match self.paths[i].attachment.submit(self.lun, q, cork) {
                Ok(()) => return,
                Err(back) => q = back,
            }
        }
        let mut st = self.lock();
        if self.closing.load(Ordering::Acquire) {
            drop(st);
            q.done
                .complete(ScsiCompletion::failed(TransportError::Closed));
            return;
        }
        let since = *st.outage_since.get_or_insert_with(Instant::now);
        if self.outage_expired(since) {
            drop(st);
            q.done
                .complete(ScsiCompletion::failed(TransportError::Timeout));
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

    /// Sends every queued command again (a path came up). The outage goes on until a path
    /// proves healthy ([`Core::expire`]).
    fn flush(&self) {
        let queued = std::mem::take(&mut self.lock().queued);
        for q in queued {
            self.dispatch(q, false);
        }
    }

    /// Ends the outage once a path has proved healthy; fails queued commands once it
    /// outlasts `no_path_retry`.
    fn expire(&self) {
        let in_outage = self.lock().outage_since.is_some();
        // Checked without the LUN's lock (each check takes its session's).
        if in_outage
            && self.paths.iter().any(|p| {
                p.is_serving()
                    && alua::usable(p.alua.load(Ordering::Relaxed))
                    && p.session.is_healthy()
            })
        {
            self.lock().outage_since = None;
            return;
        }
        let expired = {
            let mut st = self.lock();
            match st.outage_since {
                Some(t) if self.outage_expired(t) && !st.queued.is_empty() => {
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
            q.done
                .complete(ScsiCompletion::failed(TransportError::Timeout));
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
            q.done
                .complete(ScsiCompletion::failed(TransportError::Aborted));
            return Ok(0);
        }
        for p in &self.paths {
            if let Some(r) = p.attachment.abort_task(id) {
                return r;
            }
        }
        // Completed meanwhile: "task does not exist" is success for the guest.
        Ok(0)
    }

    /// ABORT TASK SET, CLEAR TASK SET or LOGICAL UNIT RESET: on every path that is up
    /// (each is its own I_T nexus), and for commands waiting for a path. A target reset
    /// asked of this LUN is sent as LOGICAL UNIT RESET: the session carries the target's
    /// other LUNs too, and resetting the target would abort their commands.
    pub(crate) fn reset(&self, f: TmfFunction) -> Result<u8, TransportError> {
        let f = match f {
            TmfFunction::TargetWarmReset => TmfFunction::LogicalUnitReset,
            f => f,
        };
        let queued = std::mem::take(&mut self.lock().queued);
        for q in queued {
            q.done
                .complete(ScsiCompletion::failed(TransportError::Aborted));
        }
        let mut result = Ok(0);
        for p in &self.paths {
            let r = p.attachment.reset_lun(self.lun, f);
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

    /// Fails (`fail`) or restores a path by its portal, for maintenance: a failed path
    /// takes no new command (those it has finish there); with no other path, commands
    /// queue as in an outage (`no_path_retry`). Restoring sends what queued meanwhile.
    pub(crate) fn set_path_failed(&self, portal: &str, fail: bool) -> Result<(), String> {
        let Some(p) = self.paths.iter().find(|p| p.session.portal() == portal) else {
            let known: Vec<String> = self.paths.iter().map(|p| p.session.portal()).collect();
            return Err(format!(
                "no path to {portal} (the paths are {})",
                known.join(", ")
            ));
        };
        p.admin_failed.store(fail, Ordering::Release);
        tracing::warn!(
            portal,
            "iSCSI path {} by the operator",
            if fail { "failed" } else { "restored" }
        );
        if !fail {
            self.flush();
        }
        Ok(())
    }

    /// One line per path: portal, state, counters.
    pub(crate) fn status(&self) -> Vec<PathStatus> {
        self.paths
            .iter()
            .enumerate()
            .map(|(i, p)| PathStatus {
                portal: p.session.portal(),
                session: p.session.id,
                shared_by: p.session.owner_count(),
                isid: p.session.isid(),
                up: p.session.is_up(),
                admin_failed: p.admin_failed.load(Ordering::Relaxed),
                priority: p.priority,
                alua: alua::name(p.alua.load(Ordering::Relaxed)),
                alua_group: self.alua_follow.counters(i).group,
                alua_refreshes: self.alua_follow.counters(i).refreshes,
                alua_redirected: self.alua_follow.counters(i).redirected,
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

    /// Leaves every path's session (the last LUN on a session logs it out; all within
    /// `within`) and fails what is queued.
    pub(crate) fn close(&self, within: Duration) {
        self.closing.store(true, Ordering::Release);
        self.changed.notify_all();
        let deadline = Instant::now() + within;
        for p in &self.paths {
            p.attachment
                .detach(deadline.saturating_duration_since(Instant::now()));
        }
        let queued = std::mem::take(&mut self.lock().queued);
        for q in queued {
            q.done
                .complete(ScsiCompletion::failed(TransportError::Closed));
        }
    }

    /// Runs one of vscsid's own commands down `path` and waits for its
    /// answer (blocking, at most 10 s; called from the thread that logged the path in).
    fn probe(&self, p: &Path, cdb: &[u8], data_out: Vec<u8>, len: u32) -> Option<ScsiCompletion> {
        let (tx, rx) = std::sync::mpsc::channel();
        let cmd = crate::scsi::task::command(cdb, data_out, len);
        let c = PathCommand {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            cmd,
            done: Done::new(move |c| {
                let _ = tx.send(c);
            }),
            reissues: 0,
            probe: true,
        };
        p.attachment.submit(self.lun, c, false).ok()?;
        rx.recv_timeout(Duration::from_secs(10)).ok()
    }

    /// Takes the new nexus's reset attention (`attention`) before any guest command goes
    /// down the path; holds any other attention met for the guest.
    fn clear_attentions(&self, path: usize) {
        let Some(p) = self.paths.get(path) else {
            return;
        };
        let (other, consumed) =
            attention::clear_after_login(|cdb| self.probe(p, cdb, Vec::new(), 0));
        if consumed > 0 {
            tracing::debug!(portal = %p.session.portal(), consumed, "iSCSI: new nexus's reset attention taken");
        }
        if let Some(sense) = other {
            tracing::info!(portal = %p.session.portal(), "iSCSI: unit attention after login kept for the guest");
            self.held_attention.hold(sense);
        }
    }

    /// Reads the path's ALUA state when the target supports TPGS (blocking; called from
    /// the thread that logged the path in).
    fn refresh_alua(&self, path: usize) {
        alua_follow::at_login(self, path);
    }

    /// Whether an outage that began at `since` has outlasted `no_path_retry` (an ALUA
    /// transition in progress holds it, within its own bound).
    fn outage_expired(&self, since: Instant) -> bool {
        since.elapsed() >= self.no_path_retry && !alua_follow::transition_holds(self)
    }
}

/// GOOD status from the target.
fn is_good(c: &ScsiCompletion) -> bool {
    matches!(&c.result, Ok(st) if st.status == crate::scsi::status::GOOD)
}

/// A command's outcome for a log line.
fn describe(c: Option<&ScsiCompletion>) -> String {
    match c.map(|c| &c.result) {
        None => "no answer".into(),
        Some(Ok(st)) => format!("status {:#04x}, sense {:02x?}", st.status, st.sense),
        Some(Err(e)) => e.to_string(),
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
        alua_follow::tick(&*c);
        let tick =
            (c.no_path_retry / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
        let st = c.lock();
        // Sleep on the condvar so close() ends the wait at once.
        let _ = c.changed.wait_timeout(st, tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
