//! PERSISTENT RESERVE IN (SPC-4 6.15): READ KEYS, READ RESERVATION, REPORT CAPABILITIES
//! and READ FULL STATUS, built from a [`ReservationState`].

use super::transport_id::nexus_transport_id;
use super::{PrAnswer, ReservationState};
use crate::scsi::cdb::{be16, byte};
use crate::scsi::Sense;

const READ_KEYS: u8 = 0x00;
const READ_RESERVATION: u8 = 0x01;
const REPORT_CAPABILITIES: u8 = 0x02;
const READ_FULL_STATUS: u8 = 0x03;

/// Answers PERSISTENT RESERVE IN into `data_in` (cut to the allocation length).
/// `aptpl_capable`: the state can persist through power loss (PTPL_C).
pub fn persistent_reserve_in(
    state: &ReservationState,
    cdb: &[u8],
    aptpl_capable: bool,
    data_in: &mut [u8],
) -> PrAnswer {
    let alloc = usize::from(be16(cdb, 7));
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&state.generation.to_be_bytes());
    match byte(cdb, 1) & 0x1f {
        READ_KEYS => {
            let len = 8 * state.registrations.len() as u32;
            out.extend_from_slice(&len.to_be_bytes());
            for r in &state.registrations {
                out.extend_from_slice(&r.key.to_be_bytes());
            }
        }
        READ_RESERVATION => match &state.reservation {
            None => out.extend_from_slice(&0u32.to_be_bytes()),
            Some(res) => {
                out.extend_from_slice(&16u32.to_be_bytes());
                // The all-registrants types report key 0 (SPC-4 6.15.3.3).
                let key = res
                    .holder
                    .as_deref()
                    .and_then(|h| state.key_of(h))
                    .unwrap_or(0);
                out.extend_from_slice(&key.to_be_bytes());
                out.extend_from_slice(&[0, 0, 0, 0, 0, res.kind.code(), 0, 0]);
            }
        },
        REPORT_CAPABILITIES => {
            out.clear();
            out.extend_from_slice(&8u16.to_be_bytes());
            // CRH: RESERVE/RELEASE handled compatibly; SIP_C, ATP_C 0; PTPL_C as capable.
            out.push(0x10 | u8::from(aptpl_capable));
            // TMV: the type mask is valid; ALLOW COMMANDS 001b (table 43 as written);
            // PTPL_A: persistence is active now.
            out.push(0x80 | 0x10 | u8::from(state.aptpl && aptpl_capable));
            // Types supported: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX | EX_AC_AR.
            out.extend_from_slice(&[0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01, 0, 0]);
        }
        READ_FULL_STATUS => {
            let mut descs = Vec::new();
            for r in &state.registrations {
                let holder = match &state.reservation {
                    Some(res) => res.holder.as_deref().is_none_or(|h| h == r.nexus),
                    None => false,
                };
                let tid = nexus_transport_id(&r.nexus);
                descs.extend_from_slice(&r.key.to_be_bytes());
                descs.extend_from_slice(&[0; 4]);
                descs.push(u8::from(holder)); // R_HOLDER; ALL_TG_PT 0
                let kind = if holder {
                    state.reservation.as_ref().map_or(0, |res| res.kind.code())
                } else {
                    0
                };
                descs.push(kind);
                descs.extend_from_slice(&[0; 4]);
                descs.extend_from_slice(&1u16.to_be_bytes()); // relative target port 1
                descs.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                descs.extend_from_slice(&tid);
            }
            out.extend_from_slice(&(descs.len() as u32).to_be_bytes());
            out.extend_from_slice(&descs);
        }
        _ => return PrAnswer::Check(Sense::invalid_field_in_cdb()),
    }
    let n = out.len().min(alloc).min(data_in.len());
    data_in[..n].copy_from_slice(&out[..n]);
    PrAnswer::Good(n)
}
