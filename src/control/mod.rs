//! Run-time management: the control socket (`--control`, `daemon.control`) and the
//! `vscsid ctl` client. One JSON object per line each way ([`protocol`]); the server
//! carries requests out on the daemon's live LUN table ([`crate::lun::LiveLuns`]), the
//! client prints the answers as tables or, with `--json`, as they came. The LUNs'
//! statistics are also served in the Prometheus text format ([`metrics`]) over HTTP
//! (`--metrics`, [`http`]).

pub mod client;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod reload;
pub mod server;

pub use server::ControlServer;
