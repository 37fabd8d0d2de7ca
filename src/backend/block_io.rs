//! Asynchronous block I/O for one worker thread: vectored reads and writes, flush, hole
//! punching and zeroing over io_uring, tagged with the id of the command they belong to,
//! and completion reaping.
//!
//! # Why the kernel's view of our memory stays valid (the one safety argument)
//! An io_uring operation reads or writes memory after the call that queued it returned.
//! Every operation here is tagged with a command id, and everything it points to belongs to
//! that id's [`IoBuffers`]: the iovec array, the bounce buffer and a [`MemGuard`] that keeps
//! the guest memory the iovecs point into mapped (even if the frontend replaces its memory
//! table meanwhile). An id's buffers can only be changed through [`BlockIo::buffers`] and
//! [`BlockIo::release`], which refuse while an operation of that id is pending; the count
//! drops only when the kernel posted the operation's completion. Dropping a `BlockIo` with
//! operations still in the kernel waits for them (bounded) and leaks, rather than frees,
//! the buffers of any that remain.

use std::io;
use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::guest::{GuestData, Mem, MemGuard};
use super::{AlignedBuf, Ring};

/// Most iovecs one readv/writev takes (IOV_MAX).
const MAX_IOVECS: usize = 1024;
/// How long dropping a `BlockIo` waits for operations still in the kernel.
const DROP_WAIT: Duration = Duration::from_secs(5);

/// What an fallocate does to its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallocate {
    /// Deallocate: the blocks then read as zeroes.
    PunchHole,
    /// Write zeroes (the file system may allocate unwritten extents).
    ZeroRange,
}

impl Fallocate {
    fn mode(self) -> i32 {
        match self {
            Fallocate::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            Fallocate::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        }
    }
}

/// The memory one command's read or write points at: host iovecs into guest memory (with
/// the guard that keeps it mapped) or a single iovec over a bounce buffer.
#[derive(Default)]
pub struct IoBuffers {
    iov: Vec<libc::iovec>,
    bounce: Option<AlignedBuf>,
    guard: Option<MemGuard>,
}

// SAFETY: the raw pointers in `iov` point into `bounce` (owned) or into guest memory kept
// mapped by `guard`; only the worker owning the `BlockIo` hands them to the kernel.
unsafe impl Send for IoBuffers {}

impl IoBuffers {
    /// Points the iovecs at bytes `[skip, skip+len)` of `data`. Falls back to a bounce
    /// buffer when the guest buffers break O_DIRECT alignment (`align`, at `file_offset`)
    /// or need more than IOV_MAX iovecs; with `fill` (a write) the bounce is filled from
    /// guest memory here. False if a buffer lies outside guest memory or no bounce buffer
    /// could be had.
    #[allow(clippy::too_many_arguments)]
    pub fn map_guest(
        &mut self,
        data: GuestData<'_>,
        guard: &MemGuard,
        skip: u64,
        len: u64,
        file_offset: u64,
        align: u64,
        fill: bool,
    ) -> bool {
        let iov = &mut self.iov;
        iov.clear();
        let m = data.mem();
        match data.for_each_range(skip, len, |addr, n| map_range(m, addr, n, iov)) {
            Ok(n) if n == len => {}
            _ => {
                iov.clear();
                return false;
            }
        }
        let aligned = align <= 1
            || (file_offset.is_multiple_of(align)
                && iov.iter().all(|v| {
                    (v.iov_base as u64).is_multiple_of(align)
                        && (v.iov_len as u64).is_multiple_of(align)
                }));
        if aligned && iov.len() <= MAX_IOVECS {
            if self.guard.is_none() {
                self.guard = Some(guard.clone());
            }
            return true;
        }
        iov.clear();
        let Some(mut bounce) = AlignedBuf::new(len as usize) else {
            return false;
        };
        if fill && data.read_at(skip, bounce.as_mut_slice()) as u64 != len {
            return false;
        }
        self.bounce = Some(bounce);
        self.point_at_bounce(len)
    }

