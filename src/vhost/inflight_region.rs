//! The vhost-user in-flight region (protocol feature INFLIGHT_SHMFD, split rings): a
//! shared memory file that the frontend keeps across backend restarts and in which the
//! device records every descriptor head it took from a ring and has not returned. A new
//! daemon attached to the same region serves those chains again, in the order they were
//! taken, before anything new: a crash or a restart loses no command, and a command whose
//! used entry was written is not run again.
//!
//! Layout (QEMU's docs/interop/vhost-user.rst, "Inflight I/O tracking"), per queue,
//! rounded up to 64 bytes:
//! `u64 features, u16 version, u16 desc_num, u16 last_batch_head, u16 used_idx`, then
//! `desc_num` entries of `u8 inflight, u8 padding[5], u16 next, u64 counter`.
//! Everything in it comes from the frontend on a restart and is checked before use.

use std::fs::File;
use std::io;
use std::os::unix::io::FromRawFd;
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

use crate::backend::guest_fault;

const HEADER: usize = 16;
const ENTRY: usize = 16;
const ALIGN: usize = 64;
const VERSION: u16 = 1;

/// Bytes one queue of `queue_size` entries takes in the region.
pub fn queue_bytes(queue_size: u16) -> usize {
    (HEADER + ENTRY * usize::from(queue_size)).next_multiple_of(ALIGN)
}

/// Why a region handed over by the frontend is refused.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("in-flight region: queue size {0} is not a power of two up to 32768")]
    QueueSize(u16),
    #[error("in-flight region: {size} bytes at offset {offset} cannot hold {queues} queues of {queue_size} ({needed} bytes)")]
    TooSmall {
        size: u64,
        offset: u64,
        queues: u16,
        queue_size: u16,
        needed: usize,
    },
    #[error("in-flight region: its file has {0} bytes, less than the region")]
    PastEndOfFile(u64),
    #[error("in-flight region: {0}")]
    Io(#[from] io::Error),
}

/// A mapped in-flight region.
pub struct InflightRegion {
    map: MmapRegion<()>,
    pub num_queues: u16,
    pub queue_size: u16,
}

