//! Running as a service (one vscsid per VM under systemd): where the logs go (the journal,
//! with priorities and fields, when systemd connected stderr to it; plain text on stderr
//! otherwise) and what systemd is told (READY, STATUS, STOPPING, and the watchdog, fed
//! only while every worker thread makes progress). Without systemd the notifications are
//! no-ops.

mod logging;
mod notify;

pub use logging::{init_logging, LogDestination};
pub use notify::{status_text, Service, StatusLine};
