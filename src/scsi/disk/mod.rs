//! The emulated disk: a SCSI block device (SBC-3) whose medium is reached through the
//! backend. This module decodes each CDB and either answers it from the disk's properties
//! or describes the medium I/O the command needs.

mod inquiry;
mod log;
mod mode;
mod opcodes;
mod rw;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::cdb::{self, byte};
use super::naa::Naa;
use super::{DataOut, Outcome, Sense};

pub use log::UsedBlocks;
pub use opcodes::SUPPORTED_COMMANDS;

/// Largest COMPARE AND WRITE, in blocks (VPD 0xB0).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 16;
/// Largest WRITE SAME and UNMAP range, in blocks (VPD 0xB0).
pub const MAX_WRITE_SAME_BLOCKS: u32 = 0x0040_0000;
pub const MAX_UNMAP_BLOCKS: u32 = 0x0040_0000;
/// Most block descriptors in one UNMAP parameter list (VPD 0xB0).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 255;

/// DPO and FUA in byte 1 of READ, WRITE (FUA) and VERIFY (DPO).
pub(crate) const DPO: u8 = 0x10;
pub(crate) const FUA: u8 = 0x08;
/// MODE SENSE's device-specific parameter bit saying DPO and FUA are honoured; the usage
/// data of REPORT SUPPORTED OPERATION CODES marks both bits to match.
pub(crate) const DEVICE_SPECIFIC_DPOFUA: u8 = 0x10;

/// What the disk reports about itself and its medium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskProperties {
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    pub capacity_blocks: u64,
    pub readonly: bool,
    /// Initial state of the WCE bit.
    pub write_cache: bool,
    /// UNMAP and WRITE SAME(UNMAP) deallocate blocks (reported through LBPME/VPD 0xB2).
    pub discard: bool,
    /// Deallocated blocks read as zeroes (LBPRZ). False for a block device that can only
    /// discard: its discarded blocks read back as anything, so WRITE SAME(UNMAP) of zeroes
    /// writes the zeroes instead.
    pub unmap_zeroes: bool,
    /// Largest READ/WRITE, in blocks.
    pub max_transfer_blocks: u32,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// NAA identifier (VPD 0x83).
    pub naa: Naa,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    /// Whether the medium rotates; `None` when the backing does not say (VPD 0xB1 then
    /// reports no rotation rate).
    pub rotational: Option<bool>,
    /// Physical block size: a power-of-two multiple of `block_size` (READ CAPACITY(16),
    /// VPD 0xB0).
    pub physical_block_size: u32,
}

/// An emulated disk. Shared by every worker thread; its mutable state (WCE, a pending
/// unit attention) is atomic.
pub struct EmulatedDisk {
    props: DiskProperties,
    write_cache: AtomicBool,
    /// The capacity in blocks: `props.capacity_blocks` at first, changed by a resize
    /// while the guest runs.
    capacity: AtomicU64,
    /// A reset happened and the initiator has not been told yet (SAM: the next command
    /// other than INQUIRY, REPORT LUNS or REQUEST SENSE gets UNIT ATTENTION 29/00).
    unit_attention: AtomicBool,
    /// How many blocks the backing holds, for the provisioning log page.
    used_blocks: Option<UsedBlocks>,
}

impl std::fmt::Debug for EmulatedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatedDisk")
            .field("props", &self.props)
            .field("write_cache", &self.write_cache)
            .field("capacity", &self.capacity)
            .field("unit_attention", &self.unit_attention)
            .field("used_blocks", &self.used_blocks.is_some())
            .finish()
    }
}

impl EmulatedDisk {
    pub fn new(props: DiskProperties) -> EmulatedDisk {
        let wce = props.write_cache;
        EmulatedDisk {
            write_cache: AtomicBool::new(wce),
            capacity: AtomicU64::new(props.capacity_blocks),
            unit_attention: AtomicBool::new(false),
            used_blocks: None,
            props,
        }
    }

    /// Lets LOG SENSE report how many blocks the backing holds.
    pub fn with_used_blocks(mut self, count: UsedBlocks) -> EmulatedDisk {
        self.used_blocks = Some(count);
        self
    }

    /// The capacity in blocks now.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    /// A resize: commands checked after this see the new capacity. The caller tells the
    /// guest (a unit attention, a virtio-scsi event).
    pub fn set_capacity_blocks(&self, blocks: u64) {
        self.capacity.store(blocks, Ordering::Release);
    }

    pub fn properties(&self) -> &DiskProperties {
        &self.props
    }

    /// The WCE bit as the guest last set it.
    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    /// LOGICAL UNIT RESET: mode parameters return to their defaults and the initiator is
    /// told with a UNIT ATTENTION, as QEMU's disks do.
    pub fn reset(&self) {
        self.write_cache
            .store(self.props.write_cache, Ordering::Relaxed);
        self.unit_attention.store(true, Ordering::Release);
    }

