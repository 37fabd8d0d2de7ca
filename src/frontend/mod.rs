//! A vhost-user *frontend* (the role QEMU plays): memfd-backed guest memory, split
//! virtqueues laid out in it, and a real vhost-user connection to a backend socket. Used by
//! the integration tests (including hostile-input tests, through the raw descriptor API)
//! and meant for load generators; it is not part of the daemon's request path.

mod connection;
pub mod host_reference;
pub mod loadgen;
pub mod rng;
mod scsi;
mod vring;

pub use connection::{ConnectOptions, Connection, FrontendError};
pub use scsi::{lun_address, CmdResponse, ScsiFrontend, VirtioScsiRequest};
pub use vring::{SplitQueue, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

/// Guest memory of the frontend.
pub type FrontendMemory = vm_memory::GuestMemoryMmap<()>;
