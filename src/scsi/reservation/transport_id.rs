//! TransportIDs (SPC-4 7.6.4): how READ FULL STATUS names a nexus's initiator port and how
//! REGISTER AND MOVE names the nexus to move to. vscsid's nexuses are named like iSCSI
//! initiator ports (protocol identifier 5), which carry a name of up to 223 bytes: the
//! `initiator_id` of each daemon.

/// iSCSI's protocol identifier.
const PROTOCOL_ISCSI: u8 = 0x05;
/// Longest iSCSI name (RFC 7143 4.2.7.1).
pub const MAX_NAME: usize = 223;

/// The TransportID of `nexus` (format 00b: the iSCSI name, NUL-terminated, padded to a
/// multiple of four, at least 20 bytes).
pub fn nexus_transport_id(nexus: &str) -> Vec<u8> {
    let name = &nexus.as_bytes()[..nexus.len().min(MAX_NAME)];
    let body = (name.len() + 1).next_multiple_of(4).max(20);
    let mut id = vec![0u8; 4 + body];
    id[0] = PROTOCOL_ISCSI;
    id[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    id[4..4 + name.len()].copy_from_slice(name);
    id
}

/// Reads a TransportID at the start of `buf`: the nexus it names and the bytes it took.
/// Only iSCSI TransportIDs name vscsid's nexuses: format 00b (a name) and 01b (a name,
/// `,i,0x`, an ISID) are accepted, as the nexus name they spell.
pub fn parse_transport_id(buf: &[u8]) -> Option<(String, usize)> {
    if buf.len() < 4 || buf[0] & 0x0f != PROTOCOL_ISCSI {
        return None;
    }
    let format = buf[0] >> 6;
    let len = 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let body = buf.get(4..len)?;
    if len % 4 != 0 || len < 24 {
        return None;
    }
    let end = body.iter().position(|&b| b == 0)?;
    let text = std::str::from_utf8(&body[..end]).ok()?;
    if text.is_empty() || text.len() > MAX_NAME + 20 || text.chars().any(char::is_control) {
        return None;
    }
    match format {
        // Format 01b spells "name,i,0xISID" in one string.
        0 | 1 => Some((text.to_string(), len)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_reads_back() {
        let id = nexus_transport_id("iqn.2026-12.io.vscsid:vm1");
        assert_eq!(id[0], 5);
        assert_eq!(id.len() % 4, 0);
        assert_eq!(
            usize::from(u16::from_be_bytes([id[2], id[3]])),
            id.len() - 4
        );
        assert_eq!(
            parse_transport_id(&id),
            Some(("iqn.2026-12.io.vscsid:vm1".to_string(), id.len()))
        );
        // Short names are padded to the 20-byte minimum.
        assert_eq!(nexus_transport_id("a").len(), 24);
    }

    #[test]
    fn refuses_other_protocols_and_bad_lengths() {
        let mut id = nexus_transport_id("iqn.x:y");
        assert!(parse_transport_id(&id[..10]).is_none());
        id[0] = 0x06; // SAS
        assert!(parse_transport_id(&id).is_none());
        let mut id = nexus_transport_id("iqn.x:y");
        id[3] = 200; // longer than the buffer
        assert!(parse_transport_id(&id).is_none());
        let mut id = nexus_transport_id("iqn.x:y");
        id[4..].fill(b'a'); // no NUL
        assert!(parse_transport_id(&id).is_none());
    }
}
