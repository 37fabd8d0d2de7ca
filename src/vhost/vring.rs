//! One virtqueue as the device keeps it: the split ring (virtio-queue's `Queue`, which
//! reads and writes it in guest memory), the eventfds the frontend gave for kicks and
//! calls, and the two switches of the vhost-user protocol: started (a kick fd arrived,
//! until GET_VRING_BASE) and enabled (SET_VRING_ENABLE). Served only while both are on.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use virtio_queue::{Error as QueueError, Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace};

use super::dirty_log::{self, DirtyLog};
use super::inflight_region::{InflightQueue, InflightRegion};
use crate::backend::guest::{GuestMem, Mem};
use crate::virtio::ParsedChain;

/// Whether a split virtqueue may have `num` entries (virtio 1.2, 2.7: a power of two, at
/// most 32768) within the device's maximum.
pub fn valid_queue_size(num: u32, max: u16) -> bool {
    num.is_power_of_two() && num <= u32::from(max)
}

pub struct VringState {
    queue: Queue,
    kick: Option<File>,
    call: Option<File>,
    enabled: bool,
    mem: GuestMem,
    /// This ring's part of the in-flight region, when the frontend gave one.
    inflight: Option<InflightQueue>,
    /// Heads a previous device left in flight, served before the available ring.
    resubmit: VecDeque<u16>,
    /// The connection's dirty log (live migration).
    log: Arc<DirtyLog>,
    /// A completed chain's buffers, read again to log them (kept to avoid allocating).
    log_scratch: ParsedChain,
}

impl VringState {
    pub fn get_queue(&self) -> &Queue {
        &self.queue
    }

    pub fn get_queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// Whether the ring is to be served: started by the frontend and enabled.
    pub fn is_live(&self) -> bool {
        self.queue.ready() && self.enabled
    }

    pub fn kick(&self) -> Option<&File> {
        self.kick.as_ref()
    }
}

/// Marks in the dirty log what completing `head` writes: the first `len` bytes of its
/// device-writable buffers (response and data-in, already written) and the used ring's
/// entry and index.
fn log_completion(
    st: &mut VringState,
    mem: &Mem,
    log: &vm_memory::MmapRegion<()>,
    head: u16,
    len: u32,
) {
    let table = GuestAddress(st.queue.desc_table());
    let size = st.queue.size();
    st.log_scratch.parse_from(mem, table, size, head);
    let mut left = if st.log.marks_data() {
        u64::from(len)
    } else {
        0
    };
    for seg in st.log_scratch.writable.segments() {
        if left == 0 {
            break;
        }
        let n = left.min(u64::from(seg.len));
        dirty_log::mark(log, seg.addr.0, n);
        left -= n;
    }
    let used = st.queue.used_ring();
    let slot = u64::from(st.queue.next_used() % size.max(1));
    dirty_log::mark(log, used + 4 + 8 * slot, 8);
    dirty_log::mark(log, used + 2, 2);
}

/// One virtqueue, shared by the protocol thread and the worker that serves it.
#[derive(Clone)]
pub struct Vring(Arc<RwLock<VringState>>);

impl Vring {
    pub fn new(mem: GuestMem, max_size: u16, log: Arc<DirtyLog>) -> Result<Vring, QueueError> {
        Ok(Vring(Arc::new(RwLock::new(VringState {
            queue: Queue::new(max_size)?,
            kick: None,
            call: None,
            enabled: false,
            mem,
            inflight: None,
            resubmit: VecDeque::new(),
            log,
            log_scratch: ParsedChain::new(),
        }))))
    }

    // A panic while holding the lock leaves the ring state consistent (every update is one
    // statement), so a poisoned lock is taken as it is.
    pub fn get_ref(&self) -> RwLockReadGuard<'_, VringState> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get_mut(&self) -> RwLockWriteGuard<'_, VringState> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next chain to serve into `into`: first what a previous device left in
    /// flight (in the order it was taken), then the available ring. Recorded in the
    /// in-flight region before it is served. False when there is nothing to take.
    pub fn pop_chain(&self, mem: &Mem, into: &mut ParsedChain) -> bool {
        let mut st = self.get_mut();
        let head = match st.resubmit.pop_front() {
            Some(h) => h,
            None => {
                let Some(chain) = st.queue.pop_descriptor_chain(mem) else {
                    return false;
                };
                let h = chain.head_index();
                if let Some(inf) = st.inflight.as_mut() {
                    inf.taken(h);
                }
                h
            }
        };
        let table = GuestAddress(st.queue.desc_table());
        into.parse_from(mem, table, st.queue.size(), head);
        true
    }

    /// Puts a used entry on the ring, recording it in the in-flight region around it.
    pub fn add_used(&self, head: u16, len: u32) -> Result<(), QueueError> {
        let mut st = self.get_mut();
        let mem = st.mem.memory();
        if let Some(inf) = &st.inflight {
            inf.returning(head);
        }
        if let Some(log) = st.log.active() {
            log_completion(&mut st, &mem, &log, head, len);
        }
        st.queue.add_used(&*mem, head, len)?;
        let used = st.queue.next_used();
        if let Some(inf) = &st.inflight {
            inf.returned(head, used);
        }
        Ok(())
    }

