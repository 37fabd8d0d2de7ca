//! Virtqueue helpers shared by the request and control queues: the vring type, guest
//! notification, and the check for an available ring that cannot be served.

use std::sync::{Mutex, MutexGuard};

use virtio_queue::QueueT;

use crate::backend::guest::MemGuard;

pub use super::vring::Vring;

/// Locks a mutex, taking the data even if a thread panicked holding it: every structure
/// behind these locks stays consistent between statements.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// True when the guest's available index is more than a queue size ahead of what the
/// device consumed (or unreadable): such a ring can never be served.
pub fn avail_ring_is_corrupt(vring: &Vring, mem: &MemGuard) -> bool {
    let state = vring.get_ref();
    let q = state.get_queue();
    match q.avail_idx(&**mem, std::sync::atomic::Ordering::Acquire) {
        Ok(idx) => idx.0.wrapping_sub(q.next_avail()) > q.size(),
        Err(_) => true,
    }
}

/// Notifies the guest if it asked to be (EVENT_IDX) or always without it.
pub fn signal(vring: &Vring) {
    if vring.needs_notification().unwrap_or(true) {
        let _ = vring.signal_used_queue();
    }
}

/// Notifies the guest on every vring whose bit is set in `mask`.
pub fn signal_marked(vrings: &[Vring], mask: u64) {
    for (vpos, vring) in vrings.iter().enumerate() {
        if mask & (1u64 << (vpos % 64)) != 0 {
            signal(vring);
        }
    }
}
