//! INQUIRY (standard data and the VPD pages) and READ CAPACITY: what the disk says about
//! itself.

use super::{
    ascii_field, reply, EmulatedDisk, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};
use crate::scsi::cdb::{be16, be32, be64, byte};
use crate::scsi::{Outcome, Sense};

/// VPD pages this disk supports, in ascending order (VPD 0x00).
const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// The standards whose commands and pages the disk answers with (SPC-4 table 28, "no
/// version claimed" codes), in the order SPC-4 asks: architecture model, SPC, the device
/// type's command set. Standard INQUIRY bytes 58..73 hold up to eight.
const VERSION_DESCRIPTORS: [u16; 3] = [
    0x00a0, // SAM-5
    0x0460, // SPC-4
    0x04c0, // SBC-3
];

/// Standard INQUIRY data up to the last version descriptor field (byte 73).
const STANDARD_INQUIRY_LEN: usize = 74;

impl EmulatedDisk {
    pub(super) fn inquiry(&self, c: &[u8], data_in: &mut [u8]) -> Result<Outcome, Sense> {
        let evpd = byte(c, 1) & 0x01 != 0;
        let cmddt = byte(c, 1) & 0x02 != 0;
        let page = byte(c, 2);
        let alloc = usize::from(be16(c, 3));
        if cmddt || (!evpd && page != 0) {
            return Err(Sense::invalid_field_in_cdb());
        }
        let mut buf = [0u8; 256];
        let n = if evpd {
            self.vpd_page(page, &mut buf)?
        } else {
            self.standard_inquiry(&mut buf)
        };
        Ok(reply(data_in, &buf[..n], alloc))
    }

