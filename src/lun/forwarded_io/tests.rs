use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::*;
use crate::backend::guest::{DataBuffers, GuestData, Mem, SegList, Segment};

fn list(segs: &[(u64, u32)]) -> SegList {
    let mut l = SegList::with_capacity(8);
    for &(a, n) in segs {
        assert!(l.push(Segment {
            addr: GuestAddress(a),
            len: n
        }));
    }
    l
}

fn memory() -> GuestMemoryAtomic<Mem> {
    GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap())
}

#[test]
fn data_in_lands_in_the_guest_buffers_and_never_past_them() {
    let atomic = memory();
    let guard = atomic.memory();
    let out = list(&[]);
    // Data-in: 4 bytes of header, then 3 + 5 bytes of buffers in two places.
    let inn = list(&[(0x100, 4), (0x200, 3), (0x300, 5)]);
    let data = DataBuffers {
        out: GuestData::new(&guard, &out, 0),
        inn: GuestData::new(&guard, &inn, 4),
        guard: &guard,
    };
    let pool = Arc::new(GuestIoPool::default());
    let (lease, io) = pool.lend(&data).expect("lent");
    assert_eq!(io.out_len, 0);
    assert_eq!(io.buffers.write_in(0, b"abc"), 3);
    // A target sending more than asked, or far past the end: clipped, nothing outside.
    assert_eq!(io.buffers.write_in(3, b"defghXYZ"), 5);
    assert_eq!(io.buffers.write_in(8, b"!"), 0);
    assert_eq!(io.buffers.write_in(usize::MAX, b"!"), 0);
    let mut back = [0u8; 8];
    assert_eq!(data.inn.read_at(0, &mut back), 8);
    assert_eq!(&back, b"abcdefgh");
    let mut around = [0u8; 1];
    assert_eq!(
        guard
            .read_slice(&mut around, GuestAddress(0x305))
            .map(|_| around[0])
            .ok(),
        Some(0)
    );
    assert_eq!(lease.end(), 8);
    // Ended: a late Data-In (a session that still holds the command) writes nothing.
    assert_eq!(io.buffers.write_in(0, b"zzz"), 0);
    assert_eq!(data.inn.read_at(0, &mut back), 8);
    assert_eq!(&back, b"abcdefgh");
}

#[test]
fn a_slot_keeps_the_memory_mapped_after_the_frontend_let_go() {
    let atomic = memory();
    let guard = atomic.memory();
    let out = list(&[(0x400, 6)]);
    let inn = list(&[(0x800, 16)]);
    guard.write_slice(b"WRITE!", GuestAddress(0x400)).unwrap();
    let data = DataBuffers {
        out: GuestData::new(&guard, &out, 0),
        inn: GuestData::new(&guard, &inn, 0),
        guard: &guard,
    };
    let pool = Arc::new(GuestIoPool::default());
    let (lease, io) = pool.lend(&data).expect("lent");
    // The frontend goes away: its map and every other reference is dropped.
    drop(guard);
    drop(atomic);
    let mut buf = [0u8; 6];
    assert_eq!(io.buffers.read_out(0, &mut buf), 6);
    assert_eq!(&buf, b"WRITE!");
    assert_eq!(io.buffers.write_in(0, b"late but mapped"), 15);
    // The worker drops the command (connection gone): no further writes, while the
    // session may still read the data-out of a write it resends.
    drop(lease);
    assert_eq!(io.buffers.write_in(0, b"x"), 0);
    assert_eq!(io.buffers.read_out(0, &mut buf), 6);
    // The slot was still held (by `io`): the pool did not take it back.
    assert_eq!(pool.free.lock().unwrap().len(), 0);
    drop(io);
}

#[test]
fn slots_are_reused_once_nobody_holds_them() {
    let atomic = memory();
    let guard = atomic.memory();
    let out = list(&[]);
    let inn = list(&[(0x800, 16)]);
    let data = DataBuffers {
        out: GuestData::new(&guard, &out, 0),
        inn: GuestData::new(&guard, &inn, 0),
        guard: &guard,
    };
    let pool = Arc::new(GuestIoPool::default());
    let (lease, io) = pool.lend(&data).unwrap();
    let first = Arc::as_ptr(&lease.slot);
    drop(io);
    lease.end();
    assert_eq!(pool.free.lock().unwrap().len(), 1);
    let (again, _io) = pool.lend(&data).unwrap();
    assert_eq!(Arc::as_ptr(&again.slot), first);
}

#[test]
fn data_out_outside_guest_memory_is_not_lent() {
    let atomic = memory();
    let guard = atomic.memory();
    let out = list(&[(0xfff0, 0x20)]);
    let inn = list(&[]);
    let data = DataBuffers {
        out: GuestData::new(&guard, &out, 0),
        inn: GuestData::new(&guard, &inn, 0),
        guard: &guard,
    };
    assert!(Arc::new(GuestIoPool::default()).lend(&data).is_none());
}
