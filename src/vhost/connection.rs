//! Ending a connection whose frontend broke the protocol: a virtqueue size no split ring
//! can have, or guest memory truncated under the daemon (a SIGBUS turned into a counted
//! fault by `backend::guest_fault`). Any thread may ask, even before the vhost-user
//! library handed over the connection's shutdown handle: the request is then kept and
//! carried out as soon as the handle arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vhost_user_backend::ShutdownHandle;

use super::queue::lock;
use super::vring::Vring;
use crate::backend::guest_fault;

pub struct ConnectionGuard {
    state: Mutex<HandleState>,
    /// Guest page faults counted before this connection began (the counter is the
    /// process's; one connection is served at a time).
    faults_at_start: u64,
    dropped: AtomicBool,
}

#[derive(Default)]
struct HandleState {
    handle: Option<ShutdownHandle>,
    /// A drop was asked for before the handle arrived.
    pending: bool,
}

impl Default for ConnectionGuard {
    fn default() -> Self {
        ConnectionGuard {
            state: Mutex::new(HandleState::default()),
            faults_at_start: guest_fault::faults(),
            dropped: AtomicBool::new(false),
        }
    }
}

impl ConnectionGuard {
    /// Hands over the way to end the connection; ends it at once if that was already asked.
    pub fn attach(&self, handle: Option<ShutdownHandle>) {
        let mut st = lock(&self.state);
        if st.pending {
            if let Some(h) = &handle {
                h.shutdown();
            }
        }
        st.handle = handle;
    }

    /// Ends the connection (once; later calls do nothing). Commands in flight end as for
    /// any disconnect; the daemon waits for the next frontend if it reconnects.
    pub fn drop_connection(&self, why: &str) {
        if self.dropped.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!("dropping the connection: {why}");
        let mut st = lock(&self.state);
        match &st.handle {
            Some(h) => h.shutdown(),
            None => st.pending = true,
        }
    }

    /// Whether the connection is being dropped: checks, first, what the frontend may have
    /// broken since the last look (a refused queue size on one of `vrings`, a fault on
    /// guest memory) and drops it if so. Nothing more is served once this is true.
    pub fn broken_by_frontend(&self, vrings: &[Vring]) -> bool {
        if self.dropped.load(Ordering::Acquire) {
            return true;
        }
        if guest_fault::faults() != self.faults_at_start {
            self.drop_connection(
                "guest memory was truncated under the daemon (SIGBUS on a guest page)",
            );
            return true;
        }
        if let Some(n) = vrings.iter().find_map(Vring::refused_size) {
            self.drop_connection(&format!(
                "the frontend set a virtqueue size of {n}, which is not a power of two"
            ));
            return true;
        }
        false
    }
}
