//! One session to a target through one portal, in full feature phase over one connection,
//! shared by every LUN of that target that reaches it through that portal (the session
//! `registry` hands it out): SCSI commands with immediate, unsolicited and R2T-solicited
//! data, Data-In reassembly, status and sense, the CmdSN/MaxCmdSN window, NOP keepalive
//! both ways, task management.
//!
//! Each LUN on the session is an owner (`owners`): its commands carry its id, so when the
//! connection drops (reset, silence past the NOP timeout, or a protocol error of the
//! target) the session hands every command that had no status back to the LUN it came
//! from (the multipath layer, which reissues them on another path or queues them), tells
//! every LUN the path is down, logs in again in the background with back-off, and tells
//! every LUN when it is back (ERL 0: nothing is recovered in place). A connection that
//! ended by a protocol error, or before it proved healthy, counts as a failure for the
//! back-off, like a failed login.
//!
//! This file holds the session's state and its life cycle (login into the full feature
//! phase, logout). The rest of the session is in its submodules: `owners` (the LUNs on
//! the session and what they are told), `fair` (round-robin across LUNs while the CmdSN
//! window is full), `send` (commands and their data out to the target), `receive` (the
//! reader thread and every PDU the target sends), `recovery` (keepalive, connection loss,
//! re-login) and `tmf` (task management).

mod fair;
mod owners;
mod receive;
mod recovery;
mod send;
mod tmf;

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::isid;
use super::login::{self, LoginError, Negotiated};
use super::options::IscsiOptions;
use super::pdu::{op, Pdu, F_FINAL};
use super::url::IscsiUrl;
use crate::log_limit::LogLimiter;
use crate::scsi::task::{ScsiCommand, ScsiCompletion, TransportError};
use crate::scsi::LunId;
use fair::FairQueue;
use owners::Owner;

/// Serial number arithmetic (RFC 1982): a <= b.
fn sn_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 0x8000_0000
}

/// The reserved tag value: no initiator or target task tag.
const NO_TAG: u32 = 0xffff_ffff;

pub(crate) type Done = crate::scsi::task::Completer;

/// Commands a session's table holds without growing: twice the deepest queue a guest
/// has in practice.
const PENDING_CAPACITY: usize = 256;

/// TMF answer slot value meaning "the connection went away before the answer".
const TMF_LOST: u8 = 0xff;

/// A connection that stays up this long after its login has proved healthy, even if no
/// command completed on it: its end resets the reconnect back-off, and it ends the LUN's
/// outage (`no_path_retry`).
pub(crate) const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// A command of the LUN layer on its way to a path.
pub(crate) struct PathCommand {
    /// The LUN layer's command id (stable across paths, unlike the ITT).
    pub id: u64,
    pub cmd: ScsiCommand,
    pub done: Done,
    /// How many times a failed path handed it back after it had been sent.
    pub reissues: u32,
    /// The path's own check (ALUA), not the guest's: its answer does not prove the path
    /// healthy, since a target may answer it and still fail every guest command.
    pub probe: bool,
}

/// A command the target has not answered yet.
struct Pending {
    /// The LUN (owner) that sent it.
    owner: u64,
    /// The LUN layer's command id (stable across paths, unlike the ITT).
    id: u64,
    lun: LunId,
    cmd: ScsiCommand,
    done: Option<Done>,
    reissues: u32,
    probe: bool,
    data_in: Vec<u8>,
    /// Some PDU of the command went out on the connection (the target may have run it).
    sent: bool,
    cmd_sn: u32,
}

