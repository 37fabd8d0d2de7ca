//! Which commands a nexus may run while a reservation is held by another (SPC-4 5.13.1
//! table 43 "SPC commands allowed in the presence of reservations", SBC-3 4.17 table 13,
//! and SPC-2's rule for RESERVE). Commands are sorted into a few classes that the tables
//! treat alike; a command not named is a write-class command (conflicts unless the nexus
//! has access), which is what SPC-4 says of commands it does not list.

use super::{
    ReservationState, PERSISTENT_RESERVE_IN, PERSISTENT_RESERVE_OUT, RELEASE_10, RELEASE_6,
    RESERVE_10, RESERVE_6,
};
use crate::scsi::cdb::{self, byte};

/// Whether a command may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Conflict,
}

/// How the reservation tables treat a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Allowed whatever the reservation (INQUIRY, REPORT LUNS, PERSISTENT RESERVE IN, ...).
    Always,
    /// Reads of the device's parameters (MODE SENSE, REPORT SUPPORTED OPERATION CODES,
    /// READ BUFFER): allowed under write exclusive types, and to registered nexuses.
    ParameterRead,
    /// Reads of the medium: allowed under write exclusive types, and under the
    /// registrants-only / all-registrants types to registered nexuses.
    MediumRead,
    /// Everything that changes the medium or the device's state.
    Write,
    /// PERSISTENT RESERVE OUT: by service action.
    PrOut,
    /// RESERVE/RELEASE: decided by the command itself (SPC-4 5.13.3, CRH=1).
    Spc2,
}

const READ_BUFFER: u8 = 0x3c;
const RECEIVE_DIAGNOSTIC: u8 = 0x1c;
const PRE_FETCH_10: u8 = 0x34;
const PRE_FETCH_16: u8 = 0x90;
const SAI_GET_LBA_STATUS: u8 = 0x12;

fn class(cdb: &[u8]) -> Class {
    let op = byte(cdb, 0);
    match op {
        cdb::INQUIRY
        | cdb::REPORT_LUNS
        | cdb::REQUEST_SENSE
        | cdb::LOG_SENSE
        | cdb::TEST_UNIT_READY
        | cdb::READ_CAPACITY_10
        | PERSISTENT_RESERVE_IN => Class::Always,
        cdb::SERVICE_ACTION_IN_16 => match byte(cdb, 1) & 0x1f {
            cdb::SAI_READ_CAPACITY_16 => Class::Always,
            SAI_GET_LBA_STATUS => Class::MediumRead,
            _ => Class::Write,
        },
        cdb::MAINTENANCE_IN => match byte(cdb, 1) & 0x1f {
            cdb::MI_REPORT_TARGET_PORT_GROUPS => Class::Always,
            _ => Class::ParameterRead,
        },
        cdb::MODE_SENSE_6 | cdb::MODE_SENSE_10 | READ_BUFFER | RECEIVE_DIAGNOSTIC => {
            Class::ParameterRead
        }
        cdb::READ_6
        | cdb::READ_10
        | cdb::READ_12
        | cdb::READ_16
        | cdb::VERIFY_10
        | cdb::VERIFY_12
        | cdb::VERIFY_16
        | PRE_FETCH_10
        | PRE_FETCH_16 => Class::MediumRead,
        // PREVENT ALLOW MEDIUM REMOVAL with PREVENT=0 is allowed (SPC-4 table 43).
        cdb::PREVENT_ALLOW_MEDIUM_REMOVAL if byte(cdb, 4) & 0x03 == 0 => Class::Always,
        PERSISTENT_RESERVE_OUT => Class::PrOut,
        RESERVE_6 | RELEASE_6 | RESERVE_10 | RELEASE_10 => Class::Spc2,
        _ => Class::Write,
    }
}

/// PERSISTENT RESERVE OUT service actions.
pub(super) mod action {
    pub const REGISTER: u8 = 0x00;
    pub const RESERVE: u8 = 0x01;
    pub const RELEASE: u8 = 0x02;
    pub const CLEAR: u8 = 0x03;
    pub const PREEMPT: u8 = 0x04;
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    pub const REGISTER_AND_IGNORE: u8 = 0x06;
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// Whether `me` may run `cdb` now. Holders may run everything; the rest by the tables.
pub fn access(state: &ReservationState, me: &str, cdb: &[u8]) -> Access {
    let class = class(cdb);
    if let Some(holder) = &state.spc2_holder {
        if holder != me {
            // SPC-2: another initiator's RESERVE leaves only these (RELEASE by a
            // non-holder is GOOD and does nothing; the command itself sees to it).
            let op = byte(cdb, 0);
            return match op {
                cdb::INQUIRY
                | cdb::REPORT_LUNS
                | cdb::REQUEST_SENSE
                | PERSISTENT_RESERVE_IN
                | RELEASE_6
                | RELEASE_10 => Access::Allowed,
                _ => Access::Conflict,
            };
        }
    }
    let Some(res) = &state.reservation else {
        return Access::Allowed;
    };
    let registered = state.key_of(me).is_some();
    if state.holds(me) {
        return Access::Allowed;
    }
    let allowed = match class {
        Class::Always | Class::Spc2 => true,
        Class::ParameterRead => res.kind.write_exclusive() || registered,
        Class::MediumRead => {
            res.kind.write_exclusive() || (registered && res.kind.registrants_have_access())
        }
        Class::Write => registered && res.kind.registrants_have_access(),
        Class::PrOut => match byte(cdb, 1) & 0x1f {
            action::REGISTER | action::REGISTER_AND_IGNORE => true,
            action::CLEAR | action::PREEMPT | action::PREEMPT_AND_ABORT | action::RELEASE => {
                registered
            }
            // RESERVE and REGISTER AND MOVE by a non-holder conflict; an unknown action
            // is refused by the command itself.
            action::RESERVE | action::REGISTER_AND_MOVE => false,
            _ => true,
        },
    };
    if allowed {
        Access::Allowed
    } else {
        Access::Conflict
    }
}
