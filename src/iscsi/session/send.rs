//! A session's way out to the target: commands queued on the path and sent while the
//! CmdSN window is open, each as a SCSI Command PDU (with an extended CDB AHS past 16
//! bytes, and immediate data) followed by its unsolicited Data-Out; the Data-Out an R2T
//! asks for; corked batches that go out in one write.
//!
//! PDUs are encoded into the session's output buffer under the session lock and written
//! under the sending side's own lock ([`Tx`]), taken before the session lock is let go, so
//! they leave in the order they were queued. A guest's command (`submit`, `flush`) is
//! written after the session lock is released: the reader thread handles the target's
//! answers meanwhile instead of waiting for our send.

use std::io::Write;
use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::{next_itt, sn_le, Loss, PathCommand, Pending, Session, State, NO_TAG};
use crate::iscsi::login::Negotiated;
use crate::iscsi::pdu::{self, op, Framing, Pdu, F_FINAL};
use crate::scsi::task::{ScsiCommand, ScsiCompletion, TransportError};
use crate::scsi::LunId;

impl Session {
    /// Queues a command of LUN `owner` on this path; its `done` runs exactly once, from a
    /// session thread or here. A path that is not up gives the command back.
    /// With `cork`, the command's PDUs stay in the output buffer until [`Session::flush`]
    /// (or any other write) sends the batch with one system call.
    // The command comes back by value when no path takes it: boxing it would cost an
    // allocation per command.
    #[allow(clippy::result_large_err)]
    pub(crate) fn submit(
        self: &Arc<Self>,
        owner: u64,
        lun: LunId,
        c: PathCommand,
        cork: bool,
    ) -> Result<(), PathCommand> {
        let mut st = self.lock();
        if self.closing.load(Ordering::Acquire) {
            drop(st);
            c.done
                .complete(ScsiCompletion::failed(TransportError::Closed));
            return Ok(());
        }
        if st.writer.is_none() {
            return Err(c);
        }
        let itt = next_itt(&mut st);
        st.pending.insert(
            itt,
            Pending {
                owner,
                id: c.id,
                lun,
                cmd: c.cmd,
                done: Some(c.done),
                reissues: c.reissues,
                probe: c.probe,
                data_in: Vec::new(),
                sent: false,
                cmd_sn: 0,
            },
        );
        self.outstanding.store(st.pending.len(), Ordering::Relaxed);
        st.unsent.push(owner, itt);
        match self.pump(&mut st) {
            Err(e) => self.send_failed(&mut st, &e),
            Ok(()) if !cork => {
                self.flush_unlocked(st);
                return Ok(());
            }
            Ok(()) => {}
        }
        drop(st);
        self.hand_off();
        Ok(())
    }

    /// Writes the PDUs corked submissions left in the output buffer.
    pub(crate) fn flush(self: &Arc<Self>) {
        let st = self.lock();
        if st.out.is_empty() {
            return;
        }
        self.flush_unlocked(st);
    }

    /// Writes the output buffer with the session lock released: the bytes move to the
    /// sending side, whose lock is taken first (so nothing queued later overtakes them).
    /// A failed write drops the connection it was for, unless that one is gone already.
    fn flush_unlocked(self: &Arc<Self>, mut st: MutexGuard<'_, State>) {
        if !st.out.is_empty() {
            let generation = st.generation;
            let mut tx = self.lock_tx();
            tx.take(&mut st.out);
            drop(st);
            let written = tx.write();
            drop(tx);
            if let Err(e) = written {
                let mut st = self.lock();
                if st.generation == generation {
                    self.send_failed(&mut st, &e);
                }
            }
        } else {
            drop(st);
        }
        self.hand_off();
    }

    /// Drops the connection a write to failed.
    fn send_failed(self: &Arc<Self>, st: &mut State, e: &std::io::Error) {
        if let Some(suppressed) = self.log.check("send failed") {
            tracing::warn!(portal = %self.url.portal(), "iSCSI: send failed: {e}{suppressed}");
        }
        self.connection_lost(st, Loss::of(e));
    }

