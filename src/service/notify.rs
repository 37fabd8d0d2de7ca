//! What systemd is told (sd_notify, through the `sd-notify` crate): READY=1 once every LUN
//! is open and the socket listens, STATUS= lines (LUNs, whether QEMU is connected, iSCSI
//! paths down), STOPPING=1 at shutdown, and WATCHDOG=1 while every worker thread makes
//! progress. `NOTIFY_SOCKET` and `WATCHDOG_USEC` are read and left in the environment:
//! an upgrade in place executes the new program in the same process, which notifies
//! systemd again through them.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::heartbeat::{Heartbeats, ProgressCheck};
use crate::status_bell::StatusBell;

/// How often the status line is recomputed while it shows state that changes unannounced
/// (it is sent only when it changes).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a reload's outcome stays the status line before the regular line comes back
/// (the outcome is in the journal too).
const OUTCOME_SHOWN_FOR: Duration = Duration::from_secs(5);

/// The daemon's link to its service manager.
pub struct Service {
    /// `WatchdogSec=` of the unit, when set.
    watchdog: Option<Duration>,
    heartbeats: Heartbeats,
    /// Rung by what changes the status line.
    bell: Arc<StatusBell>,
    /// The status line systemd shows; every STATUS= is sent holding it, so lines from
    /// different threads reach systemd in the order this records.
    shown: Mutex<Shown>,
}

/// The status line last sent, and until when it must stay (a reload's outcome); after
/// shutdown began no line replaces it.
#[derive(Default)]
struct Shown {
    text: String,
    keep_until: Option<Instant>,
    stopping: bool,
}

