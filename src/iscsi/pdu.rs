//! iSCSI PDUs (RFC 7143 section 11): the 48-byte basic header segment, additional header
//! segments, data segments padded to 4 bytes, and CRC32C header/data digests. Decoding never
//! trusts a length from the network beyond the limits the session negotiated.

use std::io::{self, Read, Write};

/// Initiator opcodes.
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TASK_MGMT_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    /// Target opcodes.
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESP: u8 = 0x21;
    pub const TASK_MGMT_RESP: u8 = 0x22;
    pub const LOGIN_RESP: u8 = 0x23;
    pub const TEXT_RESP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MSG: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Bit 7 of byte 1: Final.
pub const F_FINAL: u8 = 0x80;
/// Bit 6 of byte 0: Immediate delivery.
pub const F_IMMEDIATE: u8 = 0x40;
pub const BHS_LEN: usize = 48;

/// A PDU: its header, any additional header segments, and its data segment (unpadded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data: Vec<u8>,
}

impl Default for Pdu {
    fn default() -> Self {
        Pdu {
            bhs: [0; BHS_LEN],
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }
}

/// Header fields at fixed offsets, shared by every PDU type.
impl Pdu {
    pub fn new(opcode: u8) -> Pdu {
        let mut p = Pdu::default();
        p.bhs[0] = opcode & 0x3f;
        p
    }
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    pub fn set_immediate(&mut self) {
        self.bhs[0] |= F_IMMEDIATE;
    }
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.bhs[1] = f;
    }
    pub fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[at],
            self.bhs[at + 1],
            self.bhs[at + 2],
            self.bhs[at + 3],
        ])
    }
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.bhs[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn lun(&self) -> u64 {
        u64::from_be_bytes(self.bhs[8..16].try_into().unwrap_or([0; 8]))
    }
    pub fn set_lun(&mut self, lun: u64) {
        self.bhs[8..16].copy_from_slice(&lun.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, itt: u32) {
        self.set_u32(16, itt);
    }
    /// TTT (most target PDUs) / expected transfer length (SCSI Command).
    pub fn ttt(&self) -> u32 {
        self.u32_at(20)
    }
    pub fn stat_sn(&self) -> u32 {
        self.u32_at(24)
    }
    pub fn exp_cmd_sn(&self) -> u32 {
        self.u32_at(28)
    }
    pub fn max_cmd_sn(&self) -> u32 {
        self.u32_at(32)
    }
    pub fn data_sn(&self) -> u32 {
        self.u32_at(36)
    }
    pub fn buffer_offset(&self) -> u32 {
        self.u32_at(40)
    }
    pub fn residual(&self) -> u32 {
        self.u32_at(44)
    }
    /// The DataSegmentLength field (without padding or digest).
    pub fn data_len_field(&self) -> usize {
        (usize::from(self.bhs[5]) << 16)
            | (usize::from(self.bhs[6]) << 8)
            | usize::from(self.bhs[7])
    }
}

/// Negotiated framing: digests and the largest data segment this side accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Our MaxRecvDataSegmentLength: a target PDU with a longer data segment is an error.
    pub max_recv_data: usize,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            header_digest: false,
            data_digest: false,
            max_recv_data: 8192,
        }
    }
}

/// Padding bytes after a data segment of `n` bytes.
pub fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// CRC32C as iSCSI uses it (the crate's value, little-endian on the wire).
pub fn digest(bytes: &[&[u8]]) -> u32 {
    bytes.iter().fold(0, |c, b| crc32c::crc32c_append(c, b))
}

/// Serialises a PDU with the given framing.
pub fn encode(pdu: &Pdu, framing: &Framing) -> Vec<u8> {
    let mut out = Vec::with_capacity(BHS_LEN + pdu.ahs.len() + pdu.data.len() + 12);
    encode_into(pdu, &pdu.data, framing, &mut out);
    out
}

/// Appends the PDU's wire form to `out`, with `data` as its data segment (`pdu.data` is
/// ignored), so a sender can batch PDUs in one buffer and send data without copying it
/// into the PDU first.
pub fn encode_into(pdu: &Pdu, data: &[u8], framing: &Framing, out: &mut Vec<u8>) {
    // A copy of `data` always supplies every byte.
    encode_filled_into(pdu, data.len(), framing, out, |dst| {
        dst.copy_from_slice(data);
        true
    });
}

