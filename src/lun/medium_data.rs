//! What the emulated disk's medium I/O does with data besides moving it: WRITE SAME's
//! repeated block, COMPARE AND WRITE's and VERIFY's comparison with data-out, and the sense
//! a failed medium access gives.

use crate::backend::guest::GuestData;
use crate::backend::AlignedBuf;
use crate::scsi::Sense;

/// Size of the repeated-pattern buffer for WRITE SAME.
const PATTERN_BUF: u64 = 1 << 20;

/// Builds WRITE SAME's buffer: the first `block_len` bytes of data-out repeated to fill up
/// to 1 MiB (whole blocks), or the whole range if shorter. None if data-out is too short.
pub fn pattern_buffer(data_out: GuestData<'_>, len: u64, block_len: u32) -> Option<AlignedBuf> {
    let bl = u64::from(block_len);
    if bl == 0 {
        return None;
    }
    let size = len.min((PATTERN_BUF / bl).max(1) * bl);
    let mut buf = AlignedBuf::new(size as usize)?;
    let slice = buf.as_mut_slice();
    let first = &mut slice[..bl.min(size) as usize];
    if data_out.read_at(0, first) != first.len() {
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
pub fn compare_with_data_out(data_out: GuestData<'_>, at: u64, medium: &[u8]) -> Option<u64> {
    let mut buf = [0u8; 4096];
    let mut pos = 0usize;
    while pos < medium.len() {
        let n = (medium.len() - pos).min(buf.len());
        let got = data_out.read_at(at + pos as u64, &mut buf[..n]);
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
    use crate::backend::guest::{Mem, SegList, Segment};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// The request header a transport puts before data-out (virtio-scsi's is 51 bytes).
    const CMD_REQ_LEN: usize = 51;

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
    fn pattern_repeats_the_first_block() {
        let m = mem();
        m.write_slice(&[0xabu8; 512], GuestAddress(0x1000 + CMD_REQ_LEN as u64))
            .expect("w");
        m.write_slice(&[0x01u8; 4], GuestAddress(0x1000 + CMD_REQ_LEN as u64))
            .expect("w");
        let l = segs(&[(0x1000, (CMD_REQ_LEN + 512) as u32)]);
        let out = GuestData::new(&m, &l, CMD_REQ_LEN as u64);
        let b = pattern_buffer(out, 4096, 512).expect("pattern");
        assert_eq!(b.len(), 4096);
        for blk in b.as_slice().chunks(512) {
            assert_eq!(&blk[..4], &[1, 1, 1, 1]);
            assert_eq!(blk[4], 0xab);
        }
        let short = segs(&[(0x1000, (CMD_REQ_LEN + 100) as u32)]);
        let out = GuestData::new(&m, &short, CMD_REQ_LEN as u64);
        assert!(pattern_buffer(out, 4096, 512).is_none());
    }

    #[test]
    fn comparison_finds_the_first_difference() {
        let m = mem();
        let data: Vec<u8> = (0..200u8).collect();
        m.write_slice(&data, GuestAddress(0x2000 + CMD_REQ_LEN as u64))
            .expect("w");
        let l = segs(&[(0x2000, (CMD_REQ_LEN + 200) as u32)]);
        let l = GuestData::new(&m, &l, CMD_REQ_LEN as u64);
        assert_eq!(compare_with_data_out(l, 0, &data), None);
        let mut other = data.clone();
        other[150] = 0;
        assert_eq!(compare_with_data_out(l, 0, &other), Some(150));
        assert_eq!(compare_with_data_out(l, 100, &data[100..]), None);
        // Data-out shorter than the medium compared: the first missing byte differs.
        assert_eq!(compare_with_data_out(l, 150, &data[..60]), Some(0));
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
