//! Backends: how a LUN's medium is reached. Regular files and block devices are opened with
//! the cache mode's flags and driven through one io_uring per worker thread.

mod cache;
mod file;
pub mod uring;

pub use cache::CacheMode;
pub use file::{Backing, OpenError};
pub use uring::{AlignedBuf, Ring};
