//! Answers of forwarded (passthrough) commands arrive on the initiator's threads. When the
//! worker is busy they wait here, and the worker's completion eventfd wakes it to take them.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use super::queue::lock;
use crate::scsi::task::ScsiCompletion;

/// Answers waiting for a worker, and the eventfd that wakes it (its io_uring completion
/// eventfd, so one epoll token serves both).
pub struct RemoteAnswers {
    items: Mutex<Vec<(usize, ScsiCompletion)>>,
    wake: EventFd,
}

impl RemoteAnswers {
    /// `capacity`: the most answers that can be outstanding (the worker's commands in
    /// flight). The list and the worker's own buffer trade places at each hand-over, so
    /// both are sized for it from the start: neither grows while the other lags behind.
    pub fn new(wake: EventFd, capacity: usize) -> RemoteAnswers {
        RemoteAnswers {
            items: Mutex::new(Vec::with_capacity(capacity)),
            wake,
        }
    }

    /// Hands answers to the worker. One wake-up per batch: while the list is not empty
    /// the worker has a wake-up pending (it empties the list when it runs), so only the
    /// post that finds it empty writes.
    pub fn post_all(&self, answers: &mut dyn Iterator<Item = (usize, ScsiCompletion)>) {
        let first = {
            let mut items = lock(&self.items);
            let was_empty = items.is_empty();
            items.extend(answers);
            was_empty && !items.is_empty()
        };
        if first {
            self.wake_worker();
        }
    }

    /// Moves every answer posted so far into `into` (empty), which leaves its allocation
    /// here for the next posts: handing answers over allocates nothing per batch.
    pub fn take_into(&self, into: &mut Vec<(usize, ScsiCompletion)>) {
        std::mem::swap(&mut *lock(&self.items), into);
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.items).is_empty()
    }

    pub fn wake_worker(&self) {
        let _ = self.wake.write(1);
    }
}
