//! virtio-scsi on the wire: turning a descriptor chain from guest memory into a typed
//! command or control request and its data buffers, and writing the response back.
//!
//! Everything here reads guest-controlled values: lengths and addresses are checked against
//! guest memory on every access, and nothing panics on what a guest writes.

pub mod chain;
pub mod control;
pub mod layout;
pub mod request;

pub use chain::{ChainError, ParsedChain};
