//! vscsid: a vhost-user-scsi daemon.
//!
//! A request travels down the layers in this order:
//! `vhost` (device, queues, workers) → `virtio` (typed requests and responses on the wire)
//! → `lun` (LUN table, the interface every kind of LUN implements, the emulated disk's
//! medium I/O, passthrough) → `scsi` (CDB decoding, sense, SCSI emulation, pure logic) and
//! `backend` (io_uring block I/O, guest memory, backing files). `iscsi` is the initiator
//! the iSCSI passthrough LUN uses; `config` builds the configuration; `frontend` is an
//! in-process vhost-user frontend for tests and the load generator; `log_limit` keeps
//! repeated log lines down; `service` is what running under systemd takes (logs to the
//! journal, readiness and status notifications, the watchdog), fed by the worker threads'
//! `heartbeat`s and woken for status changes by the `status_bell`; `sandbox` confines
//! each thread to the system calls its kind needs and drops the daemon's privileges.

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod config;
pub mod control;
pub mod frontend;
pub mod heartbeat;
pub mod iscsi;
pub mod log_limit;
pub mod lun;
pub mod sandbox;
pub mod scsi;
pub mod service;
pub mod status_bell;
pub mod vhost;
pub mod virtio;
