//! CDB decoding: operation codes, CDB lengths, big-endian field readers that never read past
//! a short CDB, and the fast decoder of the READ/WRITE family.

use super::Sense;

pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const READ_6: u8 = 0x08;
pub const WRITE_6: u8 = 0x0a;
pub const INQUIRY: u8 = 0x12;
pub const MODE_SELECT_6: u8 = 0x15;
pub const MODE_SENSE_6: u8 = 0x1a;
pub const START_STOP_UNIT: u8 = 0x1b;
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2a;
pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
pub const VERIFY_10: u8 = 0x2f;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const WRITE_BUFFER: u8 = 0x3b;
pub const WRITE_SAME_10: u8 = 0x41;
pub const UNMAP: u8 = 0x42;
pub const LOG_SENSE: u8 = 0x4d;
pub const MODE_SELECT_10: u8 = 0x55;
pub const MODE_SENSE_10: u8 = 0x5a;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
pub const READ_16: u8 = 0x88;
pub const COMPARE_AND_WRITE: u8 = 0x89;
pub const WRITE_16: u8 = 0x8a;
pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
pub const VERIFY_16: u8 = 0x8f;
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const WRITE_SAME_16: u8 = 0x93;
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
pub const REPORT_LUNS: u8 = 0xa0;
pub const MAINTENANCE_IN: u8 = 0xa3;
pub const READ_12: u8 = 0xa8;
pub const WRITE_12: u8 = 0xaa;
pub const WRITE_AND_VERIFY_12: u8 = 0xae;
pub const VERIFY_12: u8 = 0xaf;
/// Variable-length CDB (SPC-4 4.2.3): its length is in byte 7.
pub const VARIABLE_LENGTH: u8 = 0x7f;

/// SERVICE ACTION IN(16) service action of READ CAPACITY(16).
pub const SAI_READ_CAPACITY_16: u8 = 0x10;
/// MAINTENANCE IN service action of REPORT TARGET PORT GROUPS.
pub const MI_REPORT_TARGET_PORT_GROUPS: u8 = 0x0a;
/// MAINTENANCE IN service action of REPORT SUPPORTED OPERATION CODES.
pub const MI_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;

/// CDB length implied by the operation code's group (SPC-4 4.2.5.1).
pub fn cdb_len_for_opcode(op: u8) -> Option<usize> {
    match op >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Byte `i` of the CDB, or 0 past its end (the request path always hands 32 bytes).
pub fn byte(cdb: &[u8], i: usize) -> u8 {
    cdb.get(i).copied().unwrap_or(0)
}

/// Big-endian u16 at `at`.
pub fn be16(cdb: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([byte(cdb, at), byte(cdb, at + 1)])
}

/// Big-endian u32 at `at`.
pub fn be32(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        byte(cdb, at),
        byte(cdb, at + 1),
        byte(cdb, at + 2),
        byte(cdb, at + 3),
    ])
}

/// Big-endian u64 at `at`.
pub fn be64(cdb: &[u8], at: usize) -> u64 {
    (u64::from(be32(cdb, at)) << 32) | u64::from(be32(cdb, at + 4))
}

/// The control byte (last byte of the CDB); NACA=1 asks for ACA, which is not supported.
pub fn check_control(cdb: &[u8]) -> Result<(), Sense> {
    let len = cdb_len_for_opcode(byte(cdb, 0)).ok_or(Sense::invalid_opcode())?;
    if byte(cdb, len - 1) & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb());
    }
    Ok(())
}

/// A decoded READ or WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rw {
    pub lba: u64,
    pub blocks: u32,
    pub fua: bool,
    pub write: bool,
}

