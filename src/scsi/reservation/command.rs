//! PERSISTENT RESERVE OUT (SPC-4 6.16, 5.13.5–5.13.11) and SPC-2 RESERVE/RELEASE applied
//! to a [`ReservationState`] on behalf of one nexus. A refused command leaves the state as
//! it was: every check comes before the first change.

use super::access::action;
use super::attention::{REGISTRATIONS_PREEMPTED, RESERVATIONS_PREEMPTED, RESERVATIONS_RELEASED};
use super::transport_id::parse_transport_id;
use super::{
    AbortRequest, Nexus, PrAnswer, PrType, Registration, Reservation, ReservationState,
    MAX_REGISTRATIONS, RELEASE_10, RESERVE_10, RESERVE_6,
};
use crate::scsi::cdb::{be32, be64, byte};
use crate::scsi::sense::key;
use crate::scsi::{DataOut, Sense};

/// Longest REGISTER AND MOVE parameter list read.
const MAX_MOVE_LIST: usize = 24 + 512;

/// What a PERSISTENT RESERVE OUT did besides answering GOOD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrOutEffect {
    /// The state changed and must be stored.
    pub changed: bool,
    /// Nexuses whose commands must be drained (PREEMPT AND ABORT) before the answer;
    /// each has an [`AbortRequest`] with `abort_id` in the state.
    pub aborted: Vec<Nexus>,
}

/// 05/26/04 INVALID RELEASE OF PERSISTENT RESERVATION.
fn invalid_release() -> Sense {
    Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04)
}

/// 05/55/04 INSUFFICIENT REGISTRATION RESOURCES.
fn insufficient_registration_resources() -> Sense {
    Sense::new(key::ILLEGAL_REQUEST, 0x55, 0x04)
}

/// The basic PERSISTENT RESERVE OUT parameter list (SPC-4 table 214).
struct Params {
    key: u64,
    sa_key: u64,
    spec_i_pt: bool,
    all_tg_pt: bool,
    aptpl: bool,
}

fn read_params(cdb: &[u8], data: &dyn DataOut, sa: u8) -> Result<Params, PrAnswer> {
    let len = be32(cdb, 5) as usize;
    let mut p = [0u8; 24];
    if sa != action::REGISTER_AND_MOVE && len != 24 {
        // SPEC_I_PT is not supported, so every other list is exactly 24 bytes.
        return Err(Sense::parameter_list_length_error().into());
    }
    if len < 24 || data.len() < 24 || data.read_at(0, &mut p) < 24 {
        return Err(Sense::parameter_list_length_error().into());
    }
    let flags = if sa == action::REGISTER_AND_MOVE {
        p[17]
    } else {
        p[20]
    };
    Ok(Params {
        key: be64(&p, 0),
        sa_key: be64(&p, 8),
        spec_i_pt: sa != action::REGISTER_AND_MOVE && flags & 0x08 != 0,
        all_tg_pt: sa != action::REGISTER_AND_MOVE && flags & 0x04 != 0,
        aptpl: flags & 0x01 != 0,
    })
}

