//! Commands that reach the medium: READ/WRITE, VERIFY, WRITE AND VERIFY, SYNCHRONIZE CACHE,
//! UNMAP, WRITE SAME and COMPARE AND WRITE. Each is range-checked here and becomes an [`IoRequest`].

use super::{
    EmulatedDisk, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS,
    MAX_WRITE_SAME_BLOCKS,
};
use crate::scsi::cdb::{self, be16, be32, be64, byte, Rw};
use crate::scsi::{DataOut, IoRequest, Outcome, Sense};

/// UNMAP parameter list: 8-byte header plus at most this many 16-byte descriptors.
const UNMAP_LIST_MAX: usize = 8 + 16 * MAX_UNMAP_DESCRIPTORS as usize;

impl EmulatedDisk {
    pub(super) fn read_write(&self, rw: Rw) -> Result<Outcome, Sense> {
        if rw.write {
            self.check_writable()?;
        }
        let blocks = u64::from(rw.blocks);
        self.check_range(rw.lba, blocks)?;
        if blocks == 0 {
            return Ok(Outcome::Good { data_in_len: 0 });
        }
        if rw.blocks > self.props.max_transfer_blocks {
            return Err(Sense::invalid_field_in_cdb());
        }
        let offset = self.bytes(rw.lba);
        let len = self.bytes(blocks);
        Ok(Outcome::Io(if rw.write {
            IoRequest::Write {
                offset,
                len,
                fua: rw.fua || !self.write_cache_enabled(),
            }
        } else {
            IoRequest::Read { offset, len }
        }))
    }

    pub(super) fn verify(&self, c: &[u8]) -> Result<Outcome, Sense> {
        if byte(c, 1) & 0xe0 != 0 {
            return Err(Sense::invalid_field_in_cdb());
        }
        let (lba, blocks) = match byte(c, 0) {
            cdb::VERIFY_10 => (u64::from(be32(c, 2)), u64::from(be16(c, 7))),
            cdb::VERIFY_12 => (u64::from(be32(c, 2)), u64::from(be32(c, 6))),
            _ => (be64(c, 2), u64::from(be32(c, 10))),
        };
        let compare = match (byte(c, 1) >> 1) & 0x03 {
            0 => false,
            1 => true,
            _ => return Err(Sense::invalid_field_in_cdb()),
        };
        self.check_range(lba, blocks)?;
        if blocks == 0 {
            return Ok(Outcome::Good { data_in_len: 0 });
        }
        if compare && blocks > u64::from(self.props.max_transfer_blocks) {
            return Err(Sense::invalid_field_in_cdb());
        }
        Ok(Outcome::Io(IoRequest::Verify {
            offset: self.bytes(lba),
            len: self.bytes(blocks),
            compare,
        }))
    }

    /// WRITE AND VERIFY(10/12/16), SBC-3 5.41ff. With BYTCHK 00b the verification asked
    /// for is of the medium: a write that reached it (FUA) has been verified, so the
    /// command is a WRITE with FUA. The byte-by-byte comparisons (BYTCHK 01b, 11b) are not
    /// supported, and 10b is reserved: INVALID FIELD IN CDB.
    pub(super) fn write_and_verify(&self, c: &[u8]) -> Result<Outcome, Sense> {
        let flags = byte(c, 1);
        // WRPROTECT must be 0: no protection information.
        if flags & 0xe0 != 0 || flags & 0x06 != 0 {
            return Err(Sense::invalid_field_in_cdb());
        }
        let (lba, blocks) = match byte(c, 0) {
            cdb::WRITE_AND_VERIFY_10 => (u64::from(be32(c, 2)), u32::from(be16(c, 7))),
            cdb::WRITE_AND_VERIFY_12 => (u64::from(be32(c, 2)), be32(c, 6)),
            _ => (be64(c, 2), be32(c, 10)),
        };
        self.read_write(Rw {
            lba,
            blocks,
            fua: true,
            write: true,
        })
    }

    pub(super) fn synchronize_cache(&self, c: &[u8]) -> Result<Outcome, Sense> {
        let (lba, blocks) = if byte(c, 0) == cdb::SYNCHRONIZE_CACHE_10 {
            (u64::from(be32(c, 2)), u64::from(be16(c, 7)))
        } else {
            (be64(c, 2), u64::from(be32(c, 10)))
        };
        self.check_range(lba, blocks)?;
        Ok(Outcome::Io(IoRequest::Flush))
    }

