//! Ending a connection whose frontend broke the protocol: a memory table or virtqueue size
//! the device cannot take, or guest memory truncated under the daemon (a SIGBUS turned into
//! a counted fault by `backend::guest_fault`). Any thread may ask, even before the
//! connection's socket was handed over: the request is then kept and carried out as soon
//! as it arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::queue::lock;
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
    handle: Option<UnixStream>,
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
    /// Hands over (a clone of) the connection's socket; ends it at once if that was
    /// already asked.
    pub fn attach(&self, socket: UnixStream) {
        let mut st = lock(&self.state);
        if st.pending {
            let _ = socket.shutdown(Shutdown::Both);
        }
        st.handle = Some(socket);
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
            Some(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
            None => st.pending = true,
        }
    }

    /// Whether the daemon dropped the connection.
    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// Whether the connection is being dropped: checks, first, whether guest memory
    /// faulted since the last look, and drops it if so. Nothing more is served once this
    /// is true.
    pub fn broken_by_frontend(&self) -> bool {
        if self.dropped.load(Ordering::Acquire) {
            return true;
        }
        if guest_fault::faults() != self.faults_at_start {
            self.drop_connection(
                "guest memory was truncated under the daemon (SIGBUS on a guest page)",
            );
            return true;
        }
        false
    }
}
