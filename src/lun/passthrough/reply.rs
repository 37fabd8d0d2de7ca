//! What a passthrough command's SG_IO gave, as the guest is told it: the device's status,
//! sense and residual unchanged; the kernel's host codes (DID_*) and errnos turned into
//! transport failures or sense; and the two places vscsid reads or edits the device's
//! data on its way: READ CAPACITY (the block size and capacity the limits need) and the
//! MAXIMUM TRANSFER LENGTH of INQUIRY VPD 0xB0 (never more than vscsid and the device's
//! host can carry).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::backend::sg_io::SgReply;
use crate::scsi::cdb::{self, be32, be64, byte};
use crate::scsi::task::{Residual, ScsiCompletion, ScsiStatus, TransportError};
use crate::scsi::{status, Sense};

/// The answer to a command whose device is gone (removed, offline, its path absent): NOT
/// READY, LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED (02/04/03). The unit is
/// still in the guest's table (REPORT LUNS lists it) but cannot serve until the device is
/// back; Linux fails the command at once instead of retrying it, and TEST UNIT READY turns
/// GOOD again once the path opens again.
pub const DEVICE_GONE: Sense = Sense::new(crate::scsi::sense::key::NOT_READY, 0x04, 0x03);

/// How the device itself fared, for reopening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Fine,
    /// The device is gone: drop the descriptor, answer DEVICE_GONE, reopen later.
    Gone,
}

/// A CHECK CONDITION with `sense`, as a device would have returned it.
pub fn check(sense: Sense, data: Vec<u8>) -> ScsiCompletion {
    let mut buf = [0u8; 18];
    let n = sense.to_fixed(&mut buf);
    ScsiCompletion {
        result: Ok(ScsiStatus {
            status: status::CHECK_CONDITION,
            sense: buf[..n].to_vec(),
        }),
        data_in: emptied(data),
        residual: Residual::default(),
    }
}

/// A status without sense (BUSY, TASK SET FULL).
pub fn bare_status(st: u8, data: Vec<u8>) -> ScsiCompletion {
    ScsiCompletion {
        result: Ok(ScsiStatus {
            status: st,
            sense: Vec::new(),
        }),
        data_in: emptied(data),
        residual: Residual::default(),
    }
}

/// A transport failure carrying the buffer back for reuse.
pub fn failed(e: TransportError, data: Vec<u8>) -> ScsiCompletion {
    ScsiCompletion {
        result: Err(e),
        data_in: emptied(data),
        residual: Residual::default(),
    }
}

fn emptied(mut data: Vec<u8>) -> Vec<u8> {
    data.clear();
    data
}

/// What Linux's host byte (DID_*) of a completed SG_IO means for the guest: None when the
/// device's status stands; otherwise the transport failure, or that the device is gone.
pub fn host_failure(host_status: u16) -> Option<Result<TransportError, Health>> {
    match host_status {
        // DID_OK, DID_PASSTHROUGH: the status is the device's.
        0x00 | 0x0a => None,
        // DID_NO_CONNECT, DID_BAD_TARGET: nothing answers there any more.
        0x01 | 0x04 => Some(Err(Health::Gone)),
        // DID_ABORT: ended by an abort or reset.
        0x05 => Some(Ok(TransportError::Aborted)),
        // DID_BUS_BUSY, DID_TIME_OUT, DID_RESET, DID_SOFT_ERROR, DID_IMM_RETRY,
        // DID_REQUEUE, DID_TRANSPORT_DISRUPTED, DID_TRANSPORT_FAILFAST,
        // DID_TRANSPORT_MARGINAL: the path failed with the command out; whether it ran is
        // unknown, so the guest's SCSI layer decides about a retry.
        0x02 | 0x03 | 0x08 | 0x0b | 0x0c | 0x0d | 0x0e | 0x0f | 0x14 => {
            Some(Ok(TransportError::Disrupted))
        }
        // DID_PARITY, DID_ERROR, DID_BAD_INTR, DID_TARGET_FAILURE, DID_NEXUS_FAILURE,
        // DID_ALLOC_FAILURE, DID_MEDIUM_ERROR and anything newer.
        other => Some(Ok(TransportError::Protocol(format!(
            "host status {other:#x}"
        )))),
    }
}

