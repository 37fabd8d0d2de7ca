//! Descriptor chains split into scatter lists.
//!
//! A chain is split into its device-readable part (request header, then data-out) and its
//! device-writable part (response header, then data-in). Segments are kept as guest
//! addresses ([`SegList`]); they are translated to host pointers only when used.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

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

    /// Fills `self` from `chain`, reusing the segment lists. The chain iterator itself stops at
    /// loops (its TTL), bad indirect tables and length overflow.
    pub fn parse<M>(&mut self, chain: DescriptorChain<M>)
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        self.head = chain.head_index();
        self.readable.clear();
        self.writable.clear();
        self.error = None;
        for desc in chain {
            let seg = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
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
}

impl Default for ParsedChain {
    fn default() -> Self {
        Self::new()
    }
}
