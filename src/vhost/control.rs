//! The control queue: task management functions and asynchronous-notification requests.
//!
//! Aborts and resets answer only once the LUN's accepted commands have completed, so no
//! write reaches the medium after the guest was told its task set is gone; commands are
//! never cancelled half-way through the medium. For passthrough (iSCSI) LUNs the function
//! is first forwarded to the target as the matching iSCSI task management function (on a
//! helper thread, so the control queue keeps serving); the commands it aborts there end
//! as ABORTED, and the answer waits for both the target and the drain.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::device::{lock, Shared};
use super::lun::{Lun, Medium};
use super::slot::{Mem, MemGuard, Vring};
use super::worker::{avail_ring_is_corrupt, signal};
use crate::scsi::target::Route;
use crate::scsi::task::{TmfFunction, TransportError};
use crate::virtio::control::ControlRequest;
use crate::virtio::layout::{response, tmf};
use crate::virtio::ParsedChain;

/// How long an abort or reset waits for a LUN's commands before failing.
const TMF_TIMEOUT: Duration = Duration::from_secs(30);

/// A task management function waiting for LUNs to drain.
struct PendingTmf {
    chain: ParsedChain,
    vpos: usize,
    mem: MemGuard,
    luns: Vec<Arc<Lun>>,
    reset: bool,
    /// ABORT TASK waits for its one task, not for the whole LUN.
    task: Option<u64>,
    deadline: Instant,
    /// Answers of the function forwarded to passthrough LUNs' targets, one per LUN.
    forwarded: Vec<Arc<Forwarded>>,
}

/// The target's answer to a forwarded task management function.
#[derive(Default)]
struct Forwarded {
    answer: Mutex<Option<Result<u8, TransportError>>>,
}