    /// Points the single iovec at the first `max` bytes of the bounce buffer (all of it if
    /// shorter). False without a bounce buffer.
    pub fn point_at_bounce(&mut self, max: u64) -> bool {
        self.iov.clear();
        let Some(b) = self.bounce.as_mut() else {
            return false;
        };
        let n = max.min(b.len() as u64) as usize;
        self.iov.push(libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: n,
        });
        true
    }

    pub fn set_bounce(&mut self, b: AlignedBuf) {
        self.iov.clear();
        self.bounce = Some(b);
    }

    pub fn bounce(&self) -> Option<&AlignedBuf> {
        self.bounce.as_ref()
    }

    pub fn bounce_mut(&mut self) -> Option<&mut AlignedBuf> {
        self.bounce.as_mut()
    }

    /// The host iovecs the buffers are mapped to.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }

    /// Lets go of the memory (the guest's mapping, the bounce buffer), keeping the iovec
    /// array's allocation for reuse.
    pub fn release(&mut self) {
        self.clear();
    }

    /// Drops the bounce buffer (and the iovec that pointed at it).
    pub fn drop_bounce(&mut self) {
        if self.bounce.take().is_some() {
            self.iov.clear();
        }
    }

    fn clear(&mut self) {
        self.iov.clear();
        self.bounce = None;
        self.guard = None;
    }
}

/// Appends host iovecs for a guest range, split at memory region boundaries.
fn map_range(
    m: &Mem,
    addr: GuestAddress,
    len: usize,
    iov: &mut Vec<libc::iovec>,
) -> Result<(), ()> {
    let mut a = addr;
    let mut left = len as u64;
    while left > 0 {
        let (region, raddr) = m.to_region_addr(a).ok_or(())?;
        let room = region.len() - raddr.0;
        let n = room.min(left);
        let host = region.get_host_address(raddr).map_err(|_| ())?;
        // Bound the list well above IOV_MAX: past it the bounce path takes over anyway.
        if iov.len() > MAX_IOVECS {
            return Err(());
        }
        iov.push(libc::iovec {
            iov_base: host.cast(),
            iov_len: n as usize,
        });
        left -= n;
        a = GuestAddress(a.0.checked_add(n).ok_or(())?);
    }
    Ok(())
}

/// One command's buffers and its operations in the kernel.
#[derive(Default)]
struct CmdIo {
    bufs: IoBuffers,
    pending: u32,
}

/// A worker's block I/O: one io_uring and the buffers of up to `max_cmds` commands.
pub struct BlockIo {
    ring: Ring,
    cmds: Vec<CmdIo>,
    max_cmds: usize,
}

impl BlockIo {
    /// A ring sized for `max_cmds` concurrent commands that hands queued operations to the
    /// kernel whenever `submit_batch` of them are waiting.
    pub fn new(max_cmds: usize, submit_batch: u32) -> io::Result<BlockIo> {
        Ok(BlockIo {
            ring: Ring::new(max_cmds as u32, submit_batch)?,
            cmds: Vec::new(),
            max_cmds,
        })
    }

    /// The eventfd that becomes readable when completions are posted.
    pub fn eventfd(&self) -> RawFd {
        self.ring.eventfd()
    }

    /// Another handle on the completion eventfd, so other threads can wake the worker.
    pub fn wake_handle(&self) -> io::Result<vmm_sys_util::eventfd::EventFd> {
        self.ring.wake_handle()
    }

    fn cmd(&mut self, id: usize) -> Option<&mut CmdIo> {
        if id >= self.max_cmds {
            return None;
        }
        if id >= self.cmds.len() {
            self.cmds.resize_with(id + 1, CmdIo::default);
        }
        self.cmds.get_mut(id)
    }

    /// Command `id`'s buffers, to fill before its next operation; None while one of its
    /// operations is in the kernel (or for an id beyond the ring's size).
    pub fn buffers(&mut self, id: usize) -> Option<&mut IoBuffers> {
        self.cmd(id).filter(|c| c.pending == 0).map(|c| &mut c.bufs)
    }

    /// Operations of command `id` in the kernel.
    pub fn pending(&self, id: usize) -> u32 {
        self.cmds.get(id).map_or(0, |c| c.pending)
    }

    /// Frees what command `id` held (bounce buffer, guest memory guard), keeping the
    /// reusable allocations. Does nothing while one of its operations is in the kernel.
    pub fn release(&mut self, id: usize) {
        if let Some(c) = self.cmds.get_mut(id).filter(|c| c.pending == 0) {
            c.bufs.clear();
        }
    }

    /// Reads at `offset` of `fd` into command `id`'s iovecs.
    pub fn read(&mut self, id: usize, fd: RawFd, offset: u64) -> bool {
        self.read_write(id, fd, offset, false, 0)
    }

    /// Writes command `id`'s iovecs at `offset` of `fd`; `dsync` makes this write durable
    /// before it completes (FUA).
    pub fn write(&mut self, id: usize, fd: RawFd, offset: u64, dsync: bool) -> bool {
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        self.read_write(id, fd, offset, true, flags)
    }

