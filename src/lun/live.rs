//! The LUN table while the daemon runs: LUNs added, removed and resized while a guest is
//! using the others, and the changes the guest must be told about.
//!
//! The table itself is never changed in place: a change builds a new table (sharing the
//! LUNs) and publishes it at once ([`ArcSwap`]), so the request path reads it with one
//! atomic load per command and no lock. A command that found its LUN keeps it alive (its
//! slot holds the `Arc<Lun>`) after the LUN left the table: a removal lets in-flight
//! commands finish, then makes the LUN's writes durable and closes it. Changes are made
//! one at a time (`edit`): of two clients adding the same address, one wins.
//!
//! What the guest must hear is kept as [`LunChange`]s until the device layer has an event
//! buffer to put them in (virtio-scsi's event queue), and as unit attentions on the LUNs
//! (see [`Lun::raise_attention`]) for a guest that missed the event.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use vmm_sys_util::eventfd::EventFd;

use super::registry::LunOpenOptions;
use super::reservations::ReservationReport;
use super::stats::{LunStatsSnapshot, QueueStats};
use super::{attention, Lun, LunTable};
use crate::config::{IoLimits, LunConfig, LunKind};
use crate::status_bell::StatusBell;

/// Changes kept for the guest at most; past that the oldest is dropped and the next event
/// the guest gets says events were missed (it then rescans).
pub const MAX_PENDING_CHANGES: usize = 64;

/// How long a removal waits for the LUN's commands in flight.
pub const REMOVE_DRAIN: Duration = Duration::from_secs(30);

/// A change of the LUN table the guest must be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LunChange {
    Added { target: u8, lun: u16 },
    Removed { target: u8, lun: u16 },
    CapacityChanged { target: u8, lun: u16 },
}

/// Changes not yet given to the guest.
#[derive(Default)]
pub struct PendingChanges {
    queue: VecDeque<LunChange>,
    /// Some were dropped (too many, with no event buffer to put them in).
    pub missed: bool,
}

impl PendingChanges {
    pub fn front(&self) -> Option<LunChange> {
        self.queue.front().copied()
    }

    pub fn pop_front(&mut self) -> Option<LunChange> {
        self.queue.pop_front()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a change. A LUN added and removed before the guest heard of it is never
    /// mentioned; the same change twice is told once.
    fn push(&mut self, c: LunChange) {
        if let LunChange::Removed { target, lun } = c {
            let added = LunChange::Added { target, lun };
            if let Some(i) = self.queue.iter().position(|&q| q == added) {
                self.queue.remove(i);
                self.queue
                    .retain(|&q| q != LunChange::CapacityChanged { target, lun });
                return;
            }
        }
        if self.queue.contains(&c) {
            return;
        }
        if self.queue.len() >= MAX_PENDING_CHANGES {
            self.queue.pop_front();
            self.missed = true;
        }
        self.queue.push_back(c);
    }
}

/// A LUN as `luns` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunInfo {
    pub target: u8,
    pub lun: u16,
    pub description: String,
    pub size_bytes: Option<u64>,
    pub block_size: Option<u32>,
    pub in_flight: u32,
    pub paths: Vec<String>,
    pub paths_down: usize,
    pub limits: IoLimits,
}

/// A LUN's statistics as `stats` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunCounters {
    pub target: u8,
    pub lun: u16,
    pub in_flight: u32,
    pub stats: LunStatsSnapshot,
}