    /// Sends queued commands while connected and the CmdSN window is open, taking the LUNs
    /// in turn (`fair`).
    pub(super) fn pump(self: &Arc<Self>, st: &mut State) -> std::io::Result<()> {
        while st.writer.is_some() && sn_le(st.cmd_sn, st.max_cmd_sn) {
            let Some(itt) = st.unsent.pop() else {
                break;
            };
            if !st.pending.contains_key(&itt) {
                continue;
            }
            self.send_command(st, itt)?;
        }
        Ok(())
    }

    fn send_command(&self, st: &mut State, itt: u32) -> std::io::Result<()> {
        let cmd_sn = st.cmd_sn;
        let (Some(neg), Some(p)) = (st.neg.clone(), st.pending.get_mut(&itt)) else {
            return Ok(());
        };
        p.sent = true;
        p.cmd_sn = cmd_sn;
        let p = &*p;
        let cmd = &p.cmd;
        let out_len = cmd.out_len();
        let write = out_len > 0;
        let read = cmd.data_in_len > 0;
        let mut pdu = Pdu::new(op::SCSI_CMD);
        let immediate_len = if write && neg.immediate_data {
            out_len
                .min(neg.first_burst as usize)
                .min(neg.target_max_recv as usize)
        } else {
            0
        };
        // Unsolicited Data-Out follows when InitialR2T=No, up to FirstBurstLength.
        let unsolicited_end = if write && !neg.initial_r2t {
            out_len.min(neg.first_burst as usize)
        } else {
            immediate_len
        };
        let final_bit = if unsolicited_end > immediate_len {
            0
        } else {
            F_FINAL
        };
        let attr = cmd.task_attr as u8 & 0x07;
        pdu.set_flags(
            final_bit | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | attr,
        );
        pdu.set_lun(p.lun.to_u64());
        pdu.set_itt(itt);
        let edtl = if write {
            out_len as u32
        } else {
            cmd.data_in_len
        };
        pdu.set_u32(20, edtl);
        pdu.set_u32(24, st.cmd_sn);
        pdu.set_u32(28, st.exp_stat_sn);
        let cdb_len = cmd.cdb_len.min(32);
        pdu.bhs[32..48].copy_from_slice(&cmd.cdb[..16]);
        if cdb_len > 16 {
            // Extended CDB AHS: length covers the type-specific byte and the extra CDB bytes.
            let extra = &cmd.cdb[16..cdb_len];
            let mut ahs = Vec::with_capacity(4 + extra.len() + 3);
            ahs.extend_from_slice(&((extra.len() + 1) as u16).to_be_bytes());
            ahs.push(0x01);
            ahs.push(0);
            ahs.extend_from_slice(extra);
            while ahs.len() % 4 != 0 {
                ahs.push(0);
            }
            pdu.ahs = ahs;
        }
        let exp_stat_sn = st.exp_stat_sn;
        let lun = p.lun.to_u64();
        // Borrow the command's data and the output buffer at once (disjoint fields).
        let State {
            pending,
            out,
            cmd_sn,
            ..
        } = st;
        let Some(p) = pending.get(&itt) else {
            return Ok(());
        };
        let cmd = &p.cmd;
        if !encode_with_data_out(&pdu, cmd, 0, immediate_len, &neg.framing, out) {
            return Err(unreadable_data_out());
        }
        if unsolicited_end > immediate_len {
            let to = DataOutTo {
                lun,
                itt,
                ttt: NO_TAG,
                exp_stat_sn,
            };
            queue_data_out(out, &neg, &to, cmd, immediate_len..unsolicited_end)?;
        }
        *cmd_sn = cmd_sn.wrapping_add(1);
        Ok(())
    }

    /// Sends one PDU now (after whatever a corked batch left in the output buffer).
    pub(super) fn write(&self, st: &mut State, p: &Pdu) -> std::io::Result<()> {
        let framing = st.neg.as_ref().map(|n| n.framing).unwrap_or_default();
        if st.writer.is_none() {
            return Err(std::io::Error::other("not connected"));
        }
        pdu::encode_into(p, &p.data, &framing, &mut st.out);
        self.flush_out(st)
    }

    /// Writes the output buffer to the connection and empties it, the session lock held.
    pub(super) fn flush_out(&self, st: &mut State) -> std::io::Result<()> {
        if st.out.is_empty() {
            return Ok(());
        }
        if st.writer.is_none() {
            st.out.clear();
            return Err(std::io::Error::other("not connected"));
        }
        let mut tx = self.lock_tx();
        tx.take(&mut st.out);
        tx.write()
    }
}

