//! SendTargets discovery (RFC 7143 appendix C): a discovery session to a portal asks which
//! targets it knows and their portals (`TargetAddress`).

use super::{new_isid, LoginError, PathLogin};
use crate::iscsi::options::IscsiOptions;
use crate::iscsi::pdu::{self, op, Framing, Pdu, F_FINAL};
use crate::iscsi::text;
use crate::iscsi::url::IscsiUrl;

/// Text response PDUs one answer may take: 1 MiB of text in the PDUs a target sends.
const MAX_TEXT_PDUS: usize = 256;

/// SendTargets=All discovery: `(target name, portals)` of every target the portal reports.
/// Portals are as the target wrote them (`host:port,tpgt`).
pub fn discover(
    portal: &str,
    opts: &IscsiOptions,
) -> Result<Vec<(String, Vec<String>)>, LoginError> {
    send_targets(portal, opts, "All")
}

/// The portals (`host:port`) through which `url`'s portal says `url`'s target is reached,
/// from SendTargets=<target>; the URL's own portal among them when the target lists it.
pub fn discover_portals(url: &IscsiUrl, opts: &IscsiOptions) -> Result<Vec<String>, LoginError> {
    let found = send_targets(&url.portal(), opts, &url.target)?;
    let mut portals: Vec<String> = Vec::new();
    for (name, addresses) in found {
        if name != url.target {
            continue;
        }
        for a in addresses {
            let p = super::target_address_portal(&a).map_err(LoginError::Protocol)?;
            if !portals.contains(&p) {
                portals.push(p);
            }
        }
    }
    if portals.is_empty() {
        return Err(LoginError::NotFound(format!(
            "{} (SendTargets at {} lists no portal of it)",
            url.target,
            url.portal()
        )));
    }
    Ok(portals)
}

fn send_targets(
    portal: &str,
    opts: &IscsiOptions,
    what: &str,
) -> Result<Vec<(String, Vec<String>)>, LoginError> {
    let (mut s, n) = PathLogin::new(portal).establish(opts, None, new_isid())?;
    let mut p = Pdu::new(op::TEXT_REQ);
    p.set_immediate();
    p.set_flags(F_FINAL);
    p.set_itt(1);
    p.set_u32(20, 0xffff_ffff);
    p.set_u32(24, n.cmd_sn);
    p.set_u32(28, n.exp_stat_sn);
    p.data = format!("SendTargets={what}\0").into_bytes();
    pdu::write_pdu(&mut s, &p, &n.framing)?;
    let mut data = Vec::new();
    let mut complete = false;
    for _ in 0..MAX_TEXT_PDUS {
        let r = pdu::read_pdu(
            &mut s,
            &Framing {
                max_recv_data: 1 << 20,
                ..n.framing
            },
        )?;
        if r.opcode() != op::TEXT_RESP {
            return Err(LoginError::Protocol(format!(
                "unexpected opcode {:#x} in discovery",
                r.opcode()
            )));
        }
        data.extend_from_slice(&r.data);
        if r.flags() & F_FINAL != 0 {
            complete = true;
            break;
        }
        let mut more = Pdu::new(op::TEXT_REQ);
        more.set_immediate();
        more.set_itt(1);
        more.set_u32(20, r.ttt());
        more.set_u32(24, n.cmd_sn);
        more.set_u32(28, r.stat_sn().wrapping_add(1));
        pdu::write_pdu(&mut s, &more, &n.framing)?;
    }
    if !complete {
        return Err(LoginError::Protocol(
            "the SendTargets answer never ended".into(),
        ));
    }
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (k, v) in text::parse(&data) {
        match k.as_str() {
            "TargetName" => out.push((v, Vec::new())),
            "TargetAddress" => {
                if let Some(last) = out.last_mut() {
                    last.1.push(v);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