/// The daemon's LUN table, shared by every connection and the control socket.
pub struct LiveLuns {
    table: ArcSwap<LunTable<Lun>>,
    /// One change at a time.
    edit: Mutex<()>,
    changes: Mutex<PendingChanges>,
    /// Set while `changes` holds something (the device layer checks it per event).
    has_changes: AtomicBool,
    /// Wakes the serving connection's thread that owns the event queue.
    waker: Mutex<Option<EventFd>>,
    /// Options for iSCSI LUNs added later (initiator name ...).
    open: LunOpenOptions,
    /// The destination of a migration: images are locked when the device starts.
    lock_at_open: bool,
    /// What each LUN was opened from (a configuration reload compares against it).
    configs: Mutex<BTreeMap<(u8, u16), LunConfig>>,
    /// Commands answered per queue, across connections.
    queues: QueueStats,
    /// Rung when a LUN comes or goes (the service's status line counts them).
    status_bell: OnceLock<Arc<StatusBell>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LiveLuns {
    pub fn new(table: LunTable<Lun>, open: LunOpenOptions, lock_at_open: bool) -> Arc<LiveLuns> {
        Arc::new(LiveLuns {
            table: ArcSwap::from_pointee(table),
            edit: Mutex::new(()),
            changes: Mutex::new(PendingChanges::default()),
            has_changes: AtomicBool::new(false),
            waker: Mutex::new(None),
            open,
            lock_at_open,
            configs: Mutex::new(BTreeMap::new()),
            queues: QueueStats::new(usize::from(crate::config::MAX_REQUEST_QUEUES) + 2),
            status_bell: OnceLock::new(),
        })
    }

    /// Records what the LUNs of the first table were opened from.
    pub fn remember(&self, luns: &[LunConfig]) {
        let mut c = lock(&self.configs);
        for l in luns {
            c.insert((l.target, l.lun), l.clone());
        }
    }

    /// What each LUN was opened from.
    pub fn configs(&self) -> BTreeMap<(u8, u16), LunConfig> {
        lock(&self.configs).clone()
    }

    /// The table now, for one command (no lock, no allocation).
    pub fn load(&self) -> Guard<Arc<LunTable<Lun>>> {
        self.table.load()
    }

    /// The table now, to keep.
    pub fn snapshot(&self) -> Arc<LunTable<Lun>> {
        self.table.load_full()
    }

    /// Rings `bell` whenever a LUN is added or removed (the first bell given stays).
    pub fn ring_on_changes(&self, bell: Arc<StatusBell>) {
        let _already_set = self.status_bell.set(bell);
    }

    /// The serving connection's wake-up for changes (None when it ends).
    pub fn set_waker(&self, waker: Option<EventFd>) {
        *lock(&self.waker) = waker;
    }

    pub fn has_changes(&self) -> bool {
        self.has_changes.load(Ordering::Acquire)
    }

    /// The pending changes, for the device layer to deliver what it can.
    pub fn changes(&self) -> MutexGuard<'_, PendingChanges> {
        lock(&self.changes)
    }

    /// After the device layer took changes out: keeps the flag true while any remain.
    pub fn changes_taken(&self, left: &PendingChanges) {
        self.has_changes
            .store(!left.is_empty() || left.missed, Ordering::Release);
    }

    fn announce(&self, c: LunChange) {
        {
            let mut q = lock(&self.changes);
            q.push(c);
            self.has_changes
                .store(!q.is_empty() || q.missed, Ordering::Release);
        }
        if let Some(w) = lock(&self.waker).as_ref() {
            let _ = w.write(1);
        }
        if let Some(b) = self.status_bell.get() {
            b.ring();
        }
    }

    /// Every LUN, for `luns`.
    pub fn list(&self) -> Vec<LunInfo> {
        let table = self.snapshot();
        table
            .luns()
            .map(|(target, lun, l)| {
                let d = l.device();
                let cap = d.capacity();
                LunInfo {
                    target,
                    lun,
                    description: d.describe(),
                    size_bytes: cap.map(|c| c.0),
                    block_size: cap.map(|c| c.1),
                    in_flight: l.inflight(),
                    paths: d.detail_lines(),
                    paths_down: d.paths_down(),
                    limits: l.limits(),
                }
            })
            .collect()
    }

    /// Commands answered per queue (the request path counts them).
    pub fn queue_stats(&self) -> &QueueStats {
        &self.queues
    }

    /// The statistics of every LUN (of `target`, of LUN `lun`, when given), with its
    /// commands in flight, in address order.
    pub fn stats(&self, target: Option<u8>, lun: Option<u16>) -> Vec<LunCounters> {
        let table = self.snapshot();
        table
            .luns()
            .filter(|&(t, l, _)| target.is_none_or(|x| x == t) && lun.is_none_or(|x| x == l))
            .map(|(target, lun, l)| LunCounters {
                target,
                lun,
                in_flight: l.inflight(),
                stats: l.stats().snapshot(),
            })
            .collect()
    }

    /// The first free LUN number of `target`.
    /// What the LUNs are opened with.
    pub fn open_options(&self) -> &LunOpenOptions {
        &self.open
    }

