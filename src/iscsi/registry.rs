//! The daemon's iSCSI sessions: one per (target, portal, initiator identity and ISID
//! scope, credentials and login options), shared by every LUN of that target that goes
//! through that portal, as open-iscsi and libiscsi users expect (20 LUNs of one array over
//! two paths are 2 sessions, not 40).
//!
//! A LUN joins with [`attach`] for each of its paths and gets an [`Attachment`]; the first
//! to join logs the session in, later ones share it (and are told it is up, so each runs
//! its own post-login work on it). Leaving ([`Attachment::detach`], or dropping it) fails
//! only that LUN's commands still on the session; the last LUN to leave logs it out and
//! takes it out of the registry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::login::LoginError;
use super::options::IscsiOptions;
use super::session::{PathCommand, PathEvents, Session};
use super::url::IscsiUrl;
use crate::scsi::LunId;

/// A session of the registry and what it was opened for.
struct Entry {
    target: String,
    portal: String,
    /// The options it logs in with; `recovery_timeout` (the LUN's `no_path_retry`) is not
    /// the session's and does not keep LUNs apart.
    opts: IscsiOptions,
    session: Arc<Session>,
}

static SESSIONS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

fn sessions() -> MutexGuard<'static, Vec<Entry>> {
    SESSIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// What two LUNs must agree on to share a session.
fn session_options(opts: &IscsiOptions) -> IscsiOptions {
    IscsiOptions {
        recovery_timeout: Duration::ZERO,
        ..opts.clone()
    }
}

/// A LUN's hold on the session of one of its paths.
pub(crate) struct Attachment {
    session: Arc<Session>,
    /// The LUN's number on the session (its commands carry it).
    owner: u64,
    detached: AtomicBool,
}

/// Joins the session to `url`'s target and portal with `opts` (making it if there is
/// none) as path `path` of the LUN `events` (at `url.lun`). Nothing happens on the network
/// until [`Attachment::start`].
pub(crate) fn attach(
    url: &IscsiUrl,
    opts: &IscsiOptions,
    path: usize,
    events: Weak<dyn PathEvents>,
) -> Attachment {
    let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
    let portal = url.portal();
    let wanted = session_options(opts);
    let mut all = sessions();
    let found = all.iter().find(|e| {
        e.target == url.target && e.portal == portal && e.opts == wanted && !e.session.is_closing()
    });
    let session = match found {
        Some(e) => e.session.clone(),
        None => {
            let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
            let session = Session::new(id, url, opts);
            all.push(Entry {
                target: url.target.clone(),
                portal,
                opts: wanted,
                session: session.clone(),
            });
            session
        }
    };
    session.join(owner, url.lun, path, events);
    Attachment {
        session,
        owner,
        detached: AtomicBool::new(false),
    }
}

impl Attachment {
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// Logs the session in if no LUN did yet, or waits for it; see
    /// [`Session::ensure_started`].
    pub(crate) fn start(&self, retry_in_background: bool) -> Result<(), LoginError> {
        self.session.ensure_started(self.owner, retry_in_background)
    }

    /// Queues one of this LUN's commands on the session ([`Session::submit`]).
    // The command comes back by value when no path takes it: boxing it would cost an
    // allocation per command.
    #[allow(clippy::result_large_err)]
    pub(crate) fn submit(&self, lun: LunId, c: PathCommand, cork: bool) -> Result<(), PathCommand> {
        self.session.submit(self.owner, lun, c, cork)
    }

    /// ABORT TASK for this LUN's command `id`, if the session holds it.
    pub(crate) fn abort_task(
        &self,
        id: u64,
    ) -> Option<Result<u8, crate::scsi::task::TransportError>> {
        self.session.abort_task(self.owner, id)
    }

    /// A LUN-wide task management function for this LUN only.
    pub(crate) fn reset_lun(
        &self,
        lun: LunId,
        f: crate::scsi::task::TmfFunction,
    ) -> Result<u8, crate::scsi::task::TransportError> {
        self.session.reset_lun(self.owner, lun, f)
    }