    fn read_write(&mut self, id: usize, fd: RawFd, offset: u64, write: bool, flags: i32) -> bool {
        let Some(c) = self.cmds.get(id).filter(|c| c.pending == 0) else {
            return false;
        };
        let iov = &c.bufs.iov;
        let Some(&first) = iov.first() else {
            return false;
        };
        let fd = types::Fd(fd);
        let (ptr, cnt) = (iov.as_ptr(), iov.len() as u32);
        // One segment (the common case: a guest page or a bounce buffer) goes as a plain
        // read or write, which spares the kernel importing an iovec array.
        let single = u32::try_from(first.iov_len).ok().filter(|_| cnt == 1);
        let e = match (write, single) {
            (true, Some(len)) => opcode::Write::new(fd, first.iov_base as *const u8, len)
                .offset(offset)
                .rw_flags(flags)
                .build(),
            (false, Some(len)) => opcode::Read::new(fd, first.iov_base.cast::<u8>(), len)
                .offset(offset)
                .build(),
            (true, None) => opcode::Writev::new(fd, ptr, cnt)
                .offset(offset)
                .rw_flags(flags)
                .build(),
            (false, None) => opcode::Readv::new(fd, ptr, cnt).offset(offset).build(),
        };
        let bytes = iov.iter().map(|v| v.iov_len as u64).sum();
        self.push(id, e, bytes)
    }

    /// Makes completed writes to `fd` durable (fdatasync).
    pub fn flush(&mut self, id: usize, fd: RawFd) -> bool {
        let e = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build();
        self.push(id, e, 0)
    }

    /// Deallocates or zeroes `len` bytes at `offset` of `fd`.
    pub fn fallocate(
        &mut self,
        id: usize,
        fd: RawFd,
        offset: u64,
        len: u64,
        how: Fallocate,
    ) -> bool {
        let e = opcode::Fallocate::new(types::Fd(fd), len)
            .offset(offset)
            .mode(how.mode())
            .build();
        self.push(id, e, 0)
    }

    /// Queues `e` for command `id`; `bytes` is what it transfers (it sets when the ring
    /// submits, `uring::SUBMIT_BYTES`).
    fn push(&mut self, id: usize, e: io_uring::squeue::Entry, bytes: u64) -> bool {
        if self.cmd(id).is_none() {
            return false;
        }
        let e = e.user_data(id as u64);
        // SAFETY: the entry points only at command `id`'s `IoBuffers` (its iovec array, its
        // bounce buffer, guest memory kept mapped by its guard) or at nothing; they cannot
        // change or be freed until its completion is reaped (module comment).
        let ok = unsafe { self.ring.push(&e, bytes) }.is_ok();
        if ok {
            if let Some(c) = self.cmds.get_mut(id) {
                c.pending += 1;
            }
        }
        ok
    }

    /// Hands queued operations to the kernel.
    pub fn submit(&mut self) {
        if let Err(e) = self.ring.submit() {
            tracing::warn!("io_uring submit failed: {e}");
        }
    }

    /// Whether completions wait to be reaped (no system call).
    pub fn has_completions(&mut self) -> bool {
        self.ring.has_completions()
    }

    /// Hands every posted completion `(command id, result)` to `f`; the command's pending
    /// count has already dropped when `f` runs. Completions of no known operation are
    /// ignored.
    pub fn reap(&mut self, mut f: impl FnMut(usize, i32)) {
        let cmds = &mut self.cmds;
        self.ring.reap(|ud, res| {
            let id = ud as usize;
            if let Some(c) = cmds.get_mut(id).filter(|c| c.pending > 0) {
                c.pending -= 1;
                f(id, res);
            }
        });
    }
}