/// The answer to an SG_IO that failed with `errno` without running the command (the
/// device's absence is handled by the caller: [`crate::backend::sg_io::device_gone`]).
pub fn for_errno(errno: i32, data: Vec<u8>) -> ScsiCompletion {
    match errno {
        // The device is gone (the caller lets go of its descriptor and opens the path
        // again later).
        e if crate::backend::sg_io::device_gone(e) => check(DEVICE_GONE, data),
        // The kernel refused the CDB: a length it cannot map, a bad CDB length.
        libc::EINVAL | libc::EOVERFLOW => check(Sense::invalid_field_in_cdb(), data),
        // Without CAP_SYS_RAWIO the kernel lets only a list of commands through (and
        // fewer on a descriptor opened read-only): to the guest the command is not
        // supported.
        libc::EPERM | libc::EACCES => check(Sense::invalid_opcode(), data),
        // Out of kernel memory or sg request slots: the guest retries later.
        libc::ENOMEM | libc::EBUSY | libc::EAGAIN | libc::EDOM => bare_status(status::BUSY, data),
        _ => check(Sense::internal_target_failure(), data),
    }
}

/// The answer to an SG_IO the kernel ran: `data` holds `len` bytes of transfer of which
/// `reply.resid` did not happen; data-in is cut to what arrived.
pub fn for_reply(
    reply: &SgReply,
    sense: &[u8],
    data: Vec<u8>,
    data_in: bool,
) -> (ScsiCompletion, Health) {
    let len = data.len();
    for_reply_of(reply, sense, data, data_in, len)
}

/// [`for_reply`] for a command whose `len` bytes of data moved straight between guest
/// memory and the device: the answer carries no data, its residual says how much moved.
pub fn for_direct_reply(reply: &SgReply, sense: &[u8], len: usize) -> (ScsiCompletion, Health) {
    for_reply_of(reply, sense, Vec::new(), false, len)
}

fn for_reply_of(
    reply: &SgReply,
    sense: &[u8],
    mut data: Vec<u8>,
    data_in: bool,
    len: usize,
) -> (ScsiCompletion, Health) {
    let resid = reply.resid.min(u32::try_from(len).unwrap_or(u32::MAX));
    match host_failure(reply.host_status) {
        None => {}
        Some(Err(health)) => return (check(DEVICE_GONE, data), health),
        Some(Ok(e)) => return (failed(e, data), Health::Fine),
    }
    if data_in {
        let arrived = data.len() - resid as usize;
        data.truncate(arrived);
    } else {
        data.clear();
    }
    let n = usize::from(reply.sense_len).min(sense.len());
    let completion = ScsiCompletion {
        result: Ok(ScsiStatus {
            status: reply.status,
            sense: sense[..n].to_vec(),
        }),
        data_in: data,
        residual: Residual {
            overflow: false,
            underflow: resid > 0,
            count: resid,
        },
    };
    (completion, Health::Fine)
}

/// What vscsid learns of the device from the answers passing through, and the transfer
/// limit it enforces and advertises.
#[derive(Debug)]
pub struct DeviceFacts {
    /// Largest transfer of one command in bytes: the device's host limit, at most what
    /// vscsid carries.
    pub max_transfer: u64,
    /// Logical block size from the last READ CAPACITY (0 until one is seen).
    block_size: AtomicU32,
    /// Capacity in logical blocks from the last READ CAPACITY (0 until one is seen).
    capacity_blocks: AtomicU64,
}

/// The block size assumed for VPD 0xB0 before any READ CAPACITY was seen: the largest
/// common one, so that the blocks advertised never exceed the limit in bytes.
const ASSUMED_BLOCK_SIZE: u32 = 4096;

impl DeviceFacts {
    pub fn new(max_transfer: u64, block_size: u32, capacity_blocks: u64) -> DeviceFacts {
        DeviceFacts {
            max_transfer,
            block_size: AtomicU32::new(block_size),
            capacity_blocks: AtomicU64::new(capacity_blocks),
        }
    }

    /// Logical block size, when known.
    pub fn block_size(&self) -> Option<u32> {
        Some(self.block_size.load(Ordering::Acquire)).filter(|&b| b > 0)
    }

    /// Capacity in blocks, when known.
    pub fn capacity_blocks(&self) -> Option<u64> {
        Some(self.capacity_blocks.load(Ordering::Acquire)).filter(|&c| c > 0)
    }