/// Applies a PERSISTENT RESERVE OUT from `me` (whose access was already checked).
/// `aptpl_capable`: the state can persist through power loss. `abort_id` tags the abort
/// requests a PREEMPT AND ABORT leaves for other nexuses.
pub fn persistent_reserve_out(
    state: &mut ReservationState,
    me: &str,
    cdb: &[u8],
    data: &dyn DataOut,
    aptpl_capable: bool,
    abort_id: u64,
) -> Result<PrOutEffect, PrAnswer> {
    let sa = byte(cdb, 1) & 0x1f;
    if sa > action::REGISTER_AND_MOVE {
        return Err(Sense::invalid_field_in_cdb().into());
    }
    let p = read_params(cdb, data, sa)?;
    if p.spec_i_pt || p.all_tg_pt {
        // SIP_C and ATP_C are 0: a daemon is one nexus and one target port.
        return Err(Sense::invalid_field_in_parameter_list().into());
    }
    if p.aptpl && !aptpl_capable {
        return Err(Sense::invalid_field_in_parameter_list().into());
    }
    let scope = byte(cdb, 2) >> 4;
    let kind = PrType::from_code(byte(cdb, 2) & 0x0f);
    let needs_type = matches!(
        sa,
        action::RESERVE | action::RELEASE | action::PREEMPT | action::PREEMPT_AND_ABORT
    );
    if needs_type && (scope != 0 || kind.is_none()) {
        // Only LU_SCOPE; a PREEMPT that removes registrations only still names a type.
        return Err(Sense::invalid_field_in_cdb().into());
    }
    let mine = state.key_of(me);
    match sa {
        action::REGISTER | action::REGISTER_AND_IGNORE => {
            if sa == action::REGISTER && mine.unwrap_or(0) != p.key {
                return Err(PrAnswer::Conflict);
            }
            register(state, me, p.sa_key, p.aptpl)
        }
        _ if mine != Some(p.key) => Err(PrAnswer::Conflict),
        action::RESERVE => reserve(state, me, kind.ok_or(PrAnswer::Conflict)?),
        action::RELEASE => release(state, me, kind.ok_or(PrAnswer::Conflict)?),
        action::CLEAR => {
            for r in std::mem::take(&mut state.registrations) {
                if r.nexus != me {
                    owe(state, &r.nexus, RESERVATIONS_PREEMPTED);
                }
            }
            state.reservation = None;
            state.generation = state.generation.wrapping_add(1);
            Ok(changed())
        }
        action::PREEMPT | action::PREEMPT_AND_ABORT => {
            let kind = kind.ok_or(PrAnswer::Conflict)?;
            let abort = sa == action::PREEMPT_AND_ABORT;
            preempt(state, me, p.sa_key, kind, abort.then_some(abort_id))
        }
        _ => register_and_move(state, me, cdb, data, p),
    }
}

fn changed() -> PrOutEffect {
    PrOutEffect {
        changed: true,
        aborted: Vec::new(),
    }
}

fn owe(state: &mut ReservationState, nexus: &str, (asc, ascq): (u8, u8)) {
    state.owe(nexus, asc, ascq);
}

fn register(
    state: &mut ReservationState,
    me: &str,
    sa_key: u64,
    aptpl: bool,
) -> Result<PrOutEffect, PrAnswer> {
    match state.registrations.iter().position(|r| r.nexus == me) {
        None if sa_key == 0 => return Ok(PrOutEffect::default()),
        None => {
            if state.registrations.len() >= MAX_REGISTRATIONS {
                return Err(insufficient_registration_resources().into());
            }
            state.registrations.push(Registration {
                nexus: me.to_string(),
                key: sa_key,
            });
        }
        Some(i) if sa_key == 0 => unregister(state, i),
        Some(i) => state.registrations[i].key = sa_key,
    }
    state.aptpl = aptpl;
    state.generation = state.generation.wrapping_add(1);
    Ok(changed())
}

/// Removes registration `i`, and the reservation with it when that nexus held it (the
/// all-registrants types hold on while a registrant is left).
fn unregister(state: &mut ReservationState, i: usize) {
    let gone = state.registrations.remove(i);
    let Some(res) = state.reservation.clone() else {
        return;
    };
    let released = match &res.holder {
        Some(h) => *h == gone.nexus,
        None => state.registrations.is_empty(),
    };
    if released {
        state.reservation = None;
        if matches!(
            res.kind,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        ) {
            // The other registrants lose their access with it (SPC-4 5.13.10.2).
            let others: Vec<Nexus> = state
                .registrations
                .iter()
                .map(|r| r.nexus.clone())
                .collect();
            for n in others {
                owe(state, &n, RESERVATIONS_RELEASED);
            }
        }
    }
}

