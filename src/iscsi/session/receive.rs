//! A session's reader thread: every PDU the target sends. Data-In is written from the
//! connection's read buffer straight into the guest's buffers of a command that has them
//! (`GuestIo`; with a data digest, once the digest is checked), or reassembled into the
//! command's own buffer, SCSI Response and Data-In with status complete commands (status,
//! sense, residuals), R2T sends the data asked for, NOP-In answers our pings and the
//! target's, and each PDU moves the CmdSN window and ExpStatSN. A PDU the target must not
//! send (too long, an R2T outside the data, an unknown opcode) is a protocol error: the
//! connection is dropped and the error counts against reconnecting.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::send::{queue_data_out, DataOutTo};
use super::{sn_le, Completions, Done, Loss, PathCommand, Session, State, NO_TAG};
use crate::iscsi::alua;
use crate::iscsi::pdu::{self, op, Framing, Pdu, F_FINAL};
use crate::scsi::task::{GuestBuffers, Residual, ScsiCompletion, ScsiStatus, TransportError};

/// The most answers the reader holds back for a batch.
const ANSWERS_HELD_MAX: usize = 32;

impl Session {
    pub(super) fn reader_loop(
        self: Arc<Self>,
        stream: TcpStream,
        framing: Framing,
        generation: u64,
    ) {
        let mut r = BufReader::with_capacity(256 * 1024, stream);
        // The last PDU's data buffer, reused for the next one; and the list of answers,
        // emptied and kept: the steady state allocates nothing per PDU.
        let mut spare = Vec::new();
        // Sized for the most answers held (one PDU adds at most one in the steady state),
        // so a longer batch than the ones seen so far does not grow it.
        let mut done = Completions::with_capacity(2 * ANSWERS_HELD_MAX);
        loop {
            // Answers wait while the next PDU is already here in whole (a target answers
            // several commands in one segment): the lot then reaches the guest with one
            // notification. They go before anything that could wait for the network, and
            // before any PDU but another answer is handled.
            if !done.is_empty()
                && (done.len() >= ANSWERS_HELD_MAX || !pdu::whole_pdu_in(r.buffer(), &framing))
            {
                self.deliver(&mut done);
            }
            let read = pdu::read_header(&mut r, &framing).and_then(|mut pdu| {
                if let Some(guest) = self.streams_into_guest(&pdu, &framing, generation) {
                    Self::stream_data_in(&mut r, &pdu, &*guest)?;
                    // Handled as a Data-In without data: only its status is left.
                    pdu.data = std::mem::take(&mut spare);
                    pdu.data.clear();
                } else {
                    pdu::read_data_into(&mut r, &framing, &mut pdu, std::mem::take(&mut spare))?;
                }
                Ok(pdu)
            });
            let pdu = match read {
                Ok(p) => p,
                Err(e) => {
                    self.deliver(&mut done);
                    let mut st = self.lock();
                    if st.generation == generation && !self.closing.load(Ordering::Acquire) {
                        let loss = Loss::of(&e);
                        self.log_loss(loss, &e);
                        self.connection_lost(&mut st, loss);
                    }
                    // A logout waiting for its response has none coming.
                    let logging_out = st.logout_itt.take().is_some();
                    drop(st);
                    if logging_out {
                        self.notify_changed();
                    }
                    self.hand_off();
                    return;
                }
            };
            if !matches!(pdu.opcode(), op::SCSI_RESP | op::DATA_IN) {
                // Anything else (a task management or logout response, a NOP, a reject)
                // may wake a waiter, which must find the commands answered before it.
                self.deliver(&mut done);
            }
            let lost = {
                let mut st = self.lock();
                if st.generation != generation {
                    drop(st);
                    self.deliver(&mut done);
                    return;
                }
                st.last_rx = Instant::now();
                if let Err(e) = self.handle_pdu(&mut st, &pdu, &mut done) {
                    let loss = Loss::of(&e);
                    self.log_loss(loss, &e);
                    self.connection_lost(&mut st, loss);
                }
                self.outstanding.store(st.pending.len(), Ordering::Relaxed);
                st.lost.take()
            };
            self.notify_changed();
            self.hand_off_loss(lost);
            spare = pdu.data;
        }
    }

    /// Hands the answers collected so far to their commands' owners.
    fn deliver(&self, done: &mut Completions) {
        self.stats
            .ios
            .fetch_add(done.len() as u64, Ordering::Relaxed);
        Done::complete_in_batches(done);
    }

    /// The guest buffers `pdu`'s data goes straight into, when it is a Data-In (with data,
    /// and no data digest to check first) of a command pending on this connection that has
    /// guest buffers.
    fn streams_into_guest(
        &self,
        pdu: &Pdu,
        framing: &Framing,
        generation: u64,
    ) -> Option<Arc<dyn GuestBuffers>> {
        if pdu.opcode() != op::DATA_IN || pdu.data_len_field() == 0 || framing.data_digest {
            return None;
        }
        let st = self.lock();
        if st.generation != generation {
            return None;
        }
        let guest = st.pending.get(&pdu.itt())?.cmd.guest.as_ref()?;
        Some(guest.buffers.clone())
    }

