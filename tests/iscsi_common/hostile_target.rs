//! A scripted iSCSI target on 127.0.0.1 that logs in correctly, answers NOP-Outs, INQUIRY
//! and other commands, and then misbehaves in one chosen way: a READ gets a Data-In whose
//! DataSegmentLength exceeds the initiator's MaxRecvDataSegmentLength, a WRITE gets an R2T
//! outside the command's data, or every connection ends as soon as it has answered one
//! INQUIRY (the CmdSN window holds just that one command, so no other is ever sent). It
//! counts the logins it completed, so a test can tell a bounded number of reconnects from
//! a storm, and the Logout Requests it answered. `WellBehaved` never misbehaves (a session
//! whose end a test watches).
//!
//! Connections are served one at a time on the target's own thread (an initiator has one
//! connection per path). Every loop is bounded: the target accepts at most
//! `MAX_CONNECTIONS` connections and runs for at most `LIFETIME`; each socket has a read
//! timeout so the stop flag is seen.

use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vscsid::iscsi::pdu::{self, op, Framing, Pdu, F_FINAL};
use vscsid::iscsi::text;

/// What the target does wrong once a session is in the full feature phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A READ is answered with a Data-In whose DataSegmentLength is `OVERSIZED_SEGMENT`.
    OversizedDataIn,
    /// A WRITE is answered with an R2T asking for data past the end of the command's.
    R2tOutsideData,
    /// The login grants a CmdSN window of one command and the window never opens further;
    /// the target answers that command if it is an INQUIRY (the initiator's ALUA check)
    /// and closes the connection: a path that logs in and fails again at once without
    /// ever carrying a guest's command.
    DropsAfterInquiry,
    /// A READ is answered with Data-In past its buffer: a segment longer than asked for,
    /// one at an offset past the end, one at an offset near 4 GiB (all bytes
    /// `PAST_THE_BUFFER_BYTE`), then GOOD status.
    DataInPastTheBuffer,
    /// READs are held unanswered until [`HostileTarget::release_reads`], then answered
    /// in full (bytes `HELD_READ_BYTE`) with GOOD status.
    HoldsReads,
    /// Nothing: every command is answered correctly.
    WellBehaved,
}

/// What a [`Misbehaviour::DataInPastTheBuffer`] target's Data-In holds.
pub const PAST_THE_BUFFER_BYTE: u8 = 0xee;
/// What a [`Misbehaviour::HoldsReads`] target's Data-In holds.
pub const HELD_READ_BYTE: u8 = 0xab;

/// The DataSegmentLength of the bad Data-In: far above the initiator's 256 KiB default.
pub const OVERSIZED_SEGMENT: u32 = 4 << 20;
/// After this many connections the target stops accepting (a runaway initiator then sees
/// refused connections instead of keeping a test busy).
const MAX_CONNECTIONS: usize = 5000;
/// The target shuts itself down after this long whatever happens.
const LIFETIME: Duration = Duration::from_secs(300);
/// Read timeout of a served connection: how often the stop flag is checked.
const POLL: Duration = Duration::from_millis(100);
/// PDUs served on one connection at most.
const MAX_PDUS_PER_CONNECTION: usize = 100_000;
const NO_TAG: u32 = 0xffff_ffff;
/// How far MaxCmdSN runs ahead of ExpCmdSN.
const WINDOW: u32 = 31;

