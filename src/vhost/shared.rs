//! State every worker thread of one connection shares: the LUN table, guest memory, the
//! per-queue in-flight counts, the queue-to-thread layout, and the wake-ups between
//! threads.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::connection::ConnectionGuard;
use super::inflight::InflightCounters;
use crate::backend::guest::GuestMem;
use crate::config::PollSetting;
use crate::lun::LiveLuns;

/// Global index of the control queue and of the event queue.
pub const CONTROL_QUEUE: u16 = 0;
pub const EVENT_QUEUE: u16 = 1;

pub struct Shared {
    pub luns: Arc<LiveLuns>,
    pub mem: GuestMem,
    pub inflight: InflightCounters,
    /// Set on SIGTERM: workers stop taking new requests and let in-flight ones finish.
    pub stopping: AtomicBool,
    /// Global queue indices of each thread, in the order of that thread's vring slice.
    pub thread_queues: Vec<Vec<u16>>,
    /// Wakes the control thread when a LUN it waits for (task management) drains.
    pub tmf_event: EventFd,
    pub tmf_waiting: AtomicU32,
    /// Queues (by global index) whose available ring the guest corrupted; they are not
    /// served again until the frontend stops and restarts them.
    broken: Vec<AtomicBool>,
    /// How workers busy-poll after work (`--poll-us`).
    pub poll: PollSetting,
    /// Each worker's wake-up (its completion eventfd).
    wakers: Vec<EventFd>,
    /// Per queue, how often the frontend took it back (GET_VRING_BASE, reset). A command
    /// answers on its ring only while the epoch it was popped in lasts: a ring handed back
    /// belongs to the guest again, whatever the timing of a late completion.
    epochs: Vec<AtomicU32>,
    /// Ends this connection when the frontend breaks the protocol.
    pub connection: ConnectionGuard,
    /// Queues being stopped: while any is, I/O limits hold no command back.
    limits_off: AtomicU32,
}

impl Shared {
    pub fn new(
        luns: Arc<LiveLuns>,
        mem: GuestMem,
        queues: usize,
        thread_queues: Vec<Vec<u16>>,
        poll: PollSetting,
        wakers: Vec<EventFd>,
    ) -> std::io::Result<Shared> {
        Ok(Shared {
            luns,
            mem,
            inflight: InflightCounters::new(queues),
            stopping: AtomicBool::new(false),
            thread_queues,
            tmf_event: EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?,
            tmf_waiting: AtomicU32::new(0),
            broken: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            poll,
            wakers,
            epochs: (0..queues).map(|_| AtomicU32::new(0)).collect(),
            connection: ConnectionGuard::default(),
            limits_off: AtomicU32::new(0),
        })
    }

    /// `(position in the thread's vrings, global queue)` of a thread's request queues.
    pub fn request_queues_of(&self, thread: usize) -> impl Iterator<Item = (usize, u16)> + '_ {
        self.thread_queues
            .get(thread)
            .into_iter()
            .flat_map(|qs| qs.iter().copied().enumerate())
            .filter(|&(_, q)| q > EVENT_QUEUE)
    }

    pub fn is_broken(&self, queue: u16) -> bool {
        self.broken
            .get(usize::from(queue))
            .is_some_and(|b| b.load(Ordering::Acquire))
    }

    /// Stops serving a queue whose available ring makes no sense (an index more than a
    /// queue size ahead): popping from it would spin. Logged once.
    pub fn mark_broken(&self, queue: u16) {
        let Some(b) = self.broken.get(usize::from(queue)) else {
            return;
        };
        if !b.swap(true, Ordering::AcqRel) {
            tracing::error!(
                queue,
                "guest corrupted the available ring; queue stopped until reset"
            );
        }
    }

    /// The frontend stopped a queue (or reset the device): it may be served again.
    pub fn clear_broken(&self, queue: Option<u32>) {
        match queue {
            Some(q) => {
                if let Some(b) = self.broken.get(q as usize) {
                    b.store(false, Ordering::Release);
                }
            }
            None => self
                .broken
                .iter()
                .for_each(|b| b.store(false, Ordering::Release)),
        }
    }

    /// The current epoch of `queue`'s ring.
    pub fn epoch(&self, queue: u16) -> u32 {
        self.epochs
            .get(usize::from(queue))
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// The frontend takes `queue`'s ring back (every ring with None): commands popped
    /// before may no longer answer on it.
    pub fn end_epoch(&self, queue: Option<u32>) {
        for (q, e) in self.epochs.iter().enumerate() {
            if queue.is_none_or(|want| want as usize == q) {
                e.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Lifts (`true`) or restores I/O limits while a queue is stopped, so the commands
    /// they hold back end within the stop; lifting wakes the workers to start them.
    pub fn suspend_limits(&self, suspend: bool) {
        if suspend {
            self.limits_off.fetch_add(1, Ordering::AcqRel);
            self.wake_workers();
        } else {
            let _ = self
                .limits_off
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }

    /// Whether I/O limits are lifted (see [`Shared::suspend_limits`]).
    pub fn limits_suspended(&self) -> bool {
        self.limits_off.load(Ordering::Acquire) > 0
    }

    /// Wakes every worker: a LUN's write gate opened, commands parked at it may go.
    pub fn wake_workers(&self) {
        for w in &self.wakers {
            let _ = w.write(1);
        }
    }

    /// Called when a command ends: wakes task management waiting for commands to end.
    pub fn lun_drained(&self) {
        if self.tmf_waiting.load(Ordering::Acquire) > 0 {
            let _ = self.tmf_event.write(1);
        }
    }
}