    /// Reads the data segment of Data-In `pdu` from the connection's read buffer straight
    /// into its command's guest buffers, as much as the read buffer holds at a time,
    /// without the session lock: the worker sends meanwhile. The command was pending on
    /// this connection when the PDU began; the buffers take no byte once the command has
    /// ended ([`GuestBuffers::write_in`] checks under their own lock, which the worker
    /// closes before it answers the guest). A command aborted or handed to another path
    /// while this PDU is read may still get the rest of this PDU's data, which the target
    /// sent for that very command, and nothing after it.
    fn stream_data_in(
        r: &mut BufReader<TcpStream>,
        pdu: &Pdu,
        guest: &dyn GuestBuffers,
    ) -> std::io::Result<()> {
        let dl = pdu.data_len_field();
        let total = dl + pdu::pad4(dl);
        let offset = pdu.buffer_offset() as usize;
        let mut at = 0usize;
        while at < total {
            let piece = r.fill_buf()?;
            if piece.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let n = piece.len().min(total - at);
            let data = n.min(dl.saturating_sub(at));
            if data > 0 {
                // Clipped to the guest's data-in buffers, whatever the offset.
                guest.write_in(offset.saturating_add(at), &piece[..data]);
            }
            r.consume(n);
            at += n;
        }
        Ok(())
    }

    /// Logs why the connection is dropped, at most once per kind and interval.
    fn log_loss(&self, loss: Loss, e: &std::io::Error) {
        let portal = self.url.portal();
        match loss {
            Loss::Protocol => {
                if let Some(suppressed) = self.log.check("protocol error") {
                    tracing::warn!(
                        %portal,
                        "iSCSI protocol error by the target, dropping the connection: \
                         {e}{suppressed}"
                    );
                }
            }
            Loss::Dropped => {
                if let Some(suppressed) = self.log.check("connection lost") {
                    tracing::warn!(%portal, "iSCSI connection lost: {e}{suppressed}");
                }
            }
        }
    }

    fn update_sn(st: &mut State, pdu: &Pdu, has_status: bool) {
        let exp = pdu.exp_cmd_sn();
        let max = pdu.max_cmd_sn();
        // MaxCmdSN is valid only when it is at least ExpCmdSN - 1.
        if sn_le(exp.wrapping_sub(1), max) && sn_le(st.max_cmd_sn, max) {
            st.max_cmd_sn = max;
        }
        if has_status {
            let next = pdu.stat_sn().wrapping_add(1);
            if sn_le(st.exp_stat_sn, next) {
                st.exp_stat_sn = next;
            }
        }
    }