    pub fn next_free_lun(&self, target: u8) -> Option<u16> {
        let table = self.load();
        (0..=crate::scsi::lun_id::MAX_LUN).find(|&l| table.get(target, l).is_none())
    }

    /// Opens a LUN and puts it in the table; the guest is told (an event, and REPORTED
    /// LUNS DATA HAS CHANGED on the target's other LUNs). Refused with one line: an
    /// address in use, an image another LUN has open for writing, a LUN that cannot be
    /// opened (as at start-up).
    pub fn add(&self, l: &LunConfig) -> Result<(), String> {
        let _edit = lock(&self.edit);
        let current = self.snapshot();
        if current.get(l.target, l.lun).is_some() {
            return Err(format!("target {} LUN {} is in use", l.target, l.lun));
        }
        if let LunKind::Disk { path, .. }
        | LunKind::BlockPassthrough { path, .. }
        | LunKind::Sg { path } = &l.kind
        {
            let wanted = canonical(path);
            for (t, n, other) in current.luns() {
                let Some(p) = other.device().backing_path() else {
                    continue;
                };
                if canonical(&p) == wanted && (!l.readonly || other.device().writable()) {
                    return Err(format!(
                        "{} is already open for writing as target {t} LUN {n}",
                        path.display()
                    ));
                }
            }
        }
        // The image lock is taken at open (after a migration's switchover; before it, the
        // device's start takes every LUN's).
        let lun = super::registry::open_lun(l, &self.open, self.lock_at_open)?;
        let mut next = (*current).clone();
        next.insert(l.target, l.lun, lun)
            .map_err(|e| format!("target {} LUN {}: {e}", l.target, l.lun))?;
        for (_, other) in next.luns_of(l.target).filter(|&(n, _)| n != l.lun) {
            other.raise_attention(attention::REPORTED_LUNS_CHANGED);
        }
        self.table.store(Arc::new(next));
        lock(&self.configs).insert((l.target, l.lun), l.clone());
        tracing::info!(target_id = l.target, lun = l.lun, "LUN added");
        self.announce(LunChange::Added {
            target: l.target,
            lun: l.lun,
        });
        Ok(())
    }

    /// Takes a LUN out of the table at once (the guest's next commands to it get LOGICAL
    /// UNIT NOT SUPPORTED) and tells the guest; then waits (at most `drain`) for the
    /// commands it has in flight, makes its writes durable and closes it. An acknowledged
    /// write is never lost: in-flight commands keep the LUN open until they end.
    /// Returns how many commands were still in flight when the wait ended.
    pub fn remove(&self, target: u8, lun: u16, drain: Duration) -> Result<u32, String> {
        let removed = {
            let _edit = lock(&self.edit);
            let current = self.snapshot();
            let mut next = (*current).clone();
            let Some(removed) = next.remove(target, lun) else {
                return Err(format!("no LUN at target {target} LUN {lun}"));
            };
            for (_, other) in next.luns_of(target) {
                other.raise_attention(attention::REPORTED_LUNS_CHANGED);
            }
            self.table.store(Arc::new(next));
            lock(&self.configs).remove(&(target, lun));
            removed
        };
        self.announce(LunChange::Removed { target, lun });
        // Commands its limits hold back go at once: nothing is left to protect.
        removed.set_limits(IoLimits::default());
        let until = Instant::now() + drain;
        while removed.inflight() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = removed.inflight();
        let closed = removed.retire();
        tracing::info!(
            target_id = target,
            lun,
            in_flight = left,
            "LUN removed{}",
            if closed {
                " and closed"
            } else {
                "; it closes when its commands in flight end"
            }
        );
        Ok(left)
    }

    /// Changes the I/O limits of a LUN: each `(key, value)` of `changes` replaces that
    /// limit (0 removes it), the others stay. The new limits start with empty buckets.
    /// Returns the limits now in force; the error names the key.
    pub fn set_limits(
        &self,
        target: u8,
        lun: u16,
        changes: &[(String, u64)],
    ) -> Result<IoLimits, String> {
        self.change_limits(target, lun, |limits| {
            for (key, value) in changes {
                limits.set(key, *value)?;
            }
            Ok(())
        })
    }

    /// Puts `limits` in force on a LUN in place of all its limits (a reload).
    pub fn replace_limits(&self, target: u8, lun: u16, limits: IoLimits) -> Result<(), String> {
        self.change_limits(target, lun, |l| {
            *l = limits;
            Ok(())
        })
        .map(|_| ())
    }

