//! One path of a LUN: the full feature phase of one session over one connection. SCSI
//! commands with immediate, unsolicited and R2T-solicited data, Data-In reassembly, status
//! and sense, the CmdSN/MaxCmdSN window, NOP keepalive both ways, task management.
//!
//! When the connection drops (reset, or silence past the NOP timeout) the session hands
//! every command that had no status back to its LUN (the multipath layer, which reissues
//! them on another path or queues them), then logs in again in the background with
//! back-off and tells the LUN when it is back (ERL 0: nothing is recovered in place).

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::login::{self, new_isid, LoginError, Negotiated};
use super::pdu::{self, op, Framing, Pdu, F_FINAL};
use super::{IscsiOptions, IscsiUrl};
use crate::scsi::task::{Residual, ScsiCommand, ScsiCompletion, ScsiStatus, TransportError};
use crate::scsi::LunId;

/// Serial number arithmetic (RFC 1982): a <= b.
fn sn_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 0x8000_0000
}

const NO_TAG: u32 = 0xffff_ffff;

pub(crate) type Done = Box<dyn FnOnce(ScsiCompletion) + Send>;

/// How long a task management function may wait for the target's answer.
const TMF_TIMEOUT: Duration = Duration::from_secs(10);

/// TMF answer slot value meaning "the connection went away before the answer".
const TMF_LOST: u8 = 0xff;

/// A command the target has not answered yet.
struct Pending {
    /// The LUN layer's command id (stable across paths, unlike the ITT).
    id: u64,
    lun: LunId,
    cmd: ScsiCommand,
    done: Option<Done>,
    data_in: Vec<u8>,
    /// Some PDU of the command went out on the connection (the target may have run it).
    sent: bool,
    cmd_sn: u32,
}

/// A command without status taken back from a failed path.
pub(crate) struct Orphan {
    pub id: u64,
    pub cmd: ScsiCommand,
    pub done: Done,
    /// The target may have received (and run) it.
    pub sent: bool,
}

/// What a session reports about a lost connection.
pub(crate) struct LostPath {
    /// Time since the last PDU from the target when the loss was noticed.
    pub silent_for: Duration,
    pub orphans: Vec<Orphan>,
}

/// What the LUN layer learns from its paths. Called without any session lock held.
pub(crate) trait PathEvents: Send + Sync {
    fn path_down(&self, path: usize, lost: LostPath);
    fn path_up(&self, path: usize);
}

/// Counters of one path, for logs and status.
#[derive(Default)]
pub(crate) struct PathStats {
    pub ios: AtomicU64,
    pub errors: AtomicU64,
    pub failovers: AtomicU64,
    /// Stall of the last failover: silence before detection plus the reissue, in µs.
    pub last_failover_us: AtomicU64,
}

/// Mutable session state behind one lock; the writer is part of it so the PDUs of one
/// command go out together and in CmdSN order.
struct State {
    writer: Option<TcpStream>,
    /// PDUs encoded and not yet written (a corked batch, or the PDU being sent).
    out: Vec<u8>,
    neg: Option<Negotiated>,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    pending: HashMap<u32, Pending>,
    /// Commands waiting to be sent (window closed or connection down), oldest first.
    unsent: VecDeque<u32>,
    tmf: HashMap<u32, Option<u8>>,
    recovering: bool,
    /// A loss not yet reported to the LUN layer (reported once the lock is released).
    lost: Option<LostPath>,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    generation: u64,
}

pub(crate) struct Session {
    url: IscsiUrl,
    opts: IscsiOptions,
    isid: [u8; 6],
    /// This session's index among its LUN's paths.
    path: usize,
    events: Weak<dyn PathEvents>,
    pub(crate) stats: PathStats,
    /// Connected and in full feature phase (read without the lock by path selection).
    up: AtomicBool,
    /// Commands queued or sent and not yet answered.
    outstanding: AtomicUsize,
    state: Mutex<State>,
    changed: Condvar,
    closing: AtomicBool,
}

