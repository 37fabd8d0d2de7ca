//! ALUA (SPC-4 asymmetric logical unit access): which target port group a path leads to
//! and that group's access state, from INQUIRY (TPGS), VPD page 0x83 (relative target port
//! and target port group designators) and REPORT TARGET PORT GROUPS (either parameter data
//! format: length only, or the extended header with the implicit transition time). Paths
//! in standby, unavailable, offline or transitioning groups carry no I/O; active/optimized
//! ones are preferred to active/non-optimized ones.
//!
//! It also reads the sense data by which a target port tells of its state: UNIT ATTENTION
//! ASYMMETRIC ACCESS STATE CHANGED (2Ah/06h) and NOT READY with ASC 04h and ASCQ 0Ah
//! (in transition), 0Bh (standby) or 0Ch (unavailable) ([`refusal`]).

use std::time::Duration;

use crate::scsi::cdb;
use crate::scsi::status::CHECK_CONDITION;
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
    !matches!(state, STANDBY | UNAVAILABLE | OFFLINE | TRANSITIONING)
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

/// What a target port said about its ALUA state in a command's sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// UNIT ATTENTION, ASYMMETRIC ACCESS STATE CHANGED (2Ah/06h): the command was not run
    /// (a unit attention is reported instead of running it); some group's state changed.
    StateChanged,
    /// NOT READY, ASYMMETRIC ACCESS STATE TRANSITION (04h/0Ah).
    Transitioning,
    /// NOT READY, TARGET PORT IN STANDBY STATE (04h/0Bh).
    Standby,
    /// NOT READY, TARGET PORT IN UNAVAILABLE STATE (04h/0Ch).
    Unavailable,
}

impl Refusal {
    /// The port's state the sense implies; None when it does not say (a state change
    /// somewhere).
    pub fn state(self) -> Option<u8> {
        match self {
            Refusal::StateChanged => None,
            Refusal::Transitioning => Some(TRANSITIONING),
            Refusal::Standby => Some(STANDBY),
            Refusal::Unavailable => Some(UNAVAILABLE),
        }
    }
}

/// Sense key, additional sense code and qualifier of fixed (70h/71h) or descriptor
/// (72h/73h) sense data.
pub fn sense_codes(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 => Some((sense.get(2)? & 0x0f, *sense.get(12)?, *sense.get(13)?)),
        0x72 | 0x73 => Some((sense.get(1)? & 0x0f, *sense.get(2)?, *sense.get(3)?)),
        _ => None,
    }
}

const NOT_READY: u8 = 0x2;
const UNIT_ATTENTION: u8 = 0x6;

/// Which ALUA condition `sense` reports, if any.
pub fn sense_refusal(sense: &[u8]) -> Option<Refusal> {
    match sense_codes(sense)? {
        (UNIT_ATTENTION, 0x2a, 0x06) => Some(Refusal::StateChanged),
        (NOT_READY, 0x04, 0x0a) => Some(Refusal::Transitioning),
        (NOT_READY, 0x04, 0x0b) => Some(Refusal::Standby),
        (NOT_READY, 0x04, 0x0c) => Some(Refusal::Unavailable),
        _ => None,
    }
}

/// Which ALUA condition a completion reports: CHECK CONDITION with one of the senses of
/// [`sense_refusal`]. Cheap enough for every completion (no allocation).
pub fn refusal(c: &ScsiCompletion) -> Option<Refusal> {
    match &c.result {
        Ok(st) if st.status == CHECK_CONDITION => sense_refusal(&st.sense),
        _ => None,
    }
}

/// TPGS field of standard INQUIRY data (byte 5, bits 5:4); 0 = no ALUA.
pub fn tpgs(inquiry: &[u8]) -> u8 {
    inquiry.get(5).map_or(0, |b| (b >> 4) & 0x3)
}

/// Whether `cdb` asks for standard INQUIRY data (not a VPD page).
pub fn is_standard_inquiry(cdb: &[u8]) -> bool {
    cdb.first() == Some(&cdb::INQUIRY) && cdb.get(1).is_some_and(|b| b & 1 == 0)
}

