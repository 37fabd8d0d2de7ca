//! Busy polling after work: a worker thread keeps serving its request queues and
//! completions without sleeping for as long as work keeps arriving within its window (see
//! `poll_budget`) of the last piece, so a new request or completion is picked up without
//! an epoll wake-up, and the guest is not asked to kick while the thread polls.
//!
//! Guest notifications stay off for the whole session (the worker's `polling` switch
//! keeps `process_queue` from re-enabling them after each batch); when the window passes
//! without work they are turned back on and every ring is checked once more, so a request
//! posted just before that is served now rather than lost (it sent no kick).

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::poll_budget::{Catch, PollBudget};
use super::queue::{lock, Vring};
use super::shared::Shared;
use super::worker::Worker;
use crate::heartbeat::Heartbeat;

/// Polls thread `thread_id`'s request queues and completions until `budget`'s window
/// passes without work (at once for a zero window), telling `budget` how long each catch
/// took, then turns guest notifications back on. Returns when the thread last found work.
/// Beats `beat` on every pass: under steady load it may not return to its epoll loop for
/// long.
pub fn busy_poll(
    sh: &Shared,
    worker: &Mutex<Worker>,
    vrings: &[Vring],
    thread_id: usize,
    beat: &Heartbeat,
    budget: &mut PollBudget,
) -> Instant {
    let mut last_work = Instant::now();
    if budget.window().is_zero() || sh.request_queues_of(thread_id).next().is_none() {
        lock(worker).set_polling(false);
        return last_work;
    }
    let mut rounds: u64 = 0;
    loop {
        while last_work.elapsed() < budget.window() && !stopped(sh) {
            beat.beat();
            rounds += 1;
            let found = poll_once(sh, worker, vrings, thread_id);
            if !found.is_empty() {
                let now = Instant::now();
                budget.found_after(now.saturating_duration_since(last_work), found);
                last_work = now;
            } else {
                std::hint::spin_loop();
            }
        }
        // The window passed without work: notifications on, then one more look, so work
        // posted before they were on (without a kick) is not left waiting.
        let more = {
            let mut w = lock(worker);
            if w.in_flight() > 0 && !budget.window().is_zero() {
                budget.device_outlasted(last_work.elapsed());
            }
            w.set_polling(false);
            let mut more = w.has_completions();
            for (vpos, queue) in sh.request_queues_of(thread_id) {
                let Some(vring) = vrings.get(vpos) else {
                    continue;
                };
                if vring.get_ref().get_queue().ready() {
                    let pending = matches!(vring.enable_notification(), Ok(true));
                    // A full worker resumes its queues when a command ends; a broken
                    // queue is not served until it is reset.
                    more |= pending && !w.is_throttled() && !sh.is_broken(queue);
                }
            }
            if more && !stopped(sh) && !budget.window().is_zero() {
                w.set_polling(true);
            }
            more
        };
        if !more || stopped(sh) {
            break;
        }
        if budget.window().is_zero() {
            // Polling was found costly: serve what came in the normal way.
            drop_into_event_path(sh, worker, vrings, thread_id);
            last_work = Instant::now();
            break;
        }
        last_work = Instant::now();
    }
    sh.luns.queue_stats().polled(rounds);
    last_work
}

/// Serves once, with notifications re-enabled after each batch, what arrived as polling
/// stopped (without a kick, so no wake-up would come for it).
fn drop_into_event_path(sh: &Shared, worker: &Mutex<Worker>, vrings: &[Vring], thread_id: usize) {
    let mut w = lock(worker);
    w.set_polling(false);
    if w.has_completions() {
        w.complete(sh, vrings);
    }
    if w.is_throttled() {
        return;
    }
    for (vpos, queue) in sh.request_queues_of(thread_id) {
        if vrings
            .get(vpos)
            .is_some_and(|v| v.get_ref().get_queue().ready())
        {
            w.process_queue(sh, vrings, vpos, queue);
        }
    }
}

/// The daemon stops or the frontend broke the connection: no more polling.
fn stopped(sh: &Shared) -> bool {
    sh.stopping.load(Ordering::Acquire) || sh.connection.broken_by_frontend()
}

/// One pass over the thread's completions, held-back commands and request queues;
/// returns what it found: the requests waiting in the rings, and one answer for
/// completions and one for held-back commands come due.
fn poll_once(sh: &Shared, worker: &Mutex<Worker>, vrings: &[Vring], thread_id: usize) -> Catch {
    let mut found = Catch::default();
    let mut w = lock(worker);
    if w.has_completions() {
        w.complete(sh, vrings);
        found.answers += 1;
    }
    if w.deferred_due() {
        // The timer's wake-up waits in epoll while this thread polls.
        w.on_timer(sh, vrings);
        found.answers += 1;
    }
    if w.is_throttled() {
        // Every slot is busy: the queues are resumed when a command ends.
        return found;
    }
    let mem = sh.mem.memory();
    for (vpos, queue) in sh.request_queues_of(thread_id) {
        let Some(vring) = vrings.get(vpos) else {
            continue;
        };
        let pending = {
            let v = vring.get_ref();
            let q = v.get_queue();
            if q.ready() && !sh.is_broken(queue) {
                q.avail_idx(&*mem, Ordering::Acquire)
                    .map_or(0, |i| i.0.wrapping_sub(q.next_avail()))
            } else {
                0
            }
        };
        if pending > 0 {
            w.process_queue(sh, vrings, vpos, queue);
            found.requests += u32::from(pending);
        }
    }
    found
}