/// Decodes READ/WRITE(6/10/12/16); `Ok(None)` when the opcode is not one of them.
pub fn decode_rw(cdb: &[u8]) -> Result<Option<Rw>, Sense> {
    let op = byte(cdb, 0);
    let (lba, blocks, fua_byte) = match op {
        READ_6 | WRITE_6 => {
            let lba = u64::from(be32(cdb, 0) & 0x001f_ffff);
            let n = byte(cdb, 4);
            // Transfer length 0 means 256 blocks in the 6-byte commands.
            let blocks = if n == 0 { 256 } else { u32::from(n) };
            (lba, blocks, None)
        }
        READ_10 | WRITE_10 => (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)), Some(1)),
        READ_12 | WRITE_12 => (u64::from(be32(cdb, 2)), be32(cdb, 6), Some(1)),
        READ_16 | WRITE_16 => (be64(cdb, 2), be32(cdb, 10), Some(1)),
        _ => return Ok(None),
    };
    let write = matches!(op, WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16);
    let fua = fua_byte.is_some_and(|i| byte(cdb, i) & 0x08 != 0);
    // RDPROTECT/WRPROTECT: no protection information is supported.
    if fua_byte.is_some_and(|i| byte(cdb, i) & 0xe0 != 0) {
        return Err(Sense::invalid_field_in_cdb());
    }
    Ok(Some(Rw {
        lba,
        blocks,
        fua,
        write,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_codes_give_lengths() {
        assert_eq!(cdb_len_for_opcode(READ_6), Some(6));
        assert_eq!(cdb_len_for_opcode(READ_10), Some(10));
        assert_eq!(cdb_len_for_opcode(MODE_SENSE_10), Some(10));
        assert_eq!(cdb_len_for_opcode(READ_16), Some(16));
        assert_eq!(cdb_len_for_opcode(READ_12), Some(12));
        assert_eq!(cdb_len_for_opcode(0x7f), None);
        assert_eq!(cdb_len_for_opcode(0xc0), None);
    }

    #[test]
    fn readers_stop_at_the_end() {
        let c = [0x28, 0, 0x12, 0x34];
        assert_eq!(be16(&c, 2), 0x1234);
        assert_eq!(be32(&c, 2), 0x1234_0000);
        assert_eq!(be64(&c, 30), 0);
        assert_eq!(byte(&[], 5), 0);
    }

    #[test]
    fn decodes_each_size() {
        let mut c = [0u8; 32];
        c[0] = READ_6;
        c[1] = 0x01;
        c[2] = 0x02;
        c[3] = 0x03;
        c[4] = 0;
        assert_eq!(
            decode_rw(&c).unwrap(),
            Some(Rw {
                lba: 0x010203,
                blocks: 256,
                fua: false,
                write: false
            })
        );
        let mut c = [0u8; 32];
        c[0] = WRITE_10;
        c[1] = 0x08;
        c[2..6].copy_from_slice(&7u32.to_be_bytes());
        c[7..9].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            decode_rw(&c).unwrap(),
            Some(Rw {
                lba: 7,
                blocks: 9,
                fua: true,
                write: true
            })
        );
        let mut c = [0u8; 32];
        c[0] = READ_16;
        c[2..10].copy_from_slice(&(u64::MAX - 1).to_be_bytes());
        c[10..14].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
        let rw = decode_rw(&c).unwrap().unwrap();
        assert_eq!((rw.lba, rw.blocks), (u64::MAX - 1, u32::MAX));
        let mut c = [0u8; 32];
        c[0] = WRITE_12;
        c[6..10].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(decode_rw(&c).unwrap().unwrap().blocks, 5);
        assert_eq!(decode_rw(&[INQUIRY; 6]).unwrap(), None);
    }

    #[test]
    fn protection_information_is_refused() {
        let mut c = [0u8; 32];
        c[0] = READ_10;
        c[1] = 0x20;
        assert_eq!(decode_rw(&c), Err(Sense::invalid_field_in_cdb()));
    }

    #[test]
    fn naca_is_refused() {
        let mut c = [0u8; 32];
        c[0] = TEST_UNIT_READY;
        c[5] = 0x04;
        assert_eq!(check_control(&c), Err(Sense::invalid_field_in_cdb()));
        c[5] = 0;
        assert_eq!(check_control(&c), Ok(()));
    }
}
