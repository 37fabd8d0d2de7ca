//! ALUA (SPC-4 asymmetric logical unit access): which target port group a path leads to
//! and that group's access state, from INQUIRY (TPGS), VPD page 0x83 (target port group
//! designator) and REPORT TARGET PORT GROUPS. Paths in standby or unavailable groups carry
//! no I/O; active/optimized ones are preferred to active/non-optimized ones.

use crate::scsi::cdb;
use crate::scsi::task::ScsiCompletion;

pub const ACTIVE_OPTIMIZED: u8 = 0x0;
pub const ACTIVE_NON_OPTIMIZED: u8 = 0x1;
pub const STANDBY: u8 = 0x2;
pub const UNAVAILABLE: u8 = 0x3;
pub const OFFLINE: u8 = 0xe;
pub const TRANSITIONING: u8 = 0xf;
/// The target reports no TPGS (or the query failed): the path is used like any other.
pub const UNKNOWN: u8 = 0xfe;

/// Whether a path in `state` may carry I/O.
pub fn usable(state: u8) -> bool {
    !matches!(state, STANDBY | UNAVAILABLE | OFFLINE)
}

/// Preference within a priority group: lower is better.
pub fn preference(state: u8) -> u8 {
    match state {
        ACTIVE_OPTIMIZED | UNKNOWN => 0,
        ACTIVE_NON_OPTIMIZED => 1,
        _ => 2,
    }
}

pub fn name(state: u8) -> &'static str {
    match state {
        ACTIVE_OPTIMIZED => "active/optimized",
        ACTIVE_NON_OPTIMIZED => "active/non-optimized",
        STANDBY => "standby",
        UNAVAILABLE => "unavailable",
        OFFLINE => "offline",
        TRANSITIONING => "transitioning",
        UNKNOWN => "no-alua",
        _ => "reserved",
    }
}

/// TPGS field of standard INQUIRY data (byte 5, bits 5:4); 0 = no ALUA.
pub fn tpgs(inquiry: &[u8]) -> u8 {
    inquiry.get(5).map_or(0, |b| (b >> 4) & 0x3)
}

/// The target port group of this path from VPD page 0x83 (designator type 5).
pub fn port_group(vpd83: &[u8]) -> Option<u16> {
    if vpd83.get(1) != Some(&0x83) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*vpd83.get(2)?, *vpd83.get(3)?]));
    let end = (4 + len).min(vpd83.len());
    let mut at = 4;
    while at + 4 <= end {
        let kind = vpd83[at + 1] & 0x0f;
        let dlen = usize::from(vpd83[at + 3]);
        if kind == 0x5 && dlen >= 4 && at + 8 <= end {
            return Some(u16::from_be_bytes([vpd83[at + 6], vpd83[at + 7]]));
        }
        at += 4 + dlen;
    }
    None
}

/// The access state of group `group` in REPORT TARGET PORT GROUPS data (length format).
pub fn group_state(rtpg: &[u8], group: u16) -> Option<u8> {
    let len = u32::from_be_bytes([*rtpg.first()?, *rtpg.get(1)?, *rtpg.get(2)?, *rtpg.get(3)?]);
    let end = (4 + len as usize).min(rtpg.len());
    let mut at = 4;
    while at + 8 <= end {
        let state = rtpg[at] & 0x0f;
        let id = u16::from_be_bytes([rtpg[at + 2], rtpg[at + 3]]);
        let ports = usize::from(rtpg[at + 7]);
        if id == group {
            return Some(state);
        }
        at += 8 + 4 * ports;
    }
    None
}

