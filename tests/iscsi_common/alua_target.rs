//! A scripted iSCSI target with implicit ALUA, for what tgtd cannot do (change a port
//! group's access state while initiators are logged in). One in-memory LUN is reached
//! through two portals on 127.0.0.1: portal `i` is relative target port `i + 1` in
//! target port group `i + 1`. It answers INQUIRY (TPGS = 01b), VPD pages 0x00 and 0x83
//! (relative target port and target port group designators), REPORT TARGET PORT GROUPS
//! (both formats, with an implicit transition time), REPORT LUNS, TEST UNIT READY, READ
//! CAPACITY, MODE SENSE (no pages), SYNCHRONIZE CACHE and READ/WRITE(10/16).
//!
//! [`AluaTarget::set_states`] switches the groups' states at run time. A port in standby,
//! unavailable or transitioning state answers other commands with NOT READY 04h/0Bh,
//! 0Ch or 0Ah; every nexus on a port that is active after the switch gets UNIT ATTENTION
//! ASYMMETRIC ACCESS STATE CHANGED on its next command. A new nexus gets POWER ON
//! OCCURRED first, as real targets do.
//!
//! This file holds the portals, logins and PDUs; `alua_lu.rs` the LUN and its answers.
//!
//! Every connection is served on its own thread. Every loop is bounded: each listener
//! accepts at most `MAX_CONNECTIONS`, the target lives at most its lifetime, each socket
//! has a read timeout so the stop flag is seen.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vscsid::iscsi::pdu::{self, op, Framing, Pdu, F_FINAL};
use vscsid::iscsi::text;

#[path = "alua_lu.rs"]
mod lu;
use lu::{Lu, Nexus, Reply, BLOCK, UA_POWER_ON};
#[allow(unused_imports)] // Each user of the target takes what it needs.
pub use lu::{
    PortCounters, ACTIVE_NON_OPTIMIZED, ACTIVE_OPTIMIZED, STANDBY, TRANSITIONING, UNAVAILABLE,
};

pub const TARGET_NAME: &str = "iqn.2024-01.io.vscsid.test:alua";
const MAX_CONNECTIONS: usize = 500;
const POLL: Duration = Duration::from_millis(100);
const MAX_PDUS_PER_CONNECTION: usize = 10_000_000;
const NO_TAG: u32 = 0xffff_ffff;
const WINDOW: u32 = 63;
/// What the target grants: data per R2T, and unsolicited data per command.
const MAX_BURST: u32 = 1 << 20;
const FIRST_BURST: u32 = 262_144;

pub struct AluaTarget {
    pub ports: [u16; 2],
    lu: Arc<Lu>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub logins: Arc<AtomicUsize>,
}

impl AluaTarget {
    /// A target of `size` bytes on two ephemeral ports of 127.0.0.1, group 1 active/optimized,
    /// group 2 active/non-optimized.
    pub fn start(size: usize, transition_secs: u8) -> AluaTarget {
        Self::start_on(["127.0.0.1:0", "127.0.0.1:0"], size, transition_secs, 300)
    }

    /// The same on the given addresses, living `lifetime_secs` at most.
    pub fn start_on(
        addrs: [&str; 2],
        size: usize,
        transition_secs: u8,
        lifetime_secs: u64,
    ) -> AluaTarget {
        let lu = Arc::new(Lu {
            data: Mutex::new(vec![0u8; size]),
            states: [
                AtomicU8::new(ACTIVE_OPTIMIZED),
                AtomicU8::new(ACTIVE_NON_OPTIMIZED),
            ],
            transition_secs,
            nexuses: Mutex::new(Vec::new()),
            ports: Default::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let logins = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + Duration::from_secs(lifetime_secs);
        let mut ports = [0u16; 2];
        let mut threads = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let listener = TcpListener::bind(addr).expect("bind the portal");
            ports[i] = listener.local_addr().expect("local address").port();
            listener.set_nonblocking(true).expect("nonblocking");
            let (lu, stop, logins) = (lu.clone(), stop.clone(), logins.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("alua-portal-{i}"))
                    .spawn(move || accept_loop(listener, i, &lu, &stop, &logins, until))
                    .expect("spawn portal"),
            );
        }
        AluaTarget {
            ports,
            lu,
            stop,
            threads,
            logins,
        }
    }