/// A command without status taken back from a failed path.
pub(crate) struct Orphan {
    /// The LUN (owner) it goes back to.
    pub owner: u64,
    pub command: PathCommand,
    /// The target may have received (and run) it.
    pub sent: bool,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loss {
    /// The target broke the protocol (a PDU it must not send, or a length, offset or
    /// digest that is wrong): logging straight back in would only repeat it.
    Protocol,
    /// The connection failed or the target ended it: reset, closed, silent, a failed send,
    /// a logout the target asked for.
    Dropped,
}

impl Loss {
    /// What an I/O error of the connection means: the PDU reader and the PDU handlers
    /// report what the target got wrong as `InvalidData`.
    pub(super) fn of(e: &std::io::Error) -> Loss {
        if e.kind() == std::io::ErrorKind::InvalidData {
            Loss::Protocol
        } else {
            Loss::Dropped
        }
    }
}

/// What a session reports about a lost connection.
pub(crate) struct LostPath {
    /// Time since the last PDU from the target when the loss was noticed.
    pub silent_for: Duration,
    pub orphans: Vec<Orphan>,
}

/// What a LUN learns from the sessions of its paths (`path` is the path's index among the
/// LUN's). Every LUN on a session hears of its loss (with only its own orphans) and of its
/// return. Called without any session lock held.
pub(crate) trait PathEvents: Send + Sync {
    fn path_down(&self, path: usize, lost: LostPath);
    fn path_up(&self, path: usize);
    /// A guest's command that the target port refused for its ALUA state
    /// (`alua::refusal`), given back with the answer so the LUN layer can send it down
    /// another path. Without a LUN layer that does, it completes with that answer.
    fn port_refused(&self, _path: usize, command: PathCommand, answer: ScsiCompletion) {
        command.done.complete(answer)
    }
}

/// Counters of one session (one path of each LUN on it), for logs and status.
#[derive(Default)]
pub(crate) struct PathStats {
    pub ios: AtomicU64,
    pub errors: AtomicU64,
    pub failovers: AtomicU64,
    /// Stall of the last failover: silence before detection plus the reissue, in µs.
    pub last_failover_us: AtomicU64,
}

/// Mutable session state behind one lock. PDUs are encoded into `out` under it, so the
/// PDUs of one command go out together and in CmdSN order (written through [`send::Tx`]).
struct State {
    /// The connection (shut down when it is lost); `None` while there is none.
    writer: Option<TcpStream>,
    /// PDUs encoded and not yet written (a corked batch, or the PDU being sent).
    out: Vec<u8>,
    neg: Option<Negotiated>,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    pending: HashMap<u32, Pending>,
    /// Commands waiting to be sent (window closed), per LUN, served round-robin.
    unsent: FairQueue,
    tmf: HashMap<u32, Option<u8>>,
    recovering: bool,
    /// A loss not yet reported to the LUN layer (reported once the lock is released).
    lost: Option<LostPath>,
    /// When the current connection completed its login.
    connected_at: Instant,
    /// A command of the guest completed with status on the current connection.
    completed_one: bool,
    /// Failures in a row: logins that failed and connections that ended by a protocol
    /// error or before they proved healthy. Sets the delay before the next login.
    reconnect_failures: u32,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    generation: u64,
    /// The ITT of our Logout Request while its response is awaited.
    logout_itt: Option<u32>,
}

pub(crate) struct Session {
    /// The registry's number for the session (status lines).
    pub(crate) id: u64,
    url: IscsiUrl,
    /// Where the path logs in (its portal, or where a permanent redirect moved it).
    login: login::PathLogin,
    opts: IscsiOptions,
    /// Claimed from `isid` for the session's life; given back by [`Session::close`].
    isid: [u8; 6],
    isid_released: AtomicBool,
    /// The LUNs on the session.
    owners: Mutex<Vec<Owner>>,
    /// Whether the first login was tried: `None` not yet; `Some(false)` it failed and the
    /// session gave up; `Some(true)` logged in or retrying in the background.
    started: Mutex<Option<bool>>,
    pub(crate) stats: PathStats,
    /// Connected and in full feature phase (read without the lock by path selection).
    up: AtomicBool,
    /// Commands queued or sent and not yet answered.
    outstanding: AtomicUsize,
    state: Mutex<State>,
    /// The connection's sending side; taken with `state` held, never the other way round.
    tx: Mutex<send::Tx>,
    changed: Condvar,
    /// Threads waiting on `changed` (a logout, a task management function): the reader
    /// wakes them after a PDU only when there are any.
    waiting: AtomicUsize,
    closing: AtomicBool,
    /// Keeps the lines this path repeats while it flaps down to one per kind and interval.
    pub(crate) log: LogLimiter,
    /// The session's threads log in this span (target and portal; it serves many LUNs).
    span: tracing::Span,
}

/// Completions collected under the lock and delivered after it is released.
type Completions = Vec<(Done, ScsiCompletion)>;

impl Session {
    /// A session to `url`'s target through its portal (the URL's LUN does not matter);
    /// nothing happens on the network until [`Session::start`].
    pub(crate) fn new(id: u64, url: &IscsiUrl, opts: &IscsiOptions) -> Arc<Session> {
        let portal = url.portal();
        let isid = isid::claim(&isid::PathIdentity {
            initiator_name: &opts.initiator_name,
            scope: &opts.isid_scope,
            target: &url.target,
            portal: &portal,
        });
        Arc::new(Session {
            id,
            url: url.clone(),
            login: login::PathLogin::new(&url.portal()),
            opts: opts.clone(),
            isid,
            isid_released: AtomicBool::new(false),
            owners: Mutex::new(Vec::new()),
            started: Mutex::new(None),
            stats: PathStats::default(),
            up: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            state: Mutex::new(State {
                writer: None,
                out: Vec::new(),
                neg: None,
                cmd_sn: 0,
                exp_stat_sn: 0,
                max_cmd_sn: 0,
                next_itt: 1,
                // Sized for a deep queue from the start: with at most half of it in
                // use, the churn of commands in and out rehashes in place, never
                // allocating again.
                pending: HashMap::with_capacity(PENDING_CAPACITY),
                unsent: FairQueue::default(),
                tmf: HashMap::new(),
                recovering: false,
                lost: None,
                connected_at: Instant::now(),
                completed_one: false,
                reconnect_failures: 0,
                last_rx: Instant::now(),
                ping: None,
                generation: 0,
                logout_itt: None,
            }),
            tx: Mutex::new(send::Tx::default()),
            changed: Condvar::new(),
            waiting: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            log: LogLimiter::default(),
            span: tracing::info_span!(parent: None, "iscsi_session", session = id, target = %url.target, %portal),
        })
    }

