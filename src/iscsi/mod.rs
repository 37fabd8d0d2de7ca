//! vscsid's user-space iSCSI initiator (RFC 7143): it makes a LUN on an iSCSI target a
//! passthrough LUN of the guest. The guest's CDBs go to the target unchanged; status,
//! sense and data come back unchanged.

pub mod alua;
mod chap;
pub mod login;
pub mod multipath;
pub mod pdu;
mod session;
pub mod text;
mod url;

use std::sync::Arc;
use std::time::Duration;

pub use login::{discover, LoginError};
pub use multipath::{Failback, MultipathOptions, PathStatus, Policy};
pub use url::IscsiUrl;

use crate::scsi::task::{ScsiCommand, ScsiCompletion, TmfFunction, TransportError};

/// CHAP credentials; `mutual` holds the name and secret the target must prove.
#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
    pub mutual: Option<Box<Chap>>,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Chap {{ user: {:?}, mutual: {} }}",
            self.user,
            self.mutual.is_some()
        )
    }
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct IscsiOptions {
    pub initiator_name: String,
    pub chap: Option<Chap>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    /// Idle time after which a NOP-Out checks the connection.
    pub nop_interval: Duration,
    /// How long a NOP-Out may go unanswered before the connection counts as dead.
    pub nop_timeout: Duration,
    /// How long commands wait while no path is up (`no_path_retry`) before they fail.
    pub recovery_timeout: Duration,
    pub connect_timeout: Duration,
    pub login_timeout: Duration,
}

impl Default for IscsiOptions {
    fn default() -> Self {
        IscsiOptions {
            initiator_name: default_initiator_name(),
            chap: None,
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: false,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            // Sub-second path checking: a silent path is failed within about
            // interval + timeout (+ one check tick) of its last PDU.
            nop_interval: Duration::from_millis(200),
            nop_timeout: Duration::from_millis(400),
            recovery_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(10),
        }
    }
}

/// `iqn.2024-01.io.vscsid:<hostname>`.
pub fn default_initiator_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "iqn.2024-01.io.vscsid:{}",
        if host.is_empty() { "host" } else { &host }
    )
}

/// A LUN of an iSCSI target, reached through one session per portal (path). Send + Sync:
/// any thread submits.
pub struct IscsiLun {
    core: Arc<multipath::Core>,
    pub url: IscsiUrl,
}

impl IscsiLun {
    /// Logs in to the URL's target through its one portal. Credentials in the URL override
    /// `opts.chap`'s.
    pub fn connect(url: &IscsiUrl, opts: &IscsiOptions) -> Result<IscsiLun, LoginError> {
        Self::connect_multipath(url, opts, &MultipathOptions::default())
    }

    /// Logs in through the URL's portal and every extra portal of `mp`.
    pub fn connect_multipath(
        url: &IscsiUrl,
        opts: &IscsiOptions,
        mp: &MultipathOptions,
    ) -> Result<IscsiLun, LoginError> {
        let mut opts = opts.clone();
        if let Some(user) = &url.user {
            let secret = url
                .password
                .clone()
                .or_else(|| opts.chap.as_ref().map(|c| c.secret.clone()))
                .unwrap_or_default();
            let mutual = opts.chap.as_ref().and_then(|c| c.mutual.clone());
            opts.chap = Some(Chap {
                user: user.clone(),
                secret,
                mutual,
            });
        }
        Ok(IscsiLun {
            core: multipath::Core::connect(url, &opts, mp)?,
            url: url.clone(),
        })
    }

    /// Queues a command; `done` is called exactly once. Returns the command's id, which
    /// [`IscsiLun::abort_task`] takes.
    pub fn submit(&self, cmd: ScsiCommand, done: Box<dyn FnOnce(ScsiCompletion) + Send>) -> u64 {
        self.core.submit(cmd, done, false)
    }

    /// [`IscsiLun::submit`] without sending yet: the command goes out with the next
    /// [`IscsiLun::flush`] (or any other write on its path), together with the rest of the
    /// batch. The caller must flush.
    pub fn submit_corked(
        &self,
        cmd: ScsiCommand,
        done: Box<dyn FnOnce(ScsiCompletion) + Send>,
    ) -> u64 {
        self.core.submit(cmd, done, true)
    }

    /// Sends what corked submissions queued.
    pub fn flush(&self) {
        self.core.flush_paths();
    }

    /// Runs a command and waits for it (tests, start-up probing).
    pub fn execute(&self, cmd: ScsiCommand) -> ScsiCompletion {
        let (tx, rx) = std::sync::mpsc::channel();
        self.submit(
            cmd,
            Box::new(move |c| {
                let _ = tx.send(c);
            }),
        );
        rx.recv()
            .unwrap_or_else(|_| ScsiCompletion::failed(TransportError::Closed))
    }

    /// A task management function on this LUN (through every path that is up); returns
    /// the target's response code (0 = function complete). The LUN's commands end as
    /// aborted once the target agrees. ABORT TASK needs [`IscsiLun::abort_task`].
    pub fn task_management(&self, f: TmfFunction) -> Result<u8, TransportError> {
        self.core.reset(f)
    }

    /// ABORT TASK for the command `submit` returned `id` for.
    pub fn abort_task(&self, id: u64) -> Result<u8, TransportError> {
        self.core.abort_task(id)
    }

    /// Whether some path is up.
    pub fn is_connected(&self) -> bool {
        self.core.is_connected()
    }

    pub fn outstanding(&self) -> usize {
        self.core.outstanding()
    }

    /// Path states and counters.
    pub fn paths(&self) -> Vec<PathStatus> {
        self.core.status()
    }

    pub fn close(&self) {
        self.core.close();
    }
}

impl Drop for IscsiLun {
    fn drop(&mut self) {
        self.core.close();
    }
}
