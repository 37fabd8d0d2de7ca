//! How a session loses and regains its connection: NOP-Out keepalive and the timeout that
//! declares a silent target dead, dropping the connection and handing every command
//! without status back to the LUN layer, logging in again with back-off, and failing what
//! is left when the session closes.
//!
//! The back-off counts failures in a row: failed logins, and connections that ended by a
//! protocol error or before they proved healthy (no guest command completed and up for
//! less than `HEALTHY_AFTER`). After a healthy connection drops, the first login is at
//! once; each failure doubles the wait from `FIRST_RECONNECT_DELAY` up to
//! `MAX_RECONNECT_DELAY`. So a target that accepts the login and then breaks the protocol
//! is logged in to at most once per `MAX_RECONNECT_DELAY`, not as fast as the network
//! allows.

use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    next_itt, Completions, Loss, LostPath, Orphan, PathCommand, Pending, Session, State,
    HEALTHY_AFTER, NO_TAG, TMF_LOST,
};
use crate::iscsi::pdu::{op, Pdu, F_FINAL};
use crate::scsi::task::{ScsiCompletion, TransportError};

/// The wait before the second login attempt in a row.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// The longest wait between login attempts: a target that comes back is used again within
/// this long, and a target that fails every connection sees at most one login per this
/// long (the LUN's `no_path_retry`, 30 s by default, bounds how long I/O waits meanwhile).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// The wait before the next login after `failures` failures in a row.
fn reconnect_delay(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => FIRST_RECONNECT_DELAY
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(MAX_RECONNECT_DELAY),
    }
}

/// The failures in a row after a connection that was up for `up_for` ends for `loss`,
/// having `completed_one` command: a protocol error or an early end is one more failure,
/// the end of a healthy connection starts the count again.
fn failures_after_loss(failures: u32, loss: Loss, up_for: Duration, completed_one: bool) -> u32 {
    let stayed_up = up_for >= HEALTHY_AFTER;
    // A connection that stayed up long enough wiped the slate clean, whatever ended it.
    let before = if stayed_up { 0 } else { failures };
    if loss == Loss::Protocol || !(stayed_up || completed_one) {
        before.saturating_add(1)
    } else {
        0
    }
}

impl Session {
    /// Drops the connection, which ended for `loss`, takes back every command without
    /// status for the LUNs that sent them (reported by [`Session::hand_off`] once the lock
    /// is released) and starts reconnecting (once).
    pub(super) fn connection_lost(self: &Arc<Self>, st: &mut State, loss: Loss) {
        self.up.store(false, Ordering::Release);
        if let Some(w) = st.writer.take() {
            let _ = w.shutdown(Shutdown::Both);
            st.reconnect_failures = failures_after_loss(
                st.reconnect_failures,
                loss,
                st.connected_at.elapsed(),
                st.completed_one,
            );
        }
        st.generation += 1;
        st.ping = None;
        st.out.clear();
        for slot in st.tmf.values_mut() {
            slot.get_or_insert(TMF_LOST);
        }
        st.unsent.clear();
        let mut taken: Vec<(u32, Pending)> = st.pending.drain().collect();
        // Reissue in the order the guest sent them.
        taken.sort_unstable_by_key(|(_, p)| p.id);
        let orphans = taken.into_iter().filter_map(|(_, mut p)| {
            p.done.take().map(|done| Orphan {
                owner: p.owner,
                command: PathCommand {
                    id: p.id,
                    cmd: p.cmd,
                    done,
                    reissues: p.reissues,
                    probe: p.probe,
                },
                sent: p.sent,
            })
        });
        let silent_for = st.last_rx.elapsed();
        match &mut st.lost {
            Some(l) => l.orphans.extend(orphans),
            None => {
                st.lost = Some(LostPath {
                    silent_for,
                    orphans: orphans.collect(),
                })
            }
        }
        self.outstanding.store(0, Ordering::Relaxed);
        if !st.recovering && !self.closing.load(Ordering::Acquire) {
            st.recovering = true;
            let me = self.clone();
            let _ = crate::sandbox::spawn(
                crate::sandbox::ThreadKind::Iscsi,
                "iscsi-recovery",
                move || {
                    let _span = me.span.clone().entered();
                    me.recover()
                },
            );
        }
        self.notify_changed();
    }