/// Completions collected under the lock and delivered after it is released.
type Completions = Vec<(Done, ScsiCompletion)>;

impl Session {
    /// A path to `url`'s portal; nothing happens on the network until [`Session::start`].
    pub(crate) fn new(
        url: &IscsiUrl,
        opts: &IscsiOptions,
        path: usize,
        events: Weak<dyn PathEvents>,
    ) -> Arc<Session> {
        Arc::new(Session {
            url: url.clone(),
            opts: opts.clone(),
            isid: new_isid(),
            path,
            events,
            stats: PathStats::default(),
            up: AtomicBool::new(false),
            outstanding: AtomicUsize::new(0),
            state: Mutex::new(State {
                writer: None,
                out: Vec::new(),
                neg: None,
                cmd_sn: 0,
                exp_stat_sn: 0,
                max_cmd_sn: 0,
                next_itt: 1,
                pending: HashMap::new(),
                unsent: VecDeque::new(),
                tmf: HashMap::new(),
                recovering: false,
                lost: None,
                last_rx: Instant::now(),
                ping: None,
                generation: 0,
            }),
            changed: Condvar::new(),
            closing: AtomicBool::new(false),
        })
    }

    /// Starts the keepalive and logs in. On failure, `retry_in_background` keeps trying
    /// (a secondary path may come up later); otherwise the error is final.
    pub(crate) fn start(self: &Arc<Self>, retry_in_background: bool) -> Result<(), LoginError> {
        let keep = self.clone();
        std::thread::Builder::new()
            .name("iscsi-keepalive".into())
            .spawn(move || keep.keepalive_loop())
            .map_err(|e| LoginError::Protocol(e.to_string()))?;
        match self.establish() {
            Ok(()) => Ok(()),
            Err(e) => {
                if retry_in_background {
                    self.lock().recovering = true;
                    let me = self.clone();
                    let _ = std::thread::Builder::new()
                        .name("iscsi-recovery".into())
                        .spawn(move || me.recover());
                } else {
                    self.closing.store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }

    pub(crate) fn portal(&self) -> String {
        self.url.portal()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects, logs in, starts a reader, and (re)sends every command without status.
    fn establish(self: &Arc<Self>) -> Result<(), LoginError> {
        let mut stream = login::connect(&self.url.portal(), &self.opts)?;
        let neg = login::login(&mut stream, &self.opts, Some(&self.url.target), self.isid)?;
        let io = |e: std::io::Error| LoginError::Protocol(e.to_string());
        stream.set_read_timeout(None).map_err(io)?;
        stream
            .set_write_timeout(Some(self.opts.nop_timeout.max(Duration::from_secs(5))))
            .map_err(io)?;
        let reader = stream.try_clone().map_err(io)?;
        let framing = neg.framing;
        let generation;
        {
            let mut st = self.lock();
            st.cmd_sn = neg.cmd_sn;
            st.exp_stat_sn = neg.exp_stat_sn;
            st.max_cmd_sn = neg.max_cmd_sn;
            st.neg = Some(neg);
            st.writer = Some(stream);
            st.last_rx = Instant::now();
            st.ping = None;
            st.generation += 1;
            // From here on a loss needs a new recovery.
            st.recovering = false;
            generation = st.generation;
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("iscsi-reader".into())
            .spawn(move || me.reader_loop(reader, framing, generation))
            .map_err(|e| LoginError::Protocol(e.to_string()))?;
        self.up.store(true, Ordering::Release);
        self.changed.notify_all();
        if let Some(ev) = self.events.upgrade() {
            ev.path_up(self.path);
        }
        Ok(())
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Reports a loss recorded under the lock to the LUN layer; call with no lock held.
    fn hand_off(&self) {
        let Some(lost) = self.lock().lost.take() else {
            return;
        };
        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
        match self.events.upgrade() {
            Some(ev) => ev.path_down(self.path, lost),
            None => {
                for o in lost.orphans {
                    (o.done)(ScsiCompletion::failed(TransportError::Closed));
                }
            }
        }
    }

    /// Queues a command on this path; `done` runs exactly once, from a session thread or
    /// here. A path that is not up gives the command back.
    /// With `cork`, the command's PDUs stay in the output buffer until [`Session::flush`]
    /// (or any other write) sends the batch with one system call.
    pub(crate) fn submit(
        self: &Arc<Self>,
        id: u64,
        lun: LunId,
        cmd: ScsiCommand,
        done: Done,
        cork: bool,
    ) -> Result<(), (ScsiCommand, Done)> {
        let mut st = self.lock();
        if self.closing.load(Ordering::Acquire) {
            drop(st);
            done(ScsiCompletion::failed(TransportError::Closed));
            return Ok(());
        }
        if st.writer.is_none() {
            return Err((cmd, done));
        }
        let itt = next_itt(&mut st);
        st.pending.insert(
            itt,
            Pending {
                id,
                lun,
                cmd,
                done: Some(done),
                data_in: Vec::new(),
                sent: false,
                cmd_sn: 0,
            },
        );
        self.outstanding.store(st.pending.len(), Ordering::Relaxed);
        st.unsent.push_back(itt);
        let sent = self
            .pump(&mut st)
            .and_then(|()| if cork { Ok(()) } else { flush_out(&mut st) });
        if let Err(e) = sent {
            tracing::warn!(portal = %self.url.portal(), "iSCSI: send failed: {e}");
            self.connection_lost(&mut st);
        }
        drop(st);
        self.hand_off();
        Ok(())
    }

    /// Writes the PDUs corked submissions left in the output buffer.
    pub(crate) fn flush(self: &Arc<Self>) {
        let mut st = self.lock();
        if st.out.is_empty() {
            return;
        }
        if let Err(e) = flush_out(&mut st) {
            tracing::warn!(portal = %self.url.portal(), "iSCSI: send failed: {e}");
            self.connection_lost(&mut st);
        }
        drop(st);
        self.hand_off();
    }

    /// Sends queued commands while connected and the CmdSN window is open.
    fn pump(self: &Arc<Self>, st: &mut State) -> std::io::Result<()> {
        while st.writer.is_some() && sn_le(st.cmd_sn, st.max_cmd_sn) {
            let Some(itt) = st.unsent.pop_front() else {
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
        let write = !cmd.data_out.is_empty();
        let read = cmd.data_in_len > 0;
        let mut pdu = Pdu::new(op::SCSI_CMD);
        let immediate_len = if write && neg.immediate_data {
            cmd.data_out
                .len()
                .min(neg.first_burst as usize)
                .min(neg.target_max_recv as usize)
        } else {
            0
        };
        // Unsolicited Data-Out follows when InitialR2T=No, up to FirstBurstLength.
        let unsolicited_end = if write && !neg.initial_r2t {
            cmd.data_out.len().min(neg.first_burst as usize)
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
            cmd.data_out.len() as u32
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
        let data = &p.cmd.data_out;
        pdu::encode_into(&pdu, &data[..immediate_len], &neg.framing, out);
        if unsolicited_end > immediate_len {
            let unsolicited = &data[immediate_len..unsolicited_end];
            queue_data_out(
                out,
                &neg,
                lun,
                itt,
                NO_TAG,
                exp_stat_sn,
                immediate_len,
                unsolicited,
            );
        }
        *cmd_sn = cmd_sn.wrapping_add(1);
        Ok(())
    }

    fn reader_loop(self: Arc<Self>, stream: TcpStream, framing: Framing, generation: u64) {
        let mut r = BufReader::with_capacity(256 * 1024, stream);
        // The last PDU's data buffer, reused for the next one.
        let mut spare = Vec::new();
        loop {
            let pdu = match pdu::read_pdu_into(&mut r, &framing, std::mem::take(&mut spare)) {
                Ok(p) => p,
                Err(e) => {
                    let mut st = self.lock();
                    if st.generation == generation && !self.closing.load(Ordering::Acquire) {
                        tracing::warn!(portal = %self.url.portal(), "iSCSI connection lost: {e}");
                        self.connection_lost(&mut st);
                    }
                    drop(st);
                    self.hand_off();
                    return;
                }
            };
            let mut done = Completions::new();
            {
                let mut st = self.lock();
                if st.generation != generation {
                    return;
                }
                st.last_rx = Instant::now();
                if let Err(e) = self.handle_pdu(&mut st, &pdu, &mut done) {
                    tracing::warn!(portal = %self.url.portal(), "iSCSI: {e}");
                    self.connection_lost(&mut st);
                }
                self.outstanding.store(st.pending.len(), Ordering::Relaxed);
            }
            self.changed.notify_all();
            self.hand_off();
            self.stats
                .ios
                .fetch_add(done.len() as u64, Ordering::Relaxed);
            for (f, c) in done {
                f(c);
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
                    if off < end {
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
                finish(st, itt, result, residual_of(p), done);
            }
            op::R2T => {
                Self::update_sn(st, p, false);
                let itt = p.itt();
                let (Some(neg), Some(pend)) = (st.neg.clone(), st.pending.get(&itt)) else {
                    return Ok(());
                };
                let off = p.buffer_offset() as usize;
                let len = p.residual() as usize; // desired data transfer length
                let end = off.saturating_add(len).min(pend.cmd.data_out.len());
                if pend.cmd.data_out.get(off..end).is_none() {
                    return Err(std::io::Error::other("R2T outside the command's data"));
                }
                let lun = pend.lun.to_u64();
                let exp = st.exp_stat_sn;
                let State { pending, out, .. } = &mut *st;
                if let Some(pend) = pending.get(&itt) {
                    let data = &pend.cmd.data_out[off..end];
                    queue_data_out(out, &neg, lun, itt, p.ttt(), exp, off, data);
                }
                flush_out(st)?;
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
                        tracing::warn!(
                            event = p.bhs[36],
                            "iSCSI target asks to end the connection"
                        );
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
                    tracing::warn!(reason, itt, "iSCSI target rejected a PDU");
                    finish(
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
            op::LOGOUT_RESP | op::TEXT_RESP => Self::update_sn(st, p, true),
            other => {
                return Err(std::io::Error::other(format!(
                    "unexpected opcode {other:#x}"
                )))
            }
        }
        self.pump(st)?;
        flush_out(st)
    }

    /// Sends one PDU now (after whatever a corked batch left in the output buffer).
    fn write(&self, st: &mut State, p: &Pdu) -> std::io::Result<()> {
        let framing = st.neg.as_ref().map(|n| n.framing).unwrap_or_default();
        if st.writer.is_none() {
            return Err(std::io::Error::other("not connected"));
        }
        pdu::encode_into(p, &p.data, &framing, &mut st.out);
        flush_out(st)
    }

    /// Drops the connection, takes back every command without status for the LUN layer
    /// (reported by [`Session::hand_off`] once the lock is released) and starts
    /// reconnecting (once).
    fn connection_lost(self: &Arc<Self>, st: &mut State) {
        self.up.store(false, Ordering::Release);
        if let Some(w) = st.writer.take() {
            let _ = w.shutdown(Shutdown::Both);
        }
        st.generation += 1;
        st.ping = None;
        st.out.clear();
        for slot in st.tmf.values_mut() {
            slot.get_or_insert(TMF_LOST);
        }
        st.unsent.clear();
        let mut taken: Vec<(u32, Pending)> = st.pending.drain().collect();
        // Reissue in the order the guest sent them.
        taken.sort_unstable_by_key(|(_, p)| p.id);
        let orphans = taken.into_iter().filter_map(|(_, mut p)| {
            p.done.take().map(|done| Orphan {
                id: p.id,
                cmd: p.cmd,
                done,
                sent: p.sent,
            })
        });
        let silent_for = st.last_rx.elapsed();
        match &mut st.lost {
            Some(l) => l.orphans.extend(orphans),
            None => {
                st.lost = Some(LostPath {
                    silent_for,
                    orphans: orphans.collect(),
                })
            }
        }
        self.outstanding.store(0, Ordering::Relaxed);
        if !st.recovering && !self.closing.load(Ordering::Acquire) {
            st.recovering = true;
            let me = self.clone();
            let _ = std::thread::Builder::new()
                .name("iscsi-recovery".into())
                .spawn(move || me.recover());
        }
        self.changed.notify_all();
    }

    /// Logs in again with back-off until it works or the session closes.
    fn recover(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        while !self.closing.load(Ordering::Acquire) {
            match self.establish() {
                Ok(()) => {
                    tracing::info!(portal = %self.url.portal(), "iSCSI session re-established");
                    return;
                }
                Err(e) => {
                    tracing::debug!(portal = %self.url.portal(), "iSCSI login retry failed: {e}")
                }
            }
            // Sleep in short steps so closing is not held up by a long back-off.
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.closing.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(20).min(backoff));
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        self.lock().recovering = false;
    }

    fn fail_all(&self, e: TransportError) {
        let done: Completions = {
            let mut st = self.lock();
            st.unsent.clear();
            let mut lost = st.lost.take().map(|l| l.orphans).unwrap_or_default();
            let pending = st
                .pending
                .drain()
                .filter_map(|(_, mut p)| p.done.take())
                .chain(lost.drain(..).map(|o| o.done))
                .map(|d| (d, ScsiCompletion::failed(e.clone())))
                .collect();
            self.outstanding.store(0, Ordering::Relaxed);
            pending
        };
        for (f, c) in done {
            f(c);
        }
    }

    fn keepalive_loop(self: Arc<Self>) {
        let tick = (self.opts.nop_interval.min(self.opts.nop_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        while !self.closing.load(Ordering::Acquire) {
            std::thread::sleep(tick);
            let mut st = self.lock();
            if st.writer.is_none() {
                continue;
            }
            if let Some((_, sent)) = st.ping {
                if sent.elapsed() >= self.opts.nop_timeout {
                    tracing::warn!(portal = %self.url.portal(), "iSCSI target silent: NOP-Out unanswered");
                    self.connection_lost(&mut st);
                    drop(st);
                    self.hand_off();
                }
                continue;
            }
            if st.last_rx.elapsed() >= self.opts.nop_interval {
                let itt = next_itt(&mut st);
                let mut p = Pdu::new(op::NOP_OUT);
                p.set_immediate();
                p.set_flags(F_FINAL);
                p.set_itt(itt);
                p.set_u32(20, NO_TAG);
                p.set_u32(24, st.cmd_sn);
                p.set_u32(28, st.exp_stat_sn);
                st.ping = Some((itt, Instant::now()));
                if self.write(&mut st, &p).is_err() {
                    self.connection_lost(&mut st);
                    drop(st);
                    self.hand_off();
                }
            }
        }
    }

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
            st = self
                .changed
                .wait_timeout(st, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
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
            st.unsent.retain(|i| !itts.contains(i));
            self.outstanding.store(st.pending.len(), Ordering::Relaxed);
            done
        };
        for (f, c) in done {
            f(c);
        }
    }

    /// ABORT TASK for the LUN layer's command `id`, if this path holds it. A command not
    /// sent yet is dropped here; otherwise the target is asked, and once it answers
    /// (function complete, or no such task) the command completes as aborted (ERL 0: the
    /// target sends nothing more for it).
    pub(crate) fn abort_task(self: &Arc<Self>, id: u64) -> Option<Result<u8, TransportError>> {
        let st = self.lock();
        let (&itt, p) = st.pending.iter().find(|(_, p)| p.id == id)?;
        let (lun, sent, cmd_sn) = (p.lun, p.sent, p.cmd_sn);
        drop(st);
        if !sent {
            self.complete_aborted(&[itt]);
            return Some(Ok(0));
        }
        let r = self.task_management(
            lun,
            super::TmfFunction::AbortTask as u8,
            Some((itt, cmd_sn)),
        );
        if matches!(r, Ok(0 | 1)) {
            self.complete_aborted(&[itt]);
        }
        Some(r)
    }

    /// ABORT TASK SET, CLEAR TASK SET or LOGICAL UNIT RESET on `lun` through this path;
    /// the commands of the LUN this path held complete as aborted once the target agrees.
    pub(crate) fn reset_lun(
        self: &Arc<Self>,
        lun: LunId,
        function: super::TmfFunction,
    ) -> Result<u8, TransportError> {
        let (mut sent, mut unsent) = (Vec::new(), Vec::new());
        for (&itt, p) in self.lock().pending.iter().filter(|(_, p)| p.lun == lun) {
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

    /// Commands sent or queued and not yet answered.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Logs out and fails whatever is still pending.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        {
            let mut st = self.lock();
            let itt = next_itt(&mut st);
            let mut p = Pdu::new(op::LOGOUT_REQ);
            p.set_immediate();
            p.set_flags(F_FINAL);
            p.set_itt(itt);
            p.set_u32(24, st.cmd_sn);
            p.set_u32(28, st.exp_stat_sn);
            let _ = self.write(&mut st, &p);
            st.generation += 1;
            if let Some(w) = st.writer.take() {
                let _ = w.shutdown(Shutdown::Both);
            }
            self.up.store(false, Ordering::Release);
        }
        self.changed.notify_all();
        self.fail_all(TransportError::Closed);
    }
}

fn next_itt(st: &mut State) -> u32 {
    let itt = st.next_itt;
    st.next_itt = st.next_itt.wrapping_add(1);
    if st.next_itt == NO_TAG || st.next_itt == 0 {
        st.next_itt = 1;
    }
    itt
}

fn residual_of(p: &Pdu) -> Residual {
    Residual {
        overflow: p.flags() & 0x04 != 0,
        underflow: p.flags() & 0x02 != 0,
        count: p.residual(),
    }
}

fn finish(
    st: &mut State,
    itt: u32,
    result: Result<ScsiStatus, TransportError>,
    residual: Residual,
    done: &mut Completions,
) {
    if let Some(mut p) = st.pending.remove(&itt) {
        if let Some(f) = p.done.take() {
            done.push((
                f,
                ScsiCompletion {
                    result,
                    data_in: std::mem::take(&mut p.data_in),
                    residual,
                },
            ));
        }
    }
}

/// Writes the output buffer to the connection and empties it.
fn flush_out(st: &mut State) -> std::io::Result<()> {
    if st.out.is_empty() {
        return Ok(());
    }
    let State { writer, out, .. } = st;
    let w = writer
        .as_mut()
        .ok_or_else(|| std::io::Error::other("not connected"))?;
    let r = w.write_all(out);
    out.clear();
    r
}

/// Queues `data` (starting at buffer offset `offset`) as Data-Out PDUs no longer than the
/// target's MaxRecvDataSegmentLength, the last one Final.
#[allow(clippy::too_many_arguments)]
fn queue_data_out(
    out: &mut Vec<u8>,
    neg: &Negotiated,
    lun: u64,
    itt: u32,
    ttt: u32,
    exp_stat_sn: u32,
    offset: usize,
    data: &[u8],
) {
    let chunk = (neg.target_max_recv as usize).max(512);
    let mut sent = 0usize;
    let mut data_sn = 0u32;
    while sent < data.len() {
        let n = chunk.min(data.len() - sent);
        let mut p = Pdu::new(op::DATA_OUT);
        p.set_flags(if sent + n == data.len() { F_FINAL } else { 0 });
        p.set_lun(lun);
        p.set_itt(itt);
        p.set_u32(20, ttt);
        p.set_u32(28, exp_stat_sn);
        p.set_u32(36, data_sn);
        p.set_u32(40, (offset + sent) as u32);
        pdu::encode_into(&p, &data[sent..sent + n], &neg.framing, out);
        sent += n;
        data_sn += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_le(1, 1));
        assert!(sn_le(1, 2));
        assert!(!sn_le(2, 1));
        assert!(sn_le(u32::MAX, 0));
        assert!(!sn_le(0, u32::MAX));
    }
}
