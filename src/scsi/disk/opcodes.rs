//! The table of commands the emulated disk supports, and REPORT SUPPORTED OPERATION CODES
//! (SPC-4 6.35) built from it, so the report cannot disagree with the dispatcher.

use super::{reply, DPO, FUA};
use crate::scsi::cdb::{self, be16, be32, byte};
use crate::scsi::reservation::{
    PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT, RELEASE_10, RELEASE_6, RESERVE_10, RESERVE_6,
};
use crate::scsi::{Outcome, Sense};

/// One supported command: opcode, service action (if the opcode has them) and the CDB
/// usage bitmap.
pub struct SupportedCommand {
    pub opcode: u8,
    pub service_action: Option<u16>,
    /// The usage bitmap of the CDB's bytes after the operation code; the CDB is one byte
    /// longer. (The usage data reported starts with the operation code itself.)
    pub usage: &'static [u8],
}

impl SupportedCommand {
    pub fn cdb_len(&self) -> usize {
        1 + self.usage.len()
    }
}

const fn cmd(opcode: u8, usage: &'static [u8]) -> SupportedCommand {
    SupportedCommand {
        opcode,
        service_action: None,
        usage,
    }
}

const fn sa_cmd(opcode: u8, sa: u16, usage: &'static [u8]) -> SupportedCommand {
    SupportedCommand {
        opcode,
        service_action: Some(sa),
        usage,
    }
}

/// DPO and FUA of READ and WRITE: the disk honours both (FUA reaches the medium; DPO
/// only asks not to keep the data cached, which a pass-through cache may ignore), as
/// MODE SENSE's DPOFUA bit says.
const DPO_FUA: u8 = DPO | FUA;
/// BYTCHK of VERIFY and WRITE AND VERIFY (two bits).
const BYTCHK: u8 = 0x06;

/// PERSISTENT RESERVE IN: service action, allocation length.
const PR_IN_USAGE: &[u8] = &[0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04];
/// PERSISTENT RESERVE OUT: service action, scope and type, parameter list length.
const PR_OUT_USAGE: &[u8] = &[0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x04];

/// Whether a listed command is answered outside the emulated disk: REPORT LUNS by the LUN
/// table, the reservation commands by the disk LUN (they need its shared state).
#[cfg(test)]
pub(super) fn answered_outside_the_disk(opcode: u8) -> bool {
    matches!(
        opcode,
        cdb::REPORT_LUNS
            | PERSISTENT_RESERVE_IN
            | PERSISTENT_RESERVE_OUT
            | RESERVE_6
            | RELEASE_6
            | RESERVE_10
            | RELEASE_10
    )
}

/// Every command the emulated disk (with the LUN table's REPORT LUNS and the disk LUN's
/// reservations) executes.
pub static SUPPORTED_COMMANDS: &[SupportedCommand] = &[
    cmd(cdb::TEST_UNIT_READY, &[0, 0, 0, 0, 0x04]),
    cmd(cdb::REQUEST_SENSE, &[0x01, 0, 0, 0xff, 0x04]),
    cmd(cdb::READ_6, &[0x1f, 0xff, 0xff, 0xff, 0x04]),
    cmd(cdb::WRITE_6, &[0x1f, 0xff, 0xff, 0xff, 0x04]),
    cmd(cdb::INQUIRY, &[0x01, 0xff, 0xff, 0xff, 0x04]),
    cmd(cdb::MODE_SELECT_6, &[0x11, 0, 0, 0xff, 0x04]),
    cmd(cdb::MODE_SENSE_6, &[0x08, 0xff, 0xff, 0xff, 0x04]),
    cmd(cdb::START_STOP_UNIT, &[0x01, 0, 0x0f, 0xf7, 0x04]),
    cmd(cdb::PREVENT_ALLOW_MEDIUM_REMOVAL, &[0, 0, 0, 0x03, 0x04]),
    cmd(
        cdb::READ_CAPACITY_10,
        &[0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0x04],
    ),
    cmd(
        cdb::READ_10,
        &[DPO_FUA, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04],
    ),
    cmd(
        cdb::WRITE_10,
        &[DPO_FUA, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04],
    ),
    cmd(
        cdb::VERIFY_10,
        &[DPO | BYTCHK, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04],
    ),
    cmd(
        cdb::SYNCHRONIZE_CACHE_10,
        &[0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04],
    ),
    cmd(
        cdb::WRITE_SAME_10,
        &[0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04],
    ),
    cmd(
        cdb::WRITE_AND_VERIFY_10,
        &[DPO | BYTCHK, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x04],
    ),
    cmd(cdb::UNMAP, &[0x00, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x04]),
    cmd(
        cdb::LOG_SENSE,
        &[0x03, 0x3f, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0x04],
    ),
    cmd(
        cdb::MODE_SELECT_10,
        &[0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x04],
    ),
    cmd(
        cdb::MODE_SENSE_10,
        &[0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x04],
    ),
    cmd(
        cdb::READ_16,
        &[
            DPO_FUA, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f,
            0x04,
        ],
    ),
    cmd(
        cdb::COMPARE_AND_WRITE,
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0x04,
        ],
    ),
    cmd(
        cdb::WRITE_16,
        &[
            DPO_FUA, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f,
            0x04,
        ],
    ),
    cmd(
        cdb::VERIFY_16,
        &[
            DPO | BYTCHK,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x1f,
            0x04,
        ],
    ),
    cmd(
        cdb::SYNCHRONIZE_CACHE_16,
        &[
            0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f,
            0x04,
        ],
    ),
    cmd(
        cdb::WRITE_SAME_16,
        &[
            0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f,
            0x04,
        ],
    ),
    cmd(
        cdb::WRITE_AND_VERIFY_16,
        &[
            DPO | BYTCHK,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x1f,
            0x04,
        ],
    ),
    sa_cmd(
        cdb::SERVICE_ACTION_IN_16,
        cdb::SAI_READ_CAPACITY_16 as u16,
        &[
            0x1f, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04,
        ],
    ),
    cmd(
        cdb::REPORT_LUNS,
        &[0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x04],
    ),
    // Reservations, answered by the disk LUN around the emulation (src/lun/reservations.rs).
    cmd(RESERVE_6, &[0, 0, 0, 0, 0x04]),
    cmd(RELEASE_6, &[0, 0, 0, 0, 0x04]),
    cmd(RESERVE_10, &[0, 0, 0, 0, 0, 0, 0, 0, 0x04]),
    cmd(RELEASE_10, &[0, 0, 0, 0, 0, 0, 0, 0, 0x04]),
    sa_cmd(PERSISTENT_RESERVE_IN, 0, PR_IN_USAGE),
    sa_cmd(PERSISTENT_RESERVE_IN, 1, PR_IN_USAGE),
    sa_cmd(PERSISTENT_RESERVE_IN, 2, PR_IN_USAGE),
    sa_cmd(PERSISTENT_RESERVE_IN, 3, PR_IN_USAGE),
    sa_cmd(PERSISTENT_RESERVE_OUT, 0, PR_OUT_USAGE),
    sa_cmd(PERSISTENT_RESERVE_OUT, 1, PR_OUT_USAGE),
    sa_cmd(PERSISTENT_RESERVE_OUT, 2, PR_OUT_USAGE),
    sa_cmd(PERSISTENT_RESERVE_OUT, 3, PR_OUT_USAGE),
    sa_cmd(PERSISTENT_RESERVE_OUT, 4, PR_OUT_USAGE),
    sa_cmd(PERSISTENT_RESERVE_OUT, 5, PR_OUT_USAGE),
    sa_cmd(PERSISTENT_RESERVE_OUT, 6, PR_OUT_USAGE),
    sa_cmd(PERSISTENT_RESERVE_OUT, 7, PR_OUT_USAGE),
    sa_cmd(
        cdb::MAINTENANCE_IN,
        cdb::MI_REPORT_SUPPORTED_OPCODES as u16,
        &[
            0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x04,
        ],
    ),
    cmd(
        cdb::READ_12,
        &[
            DPO_FUA, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04,
        ],
    ),
    cmd(
        cdb::WRITE_12,
        &[
            DPO_FUA, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x04,
        ],
    ),
    cmd(
        cdb::WRITE_AND_VERIFY_12,
        &[
            DPO | BYTCHK,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x1f,
            0x04,
        ],
    ),
    cmd(
        cdb::VERIFY_12,
        &[
            DPO | BYTCHK,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x1f,
            0x04,
        ],
    ),
];