    /// Changes a LUN's limits with `change`, checks them, puts them in force and records
    /// them in the LUN's configuration (what a reload compares the file with).
    fn change_limits(
        &self,
        target: u8,
        lun: u16,
        change: impl FnOnce(&mut IoLimits) -> Result<(), String>,
    ) -> Result<IoLimits, String> {
        let _edit = lock(&self.edit);
        let table = self.snapshot();
        let Some(l) = table.get(target, lun) else {
            return Err(format!("no LUN at target {target} LUN {lun}"));
        };
        let mut limits = l.limits();
        change(&mut limits)?;
        limits.check()?;
        l.set_limits(limits);
        if let Some(c) = lock(&self.configs).get_mut(&(target, lun)) {
            c.limits = limits;
        }
        let shown = if limits.is_empty() {
            "none".to_string()
        } else {
            limits.describe()
        };
        tracing::info!(target_id = target, lun, limits = %shown, "I/O limits set");
        Ok(limits)
    }

    /// The LUN's paths, one line each (none for a LUN without paths).
    pub fn paths(&self, target: u8, lun: u16) -> Result<Vec<String>, String> {
        let table = self.load();
        let l = table
            .get(target, lun)
            .ok_or_else(|| format!("no LUN at target {target} LUN {lun}"))?;
        Ok(l.device().detail_lines())
    }

    /// A disk LUN's reservations as this daemon sees them.
    pub fn reservations(&self, target: u8, lun: u16) -> Result<ReservationReport, String> {
        let table = self.load();
        let l = table
            .get(target, lun)
            .ok_or_else(|| format!("no LUN at target {target} LUN {lun}"))?;
        l.device().reservations().ok_or_else(|| {
            "this LUN's reservations are its target's: read them from the guest (sg_persist)"
                .to_string()
        })
    }

    /// Fails or restores one path of a multipath LUN (maintenance).
    pub fn set_path_failed(
        &self,
        target: u8,
        lun: u16,
        portal: &str,
        fail: bool,
    ) -> Result<(), String> {
        let table = self.load();
        let l = table
            .get(target, lun)
            .ok_or_else(|| format!("no LUN at target {target} LUN {lun}"))?;
        l.device().set_path_failed(portal, fail)
    }

    /// Reads the LUN's size again (or sets a file's size) and tells the guest when it
    /// changed. Returns the capacity in blocks before and after.
    pub fn resize(
        &self,
        target: u8,
        lun: u16,
        new_size: Option<u64>,
        force: bool,
    ) -> Result<(u64, u64), String> {
        let _edit = lock(&self.edit);
        let table = self.snapshot();
        let Some(l) = table.get(target, lun) else {
            return Err(format!("no LUN at target {target} LUN {lun}"));
        };
        let (old, new) = l.device().resize(new_size, force)?;
        if old != new {
            l.raise_attention(attention::CAPACITY_CHANGED);
            tracing::info!(target_id = target, lun, blocks = new, "LUN resized");
            self.announce(LunChange::CapacityChanged { target, lun });
        }
        Ok((old, new))
    }
}

fn canonical(p: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(lun: u16) -> LunChange {
        LunChange::Added { target: 0, lun }
    }

    #[test]
    fn an_add_then_remove_before_delivery_is_never_told() {
        let mut q = PendingChanges::default();
        q.push(added(1));
        q.push(LunChange::CapacityChanged { target: 0, lun: 1 });
        q.push(added(2));
        q.push(LunChange::Removed { target: 0, lun: 1 });
        assert_eq!(q.pop_front(), Some(added(2)));
        assert_eq!(q.pop_front(), None);
        assert!(!q.missed);
    }

    #[test]
    fn duplicates_are_told_once_and_overflow_is_missed() {
        let mut q = PendingChanges::default();
        q.push(LunChange::CapacityChanged { target: 0, lun: 0 });
        q.push(LunChange::CapacityChanged { target: 0, lun: 0 });
        assert_eq!(q.len(), 1);
        for l in 1..=MAX_PENDING_CHANGES as u16 {
            q.push(added(l));
        }
        assert_eq!(q.len(), MAX_PENDING_CHANGES);
        assert!(q.missed);
        assert_eq!(q.front(), Some(added(1)));
    }
}