    pub fn portal(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    pub fn url(&self) -> String {
        format!("iscsi://{}/{TARGET_NAME}/0", self.portal(0))
    }

    /// Switches the two groups' states; nexuses on ports active afterwards get ASYMMETRIC
    /// ACCESS STATE CHANGED.
    pub fn set_states(&self, states: [u8; 2]) {
        self.lu.set_states(states);
    }

    pub fn counters(&self, port: usize) -> &PortCounters {
        &self.lu.ports[port]
    }

    /// A copy of the LUN's bytes in `range`.
    pub fn read(&self, at: usize, len: usize) -> Vec<u8> {
        self.lu.data.lock().unwrap()[at..at + len].to_vec()
    }
}

impl Drop for AluaTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    port: usize,
    lu: &Arc<Lu>,
    stop: &Arc<AtomicBool>,
    logins: &Arc<AtomicUsize>,
    until: Instant,
) {
    let mut served = Vec::new();
    while !stop.load(Ordering::Acquire) && Instant::now() < until && served.len() < MAX_CONNECTIONS
    {
        match listener.accept() {
            Ok((s, _)) => {
                let (lu, stop, logins) = (lu.clone(), stop.clone(), logins.clone());
                served.push(std::thread::spawn(move || {
                    serve(s, port, &lu, &stop, &logins, until)
                }));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for t in served {
        let _ = t.join();
    }
}

/// A WRITE waiting for its data.
struct Write {
    lba: u64,
    data: Vec<u8>,
    received: usize,
    lun: [u8; 8],
}

struct Conn {
    s: TcpStream,
    port: usize,
    until: Instant,
    stat_sn: u32,
    exp_cmd_sn: u32,
    /// The initiator's MaxRecvDataSegmentLength.
    max_send: usize,
    writes: HashMap<u32, Write>,
    nexus: Arc<Nexus>,
}

fn serve(
    s: TcpStream,
    port: usize,
    lu: &Lu,
    stop: &AtomicBool,
    logins: &AtomicUsize,
    until: Instant,
) {
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(POLL)).is_err()
        || s.set_write_timeout(Some(Duration::from_secs(5))).is_err()
    {
        return;
    }
    let nexus = Arc::new(Nexus {
        port,
        attention: AtomicU8::new(UA_POWER_ON),
    });
    let mut c = Conn {
        s,
        port,
        until,
        stat_sn: 1,
        exp_cmd_sn: 1,
        max_send: 8192,
        writes: HashMap::new(),
        nexus: nexus.clone(),
    };
    if !c.login(stop) {
        return;
    }
    logins.fetch_add(1, Ordering::AcqRel);
    lu.nexuses.lock().unwrap().push(nexus.clone());
    for _ in 0..MAX_PDUS_PER_CONNECTION {
        let Some(p) = c.next(stop) else {
            break;
        };
        if !c.answer(lu, &p) {
            break;
        }
    }
    lu.nexuses
        .lock()
        .unwrap()
        .retain(|n| !Arc::ptr_eq(n, &nexus));
}

impl Conn {
    fn next(&mut self, stop: &AtomicBool) -> Option<Pdu> {
        let framing = Framing {
            max_recv_data: 16 << 20,
            ..Framing::default()
        };
        let mut first = [0u8; 1];
        loop {
            if stop.load(Ordering::Acquire) || Instant::now() >= self.until {
                return None;
            }
            match self.s.peek(&mut first) {
                Ok(0) => return None,
                Ok(_) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
        self.s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let p = pdu::read_pdu(&mut self.s, &framing).ok();
        self.s.set_read_timeout(Some(POLL)).ok()?;
        p
    }

    fn send(&mut self, p: &Pdu) -> bool {
        pdu::write_pdu(&mut self.s, p, &Framing::default()).is_ok()
    }

    fn numbers(&mut self, p: &mut Pdu, advance: bool) {
        p.set_u32(24, self.stat_sn);
        if advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
        p.set_u32(28, self.exp_cmd_sn);
        p.set_u32(32, self.exp_cmd_sn.wrapping_add(WINDOW));
    }

    fn login(&mut self, stop: &AtomicBool) -> bool {
        for _ in 0..8 {
            let Some(req) = self.next(stop) else {
                return false;
            };
            if req.opcode() != op::LOGIN_REQ {
                return false;
            }
            self.exp_cmd_sn = req.u32_at(24);
            let keys = text::parse(&req.data);
            if let Some(n) =
                text::get(&keys, "MaxRecvDataSegmentLength").and_then(|v| v.parse::<usize>().ok())
            {
                self.max_send = n.clamp(512, 1 << 20);
            }
            let csg = (req.flags() >> 2) & 0x03;
            let tpgt = (self.port + 1).to_string();
            let (nsg, keys): (u8, Vec<(&str, String)>) = if csg == 0 {
                (
                    1,
                    vec![
                        ("AuthMethod", "None".into()),
                        ("TargetPortalGroupTag", tpgt),
                    ],
                )
            } else {
                (
                    3,
                    [
                        ("HeaderDigest", "None".to_string()),
                        ("DataDigest", "None".into()),
                        ("MaxRecvDataSegmentLength", "262144".into()),
                        ("DefaultTime2Wait", "2".into()),
                        ("DefaultTime2Retain", "0".into()),
                        ("ErrorRecoveryLevel", "0".into()),
                        ("InitialR2T", "No".into()),
                        ("ImmediateData", "Yes".into()),
                        ("MaxBurstLength", MAX_BURST.to_string()),
                        ("FirstBurstLength", FIRST_BURST.to_string()),
                        ("MaxOutstandingR2T", "1".into()),
                        ("MaxConnections", "1".into()),
                        ("DataPDUInOrder", "Yes".into()),
                        ("DataSequenceInOrder", "Yes".into()),
                    ]
                    .into_iter()
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

    fn answer(&mut self, lu: &Lu, p: &Pdu) -> bool {
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
                match lu.execute(self.port, &self.nexus, &p.bhs[32..48]) {
                    Reply::Good(data) => self.respond(p.itt(), p.u32_at(20), &data),
                    Reply::Check(sense) => self.check(p.itt(), &sense),
                    Reply::Write { lba, len } => self.start_write(lu, p, lba, len),
                }
            }
            op::DATA_OUT => self.data_out(lu, p),
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
            _ => true,
        }
    }

    /// Data-In (in segments the initiator accepts) with GOOD status in the last PDU.
    fn respond(&mut self, itt: u32, expected: u32, data: &[u8]) -> bool {
        let data = &data[..data.len().min(expected as usize)];
        let under = (data.len() as u32) < expected;
        if data.is_empty() {
            let mut r = Pdu::new(op::SCSI_RESP);
            r.set_flags(F_FINAL | if under { 0x02 } else { 0 });
            r.set_itt(itt);
            self.numbers(&mut r, true);
            r.set_u32(44, expected);
            return self.send(&r);
        }
        let chunks: Vec<&[u8]> = data.chunks(self.max_send).collect();
        let last = chunks.len() - 1;
        for (sn, chunk) in chunks.into_iter().enumerate() {
            let mut r = Pdu::new(op::DATA_IN);
            let status = if sn == last {
                F_FINAL | 0x01 | if under { 0x02 } else { 0 }
            } else {
                0
            };
            r.set_flags(status);
            r.set_itt(itt);
            r.set_u32(20, NO_TAG);
            self.numbers(&mut r, sn == last);
            r.set_u32(36, sn as u32);
            r.set_u32(40, (sn * self.max_send) as u32);
            if sn == last {
                r.set_u32(44, expected - data.len() as u32);
            }
            r.data = chunk.to_vec();
            if !self.send(&r) {
                return false;
            }
        }
        true
    }

    fn check(&mut self, itt: u32, sense: &[u8]) -> bool {
        let mut r = Pdu::new(op::SCSI_RESP);
        r.set_flags(F_FINAL);
        r.bhs[3] = 0x02;
        r.set_itt(itt);
        self.numbers(&mut r, true);
        let mut d = (sense.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(sense);
        r.data = d;
        self.send(&r)
    }

    /// A WRITE: its immediate data, then unsolicited Data-Out up to FirstBurstLength, then
    /// R2Ts for the rest.
    fn start_write(&mut self, lu: &Lu, p: &Pdu, lba: u64, len: usize) -> bool {
        let mut w = Write {
            lba,
            data: vec![0u8; len],
            received: 0,
            lun: p.bhs[8..16].try_into().unwrap(),
        };
        let n = p.data.len().min(len);
        w.data[..n].copy_from_slice(&p.data[..n]);
        w.received = n;
        let itt = p.itt();
        let unsolicited_follows = p.flags() & F_FINAL == 0;
        self.writes.insert(itt, w);
        // The command PDU ended the unsolicited data: complete it or ask for more.
        unsolicited_follows || self.progress(lu, itt)
    }

    fn data_out(&mut self, lu: &Lu, p: &Pdu) -> bool {
        let itt = p.itt();
        let Some(w) = self.writes.get_mut(&itt) else {
            return true;
        };
        let off = p.buffer_offset() as usize;
        let end = (off + p.data.len()).min(w.data.len());
        if off < end {
            w.data[off..end].copy_from_slice(&p.data[..end - off]);
            w.received += end - off;
        }
        if p.flags() & F_FINAL == 0 {
            return true;
        }
        self.progress(lu, itt)
    }

    /// After a data sequence ended: the write completes, or an R2T asks for more.
    fn progress(&mut self, lu: &Lu, itt: u32) -> bool {
        let Some(w) = self.writes.get(&itt) else {
            return true;
        };
        if w.received >= w.data.len() {
            let Some(w) = self.writes.remove(&itt) else {
                return true;
            };
            let at = w.lba as usize * BLOCK;
            lu.data.lock().unwrap()[at..at + w.data.len()].copy_from_slice(&w.data);
            return self.respond(itt, 0, &[]);
        }
        let want = (w.data.len() - w.received).min(MAX_BURST as usize);
        let (offset, lun) = (w.received, w.lun);
        let mut r = Pdu::new(op::R2T);
        r.set_flags(F_FINAL);
        r.bhs[8..16].copy_from_slice(&lun);
        r.set_itt(itt);
        r.set_u32(20, itt);
        self.numbers(&mut r, false);
        r.set_u32(36, 0);
        r.set_u32(40, offset as u32);
        r.set_u32(44, want as u32);
        self.send(&r)
    }
}