/// Clears TPGS in standard INQUIRY data: the guest sees one path, vscsid's LUN, and
/// vscsid follows the ports' states itself; a guest that did ALUA on it (Linux's
/// scsi_dh_alua) would read the state of whichever port answered and could fail its own
/// I/O on a port vscsid no longer uses.
pub fn hide_tpgs(inquiry: &mut [u8]) {
    if let Some(b) = inquiry.get_mut(5) {
        *b &= !0x30;
    }
}

/// Designator of `kind` (VPD page 0x83, association "target port") as a 16-bit number:
/// type 4 is the relative target port, type 5 the target port group.
fn vpd83_port_designator(vpd83: &[u8], kind: u8) -> Option<u16> {
    if vpd83.get(1) != Some(&0x83) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*vpd83.get(2)?, *vpd83.get(3)?]));
    let end = (4 + len).min(vpd83.len());
    let mut at = 4;
    while at + 4 <= end {
        let dkind = vpd83[at + 1] & 0x0f;
        let dlen = usize::from(vpd83[at + 3]);
        if dkind == kind && dlen >= 4 && at + 8 <= end {
            return Some(u16::from_be_bytes([vpd83[at + 6], vpd83[at + 7]]));
        }
        at += 4 + dlen;
    }
    None
}

/// The target port group of this path from VPD page 0x83 (designator type 5).
pub fn port_group(vpd83: &[u8]) -> Option<u16> {
    vpd83_port_designator(vpd83, 0x5)
}

/// The relative target port of this path from VPD page 0x83 (designator type 4).
pub fn relative_port(vpd83: &[u8]) -> Option<u16> {
    vpd83_port_designator(vpd83, 0x4)
}

/// One target port group descriptor of REPORT TARGET PORT GROUPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: u16,
    pub state: u8,
    /// Relative target port identifiers in the group.
    pub ports: Vec<u16>,
}

/// REPORT TARGET PORT GROUPS parameter data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortGroups {
    /// IMPLICIT TRANSITION TIME of the extended header; None in the length-only format or
    /// when the target leaves it zero ("unspecified").
    pub transition_time: Option<Duration>,
    pub groups: Vec<Group>,
}

impl PortGroups {
    /// The state of the group a path leads to, known by its group id or else by its
    /// relative target port.
    pub fn state_of(&self, group: Option<u16>, rel_port: Option<u16>) -> Option<u8> {
        let by_id = group.and_then(|g| self.groups.iter().find(|d| d.id == g));
        let by_port = || rel_port.and_then(|p| self.groups.iter().find(|d| d.ports.contains(&p)));
        by_id.or_else(by_port).map(|d| d.state)
    }
}

/// The CDB of REPORT TARGET PORT GROUPS for `len` bytes; `extended` asks for the extended
/// header (parameter data format 001b).
pub fn rtpg_cdb(extended: bool, len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = cdb::MAINTENANCE_IN;
    c[1] = cdb::MI_REPORT_TARGET_PORT_GROUPS | if extended { 0x20 } else { 0 };
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

/// Allocation length of the RTPG vscsid sends: room for many groups and ports.
pub const RTPG_LEN: u32 = 4096;

/// Parses REPORT TARGET PORT GROUPS data in either format (the target says which in
/// byte 4 when it uses the extended header). Descriptors cut short are left out.
pub fn parse_rtpg(data: &[u8]) -> Option<PortGroups> {
    let len = u32::from_be_bytes([*data.first()?, *data.get(1)?, *data.get(2)?, *data.get(3)?]);
    let end = 4usize.saturating_add(len as usize).min(data.len());
    let mut out = PortGroups::default();
    let mut at = 4;
    if data.get(4).is_some_and(|b| (b >> 4) & 0x7 == 1) {
        // Extended header: format type 001b, then the implicit transition time (seconds).
        let secs = *data.get(5)?;
        out.transition_time = (secs > 0).then(|| Duration::from_secs(u64::from(secs)));
        at = 8;
    }
    while at + 8 <= end {
        let count = usize::from(data[at + 7]);
        let ports_end = at + 8 + 4 * count;
        if ports_end > end {
            break;
        }
        out.groups.push(Group {
            id: u16::from_be_bytes([data[at + 2], data[at + 3]]),
            state: data[at] & 0x0f,
            ports: (0..count)
                .map(|k| {
                    let p = at + 8 + 4 * k;
                    u16::from_be_bytes([data[p + 2], data[p + 3]])
                })
                .collect(),
        });
        at = ports_end;
    }
    Some(out)
}

/// The access state of group `group` in REPORT TARGET PORT GROUPS data.
pub fn group_state(rtpg: &[u8], group: u16) -> Option<u8> {
    parse_rtpg(rtpg)?.state_of(Some(group), None)
}

/// What the login-time query learnt of a path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortIdentity {
    /// The path's target port group, from VPD page 0x83.
    pub group: Option<u16>,
    /// The path's relative target port, from VPD page 0x83.
    pub rel_port: Option<u16>,
    /// The REPORT TARGET PORT GROUPS answer, when the target gave one.
    pub groups: Option<PortGroups>,
}