    /// Logs in again with back-off until it works or the session closes.
    pub(super) fn recover(self: Arc<Self>) {
        while !self.closing.load(Ordering::Acquire) {
            let delay = reconnect_delay(self.lock().reconnect_failures);
            // Sleep in short steps so closing is not held up by a long back-off.
            let until = Instant::now() + delay;
            while Instant::now() < until && !self.closing.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20).min(delay));
            }
            if self.closing.load(Ordering::Acquire) {
                break;
            }
            match self.establish() {
                Ok(()) => {
                    if let Some(suppressed) = self.log.check("re-established") {
                        tracing::info!(portal = %self.url.portal(), "iSCSI session re-established{suppressed}");
                    }
                    return;
                }
                Err(e) => {
                    let mut st = self.lock();
                    st.reconnect_failures = st.reconnect_failures.saturating_add(1);
                    drop(st);
                    if let Some(suppressed) = self.log.check("login retry failed") {
                        tracing::debug!(portal = %self.url.portal(), "iSCSI login retry failed: {e}{suppressed}");
                    }
                }
            }
        }
        self.lock().recovering = false;
    }

    pub(super) fn fail_all(&self, e: TransportError) {
        let done: Completions = {
            let mut st = self.lock();
            st.unsent.clear();
            let mut lost = st.lost.take().map(|l| l.orphans).unwrap_or_default();
            let pending = st
                .pending
                .drain()
                .filter_map(|(_, mut p)| p.done.take())
                .chain(lost.drain(..).map(|o| o.command.done))
                .map(|d| (d, ScsiCompletion::failed(e.clone())))
                .collect();
            self.outstanding.store(0, Ordering::Relaxed);
            pending
        };
        for (f, c) in done {
            f.complete(c);
        }
    }

    pub(super) fn keepalive_loop(self: Arc<Self>) {
        let tick = (self.opts.nop_interval.min(self.opts.nop_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        while !self.closing.load(Ordering::Acquire) {
            std::thread::sleep(tick);
            let mut st = self.lock();
            if st.writer.is_none() {
                continue;
            }
            if let Some((_, sent)) = st.ping {
                if sent.elapsed() >= self.opts.nop_timeout {
                    if let Some(suppressed) = self.log.check("target silent") {
                        tracing::warn!(portal = %self.url.portal(), "iSCSI target silent: NOP-Out unanswered{suppressed}");
                    }
                    self.connection_lost(&mut st, Loss::Dropped);
                    drop(st);
                    self.hand_off();
                }
                continue;
            }
            if st.last_rx.elapsed() >= self.opts.nop_interval {
                let itt = next_itt(&mut st);
                let mut p = Pdu::new(op::NOP_OUT);
                p.set_immediate();
                p.set_flags(F_FINAL);
                p.set_itt(itt);
                p.set_u32(20, NO_TAG);
                p.set_u32(24, st.cmd_sn);
                p.set_u32(28, st.exp_stat_sn);
                st.ping = Some((itt, Instant::now()));
                if let Err(e) = self.write(&mut st, &p) {
                    self.connection_lost(&mut st, Loss::of(&e));
                    drop(st);
                    self.hand_off();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delay_doubles_from_the_first_and_stays_bounded() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), 50 * MS);
        assert_eq!(reconnect_delay(2), 100 * MS);
        assert_eq!(reconnect_delay(5), 800 * MS);
        assert_eq!(reconnect_delay(6), 1600 * MS);
        assert_eq!(reconnect_delay(7), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(u32::MAX), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn protocol_errors_count_as_failures_even_after_a_completed_command() {
        let early = Duration::from_millis(5);
        let mut f = 0;
        for want in 1..=8 {
            f = failures_after_loss(f, Loss::Protocol, early, true);
            assert_eq!(f, want);
        }
        assert_eq!(reconnect_delay(f), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn a_connection_that_ends_before_it_proved_healthy_is_a_failure() {
        let early = Duration::from_millis(5);
        assert_eq!(failures_after_loss(0, Loss::Dropped, early, false), 1);
        assert_eq!(failures_after_loss(3, Loss::Dropped, early, false), 4);
    }

    #[test]
    fn a_healthy_connection_resets_the_count() {
        let early = Duration::from_millis(5);
        // A command completed and the target then reset the connection: at once again.
        assert_eq!(failures_after_loss(4, Loss::Dropped, early, true), 0);
        // Up long enough, even with nothing completed.
        assert_eq!(
            failures_after_loss(4, Loss::Dropped, HEALTHY_AFTER, false),
            0
        );
        // A protocol error after a long healthy stretch is the first failure, not the fifth.
        assert_eq!(
            failures_after_loss(4, Loss::Protocol, HEALTHY_AFTER, true),
            1
        );
    }
}