    /// Looks at a GOOD command's data-in on its way to the guest: learns the block size
    /// and capacity from READ CAPACITY(10/16); clamps INQUIRY VPD 0xB0.
    pub fn observe(&self, c: &[u8], data: &mut [u8]) {
        match byte(c, 0) {
            cdb::READ_CAPACITY_10 if data.len() >= 8 => {
                let last = be32(data, 0);
                self.learn(
                    be32(data, 4),
                    (last != u32::MAX).then(|| u64::from(last) + 1),
                );
            }
            cdb::SERVICE_ACTION_IN_16
                if byte(c, 1) & 0x1f == cdb::SAI_READ_CAPACITY_16 && data.len() >= 12 =>
            {
                let last = be64(data, 0);
                self.learn(be32(data, 8), last.checked_add(1));
            }
            cdb::INQUIRY if byte(c, 1) & 0x01 != 0 && byte(c, 2) == 0xb0 => {
                self.clamp_block_limits(data);
            }
            _ => {}
        }
    }

    fn learn(&self, block_size: u32, blocks: Option<u64>) {
        if block_size.is_power_of_two() && (512..=65536).contains(&block_size) {
            self.block_size.store(block_size, Ordering::Release);
            if let Some(n) = blocks {
                self.capacity_blocks.store(n, Ordering::Release);
            }
        }
    }

    /// The most blocks one command may move, for VPD 0xB0.
    pub fn max_transfer_blocks(&self) -> u32 {
        let bs = self.block_size().unwrap_or(ASSUMED_BLOCK_SIZE);
        u32::try_from(self.max_transfer / u64::from(bs)).unwrap_or(u32::MAX)
    }