impl PortIdentity {
    /// The path's state in the answer, `UNKNOWN` without one.
    pub fn state(&self) -> u8 {
        self.groups
            .as_ref()
            .and_then(|g| g.state_of(self.group, self.rel_port))
            .unwrap_or(UNKNOWN)
    }
}

/// The data of a GOOD answer.
fn good(c: Option<ScsiCompletion>) -> Option<Vec<u8>> {
    c.filter(|c| matches!(&c.result, Ok(s) if s.status == 0))
        .map(|c| c.data_in)
}

/// Asks for REPORT TARGET PORT GROUPS through `exec`: the extended format first, the
/// length-only one when the target refuses that (some accept only format 000b).
pub fn read_port_groups(exec: impl Fn(&[u8], u32) -> Option<ScsiCompletion>) -> Option<PortGroups> {
    let extended = exec(&rtpg_cdb(true, RTPG_LEN), RTPG_LEN)?;
    let refused_format = matches!(&extended.result,
        Ok(st) if st.status == CHECK_CONDITION
            && sense_codes(&st.sense).is_some_and(|(key, _, _)| key == 0x5));
    let data = if refused_format {
        good(exec(&rtpg_cdb(false, RTPG_LEN), RTPG_LEN))?
    } else {
        good(Some(extended))?
    };
    parse_rtpg(&data)
}

