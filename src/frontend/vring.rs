//! A split virtqueue driven from the driver side: descriptor table, available ring and used
//! ring in guest memory, with a raw API that writes any descriptor a hostile guest could.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::FrontendMemory;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// One split virtqueue.
pub struct SplitQueue {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: EventFd,
    pub call: EventFd,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    event_idx: bool,
    /// The available index when the device was last told (or decided not to be told).
    notified_at: u16,
    /// The driver wants the device's notifications (a driver that polls the used ring
    /// does not).
    interrupts: bool,
}

impl SplitQueue {
    /// Bytes the rings of a queue of `size` need at `base` (16-byte aligned pieces).
    pub fn footprint(size: u16) -> u64 {
        let n = u64::from(size);
        let desc = 16 * n;
        let avail = (6 + 2 * n).next_multiple_of(16);
        let used = (6 + 8 * n).next_multiple_of(16);
        desc + avail + used
    }

    /// Lays a queue of `size` out at `base` and zeroes its rings.
    pub fn new(
        mem: &FrontendMemory,
        base: u64,
        size: u16,
        event_idx: bool,
    ) -> std::io::Result<SplitQueue> {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = avail + (6 + 2 * n).next_multiple_of(16);
        let zero = vec![0u8; Self::footprint(size) as usize];
        mem.write_slice(&zero, GuestAddress(base))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(SplitQueue {
            size,
            desc,
            avail,
            used,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            event_idx,
            notified_at: 0,
            interrupts: true,
        })
    }

    /// Asks the device for its notifications of used buffers, or not, as a guest driver
    /// that polls its used ring does: with EVENT_IDX the used event is no longer moved
    /// (the device notifies again only when its used index comes round to it), without
    /// it the available ring's NO_INTERRUPT flag is set.
    pub fn set_interrupts(&mut self, mem: &FrontendMemory, on: bool) {
        const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
        self.interrupts = on;
        if !self.event_idx {
            let flags = if on { 0 } else { VRING_AVAIL_F_NO_INTERRUPT };
            let _ = mem.write_obj(flags, GuestAddress(self.avail));
        }
        fence(Ordering::SeqCst);
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Writes descriptor `i` verbatim (raw API: any address, length, flags, next).
    pub fn write_desc(
        &self,
        mem: &FrontendMemory,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let at = self.desc + 16 * u64::from(i % self.size);
        let _ = mem.write_slice(&d, GuestAddress(at));
    }

    /// Publishes `head` in the available ring (raw API: any index).
    pub fn push_avail(&mut self, mem: &FrontendMemory, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2));
        fence(Ordering::SeqCst);
    }

    /// Sets the available index to any value (raw API).
    pub fn set_avail_idx(&mut self, mem: &FrontendMemory, idx: u16) {
        self.avail_idx = idx;
        fence(Ordering::SeqCst);
        let _ = mem.write_obj(idx, GuestAddress(self.avail + 2));
    }

    /// Adds a chain of `(guest address, length, device-writable)` buffers; returns its head,
    /// or None when too few descriptors are free. `indirect_at` puts the chain in an
    /// indirect table at that guest address instead.
    pub fn add_chain(
        &mut self,
        mem: &FrontendMemory,
        bufs: &[(u64, u32, bool)],
        indirect_at: Option<u64>,
    ) -> Option<u16> {
        if let Some(table) = indirect_at {
            let head = self.free.pop()?;
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let last = i + 1 == bufs.len();
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                let flags = if w { VRING_DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { VRING_DESC_F_NEXT };
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
                let _ = mem.write_slice(&d, GuestAddress(table + 16 * i as u64));
            }
            self.write_desc(
                mem,
                head,
                table,
                16 * bufs.len() as u32,
                VRING_DESC_F_INDIRECT,
                0,
            );
            self.push_avail(mem, head);
            return Some(head);
        }
        if bufs.is_empty() || self.free.len() < bufs.len() {
            return None;
        }
        // Written back to front, so each descriptor knows the one after it without a list
        // of ids (no allocation per request in the load generator).
        let mut next = 0u16;
        for (i, &(addr, len, w)) in bufs.iter().enumerate().rev() {
            let id = self.free.pop()?;
            let last = i + 1 == bufs.len();
            let flags =
                if w { VRING_DESC_F_WRITE } else { 0 } | if last { 0 } else { VRING_DESC_F_NEXT };
            self.write_desc(mem, id, addr, len, flags, if last { 0 } else { next });
            next = id;
        }
        self.push_avail(mem, next);
        Some(next)
    }

    /// Notifies the device.
    pub fn kick(&self) {
        let _ = self.kick.write(1);
    }

    /// Notifies the device of the chains added since the last call only if it asked to be
    /// (a guest driver's virtqueue_kick_prepare: the avail_event of EVENT_IDX, else the used
    /// ring's NO_NOTIFY flag). Returns whether it kicked.
    pub fn kick_if_needed(&mut self, mem: &FrontendMemory) -> bool {
        fence(Ordering::SeqCst);
        let (old, new) = (self.notified_at, self.avail_idx);
        self.notified_at = new;
        let needed = if self.event_idx {
            let at = self.used + 4 + 8 * u64::from(self.size);
            match mem.read_obj::<u16>(GuestAddress(at)) {
                Ok(event) => new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old),
                Err(_) => true,
            }
        } else {
            const VRING_USED_F_NO_NOTIFY: u16 = 1;
            mem.read_obj::<u16>(GuestAddress(self.used))
                .map_or(true, |flags| flags & VRING_USED_F_NO_NOTIFY == 0)
        };
        if needed {
            self.kick();
        }
        needed
    }

    /// Takes one used element `(id, len)` if the device has published one, and returns the
    /// descriptors of its chain to the free list.
    pub fn pop_used(&mut self, mem: &FrontendMemory) -> Option<(u16, u32)> {
        fence(Ordering::SeqCst);
        let used_idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).ok()?;
        if used_idx == self.last_used {
            if self.event_idx && self.interrupts {
                // Ask to be notified for the next completion.
                let at = self.avail + 4 + 2 * u64::from(self.size);
                let _ = mem.write_obj(self.last_used, GuestAddress(at));
            }
            return None;
        }
        fence(Ordering::SeqCst);
        let at = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).ok()?;
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).ok()?;
        self.last_used = self.last_used.wrapping_add(1);
        self.reclaim(mem, id as u16);
        Some((id as u16, len))
    }

    fn reclaim(&mut self, mem: &FrontendMemory, head: u16) {
        let mut i = head % self.size;
        for _ in 0..self.size {
            // Raw (hostile) chains may reuse descriptors: never free one twice.
            if !self.free.contains(&i) {
                self.free.push(i);
            }
            let at = self.desc + 16 * u64::from(i);
            let flags: u16 = mem.read_obj(GuestAddress(at + 12)).unwrap_or(0);
            if flags & VRING_DESC_F_NEXT == 0 {
                break;
            }
            i = mem.read_obj::<u16>(GuestAddress(at + 14)).unwrap_or(0) % self.size;
        }
    }

    /// Waits (bounded) for a used element.
    pub fn wait_used(&mut self, mem: &FrontendMemory, timeout: Duration) -> Option<(u16, u32)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = self.pop_used(mem) {
                return Some(u);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let mut pfd = libc::pollfd {
                fd: std::os::unix::io::AsRawFd::as_raw_fd(&self.call),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is a valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
            let _ = self.call.read();
        }
    }
}
