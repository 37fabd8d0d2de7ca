//! Guest memory as the I/O path sees it: the mapping type, scatter lists of guest buffers
//! ([`SegList`]), and [`GuestData`], one direction of a command's data (data-out or
//! data-in) past its transport header.
//!
//! Segments are kept as guest addresses and translated region by region on every access,
//! so a segment that leaves guest memory fails the copy instead of touching foreign
//! memory. Copies never panic on what a guest wrote.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryLoadGuard, GuestMemoryMmap};

/// Guest memory, mapped.
pub type Mem = GuestMemoryMmap<()>;
/// A counted reference to one version of the guest's memory map: it keeps the mapping alive
/// while I/O points into it, even if the frontend replaces the map meanwhile.
pub type MemGuard = GuestMemoryLoadGuard<Mem>;
/// The guest memory map shared with the vhost-user daemon, replaced on SET_MEM_TABLE.
pub type GuestMem = vm_memory::GuestMemoryAtomic<Mem>;

/// Most segments kept per direction of one request. A chain with more is refused; the queue
/// size bounds ordinary chains and this bounds indirect tables.
pub const MAX_SEGMENTS: usize = 1024 + 4;

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A preallocated list of guest buffers; reused across requests so parsing does not allocate.
#[derive(Debug, Default)]
pub struct SegList {
    segs: Vec<Segment>,
    total: u64,
}

impl SegList {
    pub fn with_capacity(n: usize) -> SegList {
        SegList {
            segs: Vec::with_capacity(n),
            total: 0,
        }
    }

    pub fn clear(&mut self) {
        self.segs.clear();
        self.total = 0;
    }

    /// Appends a segment; false when the list is full.
    pub fn push(&mut self, seg: Segment) -> bool {
        if self.segs.len() >= MAX_SEGMENTS {
            return false;
        }
        if seg.len > 0 {
            self.segs.push(seg);
            self.total += u64::from(seg.len);
        }
        true
    }

    /// Makes this list a copy of `other`, keeping this list's allocation.
    pub fn copy_from(&mut self, other: &SegList) {
        self.segs.clear();
        self.segs.extend_from_slice(&other.segs);
        self.total = other.total;
    }

    /// Total bytes of all segments.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Calls `f(addr, len)` for each guest range covering `[offset, offset+len)` of the list.
    /// Returns the bytes covered (less than `len` if the list is shorter).
    pub fn for_each_range<E>(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(GuestAddress, usize) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut skip = offset;
        let mut left = len;
        let mut done = 0u64;
        for s in &self.segs {
            if left == 0 {
                break;
            }
            let slen = u64::from(s.len);
            if skip >= slen {
                skip -= slen;
                continue;
            }
            let n = (slen - skip).min(left);
            let Some(addr) = s.addr.0.checked_add(skip) else {
                break;
            };
            f(GuestAddress(addr), n as usize)?;
            skip = 0;
            left -= n;
            done += n;
        }
        Ok(done)
    }

    /// Copies guest bytes `[offset, offset+buf.len())` into `buf`; returns bytes copied.
    /// Stops at the first range outside guest memory.
    pub fn read_into<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        offset: u64,
        buf: &mut [u8],
    ) -> usize {
        let mut pos = 0usize;
        let _ = self.for_each_range(offset, buf.len() as u64, |addr, n| {
            mem.read_slice(&mut buf[pos..pos + n], addr)
                .map_err(|_| ())?;
            pos += n;
            Ok::<(), ()>(())
        });
        pos
    }

    /// Copies `buf` into guest bytes starting at `offset`; returns bytes copied. Stops at the
    /// first range outside guest memory.
    pub fn write_from<M: GuestMemory + ?Sized>(&self, mem: &M, offset: u64, buf: &[u8]) -> usize {
        let mut pos = 0usize;
        let _ = self.for_each_range(offset, buf.len() as u64, |addr, n| {
            mem.write_slice(&buf[pos..pos + n], addr).map_err(|_| ())?;
            pos += n;
            Ok::<(), ()>(())
        });
        pos
    }
}

/// One direction of a command's data in guest memory: the bytes of `segs` from `base` on
/// (the part past the transport's request or response header).
#[derive(Clone, Copy)]
pub struct GuestData<'a> {
    mem: &'a Mem,
    segs: &'a SegList,
    base: u64,
}

