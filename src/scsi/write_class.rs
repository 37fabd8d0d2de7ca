//! Which commands change a logical unit's data: the one list a read-only LUN consults
//! before it lets a command through (DATA PROTECT, WRITE PROTECTED 27/00 for these).
//!
//! A passthrough LUN cannot rely on the target to refuse them, so the list is by operation
//! code (and service action where one opcode carries both kinds), not by what vscsid's own
//! disk emulation supports. It covers disks (SBC), tapes (SSC, whose WRITE(6/16), FORMAT
//! MEDIUM and ERASE(16) share opcodes with the disk commands listed) and every
//! vendor-specific opcode (C0h..FFh), whose effect nobody outside the vendor knows.
//! Commands that change only state around the data pass: SYNCHRONIZE CACHE, MODE SELECT,
//! PERSISTENT RESERVE OUT, RESERVE/RELEASE, START STOP UNIT (LOAD/UNLOAD), SET TARGET PORT
//! GROUPS, and a tape's positioning (REWIND, SPACE, LOCATE) and a changer's MOVE MEDIUM,
//! which a reader needs. SECURITY PROTOCOL OUT is refused: on a real device it can erase
//! (a TCG Opal revert, a cryptographic erase).

use super::cdb::{self, be16, byte};

/// Operation codes that may change the medium's contents.
pub const FORMAT_UNIT: u8 = 0x04;
pub const REASSIGN_BLOCKS: u8 = 0x07;
/// SSC: changes a tape's capacity, losing what it held.
pub const SET_CAPACITY: u8 = 0x0b;
pub const WRITE_FILEMARKS_6: u8 = 0x10;
pub const ERASE_6: u8 = 0x19;
pub const WRITE_FILEMARKS_16: u8 = 0x80;
pub const SECURITY_PROTOCOL_OUT: u8 = 0xb5;
/// First vendor-specific operation code: C0h..FFh are all refused.
pub const VENDOR_SPECIFIC_FIRST: u8 = 0xc0;
pub const WRITE_LONG_10: u8 = 0x3f;
pub const SANITIZE: u8 = 0x48;
pub const XDWRITE_10: u8 = 0x50;
pub const XPWRITE_10: u8 = 0x51;
pub const XDWRITEREAD_10: u8 = 0x53;
pub const THIRD_PARTY_COPY_OUT: u8 = 0x83;
pub const ATA_PASS_THROUGH_16: u8 = 0x85;
pub const ORWRITE_16: u8 = 0x8b;
pub const WRITE_STREAM_16: u8 = 0x9a;
pub const WRITE_ATOMIC_16: u8 = 0x9c;
pub const SERVICE_ACTION_OUT_16: u8 = 0x9f;
pub const ATA_PASS_THROUGH_12: u8 = 0xa1;

