//! Descriptor chains split into scatter lists.
//!
//! A chain is split into its device-readable part (request header, then data-out) and its
//! device-writable part (response header, then data-in). Segments are kept as guest
//! addresses ([`SegList`]); they are translated to host pointers only when used.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

pub use crate::backend::guest::{SegList, Segment, MAX_SEGMENTS};

/// Why a chain cannot be served as a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A device-readable descriptor follows a device-writable one.
    ReadableAfterWritable,
    /// More segments than [`MAX_SEGMENTS`] in one direction.
    TooManySegments,
}

/// A descriptor chain split into its two directions.
#[derive(Debug)]
pub struct ParsedChain {
    pub head: u16,
    pub readable: SegList,
    pub writable: SegList,
    pub error: Option<ChainError>,
}

impl ParsedChain {
    pub fn new() -> ParsedChain {
        ParsedChain {
            head: 0,
            readable: SegList::with_capacity(8),
            writable: SegList::with_capacity(8),
            error: None,
        }
    }

    /// Fills `self` with the chain that starts at descriptor `head` of a ring whose
    /// descriptor table is at `desc_table` with `queue_size` entries, reusing the segment
    /// lists. Reading a chain from its head (rather than from the available ring) is what
    /// lets a restarted device serve again the chains a previous one left in flight.
    ///
    /// The walk stops, keeping what it read, at anything a driver may not send (virtio
    /// 1.2, 2.7.5): a head or next index outside its table, more descriptors than the table
    /// holds (a loop), an indirect table inside an indirect table, an indirect table whose
    /// length is not a whole number of descriptors, a total length over 4 GiB, a
    /// descriptor outside guest memory. What is left is then refused as a request.
    pub fn parse_from<M: GuestMemory>(
        &mut self,
        mem: &M,
        desc_table: GuestAddress,
        queue_size: u16,
        head: u16,
    ) {
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.error = None;
        let mut table = desc_table;
        let mut table_len = queue_size;
        let mut budget = queue_size;
        let mut index = head;
        let mut indirect = false;
        let mut total: u32 = 0;
        while budget > 0 && index < table_len {
            let Some(at) = table.checked_add(u64::from(index) * 16) else {
                return;
            };
            let Ok(desc) = mem.read_obj::<Descriptor>(at) else {
                return;
            };
            if desc.refers_to_indirect_table() {
                let entries = desc.len() / 16;
                if indirect || desc.len() % 16 != 0 || entries == 0 || entries > 0xffff {
                    return;
                }
                table = desc.addr();
                table_len = entries as u16;
                budget = table_len;
                index = 0;
                indirect = true;
                continue;
            }
            let Some(t) = total.checked_add(desc.len()) else {
                return;
            };
            total = t;
            self.push(
                Segment {
                    addr: desc.addr(),
                    len: desc.len(),
                },
                desc.is_write_only(),
            );
            if !desc.has_next() {
                return;
            }
            index = desc.next();
            budget -= 1;
        }
    }

    fn push(&mut self, seg: Segment, write_only: bool) {
        if write_only {
            if !self.writable.push(seg) {
                self.error.get_or_insert(ChainError::TooManySegments);
            }
        } else if self.writable.total() > 0 || !self.writable.segments().is_empty() {
            self.error.get_or_insert(ChainError::ReadableAfterWritable);
        } else if !self.readable.push(seg) {
            self.error.get_or_insert(ChainError::TooManySegments);
        }
    }
}

impl Default for ParsedChain {
    fn default() -> Self {
        Self::new()
    }
}