/// [`encode_into`] with a data segment of `dl` bytes that `fill` writes in place in
/// `out` (from the guest's buffers, without a copy in between); false, with `out` as it
/// was, when `fill` could not supply every byte.
pub fn encode_filled_into(
    pdu: &Pdu,
    dl: usize,
    framing: &Framing,
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut [u8]) -> bool,
) -> bool {
    let start = out.len();
    let mut bhs = pdu.bhs;
    bhs[4] = (pdu.ahs.len() / 4) as u8;
    bhs[5] = (dl >> 16) as u8;
    bhs[6] = (dl >> 8) as u8;
    bhs[7] = dl as u8;
    out.reserve(BHS_LEN + pdu.ahs.len() + dl + 12);
    out.extend_from_slice(&bhs);
    out.extend_from_slice(&pdu.ahs);
    if framing.header_digest {
        out.extend_from_slice(&digest(&[&bhs, &pdu.ahs]).to_le_bytes());
    }
    if dl > 0 {
        let at = out.len();
        out.resize(at + dl + pad4(dl), 0);
        if !fill(&mut out[at..at + dl]) {
            out.truncate(start);
            return false;
        }
        if framing.data_digest {
            let d = digest(&[&out[at..]]);
            out.extend_from_slice(&d.to_le_bytes());
        }
    }
    true
}

/// Writes one PDU.
pub fn write_pdu(w: &mut impl Write, pdu: &Pdu, framing: &Framing) -> io::Result<()> {
    w.write_all(&encode(pdu, framing))
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one PDU, checking digests and the data segment length.
pub fn read_pdu(r: &mut impl Read, framing: &Framing) -> io::Result<Pdu> {
    read_pdu_into(r, framing, Vec::new())
}

/// [`read_pdu`] with the data segment read into `buf` (cleared first), so a reader can
/// hand the previous PDU's buffer back instead of allocating one per PDU.
pub fn read_pdu_into(r: &mut impl Read, framing: &Framing, buf: Vec<u8>) -> io::Result<Pdu> {
    let mut pdu = read_header(r, framing)?;
    read_data_into(r, framing, &mut pdu, buf)?;
    Ok(pdu)
}

/// Reads a PDU's header (BHS, AHS and header digest), checking the digest and that the
/// data segment it announces is not longer than we accept; the data segment follows
/// ([`read_data_into`], or a reader that places it itself).
pub fn read_header(r: &mut impl Read, framing: &Framing) -> io::Result<Pdu> {
    let mut pdu = Pdu::default();
    r.read_exact(&mut pdu.bhs)?;
    let ahs_len = usize::from(pdu.bhs[4]) * 4;
    pdu.ahs = vec![0u8; ahs_len];
    r.read_exact(&mut pdu.ahs)?;
    if framing.header_digest {
        let mut d = [0u8; 4];
        r.read_exact(&mut d)?;
        if u32::from_le_bytes(d) != digest(&[&pdu.bhs, &pdu.ahs]) {
            return Err(bad("header digest mismatch"));
        }
    }
    if pdu.data_len_field() > framing.max_recv_data.max(8192) {
        return Err(bad("data segment longer than MaxRecvDataSegmentLength"));
    }
    Ok(pdu)
}

/// Whether `buf` starts with a whole PDU (header, AHS, digests, padded data segment), so
/// reading that PDU from a buffered reader holding `buf` does not wait for the network.
pub fn whole_pdu_in(buf: &[u8], framing: &Framing) -> bool {
    let Some(bhs) = buf.get(..BHS_LEN) else {
        return false;
    };
    let ahs = usize::from(bhs[4]) * 4;
    let dl = (usize::from(bhs[5]) << 16) | (usize::from(bhs[6]) << 8) | usize::from(bhs[7]);
    let digests =
        4 * (usize::from(framing.header_digest) + usize::from(framing.data_digest && dl > 0));
    buf.len() >= BHS_LEN + ahs + digests + dl + pad4(dl)
}

/// Reads the data segment of `pdu` (whose header [`read_header`] read) into `buf` (cleared
/// first), checking its digest. The buffer is handed back in the PDU even when it carries
/// no data, so a reader reusing it keeps its allocation across PDUs without data.
pub fn read_data_into(
    r: &mut impl Read,
    framing: &Framing,
    pdu: &mut Pdu,
    mut buf: Vec<u8>,
) -> io::Result<()> {
    let dl = pdu.data_len_field();
    buf.clear();
    if dl > 0 {
        buf.resize(dl + pad4(dl), 0);
        r.read_exact(&mut buf)?;
        if framing.data_digest {
            let mut d = [0u8; 4];
            r.read_exact(&mut d)?;
            if u32::from_le_bytes(d) != digest(&[&buf]) {
                return Err(bad("data digest mismatch"));
            }
        }
        buf.truncate(dl);
    }
    pdu.data = buf;
    Ok(())
}

#[cfg(test)]
mod tests;
