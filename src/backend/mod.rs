//! Backends: how a LUN's medium is reached. Regular files and block devices are opened with
//! the cache mode's flags ([`Backing`]) and driven through one io_uring per worker thread
//! ([`BlockIo`]); guest memory is reached through scatter lists ([`guest`]); SCSI devices
//! passed through are reached with SG_IO ([`sg_io`]).

mod aligned;
pub mod block_io;
mod cache;
mod file;
pub mod guest;
pub mod guest_fault;
pub mod image_lock;
mod ofd_lock;
pub mod sg_io;
pub mod shared_state;
pub mod uring;

pub use aligned::AlignedBuf;
pub use block_io::{BlockIo, Fallocate, IoBuffers};
pub use cache::CacheMode;
pub use file::{Backing, OpenError};
pub use uring::Ring;