/// The status line now, and whether it shows state that changes without ringing the bell
/// (iSCSI paths going down or up), which must then be looked at every second.
pub struct StatusLine {
    pub text: String,
    pub unannounced_changes: bool,
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
            bell: Arc::default(),
            shown: Mutex::default(),
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
        self.show_ready(status, None);
    }

    /// A configuration reload begins (RELOADING=1, with the time systemd wants).
    pub fn reloading(&self) {
        let monotonic = format!("MONOTONIC_USEC={}", monotonic_usec());
        send(&[NotifyState::Reloading, NotifyState::Custom(&monotonic)]);
    }

    /// The reload ended (READY=1 again, with its outcome as the status for
    /// `OUTCOME_SHOWN_FOR`; then the regular line comes back).
    pub fn reloaded(&self, status: &str) {
        self.show_ready(status, Some(Instant::now() + OUTCOME_SHOWN_FOR));
        self.bell.ring();
    }

    /// Shutdown began: no status line replaces `status` from here on.
    pub fn stopping(&self, status: &str) {
        let mut shown = self.shown();
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
        shown.text = status.to_string();
        shown.stopping = true;
    }

    /// READY=1 with `status`, which the status thread leaves alone until `keep_until`.
    fn show_ready(&self, status: &str, keep_until: Option<Instant>) {
        let mut shown = self.shown();
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
        shown.text = status.to_string();
        shown.keep_until = keep_until;
    }

    fn shown(&self) -> MutexGuard<'_, Shown> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the regular line `text` if it is not what systemd shows, unless shutdown
    /// began or a reload's outcome must stay: then returns how much longer it stays.
    fn refresh_at(&self, text: String, now: Instant) -> Option<Duration> {
        let mut shown = self.shown();
        if shown.stopping {
            return None;
        }
        if let Some(until) = shown.keep_until {
            if until > now {
                return Some(until - now);
            }
            shown.keep_until = None;
        }
        if text != shown.text {
            send(&[NotifyState::Status(&text)]);
            shown.text = text;
        }
        None
    }

    /// Starts the thread that keeps the status line current and, with a watchdog, sends
    /// WATCHDOG=1 every half interval in which every worker thread's heartbeat moved. A
    /// thread stuck in a call stops the pings, and systemd ends the daemon after
    /// `WatchdogSec=` (then `Restart=` applies). The line is recomputed from `status` when
    /// the bell rings (a connection, a LUN change) and, while it says some state changes
    /// unannounced (iSCSI paths), every second; otherwise the thread sleeps, so an idle
    /// daemon without a watchdog has no thread that wakes.
    pub fn start_monitor(
        self: &Arc<Self>,
        status: impl Fn() -> StatusLine + Send + 'static,
    ) -> std::io::Result<()> {
        let me = self.clone();
        crate::sandbox::spawn(crate::sandbox::ThreadKind::Service, "service", move || {
            me.monitor(&status)
        })?;
        Ok(())
    }

    /// The bell that wakes the status line.
    pub fn status_bell(&self) -> Arc<StatusBell> {
        self.bell.clone()
    }

    fn monitor(&self, status: &dyn Fn() -> StatusLine) {
        let check_every = self.watchdog.map(|w| w / 2);
        let mut progress = ProgressCheck::default();
        // The first check only records where the counters are.
        progress.stalled(&self.heartbeats);
        let mut last_check = Instant::now();
        let mut stalled_before = false;
        let mut rings = self.bell.rings();
        loop {
            let line = status();
            let unannounced = line.unannounced_changes;
            let outcome_stays = self.refresh_at(line.text, Instant::now());
            let until_check = check_every.map(|c| c.saturating_sub(last_check.elapsed()));
            let sleep = earliest(longest_sleep(until_check, unannounced), outcome_stays);
            rings = self.bell.wait(rings, sleep);
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

/// How long the service thread may sleep unless the bell rings: until the next watchdog
/// check, and at most a second while the status shows state that changes unannounced; no
/// limit when neither applies.
fn longest_sleep(until_check: Option<Duration>, unannounced_changes: bool) -> Option<Duration> {
    earliest(until_check, unannounced_changes.then_some(STATUS_INTERVAL))
}

/// The shorter of two limits (None: no limit).
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
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
    fn the_service_thread_sleeps_without_limit_only_when_nothing_needs_a_look() {
        let check = Some(Duration::from_millis(2500));
        assert_eq!(longest_sleep(None, false), None);
        assert_eq!(longest_sleep(None, true), Some(STATUS_INTERVAL));
        assert_eq!(longest_sleep(check, false), check);
        assert_eq!(longest_sleep(check, true), Some(STATUS_INTERVAL));
        let soon = Some(Duration::from_millis(200));
        assert_eq!(longest_sleep(soon, true), soon);
    }

    #[test]
    fn a_reload_outcome_stays_a_while_then_the_regular_line_comes_back() {
        let service = Service::from_environment();
        let now = Instant::now();
        service.ready("1 LUN, waiting for QEMU");
        assert_eq!(
            service.refresh_at("1 LUN, waiting for QEMU".into(), now),
            None
        );
        service.reloaded("configuration reloaded: 1 change(s) applied");
        let stays = service.refresh_at("2 LUNs, waiting for QEMU".into(), Instant::now());
        assert!(stays.is_some_and(|d| d <= OUTCOME_SHOWN_FOR), "{stays:?}");
        assert_eq!(
            service.shown().text,
            "configuration reloaded: 1 change(s) applied"
        );
        let later = Instant::now() + OUTCOME_SHOWN_FOR;
        assert_eq!(
            service.refresh_at("2 LUNs, waiting for QEMU".into(), later),
            None
        );
        assert_eq!(service.shown().text, "2 LUNs, waiting for QEMU");
        service.stopping("stopping: draining in-flight I/O");
        assert_eq!(
            service.refresh_at("2 LUNs, QEMU connected".into(), later),
            None
        );
        assert_eq!(service.shown().text, "stopping: draining in-flight I/O");
    }

    #[test]
    fn the_earliest_limit_wins() {
        let (a, b) = (Duration::from_millis(10), Duration::from_millis(20));
        assert_eq!(earliest(Some(a), Some(b)), Some(a));
        assert_eq!(earliest(None, Some(b)), Some(b));
        assert_eq!(earliest(Some(a), None), Some(a));
        assert_eq!(earliest(None, None), None);
    }

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
