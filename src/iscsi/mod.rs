//! vscsid's user-space iSCSI initiator (RFC 7143): it makes a LUN on an iSCSI target a
//! passthrough LUN of the guest. The guest's CDBs go to the target unchanged; status,
//! sense and data come back unchanged.

pub mod alua;
mod chap;
pub mod isid;
pub mod login;
pub mod multipath;
mod options;
pub mod pdu;
pub mod registry;
mod session;
pub mod text;
mod url;

use std::sync::Arc;
use std::time::Duration;

pub use chap::ChapAlgorithm;
pub use login::{discover, discover_portals, LoginError};
pub use multipath::{check_distinct_portals, Failback, MultipathOptions, PathStatus, Policy};
pub use options::{default_initiator_name, Chap, IscsiOptions};
pub use url::{redact_password, IscsiUrl};

use crate::scsi::task::{Completer, ScsiCommand, ScsiCompletion, TmfFunction, TransportError};

/// A LUN of an iSCSI target, reached through the target's session on each portal (path),
/// which it shares with the target's other LUNs (`registry`). Send + Sync: any thread
/// submits.
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
        self.core.submit(cmd, Completer::Once(done), false)
    }

    /// [`IscsiLun::submit`] without sending yet: the command goes out with the next
    /// [`IscsiLun::flush`] (or any other write on its path), together with the rest of the
    /// batch. The caller must flush.
    pub fn submit_corked(&self, cmd: ScsiCommand, done: Completer) -> u64 {
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

    /// Fails or restores a path by its portal (maintenance); see the multipath LUN.
    pub fn set_path_failed(&self, portal: &str, fail: bool) -> Result<(), String> {
        self.core.set_path_failed(portal, fail)
    }

    /// Path states and counters.
    pub fn paths(&self) -> Vec<PathStatus> {
        self.core.status()
    }

    /// Leaves every path's session (the last LUN on a session logs it out, waiting at most
    /// `within` in all for the target's answers) and fails whatever is still pending.
    pub fn close(&self, within: Duration) {
        self.core.close(within);
    }
}

/// How long dropping a LUN waits for its logouts.
const LOGOUT_ON_DROP: Duration = Duration::from_secs(1);

impl Drop for IscsiLun {
    fn drop(&mut self) {
        self.core.close(LOGOUT_ON_DROP);
    }
}