    /// Starts the keepalive and logs in. On failure, `retry_in_background` keeps trying
    /// (a secondary path may come up later); otherwise the error is final.
    pub(crate) fn start(self: &Arc<Self>, retry_in_background: bool) -> Result<(), LoginError> {
        let keep = self.clone();
        crate::sandbox::spawn(
            crate::sandbox::ThreadKind::Iscsi,
            "iscsi-keepalive",
            move || {
                let _span = keep.span.clone().entered();
                keep.keepalive_loop()
            },
        )
        .map_err(|e| LoginError::Protocol(e.to_string()))?;
        match self.establish() {
            Ok(()) => Ok(()),
            Err(e) => {
                if retry_in_background {
                    {
                        let mut st = self.lock();
                        st.recovering = true;
                        st.reconnect_failures = 1;
                    }
                    let me = self.clone();
                    let _ = crate::sandbox::spawn(
                        crate::sandbox::ThreadKind::Iscsi,
                        "iscsi-recovery",
                        move || {
                            let _span = me.span.clone().entered();
                            me.recover()
                        },
                    );
                } else {
                    self.closing.store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }

    pub(crate) fn portal(&self) -> String {
        self.url.portal()
    }

    /// The ISID this path logs in with, every time.
    pub(crate) fn isid(&self) -> [u8; 6] {
        self.isid
    }

    /// Gives the ISID back to `isid` once: no session of this path logs in again.
    fn release_isid(&self) {
        if !self.isid_released.swap(true, Ordering::AcqRel) {
            isid::release(&self.opts.initiator_name, &self.url.target, self.isid);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_tx(&self) -> MutexGuard<'_, send::Tx> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on `changed` for at most `timeout` (the state is checked again by the caller).
    fn wait_changed<'a>(
        &self,
        st: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        // Counted under the lock, before the wait lets it go: a thread that changes the
        // state under the lock and then looks at `waiting` sees this wait.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let st = self
            .changed
            .wait_timeout(st, timeout)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        st
    }

    /// Wakes the threads in [`Session::wait_changed`], if any (no system call otherwise).
    fn notify_changed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_all();
        }
    }

    /// Connects, logs in, starts a reader, and (re)sends every command without status.
    /// Refuses once the session is closing: a login that was under way when
    /// [`Session::close`] ran ends with its connection shut, so no session comes up again
    /// after its LUN closed it.
    fn establish(self: &Arc<Self>) -> Result<(), LoginError> {
        let closed = || LoginError::Protocol("the session is closed".into());
        if self.closing.load(Ordering::Acquire) {
            return Err(closed());
        }
        let (stream, neg) = self
            .login
            .establish(&self.opts, Some(&self.url.target), self.isid)?;
        let io = |e: std::io::Error| LoginError::Protocol(e.to_string());
        stream.set_read_timeout(None).map_err(io)?;
        stream
            .set_write_timeout(Some(self.opts.nop_timeout.max(Duration::from_secs(5))))
            .map_err(io)?;
        let reader = stream.try_clone().map_err(io)?;
        let sender = stream.try_clone().map_err(io)?;
        let framing = neg.framing;
        let generation;
        {
            let mut st = self.lock();
            if self.closing.load(Ordering::Acquire) {
                let _ = stream.shutdown(Shutdown::Both);
                return Err(closed());
            }
            st.cmd_sn = neg.cmd_sn;
            st.exp_stat_sn = neg.exp_stat_sn;
            st.max_cmd_sn = neg.max_cmd_sn;
            st.neg = Some(neg);
            self.lock_tx().connect(sender, &mut st.out);
            st.writer = Some(stream);
            st.last_rx = Instant::now();
            st.connected_at = Instant::now();
            st.completed_one = false;
            st.ping = None;
            st.generation += 1;
            // From here on a loss needs a new recovery.
            st.recovering = false;
            generation = st.generation;
            // Up together with the writer, under the lock: the reader may see the target
            // close the connection before this function ends, and its `connection_lost`
            // must not be followed by an `up` that no connection backs.
            self.up.store(true, Ordering::Release);
        }
        let me = self.clone();
        let spawned = crate::sandbox::spawn(
            crate::sandbox::ThreadKind::Iscsi,
            "iscsi-reader",
            move || {
                let _span = me.span.clone().entered();
                me.reader_loop(reader, framing, generation)
            },
        );
        if let Err(e) = spawned {
            let mut st = self.lock();
            if st.generation != generation {
                // Lost meanwhile: that loss started its own recovery.
                return Ok(());
            }
            self.up.store(false, Ordering::Release);
            if let Some(w) = st.writer.take() {
                let _ = w.shutdown(Shutdown::Both);
            }
            st.generation += 1;
            // The caller goes on retrying (or gives up), as after a failed login.
            st.recovering = true;
            return Err(LoginError::Protocol(e.to_string()));
        }
        self.notify_changed();
        // Lost already (the reader got there first): its recovery takes it from here.
        // Closed meanwhile (close() ends the generation): no session again.
        if self.lock().generation != generation {
            return if self.closing.load(Ordering::Acquire) {
                Err(closed())
            } else {
                Ok(())
            };
        }
        self.announce_up(generation, None);
        Ok(())
    }

    pub(crate) fn target(&self) -> &str {
        &self.url.target
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Up and proved healthy: a guest's command completed with status on this connection,
    /// or it has stayed up for [`HEALTHY_AFTER`]. A path that logs in and fails again at once
    /// is up for moments only, and never healthy.
    pub(crate) fn is_healthy(&self) -> bool {
        if !self.is_up() {
            return false;
        }
        let st = self.lock();
        st.writer.is_some() && (st.completed_one || st.connected_at.elapsed() >= HEALTHY_AFTER)
    }

    /// Commands sent or queued and not yet answered.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Logs out (waiting at most `within` for the target's Logout Response), closes the
    /// connection and fails whatever is still pending.
    pub(crate) fn close(&self, within: Duration) {
        self.closing.store(true, Ordering::Release);
        let deadline = Instant::now() + within;
        let mut st = self.lock();
        if st.writer.is_some() && self.is_up() {
            let itt = next_itt(&mut st);
            let mut p = Pdu::new(op::LOGOUT_REQ);
            p.set_immediate();
            // Reason 0: close the session.
            p.set_flags(F_FINAL);
            p.set_itt(itt);
            p.set_u32(24, st.cmd_sn);
            p.set_u32(28, st.exp_stat_sn);
            if self.write(&mut st, &p).is_ok() {
                st.logout_itt = Some(itt);
                // The reader clears it when the response arrives (or the connection ends).
                while st.logout_itt.is_some() && st.writer.is_some() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        tracing::warn!(portal = %self.url.portal(), "iSCSI logout not answered in {within:?}; closing the connection");
                        break;
                    }
                    st = self.wait_changed(st, left);
                }
                if st.logout_itt.is_none() {
                    tracing::info!(portal = %self.url.portal(), "iSCSI session logged out");
                }
            }
        }
        st.logout_itt = None;
        st.generation += 1;
        if let Some(w) = st.writer.take() {
            let _ = w.shutdown(Shutdown::Both);
        }
        self.up.store(false, Ordering::Release);
        drop(st);
        self.notify_changed();
        self.fail_all(TransportError::Closed);
        self.release_isid();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release_isid();
    }
}

/// The next initiator task tag, never the reserved value or 0.
fn next_itt(st: &mut State) -> u32 {
    let itt = st.next_itt;
    st.next_itt = st.next_itt.wrapping_add(1);
    if st.next_itt == NO_TAG || st.next_itt == 0 {
        st.next_itt = 1;
    }
    itt
}

#[cfg(test)]
mod tests;
