//! virtio-scsi request parsing: turning a descriptor chain from guest memory into a request
//! header, a data-out and a data-in scatter list, and writing the response back.
//!
//! Everything here reads guest-controlled values: lengths and addresses are checked against
//! guest memory on every access, and nothing panics on what a guest writes.

pub mod chain;
pub mod control;
pub mod layout;

pub use chain::{ChainError, ParsedChain, SegList, Segment};
