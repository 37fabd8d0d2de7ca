//! Reservations (SPC-4 5.13): persistent reservations (PERSISTENT RESERVE IN/OUT) and the
//! older SPC-2 RESERVE/RELEASE, as pure logic on a [`ReservationState`].
//!
//! Each vscsid serves one VM, so each daemon is one I_T nexus of a LUN; a [`Nexus`] is named
//! by its initiator port's name (the TransportID of READ FULL STATUS and REGISTER AND
//! MOVE). The state holds every nexus's registration, so several daemons that share a disk
//! can keep one state between them: the LUN layer loads it, this module decides, the LUN
//! layer stores the result. Nothing here does I/O.
//!
//! What the state also carries for the daemons that share it: the unit attentions owed to a
//! nexus that lost its registration or reservation (given by the daemon that serves that
//! nexus), and the PREEMPT AND ABORT requests that daemon must drain its commands for.

mod access;
mod command;
mod report;
mod transport_id;

use serde::{Deserialize, Serialize};

pub use access::{access, Access};
pub use command::{persistent_reserve_out, reserve_release, PrOutEffect};
pub use report::persistent_reserve_in;
pub use transport_id::{nexus_transport_id, parse_transport_id};

use super::Sense;

/// PERSISTENT RESERVE IN.
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// PERSISTENT RESERVE OUT.
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
/// SPC-2 RESERVE(6) / RELEASE(6) / RESERVE(10) / RELEASE(10).
pub const RESERVE_6: u8 = 0x16;
pub const RELEASE_6: u8 = 0x17;
pub const RESERVE_10: u8 = 0x56;
pub const RELEASE_10: u8 = 0x57;

/// Most registrations one LUN keeps (INSUFFICIENT REGISTRATION RESOURCES beyond): enough
/// for every node of any cluster, and a bound on the state file.
pub const MAX_REGISTRATIONS: usize = 64;

/// An I_T nexus: the initiator port's name (an iSCSI name, or `name,i,0x<ISID>`).
pub type Nexus = String;

/// Persistent reservation types (SPC-4 table 209).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// The TYPE field's code.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 1,
            PrType::ExclusiveAccess => 3,
            PrType::WriteExclusiveRegistrantsOnly => 5,
            PrType::ExclusiveAccessRegistrantsOnly => 6,
            PrType::WriteExclusiveAllRegistrants => 7,
            PrType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Every registrant holds the reservation.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registered nexuses may access the medium as the holder does (RO and AR types).
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Reads by others are allowed (the write exclusive family).
    pub fn write_exclusive(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }
}

/// One registered I_T nexus and its reservation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub nexus: Nexus,
    pub key: u64,
}

/// The persistent reservation of the logical unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub kind: PrType,
    /// The holder; None for the all-registrants types (every registrant holds it).
    pub holder: Option<Nexus>,
}

/// A unit attention owed to a nexus served by whichever daemon serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedAttention {
    pub nexus: Nexus,
    pub asc: u8,
    pub ascq: u8,
}

/// A PREEMPT AND ABORT: the daemon serving `nexus` drains that LUN's commands and then
/// removes the request, which is how the preempting daemon learns it may answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortRequest {
    pub nexus: Nexus,
    /// Distinguishes requests for the same nexus.
    pub id: u64,
}

/// Everything reservations keep for one logical unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationState {
    /// PRgeneration: counts REGISTER, REGISTER AND IGNORE, CLEAR, PREEMPT, PREEMPT AND
    /// ABORT and REGISTER AND MOVE that succeeded (wrapping).
    pub generation: u32,
    /// Activate persist through power loss, as the last REGISTER set it.
    pub aptpl: bool,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
    /// The holder of an SPC-2 RESERVE.
    pub spc2_holder: Option<Nexus>,
    pub attentions: Vec<OwedAttention>,
    pub aborts: Vec<AbortRequest>,
}

impl ReservationState {
    /// The key `nexus` registered, if it did.
    pub fn key_of(&self, nexus: &str) -> Option<u64> {
        self.registrations
            .iter()
            .find(|r| r.nexus == nexus)
            .map(|r| r.key)
    }

    /// Whether `nexus` holds the persistent reservation (any registrant of an
    /// all-registrants type does).
    pub fn holds(&self, nexus: &str) -> bool {
        match &self.reservation {
            Some(Reservation { holder: None, .. }) => self.key_of(nexus).is_some(),
            Some(Reservation {
                holder: Some(h), ..
            }) => h == nexus,
            None => false,
        }
    }

    /// Nothing restricts anyone and nothing is owed: the fast path's case.
    pub fn is_idle(&self) -> bool {
        self.reservation.is_none()
            && self.spc2_holder.is_none()
            && self.attentions.is_empty()
            && self.aborts.is_empty()
    }

    /// Whether a unit attention is owed to `nexus`.
    pub fn owes_attention(&self, nexus: &str) -> bool {
        self.attentions.iter().any(|a| a.nexus == nexus)
    }

    /// Takes the first unit attention owed to `nexus`.
    pub fn take_attention(&mut self, nexus: &str) -> Option<Sense> {
        let i = self.attentions.iter().position(|a| a.nexus == nexus)?;
        let a = self.attentions.remove(i);
        Some(Sense::new(super::sense::key::UNIT_ATTENTION, a.asc, a.ascq))
    }

    /// The logical unit lost its state (first daemon to open it after all closed, which is
    /// what a power cycle is to the LUN): keep only what APTPL keeps.
    pub fn power_on(&mut self) {
        if !self.aptpl {
            self.registrations.clear();
            self.reservation = None;
        }
        self.spc2_holder = None;
        self.attentions.clear();
        self.aborts.clear();
    }

    /// A LOGICAL UNIT RESET from `nexus`: releases an SPC-2 reservation (persistent
    /// reservations survive resets, SPC-4 5.13.1).
    pub fn lu_reset(&mut self) {
        self.spc2_holder = None;
    }

    fn owe(&mut self, nexus: &str, asc: u8, ascq: u8) {
        // One of each kind is enough: the guest reads the state again when told.
        if !self
            .attentions
            .iter()
            .any(|a| a.nexus == nexus && a.asc == asc && a.ascq == ascq)
        {
            self.attentions.push(OwedAttention {
                nexus: nexus.to_string(),
                asc,
                ascq,
            });
        }
    }
}

/// RESERVATIONS PREEMPTED (2A/03), RESERVATIONS RELEASED (2A/04), REGISTRATIONS PREEMPTED
/// (2A/05).
pub mod attention {
    pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2a, 0x05);
}

/// How a reservation command ended (besides changing the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrAnswer {
    /// GOOD with `n` bytes of data-in.
    Good(usize),
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION.
    Check(Sense),
}

impl From<Sense> for PrAnswer {
    fn from(s: Sense) -> PrAnswer {
        PrAnswer::Check(s)
    }
}

#[cfg(test)]
mod tests;
