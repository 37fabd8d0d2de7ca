//! The control queue: task management functions and asynchronous-notification requests.
//! The LUN layer carries out aborts and resets ([`TaskManagement`]); this queue decodes
//! them, asks the workers which commands are in flight, and answers each request when its
//! function has finished, re-checking whenever a command ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::GuestAddressSpace;

use super::queue::{avail_ring_is_corrupt, lock, signal, Vring};
use super::shared::Shared;
use super::worker::Worker;
use crate::backend::guest::{Mem, MemGuard};
use crate::lun::tmf::{TaskManagement, TmfAnswer, TmfRequest};
use crate::lun::{Lun, Route};
use crate::virtio::control::ControlRequest;
use crate::virtio::layout::{response, tmf};
use crate::virtio::ParsedChain;

/// How often a waiting task management function is checked again without a wake-up, and
/// the longest it can wait (its own timeout, with a margin).
const TMF_TICK: Duration = Duration::from_millis(250);
const TMF_TICKS_FOR: Duration = Duration::from_secs(35);

/// A task management function waiting for LUNs to drain.
struct PendingTmf {
    chain: ParsedChain,
    vpos: usize,
    mem: MemGuard,
    function: TaskManagement,
    /// Stops the ticker once the function is answered.
    answered: Arc<AtomicBool>,
}

/// Wakes the control queue's thread every tick while a function waits: commands ending
/// wake it too, but a function's timeout must hold when nothing else happens (a stuck
/// medium), and commands of an earlier connection end without waking this one.
fn start_ticker(sh: &Shared) -> Arc<AtomicBool> {
    let answered = Arc::new(AtomicBool::new(false));
    let (stop, wake) = (answered.clone(), sh.tmf_event.try_clone());
    let spawned = crate::sandbox::spawn(
        crate::sandbox::ThreadKind::Ticker,
        "tmf-ticker",
        move || {
            let Ok(wake) = wake else {
                return;
            };
            let until = Instant::now() + TMF_TICKS_FOR;
            while !stop.load(Ordering::Acquire) && Instant::now() < until {
                std::thread::sleep(TMF_TICK);
                let _ = wake.write(1);
            }
        },
    );
    if let Err(e) = spawned {
        tracing::warn!("cannot start the task management ticker: {e}");
    }
    answered
}

/// Task management functions not answered yet (owned by the control queue's thread).
#[derive(Default)]
pub struct PendingTmfs {
    waiting: Vec<PendingTmf>,
}

fn answer_code(a: TmfAnswer) -> u8 {
    match a {
        TmfAnswer::Complete => response::FUNCTION_COMPLETE,
        TmfAnswer::Rejected => response::FUNCTION_REJECTED,
        TmfAnswer::Failed => response::FAILURE,
    }
}

/// Whether any worker has `lun`'s command `tag` (any command with None) in flight.
fn in_flight(workers: &[Arc<Mutex<Worker>>], lun: &Arc<Lun>, tag: Option<u64>) -> bool {
    workers.iter().any(|w| lock(w).has_task(lun, tag))
}