    pub(super) fn unmap(&self, c: &[u8], data_out: &dyn DataOut) -> Result<Outcome, Sense> {
        if !self.props.discard {
            return Err(Sense::invalid_opcode());
        }
        if byte(c, 1) & 0x01 != 0 {
            // ANCHOR: anchored blocks are not supported (ANC_SUP=0).
            return Err(Sense::invalid_field_in_cdb());
        }
        self.check_writable()?;
        let param_len = usize::from(be16(c, 7));
        if param_len == 0 {
            return Ok(Outcome::Good { data_in_len: 0 });
        }
        if param_len < 8 {
            return Err(Sense::parameter_list_length_error());
        }
        let mut list = [0u8; UNMAP_LIST_MAX];
        let want = param_len.min(UNMAP_LIST_MAX);
        let got = data_out.read_at(0, &mut list[..want]);
        if got < 8 {
            return Err(Sense::parameter_list_length_error());
        }
        let list = &list[..got];
        let bd_len = usize::from(be16(list, 2));
        if bd_len % 16 != 0 {
            return Err(Sense::invalid_field_in_parameter_list());
        }
        let count = bd_len / 16;
        if count > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_field_in_parameter_list());
        }
        if 8 + bd_len > got {
            return Err(Sense::parameter_list_length_error());
        }
        let mut ranges = Vec::with_capacity(count);
        let mut total: u64 = 0;
        for d in list[8..8 + bd_len].chunks_exact(16) {
            let lba = be64(d, 0);
            let blocks = u64::from(be32(d, 8));
            if blocks == 0 {
                continue;
            }
            self.check_range(lba, blocks)?;
            total = total.saturating_add(blocks);
            if total > u64::from(MAX_UNMAP_BLOCKS) {
                return Err(Sense::invalid_field_in_parameter_list());
            }
            ranges.push((self.bytes(lba), self.bytes(blocks)));
        }
        Ok(Outcome::Io(IoRequest::Discard { ranges }))
    }

    pub(super) fn write_same(&self, c: &[u8], data_out: &dyn DataOut) -> Result<Outcome, Sense> {
        let flags = byte(c, 1);
        let sixteen = byte(c, 0) == cdb::WRITE_SAME_16;
        // WRPROTECT must be 0; ANCHOR is not supported; NDOB exists only in the 16-byte CDB.
        if flags & 0xe0 != 0 || flags & 0x10 != 0 || (!sixteen && flags & 0x01 != 0) {
            return Err(Sense::invalid_field_in_cdb());
        }
        let unmap = flags & 0x08 != 0;
        let ndob = flags & 0x01 != 0;
        let (lba, blocks) = if sixteen {
            (be64(c, 2), u64::from(be32(c, 10)))
        } else {
            (u64::from(be32(c, 2)), u64::from(be16(c, 7)))
        };
        self.check_writable()?;
        // WSNZ=1 in VPD 0xB0: a zero NUMBER OF LOGICAL BLOCKS is refused.
        if blocks == 0 || blocks > u64::from(MAX_WRITE_SAME_BLOCKS) {
            return Err(Sense::invalid_field_in_cdb());
        }
        self.check_range(lba, blocks)?;
        let offset = self.bytes(lba);
        let len = self.bytes(blocks);
        let zeroes = if ndob {
            true
        } else {
            let mut block = [0u8; 4096];
            let bs = self.props.block_size as usize;
            let block = &mut block[..bs.min(4096)];
            if data_out.read_at(0, block) < block.len() {
                return Err(Sense::parameter_list_length_error());
            }
            block.iter().all(|&b| b == 0)
        };
        // Deallocating stands in for writing zeroes only where deallocated blocks read as
        // zeroes.
        let deallocate = unmap && self.props.discard && self.props.unmap_zeroes;
        Ok(Outcome::Io(match (zeroes, deallocate) {
            (true, true) => IoRequest::Discard {
                ranges: vec![(offset, len)],
            },
            (true, false) => IoRequest::WriteZeroes { offset, len },
            (false, _) => IoRequest::WriteSame {
                offset,
                len,
                block_len: self.props.block_size,
            },
        }))
    }

    pub(super) fn compare_and_write(&self, c: &[u8]) -> Result<Outcome, Sense> {
        let flags = byte(c, 1);
        if flags & 0xe0 != 0 {
            return Err(Sense::invalid_field_in_cdb());
        }
        let lba = be64(c, 2);
        let blocks = byte(c, 13);
        self.check_writable()?;
        if blocks == 0 {
            return Ok(Outcome::Good { data_in_len: 0 });
        }
        if blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
            return Err(Sense::invalid_field_in_cdb());
        }
        self.check_range(lba, u64::from(blocks))?;
        Ok(Outcome::Io(IoRequest::CompareAndWrite {
            offset: self.bytes(lba),
            len: self.bytes(u64::from(blocks)),
            fua: flags & 0x08 != 0 || !self.write_cache_enabled(),
        }))
    }
}