    /// Executes one CDB. `data_in` receives small payloads (cut to the allocation length);
    /// READ/WRITE payloads never pass through it.
    pub fn execute(&self, cdb: &[u8], data_out: &dyn DataOut, data_in: &mut [u8]) -> Outcome {
        match self.dispatch(cdb, data_out, data_in) {
            Ok(o) => o,
            Err(sense) => Outcome::Check(sense),
        }
    }

    fn dispatch(
        &self,
        cdb: &[u8],
        data_out: &dyn DataOut,
        data_in: &mut [u8],
    ) -> Result<Outcome, Sense> {
        if self.unit_attention.load(Ordering::Relaxed)
            && !matches!(
                byte(cdb, 0),
                cdb::INQUIRY | cdb::REPORT_LUNS | cdb::REQUEST_SENSE
            )
            && self.unit_attention.swap(false, Ordering::AcqRel)
        {
            return Err(Sense::reset_occurred());
        }
        // The hot path first: READ/WRITE decode without touching anything else.
        if let Some(rw) = cdb::decode_rw(cdb)? {
            cdb::check_control(cdb)?;
            return self.read_write(rw);
        }
        cdb::check_control(cdb)?;
        let op = byte(cdb, 0);
        match op {
            cdb::TEST_UNIT_READY => Ok(Outcome::Good { data_in_len: 0 }),
            cdb::START_STOP_UNIT | cdb::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                Ok(Outcome::Good { data_in_len: 0 })
            }
            cdb::REQUEST_SENSE => Ok(request_sense(cdb, data_in)),
            cdb::INQUIRY => self.inquiry(cdb, data_in),
            cdb::READ_CAPACITY_10 => self.read_capacity_10(cdb, data_in),
            cdb::SERVICE_ACTION_IN_16 => match byte(cdb, 1) & 0x1f {
                cdb::SAI_READ_CAPACITY_16 => self.read_capacity_16(cdb, data_in),
                _ => Err(Sense::invalid_field_in_cdb()),
            },
            cdb::MODE_SENSE_6 | cdb::MODE_SENSE_10 => self.mode_sense(cdb, data_in),
            cdb::MODE_SELECT_6 | cdb::MODE_SELECT_10 => self.mode_select(cdb, data_out),
            cdb::VERIFY_10 | cdb::VERIFY_12 | cdb::VERIFY_16 => self.verify(cdb),
            cdb::WRITE_AND_VERIFY_10 | cdb::WRITE_AND_VERIFY_12 | cdb::WRITE_AND_VERIFY_16 => {
                self.write_and_verify(cdb)
            }
            cdb::LOG_SENSE => self.log_sense(cdb, data_in),
            cdb::SYNCHRONIZE_CACHE_10 | cdb::SYNCHRONIZE_CACHE_16 => self.synchronize_cache(cdb),
            cdb::UNMAP => self.unmap(cdb, data_out),
            cdb::WRITE_SAME_10 | cdb::WRITE_SAME_16 => self.write_same(cdb, data_out),
            cdb::COMPARE_AND_WRITE => self.compare_and_write(cdb),
            cdb::MAINTENANCE_IN => match byte(cdb, 1) & 0x1f {
                cdb::MI_REPORT_SUPPORTED_OPCODES => opcodes::report_supported(cdb, data_in),
                _ => Err(Sense::invalid_field_in_cdb()),
            },
            // REPORT LUNS is answered by the LUN table before a LUN is involved.
            _ => Err(Sense::invalid_opcode()),
        }
    }

    /// Checks that `[lba, lba+blocks)` lies on the medium.
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        let cap = self.capacity_blocks();
        match lba.checked_add(blocks) {
            Some(end) if end <= cap && lba < cap => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
    }

    fn check_writable(&self) -> Result<(), Sense> {
        if self.props.readonly {
            Err(Sense::write_protected())
        } else {
            Ok(())
        }
    }

    fn bytes(&self, blocks: u64) -> u64 {
        blocks * u64::from(self.props.block_size)
    }
}

/// Copies `payload` into `data_in`, cut to the allocation length and the buffer.
fn reply(data_in: &mut [u8], payload: &[u8], alloc_len: usize) -> Outcome {
    let n = payload.len().min(alloc_len).min(data_in.len());
    data_in[..n].copy_from_slice(&payload[..n]);
    Outcome::Good { data_in_len: n }
}

/// REQUEST SENSE: with autosense nothing is pending, so NO SENSE in the asked format.
fn request_sense(cdb: &[u8], data_in: &mut [u8]) -> Outcome {
    let mut buf = [0u8; 32];
    let n = if byte(cdb, 1) & 0x01 != 0 {
        Sense::no_sense().to_descriptor(&mut buf)
    } else {
        Sense::no_sense().to_fixed(&mut buf)
    };
    reply(data_in, &buf[..n], usize::from(byte(cdb, 4)))
}

/// Copies `s` into a fixed-width, space-padded ASCII field.
fn ascii_field(dst: &mut [u8], s: &str) {
    dst.fill(b' ');
    for (d, c) in dst.iter_mut().zip(s.bytes()) {
        *d = if (0x20..0x7f).contains(&c) { c } else { b' ' };
    }
}

#[cfg(test)]
pub(crate) mod tests;