    fn standard_inquiry(&self, b: &mut [u8; 256]) -> usize {
        b[0] = 0x00; // peripheral qualifier 0, direct-access block device
        b[1] = 0x00; // not removable
        b[2] = 0x06; // SPC-4
        b[3] = 0x12; // HISUP, response data format 2
        b[4] = (STANDARD_INQUIRY_LEN - 5) as u8; // additional length
        b[7] = 0x02; // CMDQUE: command queuing
        ascii_field(&mut b[8..16], &self.props.vendor);
        ascii_field(&mut b[16..32], &self.props.product);
        ascii_field(&mut b[32..36], &self.props.revision);
        for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
            b[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        STANDARD_INQUIRY_LEN
    }

    fn vpd_page(&self, page: u8, b: &mut [u8; 256]) -> Result<usize, Sense> {
        b[1] = page;
        let body = &mut b[4..];
        let len = match page {
            0x00 => {
                body[..VPD_PAGES.len()].copy_from_slice(&VPD_PAGES);
                VPD_PAGES.len()
            }
            0x80 => {
                let s = self.props.serial.as_bytes();
                let n = s.len().min(body.len());
                body[..n].copy_from_slice(&s[..n]);
                n
            }
            0x83 => self.device_identification(body),
            0xb0 => self.block_limits(body),
            0xb1 => {
                // MEDIUM ROTATION RATE: 1 is "non-rotating medium"; 0 is "not reported",
                // also for a rotating medium whose speed vscsid does not know.
                let rate: u16 = match self.props.rotational {
                    Some(false) => 1,
                    Some(true) | None => 0,
                };
                body[..2].copy_from_slice(&rate.to_be_bytes());
                0x3c
            }
            0xb2 => {
                if self.props.discard {
                    // LBPU, LBPWS, LBPWS10; LBPRZ: deallocated blocks read as zeroes.
                    body[1] = 0x80 | 0x40 | 0x20 | self.lbprz(0x04);
                    body[2] = 0x02; // provisioning type: thin
                }
                4
            }
            _ => return Err(Sense::invalid_field_in_cdb()),
        };
        b[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        Ok(4 + len)
    }

    /// VPD 0x83: an NAA designator (binary) and a T10 vendor ID designator (ASCII),
    /// both associated with the logical unit.
    fn device_identification(&self, body: &mut [u8]) -> usize {
        let (naa, naa_len) = self.props.naa.bytes();
        body[0] = 0x01; // protocol 0, code set binary
        body[1] = 0x03; // PIV 0, association LU, type NAA
        body[3] = naa_len as u8; // 8, or 16 for NAA type 6
        body[4..4 + naa_len].copy_from_slice(&naa[..naa_len]);
        let at = 4 + naa_len;
        let t10 = &mut body[at..];
        t10[0] = 0x02; // code set ASCII
        t10[1] = 0x01; // association LU, type T10 vendor ID
        ascii_field(&mut t10[4..12], &self.props.vendor);
        let serial = self.props.serial.as_bytes();
        let n = serial.len().min(36);
        t10[12..12 + n].copy_from_slice(&serial[..n]);
        t10[3] = (8 + n) as u8;
        at + 4 + 8 + n
    }

    /// Logical blocks per physical block (a power of two).
    pub(super) fn blocks_per_physical_block(&self) -> u32 {
        (self.props.physical_block_size / self.props.block_size).max(1)
    }

    /// VPD 0xB0 (SBC-3 6.6.4), page length 0x3C.
    fn block_limits(&self, body: &mut [u8]) -> usize {
        let bs = self.props.block_size;
        let per_physical = self.blocks_per_physical_block();
        // Deallocation works in the host file system's 4 KiB blocks, or whole physical
        // blocks when they are larger.
        let unmap_granularity = (4096 / bs).max(per_physical).max(1);
        body[0] = 0x01; // WSNZ: WRITE SAME with 0 blocks is refused
        body[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
        // OPTIMAL TRANSFER LENGTH GRANULARITY: one physical block (at most 2^15 logical).
        body[2..4].copy_from_slice(
            &u16::try_from(per_physical)
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        body[4..8].copy_from_slice(&self.props.max_transfer_blocks.to_be_bytes());
        body[8..12].copy_from_slice(&self.props.max_transfer_blocks.to_be_bytes());
        // The UNMAP limits are the ones `unmap` enforces; without discard UNMAP is not
        // supported and they stay 0.
        if self.props.discard {
            body[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
            body[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
            body[24..28].copy_from_slice(&unmap_granularity.to_be_bytes());
        }
        body[32..40].copy_from_slice(&u64::from(MAX_WRITE_SAME_BLOCKS).to_be_bytes());
        0x3c
    }

    /// `bit` when deallocated blocks read as zeroes, else 0.
    fn lbprz(&self, bit: u8) -> u8 {
        if self.props.unmap_zeroes {
            bit
        } else {
            0
        }
    }

    pub(super) fn read_capacity_10(&self, c: &[u8], data_in: &mut [u8]) -> Result<Outcome, Sense> {
        // PMI is obsolete; with PMI=0 the LBA field must be zero.
        if byte(c, 8) & 0x01 == 0 && be32(c, 2) != 0 {
            return Err(Sense::invalid_field_in_cdb());
        }
        let last = self.capacity_blocks().saturating_sub(1);
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
        b[4..8].copy_from_slice(&self.props.block_size.to_be_bytes());
        Ok(reply(data_in, &b, 8))
    }

    pub(super) fn read_capacity_16(&self, c: &[u8], data_in: &mut [u8]) -> Result<Outcome, Sense> {
        let alloc = be32(c, 10) as usize;
        let _ = be64(c, 2); // LOGICAL BLOCK ADDRESS: obsolete with PMI
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.capacity_blocks().saturating_sub(1).to_be_bytes());
        b[8..12].copy_from_slice(&self.props.block_size.to_be_bytes());
        // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT; the lowest aligned LBA stays 0.
        b[13] = self.blocks_per_physical_block().trailing_zeros() as u8 & 0x0f;
        if self.props.discard {
            b[14] = 0x80 | self.lbprz(0x40); // LBPME, LBPRZ
        }
        Ok(reply(data_in, &b, alloc))
    }
}
