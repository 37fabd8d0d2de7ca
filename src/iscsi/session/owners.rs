//! The LUNs on a session (its owners): joining and leaving, the first login whoever joins
//! first starts, and what each LUN is told: that the path is up (once per connection, so
//! each LUN runs its own post-login work, unit attentions, ALUA, reservations, before its
//! guest commands go down it), and that the path is down, with only the commands that LUN
//! sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{LostPath, Orphan, PathEvents, Session};
use crate::iscsi::login::LoginError;
use crate::scsi::task::{ScsiCompletion, TransportError};
use crate::scsi::LunId;

/// One LUN on the session.
pub(super) struct Owner {
    id: u64,
    lun: LunId,
    /// The session's index among that LUN's paths.
    path: usize,
    events: Weak<dyn PathEvents>,
    /// The connection (generation) the LUN was last told is up; told once per connection.
    announced: Arc<AtomicU64>,
}

impl Session {
    fn owners(&self) -> std::sync::MutexGuard<'_, Vec<Owner>> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a LUN (`owner`, a number unique in the process) reaching `lun` through this
    /// session as its path `path`.
    pub(crate) fn join(&self, owner: u64, lun: LunId, path: usize, events: Weak<dyn PathEvents>) {
        self.owners().push(Owner {
            id: owner,
            lun,
            path,
            events,
            announced: Arc::new(AtomicU64::new(0)),
        });
    }

    /// The LUN layer of `owner` and which of its paths this session is; None once it left.
    pub(super) fn events_of(&self, owner: u64) -> Option<(usize, Arc<dyn PathEvents>)> {
        let owners = self.owners();
        let o = owners.iter().find(|o| o.id == owner)?;
        Some((o.path, o.events.upgrade()?))
    }

    /// How many LUNs are on the session.
    pub(crate) fn owner_count(&self) -> usize {
        self.owners().len()
    }

    /// Removes a LUN. Its commands still here end as `Closed` (it is going away).
    pub(crate) fn leave(&self, owner: u64) {
        self.owners().retain(|o| o.id != owner);
        let done: Vec<_> = {
            let mut st = self.lock();
            let itts: Vec<u32> = st
                .pending
                .iter()
                .filter(|(_, p)| p.owner == owner)
                .map(|(&itt, _)| itt)
                .collect();
            let mut done: Vec<_> = itts
                .iter()
                .filter_map(|itt| st.pending.remove(itt))
                .filter_map(|mut p| p.done.take())
                .collect();
            st.unsent.forget(owner);
            if let Some(lost) = st.lost.as_mut() {
                let (mine, others): (Vec<Orphan>, Vec<Orphan>) =
                    lost.orphans.drain(..).partition(|o| o.owner == owner);
                lost.orphans = others;
                done.extend(mine.into_iter().map(|o| o.command.done));
            }
            self.outstanding.store(st.pending.len(), Ordering::Relaxed);
            done
        };
        for d in done {
            d.complete(ScsiCompletion::failed(TransportError::Closed));
        }
    }

    /// Target LUNs on the session, in the order they joined (status).
    pub(crate) fn luns(&self) -> Vec<LunId> {
        self.owners().iter().map(|o| o.lun).collect()
    }

    /// Logs in if no LUN did yet (see [`Session::start`] for `retry_in_background`). A
    /// session that is up already tells `owner` so; one that is logging in again is
    /// waited for (within the login timeouts) unless `retry_in_background`, which gets the
    /// error at once (the session goes on retrying).
    pub(crate) fn ensure_started(
        self: &Arc<Self>,
        owner: u64,
        retry_in_background: bool,
    ) -> Result<(), LoginError> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        match *started {
            None => {
                let r = self.start(retry_in_background);
                *started = Some(r.is_ok() || retry_in_background);
                return r;
            }
            Some(false) => {
                return Err(LoginError::Protocol(format!(
                    "the session to {} failed to log in",
                    self.url.portal()
                )))
            }
            Some(true) => {}
        }
        drop(started);
        let deadline = Instant::now() + self.opts.connect_timeout + self.opts.login_timeout;
        loop {
            let generation = {
                let st = self.lock();
                (st.writer.is_some() && self.is_up()).then_some(st.generation)
            };
            if let Some(g) = generation {
                self.announce_up(g, Some(owner));
                return Ok(());
            }
            // With `retry_in_background` the login that brings it up later tells every
            // LUN; this LUN learns now that it is not up, as after a failed first login.
            if retry_in_background || Instant::now() >= deadline || self.is_closing() {
                return Err(LoginError::Protocol(format!(
                    "the session to {} is not logged in",
                    self.url.portal()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Tells the LUNs (only `only`, if given) that connection `generation` is up, each
    /// once. Call with no session lock held: each LUN runs its own commands on the path.
    pub(super) fn announce_up(&self, generation: u64, only: Option<u64>) {
        let told: Vec<_> = self
            .owners()
            .iter()
            .filter(|o| only.is_none_or(|id| id == o.id))
            .map(|o| (o.path, o.events.clone(), o.announced.clone()))
            .collect();
        for (path, events, announced) in told {
            if announced.swap(generation, Ordering::AcqRel) == generation {
                continue;
            }
            if let Some(ev) = events.upgrade() {
                ev.path_up(path);
            }
        }
    }

    /// Reports a loss recorded under the lock to every LUN on the session, each with its
    /// own commands; call with no lock held.
    pub(super) fn hand_off(&self) {
        let lost = self.lock().lost.take();
        self.hand_off_loss(lost);
    }

    /// [`Session::hand_off`] of a loss already taken from the state (the reader takes it
    /// under the lock it holds for each PDU, rather than locking again).
    pub(super) fn hand_off_loss(&self, lost: Option<LostPath>) {
        let Some(lost) = lost else {
            return;
        };
        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
        let owners: Vec<_> = self
            .owners()
            .iter()
            .map(|o| (o.id, o.path, o.events.upgrade()))
            .collect();
        let mut orphans = lost.orphans;
        for (id, path, events) in owners {
            let (mine, rest): (Vec<Orphan>, Vec<Orphan>) =
                orphans.into_iter().partition(|o| o.owner == id);
            orphans = rest;
            let mine = LostPath {
                silent_for: lost.silent_for,
                orphans: mine,
            };
            match events {
                Some(ev) => ev.path_down(path, mine),
                None => fail(mine.orphans),
            }
        }
        // Commands of LUNs that left meanwhile.
        fail(orphans);
    }
}

fn fail(orphans: Vec<Orphan>) {
    for o in orphans {
        o.command
            .done
            .complete(ScsiCompletion::failed(TransportError::Closed));
    }
}
