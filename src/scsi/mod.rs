//! SCSI types and logic with no I/O: CDB decoding, sense data, LUN numbers, commands and
//! their completions, and the emulated disk's command set.
//!
//! This layer knows nothing about virtio or io_uring. The request path hands it a CDB, a way
//! to read the guest's data-out buffer on demand and a scratch buffer for small data-in
//! payloads; it answers with an [`Outcome`]: finished (GOOD or CHECK CONDITION), or an
//! [`IoRequest`] the backend layer must carry out against the LUN's medium.

pub mod cdb;
pub mod disk;
pub mod lun_id;
pub mod naa;
pub mod reservation;
pub mod sense;
pub mod task;
pub mod write_class;

pub use lun_id::LunId;
pub use sense::Sense;

/// SCSI status codes (SAM-5 table 33).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// The guest's data-out buffer, read only when a command needs its contents (parameter lists,
/// WRITE SAME's block). READ/WRITE payloads are never copied through this trait.
pub trait DataOut {
    /// Total bytes the guest supplied.
    fn len(&self) -> usize;
    /// True when the guest supplied no data-out bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies up to `buf.len()` bytes starting at `offset` into `buf`; returns bytes copied.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize;
}

/// A data-out buffer held in host memory (tests, and commands whose payload was copied).
impl DataOut for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> usize {
        let src = self.get(offset..).unwrap_or(&[]);
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        n
    }
}

/// Size of the scratch buffer the request path offers for emulated data-in payloads
/// (INQUIRY, MODE SENSE, REPORT LUNS, ...). Responses longer than this are truncated and
/// the residual reported, as a real device truncates to the allocation length.
pub const DATA_IN_SCRATCH: usize = 64 * 1024;

/// What executing a CDB on a LUN resulted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// GOOD status; the first `data_in_len` bytes of the data-in scratch buffer are the
    /// payload for the guest (already cut to the CDB's allocation length).
    Good { data_in_len: usize },
    /// CHECK CONDITION with this sense data.
    Check(Sense),
    /// The command needs the medium; its status is known when the I/O completes.
    Io(IoRequest),
}

/// Medium access an emulated command needs. Offsets and lengths are in bytes, already checked
/// against the LUN's capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoRequest {
    /// Read `len` bytes at `offset` straight into the guest's data-in buffer.
    Read { offset: u64, len: u64 },
    /// Write `len` bytes at `offset` straight from the guest's data-out buffer; with `fua`
    /// the data must be durable before status is returned.
    Write { offset: u64, len: u64, fua: bool },
    /// Make every completed write durable (SYNCHRONIZE CACHE).
    Flush,
    /// Deallocate byte ranges `(offset, len)` (UNMAP, WRITE SAME with UNMAP=1); the ranges
    /// read back as zeroes afterwards.
    Discard { ranges: Vec<(u64, u64)> },
    /// Write zeroes over a range (WRITE SAME of an all-zero block without UNMAP).
    WriteZeroes { offset: u64, len: u64 },
    /// Write the first logical block of data-out (`block_len` bytes) over every block of
    /// the range (WRITE SAME of a non-zero block).
    WriteSame {
        offset: u64,
        len: u64,
        block_len: u32,
    },
    /// COMPARE AND WRITE: data-out holds `len` bytes to compare with the medium at `offset`
    /// followed by `len` bytes to write there if they matched. A mismatch gives
    /// MISCOMPARE sense with the offset of the first differing byte in INFORMATION.
    CompareAndWrite { offset: u64, len: u64, fua: bool },
    /// VERIFY: read the range back; with `compare` (BYTCHK=1) compare it with data-out and
    /// fail with MISCOMPARE on a difference.
    Verify {
        offset: u64,
        len: u64,
        compare: bool,
    },
}
