//! What systemd is told (sd_notify, through the `sd-notify` crate): READY=1 once every LUN
//! is open and the socket listens, STATUS= lines (LUNs, whether QEMU is connected, iSCSI
//! paths down), STOPPING=1 at shutdown, and WATCHDOG=1 while every worker thread makes
//! progress. `NOTIFY_SOCKET` and `WATCHDOG_USEC` are read and left in the environment:
//! an upgrade in place executes the new program in the same process, which notifies
//! systemd again through them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::heartbeat::{Heartbeats, ProgressCheck};

/// How often the status line is recomputed (it is sent only when it changes).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The daemon's link to its service manager.
pub struct Service {
    /// `WatchdogSec=` of the unit, when set.
    watchdog: Option<Duration>,
    heartbeats: Heartbeats,
    stopping: AtomicBool,
}

/// The status line: `<n> LUNs, QEMU connected` or `... waiting for QEMU`, and the iSCSI
/// paths down when there are any.
pub fn status_text(luns: usize, connected: bool, paths_down: usize) -> String {
    let luns = match luns {
        1 => "1 LUN".to_string(),
        n => format!("{n} LUNs"),
    };
    let frontend = if connected {
        "QEMU connected"
    } else {
        "waiting for QEMU"
    };
    match paths_down {
        0 => format!("{luns}, {frontend}"),
        1 => format!("{luns}, {frontend}, 1 iSCSI path down"),
        n => format!("{luns}, {frontend}, {n} iSCSI paths down"),
    }
}

impl Service {
    /// Reads the watchdog settings systemd passed (`WATCHDOG_USEC`, for this process).
    /// With a watchdog, worker threads wake every quarter of its interval when idle and
    /// are checked every half interval.
    pub fn from_environment() -> Arc<Service> {
        let watchdog = sd_notify::watchdog_enabled().filter(|w| !w.is_zero());
        Arc::new(Service {
            watchdog,
            heartbeats: Heartbeats::new(watchdog.map(|w| w / 4)),
            stopping: AtomicBool::new(false),
        })
    }

    /// The registry the worker threads beat in.
    pub fn heartbeats(&self) -> &Heartbeats {
        &self.heartbeats
    }

    /// `WatchdogSec=`, when set.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Everything is open and the socket listens.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A configuration reload begins (RELOADING=1, with the time systemd wants).
    pub fn reloading(&self) {
        let monotonic = format!("MONOTONIC_USEC={}", monotonic_usec());
        send(&[NotifyState::Reloading, NotifyState::Custom(&monotonic)]);
    }

    /// The reload ended (READY=1 again, with its outcome as the status).
    pub fn reloaded(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Shutdown began: no status line replaces `status` from here on.
    pub fn stopping(&self, status: &str) {
        self.stopping.store(true, Ordering::Release);
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// Starts the thread that keeps the status line current (from `status`, polled every
    /// second) and, with a watchdog, sends WATCHDOG=1 every half interval in which every
    /// worker thread's heartbeat moved. A thread stuck in a call stops the pings, and
    /// systemd ends the daemon after `WatchdogSec=` (then `Restart=` applies).
    pub fn start_monitor(
        self: &Arc<Self>,
        status: impl Fn() -> String + Send + 'static,
    ) -> std::io::Result<()> {
        let me = self.clone();
        crate::sandbox::spawn(crate::sandbox::ThreadKind::Service, "service", move || {
            me.monitor(&status)
        })?;
        Ok(())
    }

    fn monitor(&self, status: &dyn Fn() -> String) {
        let check_every = self.watchdog.map(|w| w / 2);
        let tick = check_every.map_or(STATUS_INTERVAL, |c| c.min(STATUS_INTERVAL));
        let mut progress = ProgressCheck::default();
        // The first check only records where the counters are.
        progress.stalled(&self.heartbeats);
        let mut last_check = Instant::now();
        let mut last_status = String::new();
        let mut stalled_before = false;
        loop {
            std::thread::sleep(tick);
            if !self.stopping.load(Ordering::Acquire) {
                let text = status();
                if text != last_status {
                    send(&[NotifyState::Status(&text)]);
                    last_status = text;
                }
            }
            let Some(every) = check_every else {
                continue;
            };
            if last_check.elapsed() < every {
                continue;
            }
            last_check = Instant::now();
            let stalled = progress.stalled(&self.heartbeats);
            if stalled.is_empty() {
                send(&[NotifyState::Watchdog]);
                if stalled_before {
                    tracing::info!("worker threads make progress again; watchdog fed");
                }
                stalled_before = false;
            } else if !stalled_before {
                stalled_before = true;
                tracing::error!(
                    threads = %stalled.join(","),
                    "worker thread made no progress for {every:?}; the watchdog is no longer fed"
                );
            }
        }
    }
}

/// Sends a notification; without systemd (no `NOTIFY_SOCKET`) nothing happens, and a
/// failure costs only that notification.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify the service manager: {e}");
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd's reload protocol wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer, which points at `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_say_luns_frontend_and_paths_down() {
        assert_eq!(status_text(4, false, 0), "4 LUNs, waiting for QEMU");
        assert_eq!(status_text(1, true, 0), "1 LUN, QEMU connected");
        assert_eq!(
            status_text(2, true, 1),
            "2 LUNs, QEMU connected, 1 iSCSI path down"
        );
        assert_eq!(
            status_text(0, false, 3),
            "0 LUNs, waiting for QEMU, 3 iSCSI paths down"
        );
    }
}