/// Which of an opcode's commands write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Every command with this opcode.
    Always,
    /// Only these service actions (in byte 1, bits 4..0).
    ServiceActions(&'static [u8]),
    /// Only these service actions of a variable-length CDB (bytes 8..9).
    VariableServiceActions(&'static [u16]),
}

/// One opcode of the write class, with the name the README lists.
#[derive(Debug)]
pub struct WriteCommand {
    pub opcode: u8,
    pub writes: Writes,
    pub name: &'static str,
}

const fn w(opcode: u8, writes: Writes, name: &'static str) -> WriteCommand {
    WriteCommand {
        opcode,
        writes,
        name,
    }
}

/// Every command a read-only LUN refuses (SBC-4 and SPC-4 names).
pub static WRITE_COMMANDS: &[WriteCommand] = &[
    w(
        FORMAT_UNIT,
        Writes::Always,
        "FORMAT UNIT, FORMAT MEDIUM (tape)",
    ),
    w(REASSIGN_BLOCKS, Writes::Always, "REASSIGN BLOCKS"),
    w(cdb::WRITE_6, Writes::Always, "WRITE(6)"),
    w(SET_CAPACITY, Writes::Always, "SET CAPACITY (tape)"),
    w(
        WRITE_FILEMARKS_6,
        Writes::Always,
        "WRITE FILEMARKS(6) (tape)",
    ),
    w(ERASE_6, Writes::Always, "ERASE(6) (tape)"),
    w(cdb::WRITE_10, Writes::Always, "WRITE(10)"),
    w(
        cdb::WRITE_AND_VERIFY_10,
        Writes::Always,
        "WRITE AND VERIFY(10)",
    ),
    // WRITE BUFFER can replace the device's firmware or its data.
    w(cdb::WRITE_BUFFER, Writes::Always, "WRITE BUFFER"),
    w(WRITE_LONG_10, Writes::Always, "WRITE LONG(10)"),
    w(cdb::WRITE_SAME_10, Writes::Always, "WRITE SAME(10)"),
    w(cdb::UNMAP, Writes::Always, "UNMAP"),
    w(SANITIZE, Writes::Always, "SANITIZE"),
    w(XDWRITE_10, Writes::Always, "XDWRITE(10)"),
    w(XPWRITE_10, Writes::Always, "XPWRITE(10)"),
    w(XDWRITEREAD_10, Writes::Always, "XDWRITEREAD(10)"),
    // WRITE(32), WRITE AND VERIFY(32), WRITE SAME(32), ORWRITE(32), XDWRITE(32),
    // XPWRITE(32), XDWRITEREAD(32), WRITE STREAM(32), WRITE SCATTERED(32), WRITE ATOMIC(32).
    w(
        cdb::VARIABLE_LENGTH,
        Writes::VariableServiceActions(&[
            0x0004, 0x0006, 0x0007, 0x000b, 0x000c, 0x000d, 0x000e, 0x000f, 0x0010, 0x0011,
        ]),
        "variable-length writes (WRITE(32) and kin)",
    ),
    // EXTENDED COPY (LID1, LID4) and WRITE USING TOKEN write to the copy's destination.
    w(
        THIRD_PARTY_COPY_OUT,
        Writes::ServiceActions(&[0x00, 0x01, 0x11]),
        "EXTENDED COPY, WRITE USING TOKEN",
    ),
    w(
        WRITE_FILEMARKS_16,
        Writes::Always,
        "WRITE FILEMARKS(16) (tape)",
    ),
    // An ATA command inside can write anything.
    w(ATA_PASS_THROUGH_16, Writes::Always, "ATA PASS-THROUGH(16)"),
    w(cdb::COMPARE_AND_WRITE, Writes::Always, "COMPARE AND WRITE"),
    w(cdb::WRITE_16, Writes::Always, "WRITE(16)"),
    w(ORWRITE_16, Writes::Always, "ORWRITE(16)"),
    w(
        cdb::WRITE_AND_VERIFY_16,
        Writes::Always,
        "WRITE AND VERIFY(16)",
    ),
    w(
        cdb::WRITE_SAME_16,
        Writes::Always,
        "WRITE SAME(16), ERASE(16) (tape)",
    ),
    w(WRITE_STREAM_16, Writes::Always, "WRITE STREAM(16)"),
    w(WRITE_ATOMIC_16, Writes::Always, "WRITE ATOMIC(16)"),
    // WRITE LONG(16) and WRITE SCATTERED(16).
    w(
        SERVICE_ACTION_OUT_16,
        Writes::ServiceActions(&[0x11, 0x12]),
        "WRITE LONG(16), WRITE SCATTERED(16)",
    ),
    w(ATA_PASS_THROUGH_12, Writes::Always, "ATA PASS-THROUGH(12)"),
    w(cdb::WRITE_12, Writes::Always, "WRITE(12)"),
    w(
        cdb::WRITE_AND_VERIFY_12,
        Writes::Always,
        "WRITE AND VERIFY(12)",
    ),
    w(
        SECURITY_PROTOCOL_OUT,
        Writes::Always,
        "SECURITY PROTOCOL OUT",
    ),
];

/// Whether `cdb` may change the LUN's data, so a read-only LUN must refuse it.
pub fn changes_data(c: &[u8]) -> bool {
    let op = byte(c, 0);
    if op >= VENDOR_SPECIFIC_FIRST {
        return true;
    }
    let Some(entry) = WRITE_COMMANDS.iter().find(|e| e.opcode == op) else {
        return false;
    };
    match entry.writes {
        Writes::Always => true,
        Writes::ServiceActions(sas) => sas.contains(&(byte(c, 1) & 0x1f)),
        Writes::VariableServiceActions(sas) => sas.contains(&be16(c, 8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdb_of(op: u8, sa: u16) -> [u8; 32] {
        let mut c = [0u8; 32];
        c[0] = op;
        if op == cdb::VARIABLE_LENGTH {
            c[7] = 0x18;
            c[8..10].copy_from_slice(&sa.to_be_bytes());
        } else {
            c[1] = sa as u8;
        }
        c
    }

    #[test]
    fn each_command_is_classified() {
        // (opcode, service action, changes data)
        let cases: &[(u8, u16, bool)] = &[
            (cdb::WRITE_6, 0, true),
            (cdb::WRITE_10, 0, true),
            (cdb::WRITE_12, 0, true),
            (cdb::WRITE_16, 0, true),
            (cdb::WRITE_AND_VERIFY_10, 0, true),
            (cdb::WRITE_AND_VERIFY_12, 0, true),
            (cdb::WRITE_AND_VERIFY_16, 0, true),
            (cdb::WRITE_SAME_10, 0, true),
            (cdb::WRITE_SAME_16, 0, true),
            (cdb::UNMAP, 0, true),
            (cdb::COMPARE_AND_WRITE, 0, true),
            (WRITE_ATOMIC_16, 0, true),
            (FORMAT_UNIT, 0, true),
            (cdb::WRITE_BUFFER, 0, true),
            (SANITIZE, 0, true),
            (ORWRITE_16, 0, true),
            (WRITE_STREAM_16, 0, true),
            (SERVICE_ACTION_OUT_16, 0x11, true),
            (SERVICE_ACTION_OUT_16, 0x12, true),
            (THIRD_PARTY_COPY_OUT, 0x00, true),
            (THIRD_PARTY_COPY_OUT, 0x11, true),
            // POPULATE TOKEN only reads.
            (THIRD_PARTY_COPY_OUT, 0x10, false),
            (cdb::VARIABLE_LENGTH, 0x000b, true),
            (cdb::VARIABLE_LENGTH, 0x000d, true),
            // READ(32) and VERIFY(32).
            (cdb::VARIABLE_LENGTH, 0x0009, false),
            (cdb::VARIABLE_LENGTH, 0x000a, false),
            (cdb::READ_6, 0, false),
            (cdb::READ_10, 0, false),
            (cdb::READ_12, 0, false),
            (cdb::READ_16, 0, false),
            (cdb::VERIFY_10, 0, false),
            (cdb::VERIFY_16, 0, false),
            (cdb::SYNCHRONIZE_CACHE_10, 0, false),
            (cdb::SYNCHRONIZE_CACHE_16, 0, false),
            (cdb::PERSISTENT_RESERVE_OUT, 0x01, false),
            (cdb::MODE_SELECT_6, 0, false),
            (cdb::MODE_SELECT_10, 0, false),
            (cdb::INQUIRY, 0, false),
            (cdb::TEST_UNIT_READY, 0, false),
            (cdb::START_STOP_UNIT, 0, false),
            (cdb::LOG_SENSE, 0, false),
            (cdb::SERVICE_ACTION_IN_16, 0x10, false),
            // Tape: what writes the medium, and the positioning a reader needs.
            (WRITE_FILEMARKS_6, 0, true),
            (WRITE_FILEMARKS_16, 0, true),
            (ERASE_6, 0, true),
            (SET_CAPACITY, 0, true),
            (0x01, 0, false), // REWIND
            (0x11, 0, false), // SPACE(6)
            (0x2b, 0, false), // LOCATE(10)
            (0x34, 0, false), // READ POSITION
            (0x91, 0, false), // SPACE(16)
            (0x92, 0, false), // LOCATE(16)
            (0xa5, 0, false), // MOVE MEDIUM (changer)
            (0xb8, 0, false), // READ ELEMENT STATUS (changer)
            (SECURITY_PROTOCOL_OUT, 0, true),
            (0xa2, 0, false), // SECURITY PROTOCOL IN
            (WRITE_LONG_10, 0, true),
            (SERVICE_ACTION_OUT_16, 0x10, false),
            // Every vendor-specific opcode.
            (0xc0, 0, true),
            (0xd5, 0, true),
            (0xff, 0, true),
            (0xbf, 0, false),
        ];
        for &(op, sa, writes) in cases {
            assert_eq!(
                changes_data(&cdb_of(op, sa)),
                writes,
                "opcode {op:#04x} service action {sa:#x}"
            );
        }
    }

    #[test]
    fn the_list_names_each_opcode_once() {
        for (i, a) in WRITE_COMMANDS.iter().enumerate() {
            assert!(!a.name.is_empty());
            assert!(
                a.opcode < VENDOR_SPECIFIC_FIRST,
                "{}: covered by the range",
                a.name
            );
            for b in &WRITE_COMMANDS[i + 1..] {
                assert_ne!(a.opcode, b.opcode, "{} and {}", a.name, b.name);
            }
        }
    }

    #[test]
    fn a_short_cdb_is_classified_without_panicking() {
        assert!(changes_data(&[cdb::WRITE_10]));
        assert!(!changes_data(&[]));
        assert!(!changes_data(&[cdb::VARIABLE_LENGTH]));
    }
}
