//! Task management through one session: ABORT TASK for one command, and ABORT TASK SET,
//! CLEAR TASK SET or LOGICAL UNIT RESET for a LUN. Commands still unsent are dropped
//! here; those at the target complete as aborted once the target agrees (ERL 0: it sends
//! nothing more for them).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{next_itt, Completions, Session, NO_TAG, TMF_LOST};
use crate::iscsi::pdu::{op, Pdu};
use crate::scsi::task::{ScsiCompletion, TmfFunction, TransportError};
use crate::scsi::LunId;

/// How long a task management function may wait for the target's answer.
const TMF_TIMEOUT: Duration = Duration::from_secs(10);

impl Session {
    /// Sends a task management function and waits (bounded) for its response code.
    /// `referenced` is the ITT and CmdSN of the task an ABORT TASK names.
    fn task_management(
        self: &Arc<Self>,
        lun: LunId,
        function: u8,
        referenced: Option<(u32, u32)>,
    ) -> Result<u8, TransportError> {
        let mut st = self.lock();
        let itt = next_itt(&mut st);
        let mut p = Pdu::new(op::TASK_MGMT_REQ);
        p.set_immediate();
        p.set_flags(0x80 | (function & 0x7f));
        p.set_lun(lun.to_u64());
        p.set_itt(itt);
        p.set_u32(20, referenced.map_or(NO_TAG, |r| r.0));
        p.set_u32(24, st.cmd_sn);
        p.set_u32(28, st.exp_stat_sn);
        if let Some((_, ref_cmd_sn)) = referenced {
            p.set_u32(32, ref_cmd_sn);
        }
        st.tmf.insert(itt, None);
        if self.write(&mut st, &p).is_err() {
            st.tmf.remove(&itt);
            return Err(TransportError::Closed);
        }
        let deadline = Instant::now() + TMF_TIMEOUT;
        loop {
            if let Some(Some(code)) = st.tmf.get(&itt) {
                let code = *code;
                st.tmf.remove(&itt);
                return if code == TMF_LOST {
                    Err(TransportError::Closed)
                } else {
                    Ok(code)
                };
            }
            if Instant::now() >= deadline {
                st.tmf.remove(&itt);
                return Err(TransportError::Timeout);
            }
            st = self.wait_changed(st, Duration::from_millis(50));
        }
    }

    /// Completes the given commands (if still pending) as aborted.
    fn complete_aborted(&self, itts: &[u32]) {
        let done: Completions = {
            let mut st = self.lock();
            let done = itts
                .iter()
                .filter_map(|itt| st.pending.remove(itt))
                .filter_map(|mut p| p.done.take())
                .map(|d| (d, ScsiCompletion::failed(TransportError::Aborted)))
                .collect();
            st.unsent.retain(|i| !itts.contains(&i));
            self.outstanding.store(st.pending.len(), Ordering::Relaxed);
            done
        };
        for (f, c) in done {
            f.complete(c);
        }
    }

    /// ABORT TASK for LUN `owner`'s command `id`, if this path holds it. A command not
    /// sent yet is dropped here; otherwise the target is asked, and once it answers
    /// (function complete, or no such task) the command completes as aborted (ERL 0: the
    /// target sends nothing more for it).
    pub(crate) fn abort_task(
        self: &Arc<Self>,
        owner: u64,
        id: u64,
    ) -> Option<Result<u8, TransportError>> {
        let st = self.lock();
        let (&itt, p) = st
            .pending
            .iter()
            .find(|(_, p)| p.owner == owner && p.id == id)?;
        let (lun, sent, cmd_sn) = (p.lun, p.sent, p.cmd_sn);
        drop(st);
        if !sent {
            self.complete_aborted(&[itt]);
            return Some(Ok(0));
        }
        let r = self.task_management(lun, TmfFunction::AbortTask as u8, Some((itt, cmd_sn)));
        if matches!(r, Ok(0 | 1)) {
            self.complete_aborted(&[itt]);
        }
        Some(r)
    }

    /// ABORT TASK SET, CLEAR TASK SET or LOGICAL UNIT RESET on `lun` through this path;
    /// the commands LUN `owner` has on this path complete as aborted once the target
    /// agrees. Only that LUN's: the other LUNs of the session are not touched.
    pub(crate) fn reset_lun(
        self: &Arc<Self>,
        owner: u64,
        lun: LunId,
        function: TmfFunction,
    ) -> Result<u8, TransportError> {
        let (mut sent, mut unsent) = (Vec::new(), Vec::new());
        for (&itt, p) in self.lock().pending.iter().filter(|(_, p)| p.owner == owner) {
            if p.sent {
                sent.push(itt);
            } else {
                unsent.push(itt);
            }
        }
        self.complete_aborted(&unsent);
        if !self.is_up() {
            // Nothing of this LUN is on the target through this path.
            return Ok(0);
        }
        let r = self.task_management(lun, function as u8, None);
        if r == Ok(0) {
            self.complete_aborted(&sent);
        }
        r
    }
}