pub struct HostileTarget {
    pub port: u16,
    logins: Arc<AtomicUsize>,
    logouts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HostileTarget {
    pub fn start(misbehaviour: Misbehaviour) -> HostileTarget {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("local address").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let logins = Arc::new(AtomicUsize::new(0));
        let logouts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let counts = Counts {
            logins: logins.clone(),
            logouts: logouts.clone(),
            held: held.clone(),
            release: release.clone(),
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hostile-target".into())
            .spawn(move || accept_loop(listener, misbehaviour, &counts, &s))
            .expect("spawn target");
        HostileTarget {
            port,
            logins,
            logouts,
            stop,
            held,
            release,
            thread: Some(thread),
        }
    }

    /// READs a [`Misbehaviour::HoldsReads`] target holds (or held) unanswered.
    pub fn held_reads(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Lets a [`Misbehaviour::HoldsReads`] target answer the READs it holds, and the
    /// following ones at once.
    pub fn release_reads(&self) {
        self.release.store(true, Ordering::Release);
    }

    /// Logins that reached the full feature phase so far.
    pub fn logins(&self) -> usize {
        self.logins.load(Ordering::Acquire)
    }

    /// Logout Requests received (and answered) so far.
    pub fn logouts(&self) -> usize {
        self.logouts.load(Ordering::Acquire)
    }

    pub fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{}/0", self.port, TARGET_NAME)
    }
}

impl Drop for HostileTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub const TARGET_NAME: &str = "iqn.2024-01.io.vscsid.test:hostile";

/// What the target counts.
struct Counts {
    logins: Arc<AtomicUsize>,
    logouts: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
}

fn accept_loop(
    listener: TcpListener,
    misbehaviour: Misbehaviour,
    counts: &Counts,
    stop: &AtomicBool,
) {
    let until = Instant::now() + LIFETIME;
    let mut connections = 0;
    while !stop.load(Ordering::Acquire) && Instant::now() < until {
        match listener.accept() {
            Ok((s, _)) => {
                connections += 1;
                serve(s, misbehaviour, counts, stop, until);
                if connections >= MAX_CONNECTIONS {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One connection's state as the target sees it.
struct Conn {
    s: TcpStream,
    /// The target's end of life: no wait goes past it.
    until: Instant,
    stat_sn: u32,
    exp_cmd_sn: u32,
    /// MaxCmdSN when the target keeps the window from moving.
    fixed_max_cmd_sn: Option<u32>,
    /// READs held unanswered (their LUN and ITT bytes, and length).
    held: Vec<([u8; 8], u32, u32)>,
    held_count: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
}

impl Conn {
    /// Reads the next PDU, waiting through read timeouts until `stop`; None when the
    /// initiator closed the connection, sent garbage, or the target stops.
    fn next(&mut self, stop: &AtomicBool) -> Option<Pdu> {
        let framing = Framing {
            max_recv_data: 16 << 20,
            ..Framing::default()
        };
        // Wait for the first byte with the timeout, then read the PDU whole.
        let mut first = [0u8; 1];
        loop {
            if stop.load(Ordering::Acquire) || Instant::now() >= self.until {
                return None;
            }
            match self.s.peek(&mut first) {
                Ok(0) => return None,
                Ok(_) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if !self.answer_held() {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
        self.s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let p = pdu::read_pdu(&mut self.s, &framing).ok();
        self.s.set_read_timeout(Some(POLL)).ok()?;
        p
    }

    /// Answers the held READs once they are released; false when the connection failed.
    fn answer_held(&mut self) -> bool {
        if self.held.is_empty() || !self.release.load(Ordering::Acquire) {
            return true;
        }
        for (lun, itt, expected) in std::mem::take(&mut self.held) {
            if !self.data_in_with_status(lun, itt, vec![HELD_READ_BYTE; expected as usize]) {
                return false;
            }
        }
        true
    }

    /// One Data-In with all of a READ's data and GOOD status.
    fn data_in_with_status(&mut self, lun: [u8; 8], itt: u32, data: Vec<u8>) -> bool {
        let mut r = Pdu::new(op::DATA_IN);
        r.set_flags(F_FINAL | 0x01);
        r.bhs[8..16].copy_from_slice(&lun);
        r.set_itt(itt);
        r.set_u32(20, NO_TAG);
        self.numbers(&mut r, true);
        r.data = data;
        self.send(&r)
    }

    fn send(&mut self, p: &Pdu) -> bool {
        pdu::write_pdu(&mut self.s, p, &Framing::default()).is_ok()
    }

    /// Sets StatSN (taking the next one when `advance`), ExpCmdSN and MaxCmdSN.
    fn numbers(&mut self, p: &mut Pdu, advance: bool) {
        p.set_u32(24, self.stat_sn);
        if advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        p.set_u32(28, self.exp_cmd_sn);
        let max = self
            .fixed_max_cmd_sn
            .unwrap_or(self.exp_cmd_sn.wrapping_add(WINDOW));
        p.set_u32(32, max);
    }

    /// The login, both stages, AuthMethod=None. True once in the full feature phase.
    fn login(&mut self, stop: &AtomicBool, misbehaviour: Misbehaviour) -> bool {
        for _ in 0..8 {
            let Some(req) = self.next(stop) else {
                return false;
            };
            if req.opcode() != op::LOGIN_REQ {
                return false;
            }
            self.exp_cmd_sn = req.u32_at(24);
            let csg = (req.flags() >> 2) & 0x03;
            let (nsg, keys): (u8, Vec<(&str, String)>) = if csg == 0 {
                (
                    1,
                    vec![
                        ("AuthMethod", "None".into()),
                        ("TargetPortalGroupTag", "1".into()),
                    ],
                )
            } else {
                (
                    3,
                    [
                        ("HeaderDigest", "None"),
                        ("DataDigest", "None"),
                        ("MaxRecvDataSegmentLength", "262144"),
                        ("DefaultTime2Wait", "2"),
                        ("DefaultTime2Retain", "0"),
                        ("ErrorRecoveryLevel", "0"),
                        // Every WRITE waits for an R2T.
                        ("InitialR2T", "Yes"),
                        ("ImmediateData", "No"),
                        ("MaxBurstLength", "262144"),
                        ("FirstBurstLength", "65536"),
                        ("MaxOutstandingR2T", "1"),
                        ("MaxConnections", "1"),
                        ("DataPDUInOrder", "Yes"),
                        ("DataSequenceInOrder", "Yes"),
                    ]
                    .iter()
                    .map(|(k, v)| (*k, v.to_string()))
                    .collect(),
                )
            };
            let mut r = Pdu::new(op::LOGIN_RESP);
            r.set_flags(F_FINAL | (csg << 2) | nsg);
            r.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
            if nsg == 3 {
                r.bhs[14..16].copy_from_slice(&7u16.to_be_bytes());
            }
            r.set_itt(req.itt());
            if nsg == 3 && misbehaviour == Misbehaviour::DropsAfterInquiry {
                // MaxCmdSN = ExpCmdSN: room for one command, for good.
                self.fixed_max_cmd_sn = Some(self.exp_cmd_sn);
            }
            self.numbers(&mut r, true);
            r.data = text::encode(&keys);
            if !self.send(&r) {
                return false;
            }
            if nsg == 3 {
                return true;
            }
        }
        false
    }

    /// Answers one full-feature PDU; false ends the connection.
    fn answer(&mut self, p: &Pdu, misbehaviour: Misbehaviour) -> bool {
        match p.opcode() {
            op::NOP_OUT if p.itt() != NO_TAG => {
                let mut r = Pdu::new(op::NOP_IN);
                r.set_flags(F_FINAL);
                r.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
                r.set_itt(p.itt());
                r.set_u32(20, NO_TAG);
                self.numbers(&mut r, true);
                self.send(&r)
            }
            op::SCSI_CMD => {
                if p.bhs[0] & 0x40 == 0 {
                    self.exp_cmd_sn = p.u32_at(24).wrapping_add(1);
                }
                if misbehaviour == Misbehaviour::DropsAfterInquiry {
                    // Whatever it was, the connection ends here.
                    if p.bhs[32] == 0x12 {
                        self.command(p, misbehaviour);
                    }
                    return false;
                }
                self.command(p, misbehaviour)
            }
            op::TASK_MGMT_REQ => {
                let mut r = Pdu::new(op::TASK_MGMT_RESP);
                r.set_flags(F_FINAL);
                r.set_itt(p.itt());
                self.numbers(&mut r, true);
                self.send(&r)
            }
            op::LOGOUT_REQ => {
                let mut r = Pdu::new(op::LOGOUT_RESP);
                r.set_flags(F_FINAL);
                r.set_itt(p.itt());
                self.numbers(&mut r, true);
                self.send(&r);
                false
            }
            // Data-Out (only ever asked for outside the data: nothing to do), NOP-Out
            // answers.
            _ => true,
        }
    }

    fn command(&mut self, p: &Pdu, misbehaviour: Misbehaviour) -> bool {
        let opcode = p.bhs[32];
        let expected = p.u32_at(20);
        let is_read = matches!(opcode, 0x08 | 0x28 | 0xa8 | 0x88);
        let is_write = matches!(opcode, 0x0a | 0x2a | 0xaa | 0x8a);
        if is_read && misbehaviour == Misbehaviour::OversizedDataIn {
            let mut r = Pdu::new(op::DATA_IN);
            r.set_flags(0);
            r.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
            r.set_itt(p.itt());
            r.set_u32(20, NO_TAG);
            self.numbers(&mut r, false);
            // The header claims a segment the initiator never agreed to; a little of it
            // follows.
            let mut bytes = pdu::encode(&r, &Framing::default());
            bytes[5..8].copy_from_slice(&OVERSIZED_SEGMENT.to_be_bytes()[1..4]);
            bytes.extend_from_slice(&[0u8; 4096]);
            return self.s.write_all(&bytes).is_ok();
        }
        if is_read && misbehaviour == Misbehaviour::HoldsReads {
            let mut lun = [0u8; 8];
            lun.copy_from_slice(&p.bhs[8..16]);
            self.held.push((lun, p.itt(), expected));
            self.held_count.fetch_add(1, Ordering::AcqRel);
            return self.answer_held();
        }
        if is_read && misbehaviour == Misbehaviour::DataInPastTheBuffer {
            // Longer than asked for, past the end, and near the end of the offset space.
            let pieces = [
                (0u32, expected.saturating_add(4096)),
                (expected.saturating_add(65536), 512),
                (0xffff_fe00, 512),
            ];
            for (offset, len) in pieces {
                let mut r = Pdu::new(op::DATA_IN);
                r.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
                r.set_itt(p.itt());
                r.set_u32(20, NO_TAG);
                self.numbers(&mut r, false);
                r.set_u32(40, offset);
                r.data = vec![PAST_THE_BUFFER_BYTE; len as usize];
                if !self.send(&r) {
                    return false;
                }
            }
            let mut r = Pdu::new(op::SCSI_RESP);
            r.set_flags(F_FINAL);
            r.set_itt(p.itt());
            self.numbers(&mut r, true);
            return self.send(&r);
        }
        if is_write && misbehaviour == Misbehaviour::R2tOutsideData {
            let mut r = Pdu::new(op::R2T);
            r.set_flags(F_FINAL);
            r.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
            r.set_itt(p.itt());
            r.set_u32(20, 0x100);
            self.numbers(&mut r, false);
            r.set_u32(36, 0);
            // Buffer offset past the end of the command's data.
            r.set_u32(40, expected.saturating_add(1 << 20));
            r.set_u32(44, 4096);
            return self.send(&r);
        }
        if opcode == 0x12 {
            // Standard INQUIRY data: a disk, SPC-3, no TPGS.
            let mut d = vec![0u8; 36];
            d[2] = 0x05;
            d[3] = 0x02;
            d[4] = 31;
            d[8..16].copy_from_slice(b"HOSTILE ");
            d[16..32].copy_from_slice(b"SCRIPTED TARGET ");
            d[32..36].copy_from_slice(b"0001");
            d.truncate(expected as usize);
            let mut r = Pdu::new(op::DATA_IN);
            // Final, status in this PDU (GOOD), underflow when less than asked for.
            let under = (d.len() as u32) < expected;
            r.set_flags(F_FINAL | 0x01 | if under { 0x02 } else { 0 });
            r.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
            r.set_itt(p.itt());
            r.set_u32(20, NO_TAG);
            self.numbers(&mut r, true);
            r.set_u32(44, expected - d.len() as u32);
            r.data = d;
            return self.send(&r);
        }
        // Anything else: GOOD without data.
        let mut r = Pdu::new(op::SCSI_RESP);
        r.set_flags(F_FINAL | if expected > 0 { 0x02 } else { 0 });
        r.set_itt(p.itt());
        self.numbers(&mut r, true);
        r.set_u32(44, expected);
        self.send(&r)
    }
}

fn serve(
    s: TcpStream,
    misbehaviour: Misbehaviour,
    counts: &Counts,
    stop: &AtomicBool,
    until: Instant,
) {
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(POLL)).is_err()
        || s.set_write_timeout(Some(Duration::from_secs(5))).is_err()
    {
        return;
    }
    let mut c = Conn {
        s,
        until,
        stat_sn: 1,
        exp_cmd_sn: 1,
        fixed_max_cmd_sn: None,
        held: Vec::new(),
        held_count: counts.held.clone(),
        release: counts.release.clone(),
    };
    if !c.login(stop, misbehaviour) {
        return;
    }
    counts.logins.fetch_add(1, Ordering::AcqRel);
    for _ in 0..MAX_PDUS_PER_CONNECTION {
        let Some(p) = c.next(stop) else {
            return;
        };
        if p.opcode() == op::LOGOUT_REQ {
            counts.logouts.fetch_add(1, Ordering::AcqRel);
        }
        if !c.answer(&p, misbehaviour) {
            return;
        }
    }
}
