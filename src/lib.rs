//! vscsid: a vhost-user-scsi daemon.
//!
//! A request travels down the layers in this order:
//! `vhost` (device, queues, workers) → `virtio` (virtio-scsi request parsing) →
//! `scsi` (LUN table, CDB decode, sense, emulated disk) → `backend` (io_uring file/block I/O).

pub mod backend;
pub mod config;
pub mod frontend;
pub mod iscsi;
pub mod scsi;
pub mod vhost;
pub mod virtio;
