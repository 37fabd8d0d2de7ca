//! The control queue: task management functions and asynchronous-notification requests.
//!
//! Aborts and resets answer only once the LUN's accepted commands have completed, so no
//! write reaches the medium after the guest was told its task set is gone; commands are
//! never cancelled half-way through the medium.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::device::{lock, Shared};
use super::lun::{Lun, Medium};
use super::slot::{Mem, MemGuard, Vring};
use super::worker::{avail_ring_is_corrupt, signal};
use crate::iscsi::TmfFunction;
use crate::scsi::target::Route;
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
    deadline: Instant,
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
                let pending = PendingTmf {
                    chain,
                    vpos,
                    mem: mem.clone(),
                    luns,
                    reset: subtype == tmf::LOGICAL_UNIT_RESET || subtype == tmf::I_T_NEXUS_RESET,
                    deadline: Instant::now() + TMF_TIMEOUT,
                };
                if let Some(done) = finish_if_drained(&pending) {
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
            let result = finish_if_drained(p).or_else(|| {
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

/// Answers FUNCTION COMPLETE if none of the TMF's LUNs has a command in flight.
fn finish_if_drained(p: &PendingTmf) -> Option<(u16, u32)> {
    if p.luns
        .iter()
        .any(|l| l.inflight.load(Ordering::Acquire) > 0)
    {
        return None;
    }
    if p.reset {
        for l in &p.luns {
            match &l.medium {
                Medium::Disk(d) => d.disk.reset(),
                Medium::Null(d) => d.reset(),
                Medium::Iscsi(i) => {
                    if let Err(e) = i.task_management(TmfFunction::LogicalUnitReset) {
                        tracing::warn!("iSCSI LOGICAL UNIT RESET failed: {e}");
                    }
                }
            }
        }
    }
    let m: &Mem = &p.mem;
    Some((
        p.chain.head,
        p.chain
            .writable
            .write_from(m, 0, &[response::FUNCTION_COMPLETE]) as u32,
    ))
}
