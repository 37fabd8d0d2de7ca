//! One epoll loop per worker thread: it waits on the kicks of the thread's queues, the
//! thread's io_uring completions, task-management wake-ups (thread 0), a "queue became
//! live" wake-up and an exit event, and hands each event to `ScsiDevice::handle_event`.
//! Every wake-up beats the thread's heartbeat; with a watchdog configured an idle loop
//! wakes every tick to beat, so only a thread stuck in a call stops feeding the watchdog.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::ScsiDevice;
use super::poll_budget::PollBudget;
use super::queue::lock;
use super::vring::Vring;
use crate::heartbeat::{Heartbeat, Heartbeats};

/// Tokens above every queue position and device token.
const EXIT_TOKEN: u64 = u64::MAX;
const LIVE_TOKEN: u64 = u64::MAX - 1;

/// What the protocol thread shares with one worker thread's loop.
struct LoopControl {
    epoll: Epoll,
    exit: EventFd,
    /// Queue positions that became live: served once at once, so buffers the guest posted
    /// before (without a kick, or with one that was consumed) are not left waiting.
    became_live: Mutex<BTreeSet<u16>>,
    live_event: EventFd,
}

/// A worker thread's event loop and the handle to stop it.
pub struct QueueThread {
    control: Arc<LoopControl>,
    handle: Option<JoinHandle<()>>,
}

impl QueueThread {
    /// Starts the loop of worker `thread_id`, serving `vrings` (the thread's queues, in
    /// the order of their tokens) and the device's extra descriptors `(fd, token)`. The
    /// loop beats a heartbeat of `heartbeats` on every wake-up.
    pub fn start(
        device: ScsiDevice,
        thread_id: usize,
        vrings: Vec<Vring>,
        extra: &[(RawFd, u64)],
        heartbeats: &Heartbeats,
    ) -> io::Result<QueueThread> {
        let control = Arc::new(LoopControl {
            epoll: Epoll::new()?,
            exit: EventFd::new(EFD_NONBLOCK)?,
            became_live: Mutex::new(BTreeSet::new()),
            live_event: EventFd::new(EFD_NONBLOCK)?,
        });
        let add = |fd: RawFd, token: u64| {
            control.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(control.exit.as_raw_fd(), EXIT_TOKEN)?;
        add(control.live_event.as_raw_fd(), LIVE_TOKEN)?;
        for &(fd, token) in extra {
            add(fd, token)?;
        }
        let c = control.clone();
        let name = format!("vscsid-q{thread_id}");
        let beat = heartbeats.register(&name);
        let timeout_ms = heartbeats.tick().map_or(-1, |t| {
            i32::try_from(t.as_millis().max(1)).unwrap_or(i32::MAX)
        });
        let handle = crate::sandbox::spawn(crate::sandbox::ThreadKind::Worker, name, move || {
            run(&c, &device, thread_id, &vrings, &beat, timeout_ms)
        })?;
        Ok(QueueThread {
            control,
            handle: Some(handle),
        })
    }

    /// Watches (or stops watching) the kick of the queue at `position`; a queue that
    /// becomes live is served once at once.
    pub fn watch_kick(&self, position: u16, kick: RawFd, live: bool) -> io::Result<()> {
        let ev = EpollEvent::new(EventSet::IN, u64::from(position));
        if live {
            match self.control.epoll.ctl(ControlOperation::Add, kick, ev) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
            lock(&self.control.became_live).insert(position);
            self.control.live_event.write(1)?;
        } else {
            lock(&self.control.became_live).remove(&position);
            let _ = self.control.epoll.ctl(ControlOperation::Delete, kick, ev);
        }
        Ok(())
    }

    /// Stops the loop and waits for the thread.
    pub fn stop(mut self) {
        let _ = self.control.exit.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for QueueThread {
    fn drop(&mut self) {
        let _ = self.control.exit.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The loop; `timeout_ms` bounds each wait (-1: none). After the events of each wake-up
/// the thread busy-polls for its window (see `poll_budget`), which follows how soon work
/// came after the last work.
fn run(
    control: &LoopControl,
    device: &ScsiDevice,
    thread_id: usize,
    vrings: &[Vring],
    beat: &Heartbeat,
    timeout_ms: i32,
) {
    let mut events = vec![EpollEvent::default(); 64];
    let mut budget = PollBudget::new(device.poll_setting());
    let mut last_work = Instant::now();
    loop {
        let waited = control.epoll.wait(timeout_ms, &mut events);
        beat.beat();
        let n = match waited {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(thread = thread_id, "epoll failed, thread ends: {e}");
                return;
            }
        };
        budget.woke_after(last_work.elapsed());
        let window = budget.window();
        device.woke(thread_id, window);
        for ev in &events[..n] {
            match ev.data() {
                EXIT_TOKEN => return,
                LIVE_TOKEN => {
                    let _ = control.live_event.read();
                    let positions = std::mem::take(&mut *lock(&control.became_live));
                    for p in positions {
                        device.handle_event(p, vrings, thread_id);
                    }
                }
                token => {
                    let Ok(t) = u16::try_from(token) else {
                        continue;
                    };
                    if let Some(vring) = vrings.get(usize::from(t)) {
                        if !vring.read_kick() {
                            continue;
                        }
                    }
                    device.handle_event(t, vrings, thread_id);
                }
            }
        }
        last_work = device.poll_after_events(vrings, thread_id, beat, &mut budget);
    }
}