/// Asks the target through `exec(cdb, allocation length)` which port group the path leads
/// to and the groups' states; an identity without groups when the target has no TPGS.
pub fn query(exec: impl Fn(&[u8], u32) -> Option<ScsiCompletion>) -> PortIdentity {
    let Some(inq) = good(exec(&[cdb::INQUIRY, 0, 0, 0, 96, 0], 96)) else {
        return PortIdentity::default();
    };
    if tpgs(&inq) == 0 {
        return PortIdentity::default();
    }
    let vpd83 = good(exec(&[cdb::INQUIRY, 1, 0x83, 0x10, 0, 0], 4096)).unwrap_or_default();
    let group = port_group(&vpd83);
    let rel_port = relative_port(&vpd83);
    if group.is_none() && rel_port.is_none() {
        return PortIdentity::default();
    }
    PortIdentity {
        group,
        rel_port,
        groups: read_port_groups(exec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::task::{Residual, ScsiStatus};

    fn vpd83(group: u16, rel_port: Option<u16>) -> Vec<u8> {
        // An NAA designator (8 bytes), a relative target port, a target port group.
        let mut v = vec![0, 0x83, 0, 0];
        v.extend_from_slice(&[0x01, 0x03, 0, 8, 0x60, 1, 2, 3, 4, 5, 6, 7]);
        if let Some(p) = rel_port {
            v.extend_from_slice(&[0x61, 0x94, 0, 4, 0, 0]);
            v.extend_from_slice(&p.to_be_bytes());
        }
        v.extend_from_slice(&[0x01, 0x15, 0, 4, 0, 0]);
        v.extend_from_slice(&group.to_be_bytes());
        let n = (v.len() - 4) as u16;
        v[2..4].copy_from_slice(&n.to_be_bytes());
        v
    }

    /// RTPG data; `transition` Some(seconds) gives the extended header.
    fn rtpg(transition: Option<u8>, groups: &[(u16, u8, &[u16])]) -> Vec<u8> {
        let mut v = vec![0; 4];
        if let Some(t) = transition {
            v.extend_from_slice(&[0x10, t, 0, 0]);
        }
        for &(id, state, ports) in groups {
            v.extend_from_slice(&[0x80 | state, 0x0f]);
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&[0, 0, 0, ports.len() as u8]);
            for p in ports {
                v.extend_from_slice(&[0, 0]);
                v.extend_from_slice(&p.to_be_bytes());
            }
        }
        let n = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&n.to_be_bytes());
        v
    }

    fn answer(status: u8, sense: Vec<u8>, data: Vec<u8>) -> Option<ScsiCompletion> {
        Some(ScsiCompletion {
            result: Ok(ScsiStatus { status, sense }),
            data_in: data,
            residual: Residual::default(),
        })
    }

    fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10;
        s[12] = asc;
        s[13] = ascq;
        s
    }

    fn descriptor(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        vec![0x72, key, asc, ascq, 0, 0, 0, 0]
    }

    #[test]
    fn parses_inquiry_and_vpd83() {
        let mut inq = [0u8; 36];
        assert_eq!(tpgs(&inq), 0);
        inq[5] = 0x10;
        assert_eq!(tpgs(&inq), 1);
        assert_eq!(port_group(&vpd83(7, None)), Some(7));
        assert_eq!(relative_port(&vpd83(7, None)), None);
        assert_eq!(relative_port(&vpd83(7, Some(2))), Some(2));
        assert_eq!(port_group(&vpd83(7, Some(2))), Some(7));
        assert_eq!(port_group(&[0, 0x80, 0, 0]), None);
        assert_eq!(port_group(&[0, 0x83, 0xff, 0xff, 0, 5, 0, 40]), None);
    }

    #[test]
    fn tpgs_is_hidden_from_the_guest() {
        let mut inq = [0u8; 36];
        inq[5] = 0x39;
        hide_tpgs(&mut inq);
        assert_eq!((inq[5], tpgs(&inq)), (0x09, 0));
        hide_tpgs(&mut [0u8; 3]);
        assert!(is_standard_inquiry(&[cdb::INQUIRY, 0, 0, 0, 96, 0]));
        assert!(!is_standard_inquiry(&[cdb::INQUIRY, 1, 0x83, 0, 96, 0]));
        assert!(!is_standard_inquiry(&[cdb::READ_10]));
    }

    #[test]
    fn parses_length_only_rtpg_with_several_groups() {
        let data = rtpg(None, &[(1, ACTIVE_OPTIMIZED, &[1, 2]), (7, STANDBY, &[3])]);
        let g = parse_rtpg(&data).unwrap();
        assert_eq!(g.transition_time, None);
        assert_eq!(g.groups.len(), 2);
        assert_eq!(g.groups[0].ports, [1, 2]);
        assert_eq!(g.state_of(Some(7), None), Some(STANDBY));
        assert_eq!(g.state_of(None, Some(2)), Some(ACTIVE_OPTIMIZED));
        assert_eq!(g.state_of(Some(3), Some(9)), None);
        assert_eq!(group_state(&data, 1), Some(ACTIVE_OPTIMIZED));
        // Truncated or lying lengths never read past the buffer.
        assert_eq!(group_state(&data[..10], 7), None);
        assert_eq!(group_state(&data[..data.len() - 4], 7), None);
        assert_eq!(
            group_state(&data[..data.len() - 4], 1),
            Some(ACTIVE_OPTIMIZED)
        );
        assert_eq!(group_state(&[0xff, 0xff, 0xff, 0xff, 0], 0), None);
        assert_eq!(parse_rtpg(&[0, 0]), None);
    }

    #[test]
    fn parses_the_extended_header() {
        let data = rtpg(
            Some(12),
            &[
                (1, ACTIVE_NON_OPTIMIZED, &[1]),
                (2, TRANSITIONING, &[2]),
                (3, UNAVAILABLE, &[]),
            ],
        );
        let g = parse_rtpg(&data).unwrap();
        assert_eq!(g.transition_time, Some(Duration::from_secs(12)));
        let states: Vec<(u16, u8)> = g.groups.iter().map(|d| (d.id, d.state)).collect();
        assert_eq!(
            states,
            [
                (1, ACTIVE_NON_OPTIMIZED),
                (2, TRANSITIONING),
                (3, UNAVAILABLE)
            ]
        );
        // Zero means "unspecified".
        let unspecified = parse_rtpg(&rtpg(Some(0), &[(1, STANDBY, &[1])])).unwrap();
        assert_eq!(unspecified.transition_time, None);
        assert_eq!(unspecified.state_of(Some(1), None), Some(STANDBY));
        let cdb = rtpg_cdb(true, 4096);
        assert_eq!(
            (cdb[0], cdb[1], &cdb[6..10]),
            (0xa3, 0x2a, &[0, 0, 16, 0][..])
        );
        assert_eq!(rtpg_cdb(false, 4096)[1], 0x0a);
    }

    #[test]
    fn classifies_fixed_and_descriptor_sense() {
        for make in [fixed, descriptor] {
            assert_eq!(
                sense_refusal(&make(6, 0x2a, 6)),
                Some(Refusal::StateChanged)
            );
            assert_eq!(
                sense_refusal(&make(2, 4, 0x0a)),
                Some(Refusal::Transitioning)
            );
            assert_eq!(sense_refusal(&make(2, 4, 0x0b)), Some(Refusal::Standby));
            assert_eq!(sense_refusal(&make(2, 4, 0x0c)), Some(Refusal::Unavailable));
            // Capacity data changed, becoming ready, power on: not ALUA.
            assert_eq!(sense_refusal(&make(6, 0x2a, 9)), None);
            assert_eq!(sense_refusal(&make(2, 4, 1)), None);
            assert_eq!(sense_refusal(&make(6, 0x29, 0)), None);
            // The right codes under another key.
            assert_eq!(sense_refusal(&make(5, 4, 0x0b)), None);
        }
        assert_eq!(sense_refusal(&fixed(2, 4, 0x0b)[..13]), None, "cut short");
        assert_eq!(sense_refusal(&[]), None);
        let c = answer(CHECK_CONDITION, fixed(2, 4, 0x0b), Vec::new()).unwrap();
        assert_eq!(refusal(&c), Some(Refusal::Standby));
        let good = answer(0, fixed(2, 4, 0x0b), Vec::new()).unwrap();
        assert_eq!(refusal(&good), None, "only CHECK CONDITION counts");
        assert_eq!(Refusal::Standby.state(), Some(STANDBY));
        assert_eq!(Refusal::StateChanged.state(), None);
    }

    #[test]
    fn query_walks_inquiry_vpd_and_rtpg() {
        let target = |extended_ok: bool| {
            move |c: &[u8], _| match (c[0], c[1]) {
                (cdb::INQUIRY, 0) => {
                    let mut inq = vec![0u8; 36];
                    inq[5] = 0x10;
                    answer(0, Vec::new(), inq)
                }
                (cdb::INQUIRY, 1) => answer(0, Vec::new(), vpd83(2, Some(2))),
                (cdb::MAINTENANCE_IN, 0x2a) if !extended_ok => {
                    answer(CHECK_CONDITION, fixed(5, 0x24, 0), Vec::new())
                }
                (cdb::MAINTENANCE_IN, sa) => answer(
                    0,
                    Vec::new(),
                    rtpg(
                        (sa == 0x2a).then_some(30),
                        &[(1, ACTIVE_OPTIMIZED, &[1]), (2, ACTIVE_NON_OPTIMIZED, &[2])],
                    ),
                ),
                _ => None,
            }
        };
        let id = query(target(true));
        assert_eq!((id.group, id.rel_port), (Some(2), Some(2)));
        assert_eq!(id.state(), ACTIVE_NON_OPTIMIZED);
        let transition = id.groups.as_ref().and_then(|g| g.transition_time);
        assert_eq!(transition, Some(Duration::from_secs(30)));
        let fallback = query(target(false));
        assert_eq!(fallback.state(), ACTIVE_NON_OPTIMIZED);
        assert_eq!(fallback.groups.and_then(|g| g.transition_time), None);
        assert_eq!(
            query(|_, _| answer(0, Vec::new(), vec![0u8; 36])).state(),
            UNKNOWN
        );
        assert_eq!(query(|_, _| None).state(), UNKNOWN);
        assert!(!usable(STANDBY) && !usable(TRANSITIONING));
        assert!(usable(UNKNOWN) && usable(ACTIVE_NON_OPTIMIZED));
    }
}
