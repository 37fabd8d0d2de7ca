//! Command requests on the wire: the typed `virtio_scsi_cmd_req` header decoded from a
//! chain's readable part, the data buffers that follow the two headers, and the
//! `virtio_scsi_cmd_resp` written for a LUN's answer.

use crate::backend::guest::{DataBuffers, GuestData, Mem, MemGuard};
use crate::lun::{Answer, HostError};
use crate::scsi::task::TaskAttr;
use crate::scsi::{status, Sense};

use super::layout::{encode_cmd_resp, response, CDB_SIZE, CMD_REQ_LEN, CMD_RESP_LEN};
use super::ParsedChain;

/// A decoded `virtio_scsi_cmd_req`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdRequest {
    pub lun: [u8; 8],
    pub tag: u64,
    pub task_attr: u8,
    pub prio: u8,
    pub crn: u8,
    pub cdb: [u8; CDB_SIZE],
}

impl CmdRequest {
    /// Decodes the request header of a chain. None (the device answers FAILURE) when the
    /// chain is malformed, its readable part is shorter than the header, or its writable
    /// part has no room for the response header.
    pub fn parse(mem: &Mem, chain: &ParsedChain) -> Option<CmdRequest> {
        let mut hdr = [0u8; CMD_REQ_LEN];
        if chain.error.is_some()
            || chain.readable.read_into(mem, 0, &mut hdr) < CMD_REQ_LEN
            || chain.writable.total() < CMD_RESP_LEN as u64
        {
            return None;
        }
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&hdr[0..8]);
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hdr[8..16]);
        let mut cdb = [0u8; CDB_SIZE];
        cdb.copy_from_slice(&hdr[19..CMD_REQ_LEN]);
        Some(CmdRequest {
            lun,
            tag: u64::from_le_bytes(tag),
            task_attr: hdr[16],
            prio: hdr[17],
            crn: hdr[18],
            cdb,
        })
    }

    /// The SAM task attribute (virtio: 0 simple, 1 ordered, 2 head of queue, 3 ACA).
    pub fn task_attr(&self) -> TaskAttr {
        match self.task_attr {
            1 => TaskAttr::Ordered,
            2 => TaskAttr::HeadOfQueue,
            3 => TaskAttr::Aca,
            _ => TaskAttr::Simple,
        }
    }
}

/// The request's data-out (past the request header) and data-in (past the response
/// header) in guest memory.
pub fn data_buffers<'a>(chain: &'a ParsedChain, guard: &'a MemGuard) -> DataBuffers<'a> {
    let mem: &Mem = guard;
    DataBuffers {
        out: GuestData::new(mem, &chain.readable, CMD_REQ_LEN as u64),
        inn: GuestData::new(mem, &chain.writable, CMD_RESP_LEN as u64),
        guard,
    }
}

/// Writes the response for `answer`; returns the used length (response header plus the
/// data-in bytes the answer placed).
pub fn respond(mem: &Mem, chain: &ParsedChain, answer: &Answer) -> u32 {
    let data_in_cap = chain.writable.total().saturating_sub(CMD_RESP_LEN as u64);
    let with_data = |response: u8, status: u8, sense: &[u8], data_in: u64| {
        let data_in = data_in.min(data_in_cap);
        let used = write_header(
            mem,
            chain,
            response,
            status,
            clamp_u32(data_in_cap - data_in),
            sense,
        );
        used.saturating_add(clamp_u32(data_in))
    };
    match *answer {
        Answer::Good { data_in } => with_data(response::OK, status::GOOD, &[], data_in),
        Answer::Check(sense) => {
            let mut buf = [0u8; 32];
            let n = sense.to_fixed(&mut buf);
            with_data(response::OK, status::CHECK_CONDITION, &buf[..n], 0)
        }
        Answer::Status {
            status,
            ref sense,
            data_in,
        } => with_data(response::OK, status, sense.as_slice(), data_in),
        Answer::Host { error, resid } => {
            let code = match error {
                HostError::Overrun => response::OVERRUN,
                HostError::Aborted => response::ABORTED,
                HostError::TransportDisrupted => response::TRANSPORT_FAILURE,
                HostError::Failure => response::FAILURE,
            };
            write_header(mem, chain, code, 0, resid, &[])
        }
    }
}

/// Answers a request whose LUN address leads to no target.
pub fn respond_bad_target(mem: &Mem, chain: &ParsedChain) -> u32 {
    write_header(mem, chain, response::BAD_TARGET, 0, 0, &[])
}

