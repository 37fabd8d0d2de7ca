//! The device's virtqueue type: vhost-user-backend's `VringRwLock`, with one check the
//! crates leave out. A queue size that is not a power of two (SET_VRING_NUM) is invalid in
//! a split virtqueue; virtio-queue only logs it and keeps its previous size, so the device
//! would read the guest's rings with a size the guest does not use. Here the size is
//! refused and remembered, and the device drops the connection instead of serving it.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};

use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;

use crate::backend::guest::GuestMem;

/// One virtqueue of the device.
#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<GuestMem>,
    /// The last size the frontend asked for that a split virtqueue cannot have (0: none).
    refused_size: Arc<AtomicU32>,
}

impl Vring {
    /// The invalid size the frontend set for this queue, if it did.
    pub fn refused_size(&self) -> Option<u32> {
        match self.refused_size.load(Ordering::Acquire) {
            0 => None,
            n => Some(n),
        }
    }
}

/// Whether a split virtqueue may have `num` entries (virtio 1.2, 2.7: a power of two, at
/// most 32768).
pub fn valid_queue_size(num: u16) -> bool {
    num.is_power_of_two()
}

impl<'a> VringStateGuard<'a, GuestMem> for Vring {
    type G = RwLockReadGuard<'a, VringState<GuestMem>>;
}

impl<'a> VringStateMutGuard<'a, GuestMem> for Vring {
    type G = RwLockWriteGuard<'a, VringState<GuestMem>>;
}

impl VringT<GuestMem> for Vring {
    fn new(mem: GuestMem, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(Vring {
            inner: VringRwLock::new(mem, max_queue_size)?,
            refused_size: Arc::new(AtomicU32::new(0)),
        })
    }

    fn get_ref(&self) -> RwLockReadGuard<'_, VringState<GuestMem>> {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> RwLockWriteGuard<'_, VringState<GuestMem>> {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled)
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        self.inner.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        if valid_queue_size(num) {
            self.refused_size.store(0, Ordering::Release);
            self.inner.set_queue_size(num);
        } else {
            tracing::error!(
                size = num,
                "refusing a virtqueue size that is not a power of two"
            );
            self.refused_size.store(u32::from(num), Ordering::Release);
        }
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.inner.set_queue_ready(ready)
    }

    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file)
    }

    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    fn vring() -> Vring {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        Vring::new(mem, 256).expect("vring")
    }

    #[test]
    fn power_of_two_sizes_are_taken() {
        let v = vring();
        v.set_queue_size(64);
        assert_eq!(v.get_ref().get_queue().size(), 64);
        assert_eq!(v.refused_size(), None);
    }

    #[test]
    fn other_sizes_are_refused_and_remembered() {
        let v = vring();
        v.set_queue_size(64);
        v.set_queue_size(100);
        assert_eq!(v.refused_size(), Some(100));
        assert_eq!(
            v.get_ref().get_queue().size(),
            64,
            "the ring keeps its size"
        );
        v.set_queue_size(128);
        assert_eq!(v.refused_size(), None, "a valid size set later clears it");
    }
}