/// Room for this many commands in the report (a unit test keeps the table within it).
pub(super) const MAX_LISTED: usize = 64;

/// Timeouts descriptor (SPC-4 6.35.4): length 0x0A, no timeouts reported.
const TIMEOUTS: [u8; 12] = [0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// REPORT SUPPORTED OPERATION CODES.
pub fn report_supported(c: &[u8], data_in: &mut [u8]) -> Result<Outcome, Sense> {
    let rctd = byte(c, 2) & 0x80 != 0;
    let options = byte(c, 2) & 0x07;
    let op = byte(c, 3);
    let sa = be16(c, 4);
    let alloc = be32(c, 6) as usize;
    let mut buf = [0u8; 4 + MAX_LISTED * 20];
    let n = match options {
        0 => {
            let mut n = 4;
            for s in SUPPORTED_COMMANDS {
                let d = &mut buf[n..];
                d[0] = s.opcode;
                d[2..4].copy_from_slice(&s.service_action.unwrap_or(0).to_be_bytes());
                d[5] = u8::from(s.service_action.is_some()) | if rctd { 0x02 } else { 0 };
                d[6..8].copy_from_slice(&(s.cdb_len() as u16).to_be_bytes());
                n += 8;
                if rctd {
                    buf[n..n + 12].copy_from_slice(&TIMEOUTS);
                    n += 12;
                }
            }
            buf[0..4].copy_from_slice(&((n - 4) as u32).to_be_bytes());
            n
        }
        1..=3 => {
            let found = SUPPORTED_COMMANDS.iter().find(|s| s.opcode == op);
            let entry = match (options, found) {
                // Option 1 asks by opcode alone: wrong for a command with service actions.
                (1, Some(s)) if s.service_action.is_some() => {
                    return Err(Sense::invalid_field_in_cdb())
                }
                (2, Some(s)) if s.service_action.is_none() => {
                    return Err(Sense::invalid_field_in_cdb())
                }
                (_, Some(s)) if s.service_action.is_none_or(|a| a == sa) => Some(s),
                _ => None,
            };
            match entry {
                Some(s) => {
                    let ulen = s.cdb_len();
                    buf[1] = 0x03 | if rctd { 0x80 } else { 0 }; // SUPPORT: as the standard says
                    buf[2..4].copy_from_slice(&(ulen as u16).to_be_bytes());
                    buf[4] = s.opcode;
                    buf[5..4 + ulen].copy_from_slice(s.usage);
                    let mut n = 4 + ulen;
                    if rctd {
                        buf[n..n + 12].copy_from_slice(&TIMEOUTS);
                        n += 12;
                    }
                    n
                }
                None => {
                    buf[1] = 0x01; // SUPPORT: not supported
                    4
                }
            }
        }
        _ => return Err(Sense::invalid_field_in_cdb()),
    };
    Ok(reply(data_in, &buf[..n], alloc))
}
