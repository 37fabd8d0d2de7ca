//! The target side of the iSCSI targets: an in-memory stream whose reads are the input
//! (for `login()`), a scripted TCP target that logs a real session in and then sends the
//! input as its PDUs, and the PDU encoders the seeds are built with.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use vscsid::iscsi::pdu::{self, op, Framing, Pdu};
use vscsid::iscsi::text;

use crate::HANG_BOUND;

/// A connection whose incoming bytes are the input and whose outgoing bytes are dropped.
/// At the end of the input a read fails as a closed connection would.
pub struct InputStream<'a> {
    input: &'a [u8],
}

impl<'a> InputStream<'a> {
    pub fn new(input: &'a [u8]) -> InputStream<'a> {
        InputStream { input }
    }
}

impl Read for InputStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() && !buf.is_empty() {
            return Err(io::Error::from(io::ErrorKind::ConnectionReset));
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for InputStream<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Login stages.
pub const SECURITY: u8 = 0;
pub const OPERATIONAL: u8 = 1;
pub const FULL_FEATURE: u8 = 3;

/// A Login Response: T bit and stages, status, StatSN, the window, and text keys.
pub fn login_response(
    transit: bool,
    csg: u8,
    nsg: u8,
    stat_sn: u32,
    cmd_sn: u32,
    status: u16,
    pairs: &[(&str, &str)],
) -> Pdu {
    let mut p = Pdu::new(op::LOGIN_RESP);
    p.set_flags(if transit { 0x80 | (nsg & 3) } else { 0 } | ((csg & 3) << 2));
    p.bhs[14..16].copy_from_slice(&0x0101u16.to_be_bytes());
    p.set_u32(24, stat_sn);
    p.set_u32(28, cmd_sn);
    p.set_u32(32, cmd_sn.wrapping_add(31));
    p.bhs[36..38].copy_from_slice(&status.to_be_bytes());
    let owned: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    p.data = text::encode(&owned);
    p
}

/// What the scripted target agrees to in the operational stage.
pub const OPERATIONAL_KEYS: [(&str, &str); 8] = [
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("MaxBurstLength", "1048576"),
    ("FirstBurstLength", "512"),
    ("ImmediateData", "Yes"),
    ("InitialR2T", "No"),
    ("ErrorRecoveryLevel", "0"),
];

/// Data-In with status (F and S bits) for `itt`.
pub fn data_in_with_status(itt: u32, stat_sn: u32, cmd_sn: u32, status: u8, data: &[u8]) -> Pdu {
    let mut p = Pdu::new(op::DATA_IN);
    p.set_flags(0x81);
    p.bhs[3] = status;
    p.set_itt(itt);
    p.set_u32(20, 0xffff_ffff);
    p.set_u32(24, stat_sn);
    p.set_u32(28, cmd_sn);
    p.set_u32(32, cmd_sn.wrapping_add(31));
    p.data = data.to_vec();
    p
}

/// A SCSI Response for `itt` with `status` and optional sense.
pub fn scsi_response(itt: u32, stat_sn: u32, cmd_sn: u32, status: u8, sense: &[u8]) -> Pdu {
    let mut p = Pdu::new(op::SCSI_RESP);
    p.set_flags(0x80);
    p.bhs[3] = status;
    p.set_itt(itt);
    p.set_u32(24, stat_sn);
    p.set_u32(28, cmd_sn);
    p.set_u32(32, cmd_sn.wrapping_add(31));
    if !sense.is_empty() {
        let mut d = (sense.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(sense);
        p.data = d;
    }
    p
}

/// An R2T for `itt` asking for `len` bytes at `offset`.
pub fn r2t(itt: u32, ttt: u32, stat_sn: u32, cmd_sn: u32, offset: u32, len: u32) -> Pdu {
    let mut p = Pdu::new(op::R2T);
    p.set_flags(0x80);
    p.set_itt(itt);
    p.set_u32(20, ttt);
    p.set_u32(24, stat_sn);
    p.set_u32(28, cmd_sn);
    p.set_u32(32, cmd_sn.wrapping_add(31));
    p.set_u32(40, offset);
    p.set_u32(44, len);
    p
}

/// Standard INQUIRY data of a disk without TPGS (ALUA off), as the scripted target answers
/// the session's ALUA probe.
pub fn standard_inquiry(tpgs: u8) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[2] = 6;
    d[3] = 2;
    d[4] = 91;
    d[5] = (tpgs & 3) << 4;
    d[8..16].copy_from_slice(b"FUZZ    ");
    d[16..32].copy_from_slice(b"SCRIPTED TARGET ");
    d
}

/// The scripted side of one session: accepts the initiator's connection, logs it in,
/// answers the initiator's TEST UNIT READY and ALUA probe, waits for `commands` SCSI commands, then sends `stream` and
/// closes its sending side. Runs on its own thread; every step is bounded.
pub struct ScriptedTarget {
    pub listener: TcpListener,
    /// The InitiatorName of this session: a connection with another is a stray from an
    /// earlier session and is dropped.
    pub initiator_name: String,
    pub commands: usize,
}

fn read_one(s: &mut TcpStream) -> io::Result<Pdu> {
    pdu::read_pdu(
        s,
        &Framing {
            max_recv_data: 1 << 20,
            ..Framing::default()
        },
    )
}

impl ScriptedTarget {
    /// Serves one session; returns when the initiator has closed the connection (or the
    /// bound passed). Errors are the initiator's side going away.
    pub fn serve(self, stream: &[u8]) {
        let deadline = Instant::now() + HANG_BOUND;
        let ScriptedTarget {
            listener,
            initiator_name,
            commands,
        } = self;
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        // A connection with another InitiatorName is a stray (a login retry of an earlier
        // session that came in on the same port), as is one that goes away during login:
        // drop it and wait for this session's. (A session whose own login breaks fails
        // its connect, which the target reports.)
        let (mut s, mut stat_sn) = loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                    match login(&mut s, &initiator_name) {
                        Ok(stat_sn) => break (s, stat_sn),
                        Err(Stray | Gone) => continue,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => return,
            }
        };
        // Later connections find nobody listening.
        drop(listener);
        // The initiator's own commands after login, which come before any of the
        // harness's: TEST UNIT READY (taking the new nexus's unit attention; GOOD here),
        // then the ALUA probe (INQUIRY); then the harness's commands. Data-Out is skipped.
        let mut probes_answered = 0;
        let mut seen = 0;
        while seen < commands && Instant::now() < deadline {
            let Ok(p) = read_one(&mut s) else {
                return;
            };
            if p.opcode() != op::SCSI_CMD {
                continue;
            }
            if probes_answered < 2 {
                probes_answered += 1;
                let cmd_sn = p.u32_at(24);
                let answer = if p.bhs[32] == 0x00 {
                    scsi_response(p.itt(), stat_sn, cmd_sn.wrapping_add(1), 0, &[])
                } else {
                    data_in_with_status(
                        p.itt(),
                        stat_sn,
                        cmd_sn.wrapping_add(1),
                        0,
                        &standard_inquiry(0),
                    )
                };
                stat_sn = stat_sn.wrapping_add(1);
                if pdu::write_pdu(&mut s, &answer, &Framing::default()).is_err() {
                    return;
                }
                continue;
            }
            seen += 1;
        }
        if s.write_all(stream).is_err() {
            return;
        }
        let _ = s.shutdown(Shutdown::Write);
        // Take whatever the initiator still sends (Data-Out, NOP-Out) until it closes.
        let mut sink = [0u8; 4096];
        while Instant::now() < deadline {
            match s.read(&mut sink) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Why the scripted login ended without a session.
enum LoginFailure {
    /// Another session's connection.
    Stray,
    /// The initiator went away or broke the protocol.
    Gone,
}
use LoginFailure::{Gone, Stray};

/// Answers every Login Request of `initiator_name`: security moves to operational,
/// operational to full feature. Returns the next StatSN.
fn login(s: &mut TcpStream, initiator_name: &str) -> Result<u32, LoginFailure> {
    let mut stat_sn = 0x100u32;
    for _ in 0..8 {
        let req = read_one(s).map_err(|_| Gone)?;
        if req.opcode() != op::LOGIN_REQ {
            return Err(Gone);
        }
        let keys = text::parse(&req.data);
        if let Some(name) = text::get(&keys, "InitiatorName") {
            if name != initiator_name {
                return Err(Stray);
            }
        }
        let csg = (req.flags() >> 2) & 3;
        let cmd_sn = req.u32_at(24);
        let (nsg, pairs): (u8, &[(&str, &str)]) = if csg == SECURITY {
            (OPERATIONAL, &[("AuthMethod", "None")])
        } else {
            (FULL_FEATURE, &OPERATIONAL_KEYS)
        };
        let mut p = login_response(true, csg, nsg, stat_sn, cmd_sn, 0, pairs);
        p.set_itt(req.itt());
        p.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
        pdu::write_pdu(s, &p, &Framing::default()).map_err(|_| Gone)?;
        stat_sn = stat_sn.wrapping_add(1);
        if nsg == FULL_FEATURE {
            return Ok(stat_sn);
        }
    }
    Err(Gone)
}
