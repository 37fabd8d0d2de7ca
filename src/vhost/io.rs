//! Helpers of the I/O path: turning guest buffers into host iovecs (or a bounce buffer when
//! O_DIRECT alignment or IOV_MAX forbid using them directly), WRITE SAME patterns, data-out
//! comparison and errno-to-sense mapping.

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::slot::{Mem, Slot};
use crate::backend::AlignedBuf;
use crate::scsi::Sense;
use crate::virtio::layout::{CMD_REQ_LEN, CMD_RESP_LEN};
use crate::virtio::SegList;

/// Most iovecs one readv/writev takes (IOV_MAX).
const MAX_IOVECS: usize = 1024;
/// Size of the repeated-pattern buffer for WRITE SAME.
const PATTERN_BUF: u64 = 1 << 20;

/// Points `slot.iov` at the guest bytes `[skip, skip+len)` of the command's data buffer
/// (data-out for a write, data-in for a read). Falls back to a bounce buffer when the guest
/// buffers break O_DIRECT alignment or need more than IOV_MAX iovecs; for a write the
/// bounce is filled from guest memory here. False if a buffer lies outside guest memory.
pub fn map_or_bounce(
    m: &Mem,
    slot: &mut Slot,
    skip: u64,
    len: u64,
    file_offset: u64,
    align: u64,
    write: bool,
) -> bool {
    let (segs, base) = if write {
        (&slot.chain.readable, CMD_REQ_LEN as u64)
    } else {
        (&slot.chain.writable, CMD_RESP_LEN as u64)
    };
    let iov = &mut slot.iov.0;
    iov.clear();
    let mapped = segs.for_each_range(base + skip, len, |addr, n| map_range(m, addr, n, iov));
    match mapped {
        Ok(n) if n == len => {}
        _ => return false,
    }
    let aligned = align <= 1
        || (file_offset.is_multiple_of(align)
            && iov.iter().all(|v| {
                (v.iov_base as u64).is_multiple_of(align)
                    && (v.iov_len as u64).is_multiple_of(align)
            }));
    if aligned && iov.len() <= MAX_IOVECS {
        return true;
    }
    let Some(mut bounce) = AlignedBuf::new(len as usize) else {
        iov.clear();
        return false;
    };
    if write && segs.read_into(m, base + skip, bounce.as_mut_slice()) as u64 != len {
        iov.clear();
        return false;
    }
    iov.clear();
    iov.push(libc::iovec {
        iov_base: bounce.as_mut_ptr().cast(),
        iov_len: len as usize,
    });
    slot.bounce = Some(bounce);
    true
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

/// Builds WRITE SAME's buffer: the first `block_len` bytes of data-out repeated to fill up
/// to 1 MiB (whole blocks), or the whole range if shorter. None if data-out is too short.
pub fn pattern_buffer(m: &Mem, readable: &SegList, len: u64, block_len: u32) -> Option<AlignedBuf> {
    let bl = u64::from(block_len);
    if bl == 0 {
        return None;
    }
    let size = len.min((PATTERN_BUF / bl).max(1) * bl);
    let mut buf = AlignedBuf::new(size as usize)?;
    let slice = buf.as_mut_slice();
    let first = &mut slice[..bl.min(size) as usize];
    if readable.read_into(m, CMD_REQ_LEN as u64, first) != first.len() {
        return None;
    }
    let mut filled = first.len();
    while filled < slice.len() {
        let n = filled.min(slice.len() - filled);
        slice.copy_within(0..n, filled);
        filled += n;
    }
    Some(buf)
}

/// Compares `medium` with data-out bytes starting at `at`; returns the offset (within
/// `medium`) of the first difference, or of the first byte the guest did not supply.
pub fn compare_with_data_out(m: &Mem, readable: &SegList, at: u64, medium: &[u8]) -> Option<u64> {
    let mut buf = [0u8; 4096];
    let mut pos = 0usize;
    while pos < medium.len() {
        let n = (medium.len() - pos).min(buf.len());
        let got = readable.read_into(m, CMD_REQ_LEN as u64 + at + pos as u64, &mut buf[..n]);
        if let Some(i) = (0..got).find(|&i| buf[i] != medium[pos + i]) {
            return Some((pos + i) as u64);
        }
        if got < n {
            return Some((pos + got) as u64);
        }
        pos += n;
    }
    None
}

/// The sense a real disk gives for a failed medium access, like QEMU's scsi-disk.
pub fn sense_for_errno(errno: i32, write: bool) -> Sense {
    match errno {
        libc::ENOSPC | libc::EDQUOT => Sense::space_allocation_failed(),
        libc::EROFS | libc::EPERM | libc::EACCES if write => Sense::write_protected(),
        libc::EINVAL | libc::EOPNOTSUPP => Sense::invalid_field_in_cdb(),
        libc::ENOMEM => Sense::internal_target_failure(),
        _ if write => Sense::write_error(),
        _ => Sense::medium_error_unrecovered_read(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::Segment;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .expect("mem")
    }

    fn segs(list: &[(u64, u32)]) -> SegList {
        let mut l = SegList::with_capacity(4);
        for &(a, n) in list {
            l.push(Segment {
                addr: GuestAddress(a),
                len: n,
            });
        }
        l
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
    fn pattern_repeats_the_first_block() {
        let m = mem();
        m.write_slice(&[0xabu8; 512], GuestAddress(0x1000 + CMD_REQ_LEN as u64))
            .expect("w");
        m.write_slice(&[0x01u8; 4], GuestAddress(0x1000 + CMD_REQ_LEN as u64))
            .expect("w");
        let l = segs(&[(0x1000, (CMD_REQ_LEN + 512) as u32)]);
        let b = pattern_buffer(&m, &l, 4096, 512).expect("pattern");
        assert_eq!(b.len(), 4096);
        for blk in b.as_slice().chunks(512) {
            assert_eq!(&blk[..4], &[1, 1, 1, 1]);
            assert_eq!(blk[4], 0xab);
        }
        let short = segs(&[(0x1000, (CMD_REQ_LEN + 100) as u32)]);
        assert!(pattern_buffer(&m, &short, 4096, 512).is_none());
    }

    #[test]
    fn comparison_finds_the_first_difference() {
        let m = mem();
        let data: Vec<u8> = (0..200u8).collect();
        m.write_slice(&data, GuestAddress(0x2000 + CMD_REQ_LEN as u64))
            .expect("w");
        let l = segs(&[(0x2000, (CMD_REQ_LEN + 200) as u32)]);
        assert_eq!(compare_with_data_out(&m, &l, 0, &data), None);
        let mut other = data.clone();
        other[150] = 0;
        assert_eq!(compare_with_data_out(&m, &l, 0, &other), Some(150));
        assert_eq!(compare_with_data_out(&m, &l, 100, &data[100..]), None);
        // Data-out shorter than the medium compared: the first missing byte differs.
        assert_eq!(compare_with_data_out(&m, &l, 150, &data[..60]), Some(0));
    }

    #[test]
    fn errno_maps_to_disk_sense() {
        assert_eq!(
            sense_for_errno(libc::EIO, false),
            Sense::medium_error_unrecovered_read()
        );
        assert_eq!(sense_for_errno(libc::EIO, true), Sense::write_error());
        assert_eq!(
            sense_for_errno(libc::ENOSPC, true),
            Sense::space_allocation_failed()
        );
    }
}