    fn handle_pdu(
        self: &Arc<Self>,
        st: &mut State,
        p: &Pdu,
        done: &mut Completions,
    ) -> std::io::Result<()> {
        match p.opcode() {
            op::DATA_IN => {
                let status = p.flags() & 0x01 != 0;
                Self::update_sn(st, p, status);
                let itt = p.itt();
                if let Some(pend) = st.pending.get_mut(&itt) {
                    let off = p.buffer_offset() as usize;
                    let limit = pend.cmd.data_in_len as usize;
                    let end = off.saturating_add(p.data.len()).min(limit);
                    if off < end && pend.cmd.guest.is_some() {
                        // Straight into the guest's buffers: only while the command is
                        // pending here (this lock), never past its data-in length.
                        if let Some(g) = &pend.cmd.guest {
                            g.buffers.write_in(off, &p.data[..end - off]);
                        }
                    } else if off < end {
                        if pend.data_in.capacity() == 0 {
                            // One allocation for the whole transfer.
                            pend.data_in.reserve_exact(limit);
                        }
                        if pend.data_in.len() < end {
                            pend.data_in.resize(end, 0);
                        }
                        pend.data_in[off..end].copy_from_slice(&p.data[..end - off]);
                    }
                    if status {
                        let residual = residual_of(p);
                        finish(
                            self,
                            st,
                            itt,
                            Ok(ScsiStatus {
                                status: p.bhs[3],
                                sense: Vec::new(),
                            }),
                            residual,
                            done,
                        );
                    } else if p.flags() & 0x40 != 0 && p.ttt() != NO_TAG {
                        // A bit: DataACK requested (ERL >= 1 only); nothing to do at ERL 0.
                    }
                }
            }
            op::SCSI_RESP => {
                Self::update_sn(st, p, true);
                let itt = p.itt();
                let result = if p.bhs[2] != 0 {
                    Err(TransportError::Protocol(format!(
                        "target failure (response {:#x})",
                        p.bhs[2]
                    )))
                } else {
                    let sense = if p.data.len() >= 2 {
                        let n = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
                        p.data[2..].get(..n).unwrap_or(&p.data[2..]).to_vec()
                    } else {
                        Vec::new()
                    };
                    Ok(ScsiStatus {
                        status: p.bhs[3],
                        sense,
                    })
                };
                finish(self, st, itt, result, residual_of(p), done);
            }
            op::R2T => {
                Self::update_sn(st, p, false);
                let itt = p.itt();
                let (Some(neg), Some(pend)) = (st.neg.clone(), st.pending.get(&itt)) else {
                    return Ok(());
                };
                let off = p.buffer_offset() as usize;
                let len = p.residual() as usize; // desired data transfer length
                let end = off.saturating_add(len).min(pend.cmd.out_len());
                if off > end {
                    return Err(protocol_error("R2T outside the command's data"));
                }
                let to = DataOutTo {
                    lun: pend.lun.to_u64(),
                    itt,
                    ttt: p.ttt(),
                    exp_stat_sn: st.exp_stat_sn,
                };
                let State { pending, out, .. } = &mut *st;
                if let Some(pend) = pending.get(&itt) {
                    queue_data_out(out, &neg, &to, &pend.cmd, off..end)?;
                }
                self.flush_out(st)?;
            }
            op::NOP_IN => {
                Self::update_sn(st, p, p.itt() != NO_TAG);
                if st.ping.is_some_and(|(itt, _)| itt == p.itt()) {
                    st.ping = None;
                }
                if p.ttt() != NO_TAG {
                    // The target pings us: answer with its TTT.
                    let mut out = Pdu::new(op::NOP_OUT);
                    out.set_immediate();
                    out.set_flags(F_FINAL);
                    out.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
                    out.set_itt(NO_TAG);
                    out.set_u32(20, p.ttt());
                    out.set_u32(24, st.cmd_sn);
                    out.set_u32(28, st.exp_stat_sn);
                    self.write(st, &out)?;
                }
            }
            op::TASK_MGMT_RESP => {
                Self::update_sn(st, p, true);
                if let Some(slot) = st.tmf.get_mut(&p.itt()) {
                    *slot = Some(p.bhs[2]);
                }
            }
            op::ASYNC_MSG => {
                Self::update_sn(st, p, true);
                match p.bhs[36] {
                    1..=3 => {
                        if let Some(suppressed) = self.log.check("target asks to end") {
                            tracing::warn!(
                                portal = %self.url.portal(),
                                event = p.bhs[36],
                                "iSCSI target asks to end the connection{suppressed}"
                            );
                        }
                        return Err(std::io::Error::other(
                            "target requested logout or a connection drop",
                        ));
                    }
                    e => tracing::info!(event = e, "iSCSI asynchronous message"),
                }
            }
            op::REJECT => {
                Self::update_sn(st, p, true);
                let reason = p.bhs[2];
                if p.data.len() >= 48 {
                    let itt = u32::from_be_bytes([p.data[16], p.data[17], p.data[18], p.data[19]]);
                    if let Some(suppressed) = self.log.check("PDU rejected") {
                        tracing::warn!(
                            portal = %self.url.portal(),
                            reason,
                            itt,
                            "iSCSI target rejected a PDU{suppressed}"
                        );
                    }
                    finish(
                        self,
                        st,
                        itt,
                        Err(TransportError::Protocol(format!(
                            "PDU rejected, reason {reason:#x}"
                        ))),
                        Residual::default(),
                        done,
                    );
                }
            }
            op::LOGOUT_RESP => {
                Self::update_sn(st, p, true);
                if st.logout_itt == Some(p.itt()) {
                    st.logout_itt = None;
                }
            }
            op::TEXT_RESP => Self::update_sn(st, p, true),
            other => return Err(protocol_error(&format!("unexpected opcode {other:#x}"))),
        }
        self.pump(st)?;
        self.flush_out(st)
    }
}

/// An error of the target's making (see [`Loss::of`]).
fn protocol_error(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn residual_of(p: &Pdu) -> Residual {
    Residual {
        overflow: p.flags() & 0x04 != 0,
        underflow: p.flags() & 0x02 != 0,
        count: p.residual(),
    }
}

/// Completes command `itt` with `result`: its `done` joins `done`, or, when the target
/// port refused a guest's command for its ALUA state, the command goes back to the LUN
/// layer (`PathEvents::port_refused`) with the answer.
fn finish(
    session: &Session,
    st: &mut State,
    itt: u32,
    result: Result<ScsiStatus, TransportError>,
    residual: Residual,
    done: &mut Completions,
) {
    if let Some(mut p) = st.pending.remove(&itt) {
        if result.is_ok() && !p.probe {
            // The target answered the guest: this connection works.
            st.completed_one = true;
        }
        if let Some(f) = p.done.take() {
            let answer = ScsiCompletion {
                result,
                data_in: std::mem::take(&mut p.data_in),
                residual,
            };
            let refused = !p.probe && alua::refusal(&answer).is_some();
            match refused.then(|| session.events_of(p.owner)).flatten() {
                Some((path, events)) => {
                    let command = PathCommand {
                        id: p.id,
                        cmd: p.cmd,
                        done: f,
                        reissues: p.reissues,
                        probe: false,
                    };
                    done.push((
                        Done::new(move |c| events.port_refused(path, command, c)),
                        answer,
                    ));
                }
                None => done.push((f, answer)),
            }
        }
    }
}