/// Asks the target through `exec(cdb, allocation length)` and returns the path's state.
pub fn query(exec: impl Fn(&[u8], u32) -> Option<ScsiCompletion>) -> u8 {
    let good = |c: Option<ScsiCompletion>| {
        c.filter(|c| matches!(&c.result, Ok(s) if s.status == 0))
            .map(|c| c.data_in)
    };
    let Some(inq) = good(exec(&[cdb::INQUIRY, 0, 0, 0, 96, 0], 96)) else {
        return UNKNOWN;
    };
    if tpgs(&inq) == 0 {
        return UNKNOWN;
    }
    let vpd83 = [cdb::INQUIRY, 1, 0x83, 0x10, 0, 0];
    let Some(group) = good(exec(&vpd83, 4096)).and_then(|v| port_group(&v)) else {
        return UNKNOWN;
    };
    let mut rtpg = [0u8; 12];
    rtpg[0] = cdb::MAINTENANCE_IN;
    rtpg[1] = cdb::MI_REPORT_TARGET_PORT_GROUPS;
    rtpg[6..10].copy_from_slice(&4096u32.to_be_bytes());
    good(exec(&rtpg, 4096))
        .and_then(|d| group_state(&d, group))
        .unwrap_or(UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::task::{Residual, ScsiStatus};

    fn vpd83_with_group(g: u16) -> Vec<u8> {
        // An NAA designator (8 bytes), then a target port group designator.
        let mut v = vec![0, 0x83, 0, 0];
        v.extend_from_slice(&[0x01, 0x03, 0, 8, 0x60, 1, 2, 3, 4, 5, 6, 7]);
        v.extend_from_slice(&[0x01, 0x15, 0, 4, 0, 0]);
        v.extend_from_slice(&g.to_be_bytes());
        let n = (v.len() - 4) as u16;
        v[2..4].copy_from_slice(&n.to_be_bytes());
        v
    }

    fn rtpg(groups: &[(u16, u8, u8)]) -> Vec<u8> {
        let mut v = vec![0; 4];
        for &(id, state, ports) in groups {
            v.extend_from_slice(&[0x80 | state, 0x0f]);
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&[0, 0, 0, ports]);
            for p in 0..ports {
                v.extend_from_slice(&[0, 0, 0, p + 1]);
            }
        }
        let n = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&n.to_be_bytes());
        v
    }

    #[test]
    fn parses_the_three_answers() {
        let mut inq = [0u8; 36];
        assert_eq!(tpgs(&inq), 0);
        inq[5] = 0x10;
        assert_eq!(tpgs(&inq), 1);
        assert_eq!(port_group(&vpd83_with_group(7)), Some(7));
        assert_eq!(port_group(&[0, 0x80, 0, 0]), None);
        let data = rtpg(&[(1, ACTIVE_OPTIMIZED, 2), (7, STANDBY, 1)]);
        assert_eq!(group_state(&data, 7), Some(STANDBY));
        assert_eq!(group_state(&data, 1), Some(ACTIVE_OPTIMIZED));
        assert_eq!(group_state(&data, 3), None);
        // Truncated or lying lengths never read past the buffer.
        assert_eq!(group_state(&data[..10], 7), None);
        assert_eq!(group_state(&[0xff, 0xff, 0xff, 0xff, 0], 0), None);
        assert_eq!(port_group(&[0, 0x83, 0xff, 0xff, 0, 5, 0, 40]), None);
    }

    #[test]
    fn query_walks_inquiry_vpd_and_rtpg() {
        let answer = |data: Vec<u8>| {
            Some(ScsiCompletion {
                result: Ok(ScsiStatus {
                    status: 0,
                    sense: Vec::new(),
                }),
                data_in: data,
                residual: Residual::default(),
            })
        };
        let state = query(|c, _| match (c[0], c[1]) {
            (cdb::INQUIRY, 0) => {
                let mut inq = vec![0u8; 36];
                inq[5] = 0x30;
                answer(inq)
            }
            (cdb::INQUIRY, 1) => answer(vpd83_with_group(2)),
            (cdb::MAINTENANCE_IN, cdb::MI_REPORT_TARGET_PORT_GROUPS) => answer(rtpg(&[
                (1, ACTIVE_OPTIMIZED, 1),
                (2, ACTIVE_NON_OPTIMIZED, 1),
            ])),
            _ => None,
        });
        assert_eq!(state, ACTIVE_NON_OPTIMIZED);
        assert_eq!(query(|_, _| answer(vec![0u8; 36])), UNKNOWN);
        assert_eq!(query(|_, _| None), UNKNOWN);
        assert!(!usable(STANDBY) && usable(UNKNOWN) && usable(ACTIVE_NON_OPTIMIZED));
    }
}