    /// Attaches queue `index` of the frontend's in-flight region as the ring starts: the
    /// heads still in flight are queued for serving again, and the available index
    /// resumes after them. Returns how many there are.
    pub fn attach_inflight(&self, region: &Arc<InflightRegion>, index: u16) -> usize {
        let mut st = self.get_mut();
        let size = st.queue.size();
        let Some(mut q) = InflightQueue::new(region, index, size) else {
            tracing::warn!(
                queue = index,
                size,
                "the in-flight region does not cover this ring; it is not tracked"
            );
            st.inflight = None;
            return 0;
        };
        let used = st.queue.next_used();
        let pending = q.recover(used);
        // Every head taken either reached the used ring or is still in flight.
        let next_avail = used.wrapping_add(pending.len() as u16);
        if next_avail != st.queue.next_avail() {
            tracing::info!(
                queue = index,
                from = st.queue.next_avail(),
                to = next_avail,
                "available index taken from the in-flight region"
            );
        }
        st.queue.set_next_avail(next_avail);
        st.resubmit = pending.into();
        st.inflight = Some(q);
        st.resubmit.len()
    }

    /// Whether this ring records its heads in an in-flight region.
    pub fn tracks_inflight(&self) -> bool {
        self.get_ref().inflight.is_some()
    }

    /// Interrupts the guest (writes the call eventfd), if the frontend gave one.
    pub fn signal_used_queue(&self) -> io::Result<()> {
        match self.get_ref().call.as_ref() {
            Some(mut f) => f.write_all(&1u64.to_ne_bytes()),
            None => Ok(()),
        }
    }

    pub fn enable_notification(&self) -> Result<bool, QueueError> {
        let mut st = self.get_mut();
        let mem = st.mem.memory();
        st.queue.enable_notification(&*mem)
    }

    pub fn disable_notification(&self) -> Result<(), QueueError> {
        let mut st = self.get_mut();
        let mem = st.mem.memory();
        st.queue.disable_notification(&*mem)
    }

    pub fn needs_notification(&self) -> Result<bool, QueueError> {
        let mut st = self.get_mut();
        let mem = st.mem.memory();
        st.queue.needs_notification(&*mem)
    }

    /// Consumes a kick; returns whether the ring is to be served.
    pub fn read_kick(&self) -> bool {
        let st = self.get_ref();
        if let Some(mut f) = st.kick.as_ref() {
            let mut buf = [0u8; 8];
            let _ = f.read(&mut buf);
        }
        st.is_live()
    }

    // --- What the protocol thread sets ---

    pub fn set_size(&self, num: u16) {
        self.get_mut().queue.set_size(num);
    }

    pub fn set_event_idx(&self, on: bool) {
        self.get_mut().queue.set_event_idx(on);
    }

    pub fn set_enabled(&self, on: bool) {
        self.get_mut().enabled = on;
    }

    pub fn set_ready(&self, on: bool) {
        self.get_mut().queue.set_ready(on);
    }

    /// Sets the ring's three addresses (guest physical) and takes the used index the guest
    /// sees as the device's own: after a guest driver restart it is 0 again.
    pub fn set_addresses(&self, desc: u64, avail: u64, used: u64) -> Result<(), QueueError> {
        let mut st = self.get_mut();
        let q = &mut st.queue;
        q.try_set_desc_table_address(GuestAddress(desc))?;
        q.try_set_avail_ring_address(GuestAddress(avail))?;
        q.try_set_used_ring_address(GuestAddress(used))?;
        let mem = st.mem.memory();
        let idx = st
            .queue
            .used_idx(&*mem, std::sync::atomic::Ordering::Acquire)?;
        st.queue.set_next_used(idx.0);
        Ok(())
    }

    pub fn set_next_avail(&self, base: u16) {
        self.get_mut().queue.set_next_avail(base);
    }

    pub fn next_avail(&self) -> u16 {
        self.get_ref().queue.next_avail()
    }

    pub fn set_kick(&self, f: Option<File>) {
        self.get_mut().kick = f;
    }

    pub fn set_call(&self, f: Option<File>) {
        self.get_mut().call = f;
    }

    pub fn has_kick(&self) -> bool {
        self.get_ref().kick.is_some()
    }

    pub fn is_ready(&self) -> bool {
        self.get_ref().queue.ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_sizes_must_be_powers_of_two_within_the_maximum() {
        assert!(valid_queue_size(128, 1024));
        assert!(valid_queue_size(1024, 1024));
        assert!(valid_queue_size(1, 1024));
        assert!(!valid_queue_size(100, 1024));
        assert!(!valid_queue_size(0, 1024));
        assert!(!valid_queue_size(2048, 1024));
    }
}
