//! How a session loses and regains its connection: NOP-Out keepalive and the timeout that
//! declares a silent target dead, dropping the connection and handing every command
//! without status back to the LUN layer, logging in again with back-off, and failing what
//! is left when the session closes.

use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{next_itt, Completions, LostPath, Orphan, Pending, Session, State, NO_TAG, TMF_LOST};
use crate::iscsi::pdu::{op, Pdu, F_FINAL};
use crate::scsi::task::{ScsiCompletion, TransportError};

impl Session {
    /// Reports a loss recorded under the lock to the LUN layer; call with no lock held.
    pub(super) fn hand_off(&self) {
        let Some(lost) = self.lock().lost.take() else {
            return;
        };
        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
        match self.events.upgrade() {
            Some(ev) => ev.path_down(self.path, lost),
            None => {
                for o in lost.orphans {
                    (o.done)(ScsiCompletion::failed(TransportError::Closed));
                }
            }
        }
    }

    /// Drops the connection, takes back every command without status for the LUN layer
    /// (reported by [`Session::hand_off`] once the lock is released) and starts
    /// reconnecting (once).
    pub(super) fn connection_lost(self: &Arc<Self>, st: &mut State) {
        self.up.store(false, Ordering::Release);
        if let Some(w) = st.writer.take() {
            let _ = w.shutdown(Shutdown::Both);
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
                id: p.id,
                cmd: p.cmd,
                done,
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
            let _ = std::thread::Builder::new()
                .name("iscsi-recovery".into())
                .spawn(move || me.recover());
        }
        self.changed.notify_all();
    }

    /// Logs in again with back-off until it works or the session closes.
    pub(super) fn recover(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        while !self.closing.load(Ordering::Acquire) {
            match self.establish() {
                Ok(()) => {
                    tracing::info!(portal = %self.url.portal(), "iSCSI session re-established");
                    return;
                }
                Err(e) => {
                    tracing::debug!(portal = %self.url.portal(), "iSCSI login retry failed: {e}")
                }
            }
            // Sleep in short steps so closing is not held up by a long back-off.
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.closing.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20).min(backoff));
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
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
                .chain(lost.drain(..).map(|o| o.done))
                .map(|d| (d, ScsiCompletion::failed(e.clone())))
                .collect();
            self.outstanding.store(0, Ordering::Relaxed);
            pending
        };
        for (f, c) in done {
            f(c);
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
                    tracing::warn!(portal = %self.url.portal(), "iSCSI target silent: NOP-Out unanswered");
                    self.connection_lost(&mut st);
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
                if self.write(&mut st, &p).is_err() {
                    self.connection_lost(&mut st);
                    drop(st);
                    self.hand_off();
                }
            }
        }
    }
}