impl PendingTmfs {
    /// Serves every request on the control queue.
    pub fn process_control(
        &mut self,
        sh: &Shared,
        workers: &[Arc<Mutex<Worker>>],
        vrings: &[Vring],
        vpos: usize,
        queue: u16,
    ) {
        let Some(vring) = vrings.get(vpos) else {
            return;
        };
        if sh.is_broken(queue) {
            return;
        }
        let mem = sh.mem.memory();
        let mut answered = false;
        loop {
            let _ = vring.disable_notification();
            loop {
                let mut parsed = ParsedChain::new();
                if !vring.pop_chain(&mem, &mut parsed) {
                    if avail_ring_is_corrupt(vring, &mem) {
                        sh.mark_broken(queue);
                        return;
                    }
                    break;
                }
                if let Some(used) = self.handle(sh, workers, parsed, vpos, &mem) {
                    let _ = vring.add_used(used.0, used.1);
                    answered = true;
                }
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
        if answered {
            signal(vring);
        }
    }

    /// Handles one control request; returns `(head, used length)` when answered now.
    fn handle(
        &mut self,
        sh: &Shared,
        workers: &[Arc<Mutex<Worker>>],
        chain: ParsedChain,
        vpos: usize,
        mem: &MemGuard,
    ) -> Option<(u16, u32)> {
        let m: &Mem = mem;
        let head = chain.head;
        if chain.error.is_some() {
            return Some((head, 0));
        }
        let req = ControlRequest::parse(m, &chain.readable);
        let answer = |code: u8| Some((head, chain.writable.write_from(m, 0, &[code]) as u32));
        let (subtype, lun, tag) = match req {
            ControlRequest::An { .. } => {
                // No asynchronous events are reported: event_actual 0.
                let mut out = [0u8; 5];
                out[4] = response::OK;
                return Some((head, chain.writable.write_from(m, 0, &out) as u32));
            }
            ControlRequest::Unknown(_) | ControlRequest::Short => return Some((head, 0)),
            ControlRequest::Tmf { subtype, lun, tag } => (subtype, lun, tag),
        };
        let table = sh.luns.load();
        let (target, found) = match table.route(&lun) {
            Route::BadTarget => return answer(response::BAD_TARGET),
            Route::MissingLun { target } => (target, None),
            Route::Lun { target, lun } => (target, Some(lun.clone())),
        };
        if found.is_none() && subtype != tmf::I_T_NEXUS_RESET {
            return answer(response::INCORRECT_LUN);
        }
        let request = match subtype {
            tmf::ABORT_TASK => TmfRequest::AbortTask { tag },
            tmf::ABORT_TASK_SET => TmfRequest::AbortTaskSet,
            tmf::CLEAR_TASK_SET => TmfRequest::ClearTaskSet,
            tmf::LOGICAL_UNIT_RESET => TmfRequest::LogicalUnitReset,
            tmf::I_T_NEXUS_RESET => TmfRequest::ItNexusReset,
            tmf::QUERY_TASK | tmf::QUERY_TASK_SET => {
                let Some(l) = found else {
                    return answer(response::INCORRECT_LUN);
                };
                let tag = (subtype == tmf::QUERY_TASK).then_some(tag);
                return answer(if in_flight(workers, &l, tag) {
                    response::FUNCTION_SUCCEEDED
                } else {
                    response::FUNCTION_COMPLETE
                });
            }
            _ => return answer(response::FUNCTION_REJECTED),
        };
        let luns: Vec<Arc<Lun>> = match request {
            TmfRequest::ItNexusReset => table
                .luns()
                .filter(|(t, _, _)| *t == target)
                .map(|(_, _, l)| l.clone())
                .collect(),
            _ => found.into_iter().collect(),
        };
        // Commands held back by I/O limits never started: they end ABORTED at once.
        let abort_tag = match request {
            TmfRequest::AbortTask { tag } => Some(tag),
            _ => None,
        };
        for l in &luns {
            for w in workers {
                lock(w).abort_deferred(l, abort_tag, sh);
            }
        }
        let remote_id = |l: &Arc<Lun>, tag| workers.iter().find_map(|w| lock(w).remote_id(l, tag));
        let function = TaskManagement::start(request, luns, remote_id, &sh.tmf_event);
        let has_task = |l: &Arc<Lun>, tag| in_flight(workers, l, Some(tag));
        if let Some(a) = function.poll(has_task) {
            return answer(answer_code(a));
        }
        sh.tmf_waiting.fetch_add(1, Ordering::AcqRel);
        self.waiting.push(PendingTmf {
            chain,
            vpos,
            mem: mem.clone(),
            function,
            answered: start_ticker(sh),
        });
        None
    }

    /// Answers waiting task management functions that have finished.
    pub fn retry(&mut self, sh: &Shared, workers: &[Arc<Mutex<Worker>>], vrings: &[Vring]) {
        let mut i = 0;
        while i < self.waiting.len() {
            let p = &self.waiting[i];
            let has_task = |l: &Arc<Lun>, tag| in_flight(workers, l, Some(tag));
            let Some(a) = p.function.poll(has_task) else {
                i += 1;
                continue;
            };
            let p = self.waiting.swap_remove(i);
            p.answered.store(true, Ordering::Release);
            sh.tmf_waiting.fetch_sub(1, Ordering::AcqRel);
            let m: &Mem = &p.mem;
            let used = p.chain.writable.write_from(m, 0, &[answer_code(a)]) as u32;
            if let Some(vring) = vrings.get(p.vpos) {
                let _ = vring.add_used(p.chain.head, used);
                signal(vring);
            }
        }
    }
}