fn reserve(state: &mut ReservationState, me: &str, kind: PrType) -> Result<PrOutEffect, PrAnswer> {
    match &state.reservation {
        Some(res) if state.holds(me) => {
            // The holder asking again for the same type is GOOD; another type conflicts.
            if res.kind == kind {
                Ok(PrOutEffect::default())
            } else {
                Err(PrAnswer::Conflict)
            }
        }
        Some(_) => Err(PrAnswer::Conflict),
        None => {
            state.reservation = Some(Reservation {
                kind,
                holder: (!kind.all_registrants()).then(|| me.to_string()),
            });
            Ok(changed())
        }
    }
}

fn release(state: &mut ReservationState, me: &str, kind: PrType) -> Result<PrOutEffect, PrAnswer> {
    let Some(res) = state.reservation.clone() else {
        return Ok(PrOutEffect::default());
    };
    if !state.holds(me) {
        return Ok(PrOutEffect::default());
    }
    if res.kind != kind {
        return Err(invalid_release().into());
    }
    state.reservation = None;
    if res.kind.registrants_have_access() {
        let others: Vec<Nexus> = state
            .registrations
            .iter()
            .filter(|r| r.nexus != me)
            .map(|r| r.nexus.clone())
            .collect();
        for n in others {
            owe(state, &n, RESERVATIONS_RELEASED);
        }
    }
    Ok(changed())
}

fn preempt(
    state: &mut ReservationState,
    me: &str,
    sa_key: u64,
    kind: PrType,
    abort_id: Option<u64>,
) -> Result<PrOutEffect, PrAnswer> {
    let res = state.reservation.clone();
    let all_registrants = res.as_ref().is_some_and(|r| r.kind.all_registrants());
    let holder_key = res
        .as_ref()
        .and_then(|r| r.holder.as_deref())
        .and_then(|h| state.key_of(h));
    // Which registrations go, and whether the reservation is taken over.
    let (takes_reservation, victims): (bool, Vec<Nexus>) = if all_registrants && sa_key == 0 {
        // All-registrants with key 0: every other registration goes, the reservation is
        // the preemptor's (SPC-4 5.13.11.2.3).
        (
            true,
            state
                .registrations
                .iter()
                .filter(|r| r.nexus != me)
                .map(|r| r.nexus.clone())
                .collect(),
        )
    } else {
        if sa_key == 0 && !all_registrants {
            return Err(Sense::invalid_field_in_parameter_list().into());
        }
        let victims: Vec<Nexus> = state
            .registrations
            .iter()
            .filter(|r| r.key == sa_key && r.nexus != me)
            .map(|r| r.nexus.clone())
            .collect();
        let takes = !all_registrants && res.is_some() && holder_key == Some(sa_key);
        if victims.is_empty() && !takes {
            return Err(PrAnswer::Conflict);
        }
        (takes, victims)
    };
    state.registrations.retain(|r| !victims.contains(&r.nexus));
    for v in &victims {
        owe(state, v, REGISTRATIONS_PREEMPTED);
    }
    if takes_reservation {
        let old = res.as_ref();
        state.reservation = Some(Reservation {
            kind,
            holder: (!kind.all_registrants()).then(|| me.to_string()),
        });
        if old.is_some_and(|o| o.kind != kind) {
            // Type changed: the registrants that are left learn it (SPC-4 5.13.11.2.2).
            let others: Vec<Nexus> = state
                .registrations
                .iter()
                .filter(|r| r.nexus != me)
                .map(|r| r.nexus.clone())
                .collect();
            for n in others {
                owe(state, &n, RESERVATIONS_RELEASED);
            }
        }
    } else if all_registrants && state.registrations.is_empty() {
        state.reservation = None;
    }
    state.generation = state.generation.wrapping_add(1);
    let mut effect = changed();
    if let Some(id) = abort_id {
        for v in &victims {
            state.aborts.push(AbortRequest {
                nexus: v.clone(),
                id,
            });
        }
        effect.aborted = victims;
    }
    Ok(effect)
}

