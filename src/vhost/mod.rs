//! The vhost-user device layer: the socket, the daemon's connection lifecycle, the device's
//! queues and the worker threads that serve them. It knows that a request has a LUN
//! address, a CDB, data buffers and an answer; what a LUN does with it is the LUN layer's.

mod connection;
mod control_queue;
mod device;
mod inflight;
mod queue;
mod remote;
mod shared;
mod slot;
mod socket;
mod vring;
mod worker;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

pub use device::ScsiDevice;
pub use socket::{SocketRemover, VhostSocket};

use crate::backend::guest::GuestMem;
use crate::config::Config;
use crate::lun::{Lun, LunTable};

/// How long SIGTERM waits for in-flight commands; the flush after it must fit in what is
/// left of the shutdown budget.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(25);

/// The device serving the current connection, for the signal handler.
#[derive(Default, Clone)]
pub struct CurrentDevice(Arc<Mutex<Option<ScsiDevice>>>);

impl CurrentDevice {
    /// Stops taking new requests and waits (bounded) for in-flight ones to complete.
    /// Returns false if commands were still in flight at the deadline.
    pub fn drain(&self) -> bool {
        let dev = queue::lock(&self.0).clone();
        match dev {
            Some(d) => {
                d.shared
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Release);
                d.shared.inflight.wait_all_idle(SHUTDOWN_DRAIN)
            }
            None => true,
        }
    }
}

/// Serves frontends on the daemon's socket: one connection, or one after another with
/// `cfg.reconnect`. The LUN table (and its open files) outlives connections. One listening
/// socket for the daemon's life: a frontend that connects while the previous connection is
/// being torn down waits in its backlog instead of being reset.
pub fn serve(
    cfg: &Config,
    luns: Arc<LunTable<Lun>>,
    mut socket: VhostSocket,
    current: &CurrentDevice,
) -> Result<(), String> {
    tracing::info!(socket = %socket.path().display(), "listening");
    let path = socket.path().to_path_buf();
    loop {
        serve_one(cfg, luns.clone(), &mut socket.listener, &path, current)?;
        if !cfg.reconnect {
            return Ok(());
        }
        tracing::info!("frontend disconnected; waiting for the next connection");
    }
}

fn serve_one(
    cfg: &Config,
    luns: Arc<LunTable<Lun>>,
    listener: &mut Listener,
    socket: &Path,
    current: &CurrentDevice,
) -> Result<(), String> {
    let mem: GuestMem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
    let dev = ScsiDevice::new(cfg, luns, mem.clone())
        .map_err(|e| format!("cannot set up the device: {e}"))?;
    let mut daemon = VhostUserDaemon::new("vscsid".into(), dev.clone(), mem)
        .map_err(|e| format!("cannot create the vhost-user daemon: {e}"))?;
    let handlers = daemon.get_epoll_handlers();
    for (t, fd) in dev.ring_fds().into_iter().enumerate() {
        if let Some(h) = handlers.get(t) {
            h.register_listener(fd, EventSet::IN, dev.ring_token())
                .map_err(|e| format!("cannot watch io_uring completions: {e}"))?;
        }
    }
    if let Some(h) = handlers.first() {
        use std::os::unix::io::AsRawFd;
        h.register_listener(
            dev.shared.tmf_event.as_raw_fd(),
            EventSet::IN,
            dev.tmf_token(),
        )
        .map_err(|e| format!("cannot watch task management wake-ups: {e}"))?;
    }
    *queue::lock(&current.0) = Some(dev.clone());
    daemon
        .start(listener)
        .map_err(|e| format!("cannot accept a connection on {}: {e}", socket.display()))?;
    dev.shared.connection.attach(daemon.shutdown_handle());
    tracing::info!("frontend connected");
    let result = daemon.wait();
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
    *queue::lock(&current.0) = None;
    drop(daemon);
    dev.close_leaked_exit_fds();
    // Before the next connection: the LUNs must not count this one's commands forever.
    let _abandoned = dev.abandon_commands();
    match result {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => tracing::info!("frontend disconnected"),
        Err(e) => tracing::warn!("connection ended: {e}"),
    }
    Ok(())
}