    /// Leaves the session (once): this LUN's commands on it fail as closed; the last LUN
    /// to leave logs it out, waiting at most `within`.
    pub(crate) fn detach(&self, within: Duration) {
        if self.detached.swap(true, Ordering::AcqRel) {
            return;
        }
        self.session.leave(self.owner);
        // Under the registry's lock: a LUN attaching now either finds the session with
        // owners, or not at all. Whoever takes it out closes it.
        let last = {
            let mut all = sessions();
            let before = all.len();
            if self.session.owner_count() == 0 {
                all.retain(|e| !Arc::ptr_eq(&e.session, &self.session));
            }
            all.len() < before
        };
        if last {
            self.session.close(within);
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.detach(Duration::from_secs(1));
    }
}

/// One session as status shows it.
#[derive(Debug, Clone)]
pub struct SessionStatus {
    pub id: u64,
    pub target: String,
    pub portal: String,
    pub isid: [u8; 6],
    pub up: bool,
    /// The target's LUNs that share it.
    pub luns: Vec<u16>,
}

impl std::fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let luns: Vec<String> = self.luns.iter().map(u16::to_string).collect();
        write!(
            f,
            "iscsi session {} {} {} isid {} {} luns {}",
            self.id,
            self.target,
            self.portal,
            crate::iscsi::isid::hex(&self.isid),
            if self.up { "up" } else { "down" },
            luns.join(",")
        )
    }
}

/// Every session of the daemon, oldest first.
pub fn status() -> Vec<SessionStatus> {
    let sessions: Vec<Arc<Session>> = sessions().iter().map(|e| e.session.clone()).collect();
    sessions
        .iter()
        .map(|s| SessionStatus {
            id: s.id,
            target: s.target().to_string(),
            portal: s.portal(),
            isid: s.isid(),
            up: s.is_up(),
            luns: s.luns().iter().map(|l| l.value()).collect(),
        })
        .collect()
}

/// How many sessions the daemon has open (logged in or logging in again).
pub fn count() -> usize {
    sessions().len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::session::LostPath;

    struct NoEvents;

    impl PathEvents for NoEvents {
        fn path_down(&self, _path: usize, _lost: LostPath) {}
        fn path_up(&self, _path: usize) {}
    }

    fn none() -> Weak<dyn PathEvents> {
        Weak::<NoEvents>::new()
    }

    fn url(portal: &str, lun: u16) -> IscsiUrl {
        IscsiUrl::parse(&format!("iscsi://{portal}/iqn.2024-01.test:registry/{lun}")).expect("url")
    }

    fn opts(name: &str) -> IscsiOptions {
        IscsiOptions {
            initiator_name: format!("iqn.2024-01.test:{name}"),
            ..IscsiOptions::default()
        }
    }

    fn live(s: &Arc<Session>) -> bool {
        sessions().iter().any(|e| Arc::ptr_eq(&e.session, s))
    }

    #[test]
    fn luns_of_one_target_and_portal_share_a_session_until_the_last_leaves() {
        // Nothing logs in: attaching alone does not touch the network.
        let o = opts("share");
        let a = attach(&url("192.0.2.1:3260", 1), &o, 0, none());
        let b = attach(&url("192.0.2.1:3260", 2), &o, 0, none());
        assert!(Arc::ptr_eq(a.session(), b.session()));
        assert_eq!(a.session().luns().len(), 2);
        // Another portal, other credentials, another initiator: sessions of their own.
        let other_portal = attach(&url("192.0.2.2:3260", 1), &o, 1, none());
        assert!(!Arc::ptr_eq(a.session(), other_portal.session()));
        let chap = IscsiOptions {
            chap: Some(crate::iscsi::Chap {
                user: "u".into(),
                secret: "s".into(),
                mutual: None,
            }),
            ..o.clone()
        };
        let with_chap = attach(&url("192.0.2.1:3260", 3), &chap, 0, none());
        assert!(!Arc::ptr_eq(a.session(), with_chap.session()));
        // Same target and portal, another session: another ISID.
        assert_ne!(a.session().isid(), with_chap.session().isid());
        // A LUN's no_path_retry is its own: it still shares.
        let patient = IscsiOptions {
            recovery_timeout: Duration::from_secs(600),
            ..o.clone()
        };
        let c = attach(&url("192.0.2.1:3260", 4), &patient, 0, none());
        assert!(Arc::ptr_eq(a.session(), c.session()));

        let shared = a.session().clone();
        a.detach(Duration::ZERO);
        c.detach(Duration::ZERO);
        assert!(live(&shared), "LUN 2 still holds it");
        assert!(!shared.is_closing());
        assert_eq!(shared.luns(), vec![LunId::new(2).expect("lun")]);
        drop(b);
        assert!(!live(&shared), "the last LUN closed it");
        assert!(shared.is_closing());
        // A LUN that comes later gets a new session (and the ISID given back).
        let d = attach(&url("192.0.2.1:3260", 1), &o, 0, none());
        assert!(!Arc::ptr_eq(&shared, d.session()));
        assert_eq!(d.session().isid(), shared.isid());
    }
}
