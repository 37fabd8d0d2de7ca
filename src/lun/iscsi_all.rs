//! Every LUN of an iSCSI target (`iscsi://host/iqn/*`, TOML `luns = "all"`): before the
//! LUN table is built, such a LUN is replaced by one iSCSI LUN per LUN the target reports
//! in REPORT LUNS, each with the same settings (paths, credentials, policy ...), numbered
//! from the configured LUN number up in the order of the target's LUN numbers.
//!
//! REPORT LUNS goes to the target's LUN 0 over the session the LUNs will share: the
//! [`Discovery`] returned keeps it logged in until the caller has opened the LUNs, so they
//! join it instead of logging in again.

use crate::config::{LunConfig, LunKind};
use crate::iscsi::{IscsiLun, IscsiOptions};
use crate::scsi::lun_id::{LunId, MAX_LUN};
use crate::scsi::task::command;

/// REPORT LUNS' allocation length: the header and one entry per LUN number vscsid can
/// address.
const REPORT_LUNS_LEN: u32 = 8 + 8 * (MAX_LUN as u32 + 1);

/// How many times REPORT LUNS is sent again after a UNIT ATTENTION (a new nexus reports
/// one or two).
const ATTENTION_RETRIES: usize = 5;

/// Sessions opened to list targets' LUNs; drop it once the LUNs are open.
#[derive(Default)]
pub struct Discovery {
    _sessions: Vec<IscsiLun>,
}

/// `luns` with every "all LUNs" iSCSI entry replaced by one entry per LUN its target
/// reports. Errors name the configured LUN.
pub fn expand_all_luns(
    luns: &[LunConfig],
    defaults: &IscsiOptions,
) -> Result<(Vec<LunConfig>, Discovery), String> {
    let mut out = Vec::with_capacity(luns.len());
    let mut discovery = Discovery::default();
    for l in luns {
        let LunKind::Iscsi {
            url,
            chap_secret,
            login,
            multipath,
            all_luns: true,
        } = &l.kind
        else {
            out.push(l.clone());
            continue;
        };
        let where_ = format!("target {} LUN {}", l.target, l.lun);
        let secret = chap_secret.as_ref().map(|s| s.0.as_str());
        let opts = super::iscsi::login_options(url, secret, login, multipath, defaults);
        let paths = super::iscsi::paths_of(&where_, url, &opts, login, multipath);
        let mut lun0 = url.clone();
        lun0.lun = LunId::default();
        let session = IscsiLun::connect_multipath(&lun0, &opts, &paths)
            .map_err(|e| format!("{where_}: {lun0}: {e}"))?;
        let reported = report_luns(&session).map_err(|e| format!("{where_}: {lun0}: {e}"))?;
        let last = (u32::from(l.lun) + reported.len() as u32).saturating_sub(1);
        if reported.is_empty() || last > u32::from(MAX_LUN) {
            return Err(format!(
                "{where_}: luns: the target reports {} LUNs; numbered from {} they do not fit \
                 in 1..={} LUNs below {MAX_LUN}",
                reported.len(),
                l.lun,
                u32::from(MAX_LUN) + 1 - u32::from(l.lun)
            ));
        }
        tracing::info!(
            "{where_}: {} reports {} LUNs, attached as LUNs {}..={last}",
            url.target,
            reported.len(),
            l.lun
        );
        for (i, id) in reported.iter().enumerate() {
            let mut one = l.clone();
            one.lun = l.lun + i as u16;
            if let LunKind::Iscsi {
                url,
                all_luns,
                login,
                multipath,
                ..
            } = &mut one.kind
            {
                url.lun = *id;
                *all_luns = false;
                // The portals were discovered once for the target: every LUN takes them.
                multipath.multipath = paths.clone();
                login.discover = false;
            }
            out.push(one);
        }
        discovery._sessions.push(session);
    }
    let mut seen = std::collections::HashSet::new();
    for l in &out {
        if !seen.insert((l.target, l.lun)) {
            return Err(format!(
                "target {} LUN {} is configured twice (a target's LUNs ('*') are numbered \
                 from the configured LUN up)",
                l.target, l.lun
            ));
        }
    }
    Ok((out, discovery))
}

/// The target's LUNs, in order.
fn report_luns(lun: &IscsiLun) -> Result<Vec<LunId>, String> {
    let mut cdb = [0u8; 12];
    cdb[0] = crate::scsi::cdb::REPORT_LUNS;
    cdb[6..10].copy_from_slice(&REPORT_LUNS_LEN.to_be_bytes());
    for _ in 0..ATTENTION_RETRIES {
        let c = lun.execute(command(&cdb, Vec::new(), REPORT_LUNS_LEN));
        match &c.result {
            Err(e) => return Err(format!("REPORT LUNS: {e}")),
            Ok(st) if st.status == crate::scsi::status::GOOD => {
                return Ok(parse_report_luns(&c.data_in))
            }
            Ok(st) if is_unit_attention(st.status, &st.sense) => continue,
            Ok(st) => {
                return Err(format!(
                    "REPORT LUNS: status {:#04x}, sense {:02x?}",
                    st.status, st.sense
                ))
            }
        }
    }
    Err("REPORT LUNS: unit attention after every try".into())
}

fn is_unit_attention(status: u8, sense: &[u8]) -> bool {
    let key = match sense.first().map(|b| b & 0x7f) {
        Some(0x70 | 0x71) => sense.get(2),
        Some(0x72 | 0x73) => sense.get(1),
        _ => None,
    };
    status == crate::scsi::status::CHECK_CONDITION && key.is_some_and(|k| k & 0x0f == 6)
}

/// The LUN numbers of REPORT LUNS parameter data, sorted, without duplicates. Entries
/// vscsid cannot address (hierarchical, extended, or past [`MAX_LUN`]) are left out.
fn parse_report_luns(data: &[u8]) -> Vec<LunId> {
    let Some(len) = data.get(..4) else {
        return Vec::new();
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let list = data.get(8..).unwrap_or_default();
    let list = &list[..len.min(list.len())];
    let mut out: Vec<LunId> = list
        .chunks_exact(8)
        .filter(|e| e[2..].iter().all(|&b| b == 0))
        .filter_map(|e| LunId::from_be16([e[0], e[1]]))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_luns_data_is_parsed_in_order_leaving_out_what_cannot_be_addressed() {
        let mut d = vec![0u8; 8];
        let entries: [[u8; 8]; 5] = [
            [0, 2, 0, 0, 0, 0, 0, 0],
            [0x41, 0x2c, 0, 0, 0, 0, 0, 0], // flat 300
            [0, 0, 0, 0, 0, 0, 0, 0],       // 0
            [0xc1, 0x01, 0, 0, 0, 0, 0, 0], // a well-known LUN
            [0, 5, 0x40, 1, 0, 0, 0, 0],    // a second level
        ];
        for e in entries {
            d.extend_from_slice(&e);
        }
        d[..4].copy_from_slice(&(8 * entries.len() as u32).to_be_bytes());
        let got: Vec<u16> = parse_report_luns(&d).iter().map(|l| l.value()).collect();
        assert_eq!(got, vec![0, 2, 300]);
        // A list length past the data (a short transfer) reads what there is.
        d[..4].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(parse_report_luns(&d).len(), 3);
        assert!(parse_report_luns(&[0, 0]).is_empty());
    }
}