impl InflightRegion {
    /// A new, zeroed region for `num_queues` queues of `queue_size` (GET_INFLIGHT_FD):
    /// returns it with the file to hand to the frontend.
    pub fn create(
        num_queues: u16,
        queue_size: u16,
    ) -> Result<(Arc<InflightRegion>, File), RegionError> {
        if !queue_size.is_power_of_two() {
            return Err(RegionError::QueueSize(queue_size));
        }
        let size = queue_bytes(queue_size) * usize::from(num_queues);
        // SAFETY: a valid C string name; memfd_create has no other preconditions.
        let fd = unsafe { libc::memfd_create(c"vscsid-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: a fresh descriptor owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size as u64)?;
        let region = Self::map(&file, 0, size, num_queues, queue_size)?;
        for q in 0..num_queues {
            let base = region.base(q);
            region.put_u16(base + 8, VERSION);
            region.put_u16(base + 10, queue_size);
        }
        Ok((Arc::new(region), file))
    }

    /// Maps the region the frontend hands over (SET_INFLIGHT_FD) after checking it.
    pub fn open(
        file: &File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Arc<InflightRegion>, RegionError> {
        if !queue_size.is_power_of_two() || queue_size > 32768 {
            return Err(RegionError::QueueSize(queue_size));
        }
        let needed = queue_bytes(queue_size) * usize::from(num_queues);
        let too_small = RegionError::TooSmall {
            size,
            offset,
            queues: num_queues,
            queue_size,
            needed,
        };
        let Ok(len) = usize::try_from(size) else {
            return Err(too_small);
        };
        if len < needed || needed == 0 {
            return Err(too_small);
        }
        let meta = file.metadata()?;
        if meta.file_type().is_file() && offset.checked_add(size).is_none_or(|e| e > meta.len()) {
            return Err(RegionError::PastEndOfFile(meta.len()));
        }
        Ok(Arc::new(Self::map(
            file, offset, needed, num_queues, queue_size,
        )?))
    }

    fn map(
        file: &File,
        offset: u64,
        len: usize,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightRegion, RegionError> {
        let map = MmapRegion::from_file(FileOffset::new(file.try_clone()?, offset), len)
            .map_err(io::Error::other)?;
        // A frontend that truncates the file later must not kill the daemon.
        guest_fault::watch_range(map.as_ptr() as usize, len);
        Ok(InflightRegion {
            map,
            num_queues,
            queue_size,
        })
    }

    fn base(&self, queue: u16) -> usize {
        usize::from(queue) * queue_bytes(self.queue_size)
    }

    // Offsets are checked by the callers against the queue size; a failed access (never
    // expected) reads 0 and writes nothing rather than panicking.
    fn put_u8(&self, at: usize, v: u8) {
        let _ = self.map.as_volatile_slice().write_obj(v, at);
    }
    fn put_u16(&self, at: usize, v: u16) {
        let _ = self.map.as_volatile_slice().write_obj(v.to_le(), at);
    }
    fn put_u64(&self, at: usize, v: u64) {
        let _ = self.map.as_volatile_slice().write_obj(v.to_le(), at);
    }
    fn get_u8(&self, at: usize) -> u8 {
        self.map.as_volatile_slice().read_obj(at).unwrap_or(0)
    }
    fn get_u16(&self, at: usize) -> u16 {
        u16::from_le(self.map.as_volatile_slice().read_obj(at).unwrap_or(0))
    }
    fn get_u64(&self, at: usize) -> u64 {
        u64::from_le(self.map.as_volatile_slice().read_obj(at).unwrap_or(0))
    }
}

/// One queue's part of the region, as the worker serving that queue updates it.
pub struct InflightQueue {
    region: Arc<InflightRegion>,
    base: usize,
    size: u16,
    /// Order in which heads were taken (the region's `counter`).
    counter: u64,
}

impl InflightQueue {
    /// Queue `queue` of `region`, if the region has it with the ring's size.
    pub fn new(region: &Arc<InflightRegion>, queue: u16, ring_size: u16) -> Option<InflightQueue> {
        (queue < region.num_queues && ring_size == region.queue_size).then(|| InflightQueue {
            region: region.clone(),
            base: region.base(queue),
            size: region.queue_size,
            counter: 1,
        })
    }

    fn entry(&self, head: u16) -> usize {
        self.base + HEADER + ENTRY * usize::from(head)
    }

    /// `head` was taken from the available ring and is about to be served.
    pub fn taken(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        let e = self.entry(head);
        self.region.put_u64(e + 8, self.counter);
        self.counter += 1;
        compiler_fence(Ordering::SeqCst);
        self.region.put_u8(e, 1);
    }

    /// `head`'s used entry is about to be written: it joins the last batch.
    pub fn returning(&self, head: u16) {
        if head >= self.size {
            return;
        }
        let last = self.region.get_u16(self.base + 12);
        self.region.put_u16(self.entry(head) + 6, last);
        compiler_fence(Ordering::SeqCst);
        self.region.put_u16(self.base + 12, head);
    }

    /// `head`'s used entry is written and the ring's used index is now `used_idx`.
    pub fn returned(&self, head: u16, used_idx: u16) {
        if head < self.size {
            self.region.put_u8(self.entry(head), 0);
        }
        compiler_fence(Ordering::SeqCst);
        self.region.put_u16(self.base + 14, used_idx);
    }

    /// Brings the record in line with the ring (whose used index is `ring_used_idx`) after
    /// a restart, and returns the heads still in flight, in the order they were taken.
    pub fn recover(&mut self, ring_used_idx: u16) -> Vec<u16> {
        let r = &self.region;
        let b = self.base;
        if r.get_u16(b + 8) != VERSION || r.get_u16(b + 10) != self.size {
            // Never written by a device (or not for this ring): nothing is in flight.
            for head in 0..self.size {
                r.put_u8(self.entry(head), 0);
            }
            r.put_u16(b + 8, VERSION);
            r.put_u16(b + 10, self.size);
            r.put_u16(b + 14, ring_used_idx);
            return Vec::new();
        }
        // The device died between writing used entries and recording them: the last
        // batch, linked from last_batch_head, reached the guest and is not in flight.
        let batch = ring_used_idx.wrapping_sub(r.get_u16(b + 14));
        let mut head = r.get_u16(b + 12);
        for _ in 0..batch.min(self.size) {
            if head >= self.size {
                break;
            }
            r.put_u8(self.entry(head), 0);
            head = r.get_u16(self.entry(head) + 6);
        }
        r.put_u16(b + 14, ring_used_idx);
        let mut pending: Vec<(u64, u16)> = (0..self.size)
            .filter(|&h| r.get_u8(self.entry(h)) == 1)
            .map(|h| (r.get_u64(self.entry(h) + 8), h))
            .collect();
        pending.sort_unstable();
        self.counter = pending.last().map_or(1, |&(c, _)| c.saturating_add(1));
        pending.into_iter().map(|(_, h)| h).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (Arc<InflightRegion>, File, InflightQueue) {
        let (region, file) = InflightRegion::create(3, 8).expect("create");
        let q = InflightQueue::new(&region, 2, 8).expect("queue 2");
        (region, file, q)
    }

    #[test]
    fn sizes_follow_the_layout() {
        assert_eq!(queue_bytes(128), 2112);
        assert_eq!(queue_bytes(8), 192);
        let (_r, file, _q) = queue();
        assert_eq!(file.metadata().expect("meta").len(), 3 * 192);
    }

    #[test]
    fn heads_still_in_flight_come_back_in_the_order_they_were_taken() {
        let (region, file, mut q) = queue();
        for head in [5, 1, 3, 0] {
            q.taken(head);
        }
        // 1 and 0 complete (out of order); the ring's used index is then 2.
        q.returning(1);
        q.returned(1, 1);
        q.returning(0);
        q.returned(0, 2);
        drop(q);
        let reopened = InflightRegion::open(&file, 0, 3 * 192, 3, 8).expect("open");
        let mut again = InflightQueue::new(&reopened, 2, 8).expect("queue");
        assert_eq!(again.recover(2), vec![5, 3]);
        // New heads are ordered after the resubmitted ones.
        again.taken(7);
        assert_eq!(again.recover(2), vec![5, 3, 7]);
        drop(region);
    }

    #[test]
    fn a_used_entry_written_before_the_crash_is_not_resubmitted() {
        let (_r, _f, mut q) = queue();
        q.taken(4);
        q.taken(6);
        // 6's used entry reached the ring (used index 1) but the device died before
        // clearing its in-flight mark.
        q.returning(6);
        assert_eq!(q.recover(1), vec![4]);
    }

    #[test]
    fn a_fresh_or_foreign_region_has_nothing_in_flight() {
        let (region, file, _q) = queue();
        // A region written for another ring size.
        let mut other = InflightQueue::new(&region, 1, 8).expect("queue 1");
        other.taken(2);
        drop(other);
        let r16 = InflightRegion::open(&file, 0, 3 * 192, 1, 16);
        let r16 = r16.expect("a 16-entry queue fits in the file");
        let mut q16 = InflightQueue::new(&r16, 0, 16).expect("queue");
        assert!(q16.recover(0).is_empty());
    }

    #[test]
    fn hostile_regions_are_refused() {
        let (_r, file, _q) = queue();
        assert!(InflightRegion::open(&file, 0, 3 * 192, 3, 100).is_err());
        assert!(InflightRegion::open(&file, 0, 100, 3, 8).is_err());
        assert!(
            InflightRegion::open(&file, 0, 1 << 30, 3, 8).is_err(),
            "past its file"
        );
        assert!(InflightRegion::open(&file, u64::MAX, 192, 1, 8).is_err());
        assert!(InflightRegion::open(&file, 0, 3 * 192, 0, 8).is_err());
        // Out-of-range heads in the record are ignored.
        let mut q = InflightQueue::new(
            &InflightRegion::open(&file, 0, 192, 1, 8).expect("ok"),
            0,
            8,
        )
        .expect("queue");
        q.taken(200);
        q.returning(9);
        q.returned(9, 1);
        assert!(q.recover(1).is_empty());
    }
}
