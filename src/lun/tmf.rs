//! Task management on LUNs: aborts and resets.
//!
//! An abort or reset is answered only once the LUN's accepted commands have completed, so
//! no write reaches the medium after the guest was told its task set is gone; commands are
//! never cancelled half-way through the medium. For LUNs with a remote side (passthrough)
//! the function is first forwarded to the device (on a helper thread, so the control queue
//! keeps serving); the commands it aborts there end as aborted, and the answer waits for
//! both the device and the drain.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::Lun;
use crate::scsi::task::{TmfFunction, TransportError};

/// How long an abort or reset waits for a LUN's commands before failing.
const TMF_TIMEOUT: Duration = Duration::from_secs(30);

/// A task management function that waits for commands to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfRequest {
    /// ABORT TASK of the command the initiator tagged `tag`.
    AbortTask {
        tag: u64,
    },
    AbortTaskSet,
    ClearTaskSet,
    LogicalUnitReset,
    /// I_T NEXUS RESET: every LUN of the target is reset.
    ItNexusReset,
}

impl TmfRequest {
    fn forwarded_as(self) -> TmfFunction {
        match self {
            TmfRequest::AbortTask { .. } => TmfFunction::AbortTask,
            TmfRequest::AbortTaskSet => TmfFunction::AbortTaskSet,
            TmfRequest::ClearTaskSet => TmfFunction::ClearTaskSet,
            TmfRequest::LogicalUnitReset | TmfRequest::ItNexusReset => {
                TmfFunction::LogicalUnitReset
            }
        }
    }

    fn resets(self) -> bool {
        matches!(
            self,
            TmfRequest::LogicalUnitReset | TmfRequest::ItNexusReset
        )
    }
}

/// How a task management function ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfAnswer {
    Complete,
    /// A remote device refused the function.
    Rejected,
    /// A remote device could not be reached, or the commands did not end in time.
    Failed,
}

/// A remote device's answer to a forwarded function.
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

    fn set(&self, r: Result<u8, TransportError>) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
}

/// An abort or reset in progress.
pub struct TaskManagement {
    luns: Vec<Arc<Lun>>,
    request: TmfRequest,
    deadline: Instant,
    forwarded: Vec<Arc<Forwarded>>,
}

impl TaskManagement {
    /// Starts `request` on `luns`: forwards it to each LUN with a remote side, each on its
    /// own short-lived thread (task management is rare; a device may take seconds), which
    /// writes `wake` when its answer is in. `remote_id` finds the remote device's id of
    /// the command ABORT TASK names; a command not at the device is not forwarded.
    pub fn start(
        request: TmfRequest,
        luns: Vec<Arc<Lun>>,
        remote_id: impl Fn(&Arc<Lun>, u64) -> Option<u64>,
        wake: &EventFd,
    ) -> TaskManagement {
        let mut forwarded = Vec::new();
        for l in luns
            .iter()
            .filter(|l| l.device().forwards_task_management())
        {
            let id = match request {
                TmfRequest::AbortTask { tag } => match remote_id(l, tag) {
                    Some(id) => Some(id),
                    None => continue, // not in flight: nothing to abort
                },
                _ => None,
            };
            let slot = Arc::new(Forwarded::default());
            let (lun, answer, function) = (l.clone(), slot.clone(), request.forwarded_as());
            let wake = wake.try_clone();
            let spawned =
                crate::sandbox::spawn(crate::sandbox::ThreadKind::Iscsi, "lun-tmf", move || {
                    let r = lun
                        .device()
                        .forward_task_management(function, id)
                        .unwrap_or(Ok(0));
                    answer.set(r);
                    if let Ok(w) = wake {
                        let _ = w.write(1);
                    }
                });
            if spawned.is_err() {
                slot.set(Err(TransportError::Closed));
            }
            forwarded.push(slot);
        }
        TaskManagement {
            luns,
            request,
            deadline: Instant::now() + TMF_TIMEOUT,
            forwarded,
        }
    }

    /// The answer, once every forwarded function was answered and none of the LUNs has a
    /// command in flight (for ABORT TASK: the one task, as `has_task` tells); a remote
    /// refusal at once; FAILED past the deadline. None: still waiting.
    pub fn poll(&self, has_task: impl Fn(&Arc<Lun>, u64) -> bool) -> Option<TmfAnswer> {
        let answer = self.answer_if_drained(has_task);
        if answer.is_none() && Instant::now() >= self.deadline {
            return Some(TmfAnswer::Failed);
        }
        answer
    }

    fn answer_if_drained(&self, has_task: impl Fn(&Arc<Lun>, u64) -> bool) -> Option<TmfAnswer> {
        let mut refused = None;
        for f in &self.forwarded {
            match f.get()? {
                // Function complete, or (ABORT TASK) the task no longer exists.
                Ok(0 | 1) => {}
                // Function not supported / authorization failed / rejected.
                Ok(_) => {
                    refused.get_or_insert(TmfAnswer::Rejected);
                }
                Err(_) => {
                    refused.get_or_insert(TmfAnswer::Failed);
                }
            }
        }
        if refused.is_some() {
            return refused;
        }
        let busy = match self.request {
            TmfRequest::AbortTask { tag } => self
                .luns
                .iter()
                .any(|l| l.inflight() > 0 && has_task(l, tag)),
            _ => self.luns.iter().any(|l| l.inflight() > 0),
        };
        if busy {
            return None;
        }
        if self.request.resets() {
            for l in &self.luns {
                l.device().reset();
            }
        }
        Some(TmfAnswer::Complete)
    }
}