impl<'a> GuestData<'a> {
    pub fn new(mem: &'a Mem, segs: &'a SegList, base: u64) -> GuestData<'a> {
        GuestData { mem, segs, base }
    }

    /// Bytes the guest supplied (0 when the header alone filled the list).
    pub fn len(&self) -> u64 {
        self.segs.total().saturating_sub(self.base)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn mem(&self) -> &'a Mem {
        self.mem
    }

    /// The guest buffers this data lies in, and where in them it starts.
    pub fn segments(&self) -> (&'a SegList, u64) {
        (self.segs, self.base)
    }

    /// Whether every byte lies in guest memory (a copy of it would not stop short).
    pub fn is_mapped(&self) -> bool {
        let len = self.len();
        matches!(
            self.for_each_range(0, len, |addr, n| {
                vm_memory::GuestMemoryBackend::get_slice(self.mem, addr, n).map(|_| ()).map_err(|_| ())
            }),
            Ok(done) if done == len
        )
    }

    /// Copies bytes `[offset, offset+buf.len())` into `buf`; returns bytes copied.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        match self.base.checked_add(offset) {
            Some(at) => self.segs.read_into(self.mem, at, buf),
            None => 0,
        }
    }

    /// Copies `buf` to bytes starting at `offset`; returns bytes copied.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> usize {
        match self.base.checked_add(offset) {
            Some(at) => self.segs.write_from(self.mem, at, buf),
            None => 0,
        }
    }

    /// Calls `f(addr, len)` for each guest range covering `[offset, offset+len)`; returns
    /// the bytes covered.
    pub fn for_each_range<E>(
        &self,
        offset: u64,
        len: u64,
        f: impl FnMut(GuestAddress, usize) -> Result<(), E>,
    ) -> Result<u64, E> {
        match self.base.checked_add(offset) {
            Some(at) => self.segs.for_each_range(at, len, f),
            None => Ok(0),
        }
    }
}

/// Both directions of one command's data, and the memory map they lie in.
#[derive(Clone, Copy)]
pub struct DataBuffers<'a> {
    /// Data-out: what the guest sends (WRITE payloads, parameter lists).
    pub out: GuestData<'a>,
    /// Data-in: where the answer's data goes (READ payloads, INQUIRY data, ...).
    pub inn: GuestData<'a>,
    /// Kept alive by whoever submits I/O that points into these buffers.
    pub guard: &'a MemGuard,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem")
    }

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

    #[test]
    fn ranges_skip_and_split_across_segments() {
        let l = list(&[(0x100, 10), (0x200, 10), (0x300, 10)]);
        let mut seen = Vec::new();
        let done = l
            .for_each_range(15, 10, |a, n| {
                seen.push((a.0, n));
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(done, 10);
        assert_eq!(seen, vec![(0x205, 5), (0x300, 5)]);
        assert_eq!(l.total(), 30);
    }

    #[test]
    fn copies_round_trip_through_guest_memory() {
        let m = mem();
        let l = list(&[(0x100, 3), (0x800, 5)]);
        assert_eq!(l.write_from(&m, 0, b"abcdefgh"), 8);
        let mut back = [0u8; 8];
        assert_eq!(l.read_into(&m, 0, &mut back), 8);
        assert_eq!(&back, b"abcdefgh");
        let mut part = [0u8; 4];
        assert_eq!(l.read_into(&m, 2, &mut part), 4);
        assert_eq!(&part, b"cdef");
    }

    #[test]
    fn copies_stop_at_the_end_of_guest_memory() {
        let m = mem();
        let l = list(&[(0x100, 4), (0xfffc, 8)]);
        let mut buf = [0u8; 12];
        // The second segment runs past the end of memory: only the first is copied.
        assert_eq!(l.read_into(&m, 0, &mut buf), 4);
        let far = list(&[(u64::MAX - 2, 8)]);
        assert_eq!(far.write_from(&m, 0, &[1u8; 8]), 0);
    }

    #[test]
    fn list_refuses_more_than_its_maximum() {
        let mut l = SegList::with_capacity(1);
        for i in 0..MAX_SEGMENTS {
            assert!(l.push(Segment {
                addr: GuestAddress(i as u64),
                len: 1
            }));
        }
        assert!(!l.push(Segment {
            addr: GuestAddress(0),
            len: 1
        }));
    }

    #[test]
    fn guest_data_starts_past_the_header() {
        let m = mem();
        let l = list(&[(0x100, 4), (0x800, 8)]);
        assert_eq!(l.write_from(&m, 0, b"HDR!payload!"), 12);
        let d = GuestData::new(&m, &l, 4);
        assert_eq!(d.len(), 8);
        let mut buf = [0u8; 8];
        assert_eq!(d.read_at(0, &mut buf), 8);
        assert_eq!(&buf, b"payload!");
        assert_eq!(d.read_at(u64::MAX, &mut buf), 0);
        let past = GuestData::new(&m, &l, 100);
        assert!(past.is_empty());
    }
}
