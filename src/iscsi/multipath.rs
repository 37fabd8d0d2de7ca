//! Multipath for one iSCSI LUN: one session per portal (path), a path selector
//! (round-robin, least queue depth, or priority groups for active/passive), ALUA states
//! when the target reports them, failover of the commands a failed path held, and a
//! queue for the time no path is up (`no_path_retry`).
//!
//! A single-portal LUN is the one-path case of the same machinery: a dropped connection
//! queues its commands until the session logs in again, within the same bound.
//!
//! `alua_follow` re-reads the ALUA states when a target port reports a change and sends
//! the commands a port refused elsewhere.
//!
//! `options` holds what the configuration chooses, `selector` picks a path per command,
//! `reservation` keeps the guest's persistent reservation registration on every path,
//! and `lun` is the LUN itself: its paths, dispatch, queueing and failover.

mod alua_follow;
mod attention;
mod lun;
mod options;
mod reservation;
mod selector;

pub(crate) use lun::Core;
pub use lun::{reissue_is_safe, PathStatus, MAX_REISSUES};
pub use options::{
    check_distinct_portals, split_portal, Failback, MultipathOptions, Policy, MAX_PATHS,
};