/// Room reserved in each output buffer at login (bytes).
const OUT_RESERVE: usize = 1 << 20;

/// The sending side of the session's connection (a clone of the session's stream, set at
/// each login; a loss shuts the stream down, which ends a write under way here).
#[derive(Default)]
pub(super) struct Tx {
    stream: Option<TcpStream>,
    /// The bytes being written: the session's output buffer, swapped in (both buffers
    /// keep their capacity, so sending allocates nothing).
    buf: Vec<u8>,
}

impl Tx {
    /// The connection of a new login; `out` is the session's output buffer. Both buffers
    /// start with room for a deep queue's batch of commands with immediate data, so the
    /// steady state never grows them (room that is never written takes no memory).
    pub(super) fn connect(&mut self, stream: TcpStream, out: &mut Vec<u8>) {
        self.stream = Some(stream);
        self.buf.clear();
        self.buf.reserve(OUT_RESERVE);
        out.reserve(OUT_RESERVE);
    }

    /// Takes `out`'s bytes, leaving it empty and at least as large as the buffer taken:
    /// the two buffers take turns, and each grows only to the largest batch yet, as one
    /// buffer would (steady state allocates nothing).
    fn take(&mut self, out: &mut Vec<u8>) {
        debug_assert!(self.buf.is_empty());
        std::mem::swap(&mut self.buf, out);
        out.reserve(self.buf.capacity());
    }

    fn write(&mut self) -> std::io::Result<()> {
        let r = match self.stream.as_mut() {
            Some(s) => s.write_all(&self.buf),
            None => Err(std::io::Error::other("not connected")),
        };
        self.buf.clear();
        r
    }
}

/// Where Data-Out PDUs go: the command's LUN and task tag, the target's transfer tag (an
/// R2T's, or none for unsolicited data) and the ExpStatSN they acknowledge.
pub(super) struct DataOutTo {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
}

/// Queues bytes `range` of `cmd`'s data-out as Data-Out PDUs no longer than the target's
/// MaxRecvDataSegmentLength, the last one Final. Guest data goes from the guest's buffers
/// straight into the output buffer.
pub(super) fn queue_data_out(
    out: &mut Vec<u8>,
    neg: &Negotiated,
    to: &DataOutTo,
    cmd: &ScsiCommand,
    range: Range<usize>,
) -> std::io::Result<()> {
    let chunk = (neg.target_max_recv as usize).max(512);
    let mut at = range.start;
    let mut data_sn = 0u32;
    while at < range.end {
        let n = chunk.min(range.end - at);
        let mut p = Pdu::new(op::DATA_OUT);
        p.set_flags(if at + n == range.end { F_FINAL } else { 0 });
        p.set_lun(to.lun);
        p.set_itt(to.itt);
        p.set_u32(20, to.ttt);
        p.set_u32(28, to.exp_stat_sn);
        p.set_u32(36, data_sn);
        p.set_u32(40, at as u32);
        if !encode_with_data_out(&p, cmd, at, n, &neg.framing, out) {
            return Err(unreadable_data_out());
        }
        at += n;
        data_sn += 1;
    }
    Ok(())
}

/// Encodes `p` with bytes `[offset, offset + n)` of `cmd`'s data-out as its data segment.
/// False when they could not all be read: the guest's buffers were checked when the
/// command started, so this does not happen, and the PDU is then not sent at all (zeros
/// must never reach the medium in place of the guest's data).
fn encode_with_data_out(
    p: &Pdu,
    cmd: &ScsiCommand,
    offset: usize,
    n: usize,
    framing: &Framing,
    out: &mut Vec<u8>,
) -> bool {
    match &cmd.guest {
        Some(g) => pdu::encode_filled_into(p, n, framing, out, |dst| {
            g.buffers.read_out(offset, dst) == dst.len()
        }),
        None => match cmd.data_out.get(offset..offset.saturating_add(n)) {
            Some(data) => {
                pdu::encode_into(p, data, framing, out);
                true
            }
            None => false,
        },
    }
}

/// A command's data-out could not be read from the guest's buffers.
fn unreadable_data_out() -> std::io::Error {
    std::io::Error::other("a command's data-out could not be read from guest memory")
}