impl Forwarded {
    fn get(&self) -> Option<Result<u8, TransportError>> {
        self.answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Task management functions not answered yet (owned by the control queue's thread).
#[derive(Default)]
pub struct PendingTmfs {
    waiting: Vec<PendingTmf>,
}

impl PendingTmfs {
    /// Serves every request on the control queue.
    pub fn process_control(&mut self, sh: &Shared, vrings: &[Vring], vpos: usize, queue: u16) {
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
                let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(&*mem);
                let Some(chain) = chain else {
                    if avail_ring_is_corrupt(vring, &mem) {
                        sh.mark_broken(queue);
                        return;
                    }
                    break;
                };
                let mut parsed = ParsedChain::new();
                parsed.parse(chain);
                if let Some(used) = self.handle(sh, parsed, vpos, &mem) {
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
        match req {
            ControlRequest::An { .. } => {
                // No asynchronous events are reported: event_actual 0.
                let mut out = [0u8; 5];
                out[4] = response::OK;
                Some((head, chain.writable.write_from(m, 0, &out) as u32))
            }
            ControlRequest::Unknown(_) | ControlRequest::Short => Some((head, 0)),
            ControlRequest::Tmf { subtype, lun, tag } => {
                let (target, found) = match sh.luns.route(&lun) {
                    Route::BadTarget => return answer(response::BAD_TARGET),
                    Route::MissingLun { target } => (target, None),
                    Route::Lun { target, lun } => (target, Some(lun.clone())),
                };
                if found.is_none() && subtype != tmf::I_T_NEXUS_RESET {
                    return answer(response::INCORRECT_LUN);
                }
                let luns: Vec<Arc<Lun>> = match subtype {
                    tmf::I_T_NEXUS_RESET => sh
                        .luns
                        .luns()
                        .filter(|(t, _, _)| *t == target)
                        .map(|(_, _, l)| l.clone())
                        .collect(),
                    tmf::ABORT_TASK
                    | tmf::ABORT_TASK_SET
                    | tmf::CLEAR_TASK_SET
                    | tmf::LOGICAL_UNIT_RESET => found.into_iter().collect(),
                    tmf::QUERY_TASK | tmf::QUERY_TASK_SET => {
                        let Some(l) = found else {
                            return answer(response::INCORRECT_LUN);
                        };
                        let tag = (subtype == tmf::QUERY_TASK).then_some(tag);
                        let busy = sh.workers.iter().any(|w| lock(w).has_task(&l, tag));
                        return answer(if busy {
                            response::FUNCTION_SUCCEEDED
                        } else {
                            response::FUNCTION_COMPLETE
                        });
                    }
                    _ => return answer(response::FUNCTION_REJECTED),
                };
                let forwarded = forward_to_targets(sh, &luns, subtype, tag);
                let pending = PendingTmf {
                    chain,
                    vpos,
                    mem: mem.clone(),
                    luns,
                    reset: subtype == tmf::LOGICAL_UNIT_RESET || subtype == tmf::I_T_NEXUS_RESET,
                    task: (subtype == tmf::ABORT_TASK).then_some(tag),
                    deadline: Instant::now() + TMF_TIMEOUT,
                    forwarded,
                };
                if let Some(done) = finish_if_drained(&pending, sh) {
                    return Some(done);
                }
                sh.tmf_waiting.fetch_add(1, Ordering::AcqRel);
                self.waiting.push(pending);
                None
            }
        }
    }

    /// Answers waiting task management functions whose LUNs have drained.
    pub fn retry(&mut self, sh: &Shared, vrings: &[Vring]) {
        if self.waiting.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.waiting.len() {
            let p = &self.waiting[i];
            let result = finish_if_drained(p, sh).or_else(|| {
                (Instant::now() >= p.deadline).then(|| {
                    let m: &Mem = &p.mem;
                    (
                        p.chain.head,
                        p.chain.writable.write_from(m, 0, &[response::FAILURE]) as u32,
                    )
                })
            });
            if let Some((head, used)) = result {
                let p = self.waiting.swap_remove(i);
                sh.tmf_waiting.fetch_sub(1, Ordering::AcqRel);
                if let Some(vring) = vrings.get(p.vpos) {
                    let _ = vring.add_used(head, used);
                    signal(vring);
                }
            } else {
                i += 1;
            }
        }
    }
}

/// Sends the function to the target of every passthrough LUN among `luns`, each on its
/// own short-lived thread (task management is rare; a target may take seconds).
fn forward_to_targets(
    sh: &Shared,
    luns: &[Arc<Lun>],
    subtype: u32,
    tag: u64,
) -> Vec<Arc<Forwarded>> {
    let mut out = Vec::new();
    for l in luns {
        if !matches!(l.medium, Medium::Iscsi(_)) {
            continue;
        }
        let function = match subtype {
            tmf::ABORT_TASK => None,
            tmf::ABORT_TASK_SET => Some(TmfFunction::AbortTaskSet),
            tmf::CLEAR_TASK_SET => Some(TmfFunction::ClearTaskSet),
            _ => Some(TmfFunction::LogicalUnitReset),
        };
        // ABORT TASK names a command by the guest's tag; the target knows it by ours.
        let id = if function.is_none() {
            match sh
                .workers
                .iter()
                .find_map(|w| lock(w).passthrough_id(l, tag))
            {
                Some(id) => Some(id),
                None => continue, // not in flight: nothing to abort
            }
        } else {
            None
        };
        let slot = Arc::new(Forwarded::default());
        let (lun, answer) = (l.clone(), slot.clone());
        let wake = sh.tmf_event.try_clone();
        let spawned = std::thread::Builder::new()
            .name("iscsi-tmf".into())
            .spawn(move || {
                let Medium::Iscsi(i) = &lun.medium else {
                    return;
                };
                let r = match (function, id) {
                    (Some(f), _) => i.task_management(f),
                    (None, Some(id)) => i.abort_task(id),
                    (None, None) => Ok(0),
                };
                if let Err(e) = &r {
                    tracing::warn!("forwarding task management to {} failed: {e}", i.url);
                }
                *answer.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                if let Ok(w) = wake {
                    let _ = w.write(1);
                }
            });
        if spawned.is_err() {
            *slot.answer.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Err(TransportError::Closed));
        }
        out.push(slot);
    }
    out
}

/// Answers FUNCTION COMPLETE if every forwarded function was answered and none of the
/// TMF's LUNs has a command in flight; answers the target's refusal if one refused.
fn finish_if_drained(p: &PendingTmf, sh: &Shared) -> Option<(u16, u32)> {
    let m: &Mem = &p.mem;
    let mut refused = None;
    for f in &p.forwarded {
        match f.get()? {
            // Function complete, or (ABORT TASK) the task no longer exists.
            Ok(0 | 1) => {}
            // Function not supported / authorization failed / rejected.
            Ok(_) => {
                refused.get_or_insert(response::FUNCTION_REJECTED);
            }
            Err(_) => {
                refused.get_or_insert(response::FAILURE);
            }
        }
    }
    if let Some(code) = refused {
        return Some((
            p.chain.head,
            p.chain.writable.write_from(m, 0, &[code]) as u32,
        ));
    }
    let busy = match p.task {
        Some(tag) => p.luns.iter().any(|l| {
            l.inflight.load(Ordering::Acquire) > 0
                && sh.workers.iter().any(|w| lock(w).has_task(l, Some(tag)))
        }),
        None => p
            .luns
            .iter()
            .any(|l| l.inflight.load(Ordering::Acquire) > 0),
    };
    if busy {
        return None;
    }
    if p.reset {
        for l in &p.luns {
            match &l.medium {
                Medium::Disk(d) => d.disk.reset(),
                Medium::Null(d) => d.reset(),
                // Forwarded to the target before the drain.
                Medium::Iscsi(_) => {}
            }
        }
    }
    Some((
        p.chain.head,
        p.chain
            .writable
            .write_from(m, 0, &[response::FUNCTION_COMPLETE]) as u32,
    ))
}
