//! The vhost-user device layer: the socket, the daemon's connection lifecycle, the device's
//! queues and the worker threads that serve them. It knows that a request has a LUN
//! address, a CDB, data buffers and an answer; what a LUN does with it is the LUN layer's.

mod busy_poll;
mod connection;
mod control_queue;
mod device;
mod dirty_log;
mod event_loop;
mod events;
mod inflight;
mod inflight_region;
mod poll_budget;
mod queue;
mod remote;
mod session;
mod shared;
mod slot;
mod socket;
mod vring;
mod worker;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::os::unix::net::UnixStream;

use std::os::unix::net::UnixListener;

use vhost::vhost_user::BackendReqHandler;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

pub use device::ScsiDevice;
// For harnesses that drive the device without a socket (the fuzz targets).
pub use dirty_log::DirtyLog;
use session::FrontendSession;
pub use socket::{group_id, SocketHandover, SocketRemover, VhostSocket};
pub use vring::Vring;

use crate::backend::guest::GuestMem;
use crate::config::Config;
use crate::heartbeat::Heartbeats;
use crate::lun::LiveLuns;
use crate::status_bell::StatusBell;

/// How long SIGTERM waits for in-flight commands; the flush after it must fit in what is
/// left of the shutdown budget.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(25);

/// The device serving the current connection, for the signal handler; `bell` rings when a
/// frontend connects or leaves (the service's status line says which).
#[derive(Default, Clone)]
pub struct CurrentDevice(Arc<Mutex<Option<ScsiDevice>>>, Arc<StatusBell>);

impl CurrentDevice {
    /// No device yet; `bell` rings at every connection and disconnection.
    pub fn ringing(bell: Arc<StatusBell>) -> CurrentDevice {
        CurrentDevice(Arc::default(), bell)
    }

    /// Stops taking new requests and waits, at most `within`, for in-flight ones. Returns
    /// false if commands were still in flight at the deadline.
    pub fn drain_within(&self, within: Duration) -> bool {
        let dev = queue::lock(&self.0).clone();
        match dev {
            Some(d) => {
                d.shared
                    .stopping
                    .store(true, std::sync::atomic::Ordering::Release);
                // Commands held back by I/O limits go now (limits are off while stopping).
                d.shared.wake_workers();
                d.shared.inflight.wait_all_idle(within)
            }
            None => true,
        }
    }

    /// Takes requests again after a drain that led nowhere (an upgrade that failed).
    pub fn resume(&self) {
        if let Some(d) = queue::lock(&self.0).clone() {
            d.shared
                .stopping
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether a frontend is connected.
    pub fn is_connected(&self) -> bool {
        queue::lock(&self.0).is_some()
    }

    /// Stops taking new requests and waits (bounded) for in-flight ones to complete.
    /// Returns false if commands were still in flight at the deadline.
    pub fn drain(&self) -> bool {
        self.drain_within(SHUTDOWN_DRAIN)
    }
}

/// Serves frontends on the daemon's socket: one connection, or one after another with
/// `cfg.reconnect`. The LUN table (and its open files) outlives connections. One listening
/// socket for the daemon's life: a frontend that connects while the previous connection is
/// being torn down waits in its backlog instead of being reset. Every worker thread beats a
/// heartbeat of `heartbeats` (the service watchdog watches them).
pub fn serve(
    cfg: &Config,
    luns: Arc<LiveLuns>,
    mut socket: VhostSocket,
    current: &CurrentDevice,
    heartbeats: &Heartbeats,
) -> Result<(), String> {
    tracing::info!(socket = %socket.path().display(), "listening");
    let path = socket.path().to_path_buf();
    loop {
        serve_one(
            cfg,
            luns.clone(),
            &mut socket.listener,
            &path,
            current,
            heartbeats,
        )?;
        if !cfg.reconnect {
            return Ok(());
        }
        tracing::info!("frontend disconnected; waiting for the next connection");
    }
}

fn serve_one(
    cfg: &Config,
    luns: Arc<LiveLuns>,
    listener: &mut UnixListener,
    socket: &Path,
    current: &CurrentDevice,
    heartbeats: &Heartbeats,
) -> Result<(), String> {
    let mem: GuestMem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
    let dev = ScsiDevice::new(cfg, luns, mem.clone())
        .map_err(|e| format!("cannot set up the device: {e}"))?;
    let session = FrontendSession::new(dev.clone(), mem, heartbeats)
        .map_err(|e| format!("cannot start the worker threads: {e}"))?;
    let session = Arc::new(Mutex::new(session));
    let stream = accept(listener)
        .map_err(|e| format!("cannot accept a connection on {}: {e}", socket.display()))?;
    let control = stream
        .try_clone()
        .map_err(|e| format!("cannot keep the connection: {e}"))?;
    dev.shared.connection.attach(control);
    *queue::lock(&current.0) = Some(dev.clone());
    current.1.ring();
    tracing::info!("frontend connected");
    let mut handler = BackendReqHandler::from_stream(stream, session.clone());
    let result = loop {
        if let Err(e) = handler.handle_request() {
            break e;
        }
    };
    queue::lock(&session).stop_threads();
    *queue::lock(&current.0) = None;
    current.1.ring();
    drop(handler);
    drop(session);
    // Before the next connection: the LUNs must not count this one's commands forever.
    let _abandoned = dev.abandon_commands();
    match result {
        vhost::vhost_user::Error::Disconnected
        | vhost::vhost_user::Error::PartialMessage
        | vhost::vhost_user::Error::SocketBroken(_) => tracing::info!("frontend disconnected"),
        e if dev.shared.connection.is_dropped() => tracing::info!("connection dropped: {e}"),
        e => tracing::warn!("connection ended: {e}"),
    }
    Ok(())
}

/// Waits for the next frontend (an interrupted wait retries).
fn accept(listener: &mut UnixListener) -> std::io::Result<UnixStream> {
    loop {
        match listener.accept() {
            Ok((s, _)) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