fn register_and_move(
    state: &mut ReservationState,
    me: &str,
    cdb: &[u8],
    data: &dyn DataOut,
    p: Params,
) -> Result<PrOutEffect, PrAnswer> {
    let Some(res) = state.reservation.clone() else {
        return Err(PrAnswer::Conflict);
    };
    if res.kind.all_registrants() || res.holder.as_deref() != Some(me) {
        return Err(PrAnswer::Conflict);
    }
    // The list is 24 bytes and a TransportID (an iSCSI one is at most 252): what the guest
    // claims beyond is not read, let alone allocated.
    let len = (be32(cdb, 5) as usize).min(data.len()).min(MAX_MOVE_LIST);
    let mut list = vec![0u8; len];
    let got = data.read_at(0, &mut list);
    list.truncate(got);
    let tid_len = be32(&list, 20) as usize;
    let unreg = list.get(17).is_some_and(|f| f & 0x02 != 0);
    let Some(tid) = list.get(24..).and_then(|t| t.get(..tid_len)) else {
        return Err(Sense::parameter_list_length_error().into());
    };
    let Some((dest, _)) = parse_transport_id(tid) else {
        return Err(Sense::invalid_field_in_parameter_list().into());
    };
    if p.sa_key == 0 || dest == me {
        return Err(Sense::invalid_field_in_parameter_list().into());
    }
    match state.registrations.iter().position(|r| r.nexus == dest) {
        Some(i) => state.registrations[i].key = p.sa_key,
        None => {
            if state.registrations.len() >= MAX_REGISTRATIONS {
                return Err(insufficient_registration_resources().into());
            }
            state.registrations.push(Registration {
                nexus: dest.clone(),
                key: p.sa_key,
            });
        }
    }
    state.reservation = Some(Reservation {
        kind: res.kind,
        holder: Some(dest),
    });
    if unreg {
        state.registrations.retain(|r| r.nexus != me);
    }
    state.aptpl = p.aptpl;
    state.generation = state.generation.wrapping_add(1);
    Ok(changed())
}

/// SPC-2 RESERVE(6/10) and RELEASE(6/10) from `me`, with compatible reservation handling
/// (CRH=1, SPC-4 5.13.3): while persistent reservation registrations exist, RESERVE is
/// GOOD for a holder of the persistent reservation and a conflict for anyone else, and
/// RELEASE is GOOD for a registered nexus and a conflict otherwise, neither changing
/// anything. Returns whether the state changed.
pub fn reserve_release(
    state: &mut ReservationState,
    me: &str,
    cdb: &[u8],
) -> Result<bool, PrAnswer> {
    let op = byte(cdb, 0);
    let reserve = matches!(op, RESERVE_6 | RESERVE_10);
    // Third-party and extent reservations (SPC-2's 3RDPTY, LONGID) are not supported.
    let third_party = match op {
        RESERVE_10 | RELEASE_10 => byte(cdb, 1) & 0x12 != 0,
        _ => byte(cdb, 1) & 0x01 != 0,
    };
    if third_party {
        return Err(Sense::invalid_field_in_cdb().into());
    }
    if !state.registrations.is_empty() {
        let ok = if reserve {
            state.holds(me)
        } else {
            state.key_of(me).is_some()
        };
        return if ok {
            Ok(false)
        } else {
            Err(PrAnswer::Conflict)
        };
    }
    if reserve {
        if state.reservation.is_some() {
            return Err(PrAnswer::Conflict);
        }
        match &state.spc2_holder {
            Some(h) if h != me => Err(PrAnswer::Conflict),
            Some(_) => Ok(false),
            None => {
                state.spc2_holder = Some(me.to_string());
                Ok(true)
            }
        }
    } else if state.spc2_holder.as_deref() == Some(me) {
        state.spc2_holder = None;
        Ok(true)
    } else {
        // RELEASE from a non-holder is GOOD and releases nothing.
        Ok(false)
    }
}