impl Drop for BlockIo {
    fn drop(&mut self) {
        let deadline = Instant::now() + DROP_WAIT;
        let busy = |cmds: &[CmdIo]| cmds.iter().any(|c| c.pending > 0);
        while busy(&self.cmds) && Instant::now() < deadline {
            self.submit();
            self.reap(|_, _| {});
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut leaked = 0;
        for c in self.cmds.iter_mut().filter(|c| c.pending > 0) {
            // The kernel may still write into these buffers: never free them.
            std::mem::forget(std::mem::take(&mut c.bufs));
            leaked += 1;
        }
        if leaked > 0 {
            tracing::error!("{leaked} commands' I/O still in the kernel; their buffers are kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::guest::{SegList, Segment};
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .expect("mem")
    }

    fn wait_for(io: &mut BlockIo) -> Vec<(usize, i32)> {
        let mut got = Vec::new();
        for _ in 0..1000 {
            io.reap(|id, res| got.push((id, res)));
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn guest_range_is_split_at_region_boundaries() {
        let m = mem();
        let mut iov = Vec::new();
        map_range(&m, GuestAddress(0xff00), 0x200, &mut iov).expect("map");
        assert_eq!(iov.len(), 2);
        assert_eq!(iov[0].iov_len, 0x100);
        assert_eq!(iov[1].iov_len, 0x100);
        assert!(map_range(&m, GuestAddress(0x1ff00), 0x200, &mut iov).is_err());
    }

    #[test]
    fn reads_into_guest_memory_and_locks_buffers_while_pending() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(&[7u8; 8192]).expect("write");
        let atomic = GuestMemoryAtomic::new(mem());
        let guard = atomic.memory();
        let mut segs = SegList::with_capacity(2);
        segs.push(Segment {
            addr: GuestAddress(0x1000),
            len: 4096,
        });
        let data = GuestData::new(&guard, &segs, 0);
        let mut io = BlockIo::new(4, 1).expect("ring");
        let bufs = io.buffers(2).expect("buffers");
        assert!(bufs.map_guest(data, &guard, 0, 4096, 0, 1, false));
        assert!(io.read(2, f.as_file().as_raw_fd(), 4096));
        io.submit();
        let got = wait_for(&mut io);
        assert_eq!(got, vec![(2, 4096)]);
        assert_eq!(io.pending(2), 0);
        let mut back = [0u8; 4096];
        guard
            .read_slice(&mut back, GuestAddress(0x1000))
            .expect("read");
        assert!(back.iter().all(|&b| b == 7));
        io.release(2);
        // Ids beyond the ring's size are refused.
        assert!(io.buffers(4).is_none());
        assert!(!io.flush(9, f.as_file().as_raw_fd()));
    }

    #[test]
    fn buffers_are_locked_while_an_operation_is_in_the_kernel() {
        let mut fds = [0i32; 2];
        // SAFETY: pipe writes two descriptors into the array it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let atomic = GuestMemoryAtomic::new(mem());
        let guard = atomic.memory();
        let mut segs = SegList::with_capacity(1);
        segs.push(Segment {
            addr: GuestAddress(0x3000),
            len: 16,
        });
        let mut io = BlockIo::new(4, 1).expect("ring");
        let bufs = io.buffers(1).expect("buffers");
        assert!(bufs.map_guest(GuestData::new(&guard, &segs, 0), &guard, 0, 16, 0, 1, false));
        // A read from an empty pipe stays in the kernel until the pipe is written.
        assert!(io.read(1, fds[0], 0));
        io.submit();
        assert_eq!(io.pending(1), 1);
        assert!(io.buffers(1).is_none());
        assert!(!io.read(1, fds[0], 0), "a second operation on busy buffers");
        let nine = [9u8; 16];
        // SAFETY: writes 16 bytes from a live array to the pipe's write end.
        let written = unsafe { libc::write(fds[1], nine.as_ptr().cast(), 16) };
        assert_eq!(written, 16);
        assert_eq!(wait_for(&mut io), vec![(1, 16)]);
        assert!(io.buffers(1).is_some());
        let mut back = [0u8; 16];
        guard
            .read_slice(&mut back, GuestAddress(0x3000))
            .expect("read");
        assert_eq!(back, [9u8; 16]);
        for fd in fds {
            // SAFETY: closes descriptors this test opened.
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn misaligned_guest_buffers_go_through_a_filled_bounce() {
        let m = mem();
        let atomic = GuestMemoryAtomic::new(m);
        let guard = atomic.memory();
        guard
            .write_slice(&[5u8; 512], GuestAddress(0x2001))
            .expect("w");
        let mut segs = SegList::with_capacity(2);
        segs.push(Segment {
            addr: GuestAddress(0x2001),
            len: 512,
        });
        let data = GuestData::new(&guard, &segs, 0);
        let mut bufs = IoBuffers::default();
        assert!(bufs.map_guest(data, &guard, 0, 512, 0, 512, true));
        let b = bufs.bounce().expect("bounce");
        assert!(b.as_slice().iter().all(|&x| x == 5));
        assert_eq!(bufs.iov.len(), 1);
        // A range outside guest memory is refused.
        let mut far = SegList::with_capacity(1);
        far.push(Segment {
            addr: GuestAddress(0x1ff00),
            len: 0x200,
        });
        let data = GuestData::new(&guard, &far, 0);
        assert!(!bufs.map_guest(data, &guard, 0, 0x200, 0, 1, false));
    }
}