    /// VPD 0xB0 (Block Limits) as the device returned it, with MAXIMUM TRANSFER LENGTH
    /// (bytes 8..12; 0 means no limit) and OPTIMAL TRANSFER LENGTH (12..16) lowered to
    /// what vscsid carries. The rest stays the device's.
    fn clamp_block_limits(&self, data: &mut [u8]) {
        let limit = self.max_transfer_blocks();
        for at in [8usize, 12] {
            if data.len() < at + 4 {
                return;
            }
            let v = be32(data, at);
            let max_field = at == 8;
            if v > limit || (max_field && v == 0) {
                data[at..at + 4].copy_from_slice(&limit.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_codes_map_to_what_the_guest_should_do() {
        // (DID_*, expected)
        let cases: &[(u16, Option<Result<TransportError, Health>>)] = &[
            (0x00, None),
            (0x0a, None),
            (0x01, Some(Err(Health::Gone))),
            (0x04, Some(Err(Health::Gone))),
            (0x05, Some(Ok(TransportError::Aborted))),
            (0x02, Some(Ok(TransportError::Disrupted))),
            (0x03, Some(Ok(TransportError::Disrupted))),
            (0x08, Some(Ok(TransportError::Disrupted))),
            (0x0e, Some(Ok(TransportError::Disrupted))),
            (0x0f, Some(Ok(TransportError::Disrupted))),
            (
                0x07,
                Some(Ok(TransportError::Protocol("host status 0x7".into()))),
            ),
        ];
        for (code, want) in cases {
            assert_eq!(&host_failure(*code), want, "DID {code:#x}");
        }
    }

    #[test]
    fn status_sense_and_residual_pass_unchanged() {
        let mut sense = [0u8; 96];
        sense[..18].copy_from_slice(&[
            0x70, 0, 0x03, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0x00, 0, 0, 0, 0,
        ]);
        let reply = SgReply {
            status: status::CHECK_CONDITION,
            host_status: 0,
            driver_status: 0x08,
            sense_len: 18,
            resid: 412,
        };
        let (c, health) = for_reply(&reply, &sense, vec![7u8; 512], true);
        assert_eq!(health, Health::Fine);
        let st = c.result.expect("status");
        assert_eq!(st.status, status::CHECK_CONDITION);
        assert_eq!(st.sense, sense[..18].to_vec());
        assert_eq!(c.data_in.len(), 100, "cut to what arrived");
        assert_eq!(
            c.residual,
            Residual {
                overflow: false,
                underflow: true,
                count: 412
            }
        );
        // Data-out never comes back as data-in; a residual larger than the buffer is cut.
        let reply = SgReply {
            resid: 9999,
            ..SgReply::default()
        };
        let (c, _) = for_reply(&reply, &sense, vec![1u8; 64], false);
        assert!(c.data_in.is_empty());
        assert_eq!(c.residual.count, 64);
    }

    #[test]
    fn a_lost_device_is_not_ready() {
        let reply = SgReply {
            host_status: 0x01,
            ..SgReply::default()
        };
        let (c, health) = for_reply(&reply, &[], vec![0u8; 10], true);
        assert_eq!(health, Health::Gone);
        let st = c.result.expect("status");
        assert_eq!(st.status, status::CHECK_CONDITION);
        assert_eq!(
            (st.sense[2] & 0x0f, st.sense[12], st.sense[13]),
            (0x02, 0x04, 0x03)
        );
        assert!(c.data_in.is_empty());
    }

    #[test]
    fn errnos_become_sense_or_busy() {
        let sense_of = |errno| {
            let st = for_errno(errno, Vec::new()).result.expect("status");
            (
                st.status,
                st.sense.get(2).map(|k| k & 0x0f),
                st.sense.get(12).copied(),
            )
        };
        assert_eq!(
            sense_of(libc::EINVAL),
            (status::CHECK_CONDITION, Some(0x05), Some(0x24))
        );
        assert_eq!(
            sense_of(libc::EPERM),
            (status::CHECK_CONDITION, Some(0x05), Some(0x20))
        );
        assert_eq!(sense_of(libc::ENOMEM), (status::BUSY, None, None));
        assert_eq!(
            sense_of(libc::ENODEV),
            (status::CHECK_CONDITION, Some(0x02), Some(0x04))
        );
        assert_eq!(
            sense_of(libc::EFAULT),
            (status::CHECK_CONDITION, Some(0x04), Some(0x44))
        );
    }

    #[test]
    fn read_capacity_teaches_block_size_and_capacity() {
        let facts = DeviceFacts::new(1 << 20, 0, 0);
        assert_eq!((facts.block_size(), facts.capacity_blocks()), (None, None));
        let mut rc10 = [0u8; 10];
        rc10[0] = cdb::READ_CAPACITY_10;
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&2047u32.to_be_bytes());
        data[4..].copy_from_slice(&4096u32.to_be_bytes());
        facts.observe(&rc10, &mut data);
        assert_eq!(facts.block_size(), Some(4096));
        assert_eq!(facts.capacity_blocks(), Some(2048));
        let mut rc16 = [0u8; 16];
        rc16[0] = cdb::SERVICE_ACTION_IN_16;
        rc16[1] = cdb::SAI_READ_CAPACITY_16;
        let mut data = [0u8; 32];
        data[..8].copy_from_slice(&(10_000_000u64 - 1).to_be_bytes());
        data[8..12].copy_from_slice(&512u32.to_be_bytes());
        facts.observe(&rc16, &mut data);
        assert_eq!(facts.block_size(), Some(512));
        assert_eq!(facts.capacity_blocks(), Some(10_000_000));
        // Nonsense block sizes are ignored.
        data[8..12].copy_from_slice(&1000u32.to_be_bytes());
        facts.observe(&rc16, &mut data);
        assert_eq!(facts.block_size(), Some(512));
    }

    fn vpd_b0(max: u32, optimal: u32) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[1] = 0xb0;
        d[3] = 0x3c;
        d[8..12].copy_from_slice(&max.to_be_bytes());
        d[12..16].copy_from_slice(&optimal.to_be_bytes());
        d[20..24].copy_from_slice(&77u32.to_be_bytes());
        d
    }

    #[test]
    fn vpd_b0_never_promises_more_than_can_be_carried() {
        let inquiry_b0 = [cdb::INQUIRY, 0x01, 0xb0, 0, 64, 0];
        // 1 MiB limit, 512-byte blocks: 2048 blocks.
        let facts = DeviceFacts::new(1 << 20, 512, 0);
        // (device's MAXIMUM, device's OPTIMAL, seen MAXIMUM, seen OPTIMAL)
        for (max, opt, want_max, want_opt) in [
            (0, 0, 2048, 0),
            (65535, 128, 2048, 128),
            (1024, 4096, 1024, 2048),
            (2048, 2048, 2048, 2048),
        ] {
            let mut d = vpd_b0(max, opt);
            facts.observe(&inquiry_b0, &mut d);
            assert_eq!(
                (be32(&d, 8), be32(&d, 12)),
                (want_max, want_opt),
                "{max} {opt}"
            );
            assert_eq!(be32(&d, 20), 77, "the rest is the device's");
        }
        // Before any READ CAPACITY, 4096-byte blocks are assumed: 256 blocks.
        let unknown = DeviceFacts::new(1 << 20, 0, 0);
        let mut d = vpd_b0(0, 0);
        unknown.observe(&inquiry_b0, &mut d);
        assert_eq!(be32(&d, 8), 256);
        // A short answer is left alone; another page is left alone.
        let mut short = [0u8; 10];
        facts.observe(&inquiry_b0, &mut short);
        assert_eq!(short, [0u8; 10]);
        let mut d = vpd_b0(0, 0);
        facts.observe(&[cdb::INQUIRY, 0x01, 0x83, 0, 64, 0], &mut d);
        assert_eq!(be32(&d, 8), 0);
    }
}