/// Answers a request that could not be decoded.
pub fn respond_failure(mem: &Mem, chain: &ParsedChain) -> u32 {
    write_header(mem, chain, response::FAILURE, 0, 0, &[])
}

/// CHECK CONDITION with `sense`, for answers the transport gives itself.
pub fn respond_check(mem: &Mem, chain: &ParsedChain, sense: Sense) -> u32 {
    respond(mem, chain, &Answer::Check(sense))
}

/// Writes a `virtio_scsi_cmd_resp` at the start of the writable part; returns the bytes
/// written (0 when the guest gave no room for it).
fn write_header(
    mem: &Mem,
    chain: &ParsedChain,
    response: u8,
    status: u8,
    resid: u32,
    sense: &[u8],
) -> u32 {
    if chain.writable.total() < CMD_RESP_LEN as u64 {
        return 0;
    }
    let mut out = [0u8; CMD_RESP_LEN];
    encode_cmd_resp(&mut out, response, status, resid, sense);
    chain.writable.write_from(mem, 0, &out) as u32
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::guest::Segment;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn mem() -> Mem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("mem")
    }

    fn chain(readable: (u64, u32), writable: (u64, u32)) -> ParsedChain {
        let mut c = ParsedChain::new();
        c.readable.push(Segment {
            addr: GuestAddress(readable.0),
            len: readable.1,
        });
        c.writable.push(Segment {
            addr: GuestAddress(writable.0),
            len: writable.1,
        });
        c
    }

    #[test]
    fn header_fields_are_decoded() {
        let m = mem();
        let mut hdr = [0u8; CMD_REQ_LEN];
        hdr[..8].copy_from_slice(&[1, 2, 0x41, 0x2c, 0, 0, 0, 0]);
        hdr[8..16].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        hdr[16] = 2;
        hdr[19] = 0x28;
        hdr[50] = 0xee;
        m.write_slice(&hdr, GuestAddress(0x100)).expect("w");
        let c = chain((0x100, CMD_REQ_LEN as u32), (0x1000, CMD_RESP_LEN as u32));
        let r = CmdRequest::parse(&m, &c).expect("request");
        assert_eq!(r.lun, [1, 2, 0x41, 0x2c, 0, 0, 0, 0]);
        assert_eq!(r.tag, 0x1122_3344_5566_7788);
        assert_eq!(r.task_attr(), TaskAttr::HeadOfQueue);
        assert_eq!((r.cdb[0], r.cdb[31]), (0x28, 0xee));
        // Short header, or no room for the response: refused.
        let short = chain(
            (0x100, CMD_REQ_LEN as u32 - 1),
            (0x1000, CMD_RESP_LEN as u32),
        );
        assert!(CmdRequest::parse(&m, &short).is_none());
        let no_room = chain(
            (0x100, CMD_REQ_LEN as u32),
            (0x1000, CMD_RESP_LEN as u32 - 1),
        );
        assert!(CmdRequest::parse(&m, &no_room).is_none());
    }

    #[test]
    fn answers_set_status_residual_and_used_length() {
        let m = mem();
        let c = chain(
            (0x100, CMD_REQ_LEN as u32),
            (0x1000, CMD_RESP_LEN as u32 + 4096),
        );
        let resp = |m: &Mem| {
            let mut out = [0u8; CMD_RESP_LEN];
            m.read_slice(&mut out, GuestAddress(0x1000)).expect("r");
            out
        };
        let used = respond(&m, &c, &Answer::Good { data_in: 512 });
        assert_eq!(used, CMD_RESP_LEN as u32 + 512);
        let r = resp(&m);
        assert_eq!(&r[4..8], &3584u32.to_le_bytes());
        assert_eq!((r[10], r[11]), (status::GOOD, response::OK));
        let used = respond(&m, &c, &Answer::Check(Sense::invalid_field_in_cdb()));
        assert_eq!(used, CMD_RESP_LEN as u32);
        let r = resp(&m);
        assert_eq!(&r[4..8], &4096u32.to_le_bytes());
        assert_eq!((r[10], r[12], r[14]), (status::CHECK_CONDITION, 0x70, 5));
        let used = respond(&m, &c, &Answer::overrun());
        assert_eq!(used, CMD_RESP_LEN as u32);
        assert_eq!(resp(&m)[11], response::OVERRUN);
        assert_eq!(respond_bad_target(&m, &c), CMD_RESP_LEN as u32);
        assert_eq!(resp(&m)[11], response::BAD_TARGET);
    }
}
