//! Login state-machine tests: `login()` runs against a scripted fake target on the other end
//! of a Unix socket pair. The target decodes every Login Request itself, checks the header
//! fields and text keys against RFC 7143 sections 6.3 and 11.12, and answers with Login
//! Responses it builds byte by byte. Every socket has a read timeout and every loop a bound,
//! so a broken initiator fails a test instead of hanging it.
//!
//! This file is the scripted target and its helpers; the tests are in `negotiation`
//! (logins that succeed), `authentication` (CHAP) and `failures` (logins that must fail).

mod algorithms;
mod authentication;
mod failures;
mod negotiation;
mod redirects;

use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;
use sha3::Sha3_256;

use super::*;
use crate::iscsi::options::Chap;
use crate::iscsi::pdu::{BHS_LEN, F_FINAL, F_IMMEDIATE};

/// Long enough for any honest exchange, short enough that a wait on it is noticed.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A login that fails because the peer went away must fail well before any timeout fires.
const PROMPT: Duration = Duration::from_secs(2);
/// No scripted target answers more requests than this.
const MAX_ROUNDS: usize = 40;

const TARGET: &str = "iqn.2003-01.org.example:disk1";
const INITIATOR: &str = "iqn.2024-01.io.vscsid:unit-test";
const ISID: [u8; 6] = [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a];
const TSIH: u16 = 0x0123;
/// The first StatSN is chosen two below the wrap so that ExpStatSN must wrap to 0.
const FIRST_STAT_SN: u32 = 0xffff_fffe;
/// How far MaxCmdSN runs ahead of the CmdSN the target expects.
const WINDOW: u32 = 31;

// Login flag bits (RFC 7143 11.12.1 and 11.13.1).
const T_BIT: u8 = 0x80;
const C_BIT: u8 = 0x40;

fn options() -> IscsiOptions {
    IscsiOptions {
        initiator_name: INITIATOR.into(),
        ..IscsiOptions::default()
    }
}

fn chap_options(mutual: Option<(&str, &str)>) -> IscsiOptions {
    IscsiOptions {
        chap: Some(Chap {
            user: "alice".into(),
            secret: "alice-secret-12".into(),
            mutual: mutual.map(|(user, secret)| {
                Box::new(Chap {
                    user: user.into(),
                    secret: secret.into(),
                    mutual: None,
                })
            }),
        }),
        ..options()
    }
}

/// `key=value\0...`, written here rather than with `text::encode` so the target does not
/// share the initiator's encoder.
fn kv(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(format!("{k}={v}").as_bytes());
        out.push(0);
    }
    out
}

fn hex(b: &[u8]) -> String {
    let digits: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("0x{digits}")
}

fn unhex(s: &str) -> Vec<u8> {
    let h = s.strip_prefix("0x").expect("hex value starts with 0x");
    assert_eq!(h.len() % 2, 0, "odd hex length in {s}");
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// RFC 1994: MD5 over the identifier, the secret and the challenge.
fn md5_response(id: u8, secret: &str, challenge: &[u8]) -> Vec<u8> {
    chap_response("5", id, secret, challenge)
}

/// RFC 1994 with the hash `CHAP_A` names (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256), computed
/// here with the hash crates rather than through the initiator's code.
fn chap_response(chap_a: &str, id: u8, secret: &str, challenge: &[u8]) -> Vec<u8> {
    fn h<D: Digest>(id: u8, secret: &str, challenge: &[u8]) -> Vec<u8> {
        let mut h = D::new();
        h.update([id]);
        h.update(secret.as_bytes());
        h.update(challenge);
        h.finalize().to_vec()
    }
    match chap_a {
        "5" => h::<Md5>(id, secret, challenge),
        "6" => h::<Sha1>(id, secret, challenge),
        "7" => h::<Sha256>(id, secret, challenge),
        "8" => h::<Sha3_256>(id, secret, challenge),
        other => panic!("no hash for CHAP_A={other}"),
    }
}

/// Whether an I/O error only means that the initiator has closed its end.
fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// One Login Request as the target decoded it.
struct Request {
    pdu: Pdu,
    keys: Vec<(String, String)>,
}

impl Request {
    fn transit(&self) -> bool {
        self.pdu.flags() & T_BIT != 0
    }
    fn csg(&self) -> u8 {
        (self.pdu.flags() >> 2) & 0x03
    }
    fn nsg(&self) -> u8 {
        self.pdu.flags() & 0x03
    }
    fn key(&self, k: &str) -> Option<&str> {
        text::get(&self.keys, k)
    }
    /// Checks the stage bits: T, CSG and (when T is set) NSG.
    fn assert_stage(&self, transit: bool, csg: u8, nsg: u8) {
        assert_eq!(
            (self.transit(), self.csg()),
            (transit, csg),
            "T and CSG of {:#04x}",
            self.pdu.flags()
        );
        if transit {
            assert_eq!(self.nsg(), nsg, "NSG of {:#04x}", self.pdu.flags());
        }
    }
    fn assert_keys(&self, want: &[(&str, &str)]) {
        for (k, v) in want {
            assert_eq!(self.key(k), Some(*v), "key {k} in {:?}", self.keys);
        }
    }
    fn assert_no_key(&self, k: &str) {
        assert_eq!(self.key(k), None, "unexpected key {k} in {:?}", self.keys);
    }
}

/// A Login Response for the fake target to send.
#[derive(Default)]
struct Reply {
    transit: bool,
    cont: bool,
    csg: u8,
    nsg: u8,
    data: Vec<u8>,
    status: u16,
    tsih: u16,
}

impl Reply {
    /// T=1: the target agrees to move from `csg` to `nsg`.
    fn go(csg: u8, nsg: u8, pairs: &[(&str, &str)]) -> Reply {
        Reply {
            transit: true,
            csg,
            nsg,
            data: kv(pairs),
            ..Reply::default()
        }
    }
    /// T=0: the target stays in `csg`.
    fn stay(csg: u8, pairs: &[(&str, &str)]) -> Reply {
        Reply {
            csg,
            data: kv(pairs),
            ..Reply::default()
        }
    }
    /// A failed login: Status-Class in the high byte, Status-Detail in the low one.
    fn fail(csg: u8, status: u16) -> Reply {
        Reply {
            csg,
            status,
            ..Reply::default()
        }
    }
    fn tsih(self, tsih: u16) -> Reply {
        Reply { tsih, ..self }
    }
}

/// A connection the scripted target reads and writes: a socket pair's end, or an accepted
/// TCP connection (redirects).
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// The target end of the connection and what it has checked so far.
struct Target {
    s: Box<dyn Stream>,
    stat_sn: u32,
    rounds: usize,
    /// StatSN of the last response: the next request must acknowledge it.
    last_stat_sn: Option<u32>,
    itt: Option<u32>,
    /// Whether the requests must carry [`ISID`] (a discovery session picks its own).
    fixed_isid: bool,
}

impl Target {
    /// A fresh target on `s`.
    fn on(s: Box<dyn Stream>) -> Target {
        Target {
            s,
            stat_sn: FIRST_STAT_SN,
            rounds: 0,
            last_stat_sn: None,
            itt: None,
            fixed_isid: true,
        }
    }

    /// The next Login Request, or None if the initiator closed the connection.
    fn try_recv(&mut self) -> Option<Request> {
        self.rounds += 1;
        assert!(self.rounds <= MAX_ROUNDS, "the initiator keeps sending");
        let f = Framing {
            max_recv_data: 65536,
            ..Framing::default()
        };
        let pdu = match pdu::read_pdu(&mut self.s, &f) {
            Ok(p) => p,
            // A close with our last response still unread shows as a reset.
            Err(e) if closed(&e) => return None,
            Err(e) => panic!("target: reading a login request: {e}"),
        };
        // RFC 7143 11.12: a Login Request is always immediate, opcode 0x03.
        assert_eq!(pdu.opcode(), op::LOGIN_REQ, "opcode");
        assert_eq!(pdu.bhs[0] & F_IMMEDIATE, F_IMMEDIATE, "I bit");
        // Version-max and Version-min: 0x00 for RFC 7143.
        assert_eq!(&pdu.bhs[2..4], &[0, 0], "versions");
        assert!(pdu.ahs.is_empty(), "AHS in a login request");
        if self.fixed_isid {
            assert_eq!(&pdu.bhs[8..14], &ISID, "ISID");
        }
        // A new session: TSIH 0 until the target hands one out on its final response.
        assert_eq!(u16::from_be_bytes([pdu.bhs[14], pdu.bhs[15]]), 0, "TSIH");
        // The initiator's only connection: CID 0.
        assert_eq!(u16::from_be_bytes([pdu.bhs[20], pdu.bhs[21]]), 0, "CID");
        // Immediate requests do not advance CmdSN: it stays at the first value throughout.
        assert_eq!(pdu.u32_at(24), 1, "CmdSN");
        if let Some(sn) = self.last_stat_sn {
            assert_eq!(pdu.u32_at(28), sn.wrapping_add(1), "ExpStatSN");
        }
        // One task tag for the whole login.
        let itt = *self.itt.get_or_insert(pdu.itt());
        assert_eq!(pdu.itt(), itt, "ITT changed during login");
        // T and C are never both set.
        assert_ne!(pdu.flags() & (T_BIT | C_BIT), T_BIT | C_BIT, "T and C");
        let keys = text::parse(&pdu.data);
        Some(Request { pdu, keys })
    }

    fn recv(&mut self) -> Request {
        self.try_recv()
            .expect("target: the initiator closed the connection early")
    }

    fn reply(&mut self, req: &Request, r: Reply) {
        let mut p = Pdu::new(op::LOGIN_RESP);
        let mut flags = (r.csg & 0x03) << 2;
        if r.transit {
            flags |= T_BIT | (r.nsg & 0x03);
        }
        if r.cont {
            flags |= C_BIT;
        }
        p.set_flags(flags);
        // Version-max and Version-active.
        p.bhs[2] = 0;
        p.bhs[3] = 0;
        p.bhs[8..14].copy_from_slice(&req.pdu.bhs[8..14]);
        p.bhs[14..16].copy_from_slice(&r.tsih.to_be_bytes());
        p.set_itt(req.pdu.itt());
        p.set_u32(24, self.stat_sn);
        let cmd_sn = req.pdu.u32_at(24);
        p.set_u32(28, cmd_sn);
        p.set_u32(32, cmd_sn.wrapping_add(WINDOW));
        p.bhs[36..38].copy_from_slice(&r.status.to_be_bytes());
        p.data = r.data;
        match pdu::write_pdu(&mut self.s, &p, &Framing::default()) {
            Ok(()) => {}
            // The initiator gave up and closed first; the next try_recv() sees it.
            Err(e) if closed(&e) => {}
            Err(e) => panic!("target: write: {e}"),
        }
        self.last_stat_sn = Some(self.stat_sn);
        // RFC 7143 11.13.4: every response, login responses included, takes the next StatSN.
        self.stat_sn = self.stat_sn.wrapping_add(1);
    }

    /// Asserts that the initiator sends nothing more and closes the connection.
    fn expect_close(&mut self) {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => {}
            Ok(_) => panic!("target: the initiator sent more after the login ended"),
            Err(e) => panic!("target: waiting for the initiator to close: {e}"),
        }
    }

    /// Security stage for AuthMethod=None, checking the first request's keys.
    fn security_none(&mut self, target: Option<&str>) {
        let r = self.recv();
        r.assert_stage(true, SECURITY, OPERATIONAL);
        r.assert_keys(&[("InitiatorName", INITIATOR), ("AuthMethod", "None")]);
        match target {
            Some(t) => r.assert_keys(&[("SessionType", "Normal"), ("TargetName", t)]),
            None => {
                r.assert_keys(&[("SessionType", "Discovery")]);
                r.assert_no_key("TargetName");
            }
        }
        self.reply(
            &r,
            Reply::go(
                SECURITY,
                OPERATIONAL,
                &[("AuthMethod", "None"), ("TargetPortalGroupTag", "1")],
            ),
        );
    }

    /// Operational stage in one round: answers with `pairs` and moves to full feature.
    fn operational(&mut self, pairs: &[(&str, &str)]) -> Request {
        let r = self.recv();
        r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
        self.reply(&r, Reply::go(OPERATIONAL, FULL_FEATURE, pairs).tsih(TSIH));
        r
    }

    /// CHAP up to the challenge: AuthMethod=CHAP, then the default CHAP_A offer answered
    /// with MD5, `id` and `challenge`. Returns the request carrying CHAP_N and CHAP_R,
    /// unanswered.
    fn chap_challenge(&mut self, id: u8, challenge: &[u8]) -> Request {
        self.chap_challenge_with("8,7,6,5", "5", id, challenge)
    }

    /// [`Target::chap_challenge`] expecting the offer `offer` and choosing `chosen`.
    fn chap_challenge_with(
        &mut self,
        offer: &str,
        chosen: &str,
        id: u8,
        challenge: &[u8],
    ) -> Request {
        let r = self.recv();
        // T=0: the initiator must not leave the security stage before authenticating.
        r.assert_stage(false, SECURITY, 0);
        r.assert_keys(&[
            ("InitiatorName", INITIATOR),
            ("SessionType", "Normal"),
            ("TargetName", TARGET),
            ("AuthMethod", "CHAP"),
        ]);
        self.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "CHAP")]));
        let r = self.recv();
        r.assert_stage(false, SECURITY, 0);
        r.assert_keys(&[("CHAP_A", offer)]);
        let id = id.to_string();
        let c = hex(challenge);
        self.reply(
            &r,
            Reply::stay(
                SECURITY,
                &[("CHAP_A", chosen), ("CHAP_I", &id), ("CHAP_C", &c)],
            ),
        );
        let r = self.recv();
        r.assert_stage(true, SECURITY, OPERATIONAL);
        r
    }
}

/// What a scripted login produced.
struct Outcome<R> {
    result: Result<Negotiated, LoginError>,
    target: R,
    elapsed: Duration,
}

/// Runs `login()` against `script`, with `initiator_timeout` as the initiator's read
/// timeout. A panic in the script (a failed check) is re-raised here.
fn drive_with_timeout<R, F>(
    opts: &IscsiOptions,
    target: Option<&str>,
    initiator_timeout: Duration,
    script: F,
) -> Outcome<R>
where
    F: FnOnce(&mut Target) -> R + Send + 'static,
    R: Send + 'static,
{
    let (mut ini, tgt) = UnixStream::pair().expect("socket pair");
    ini.set_read_timeout(Some(initiator_timeout))
        .expect("timeout");
    ini.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    tgt.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    tgt.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let handle = thread::spawn(move || {
        let mut t = Target {
            s: Box::new(tgt),
            stat_sn: FIRST_STAT_SN,
            rounds: 0,
            last_stat_sn: None,
            itt: None,
            fixed_isid: true,
        };
        script(&mut t)
    });
    let start = Instant::now();
    let result = login(&mut ini, opts, target, ISID);
    let elapsed = start.elapsed();
    // Closing our end lets a script waiting in expect_close() finish.
    drop(ini);
    let target = match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    Outcome {
        result,
        target,
        elapsed,
    }
}

fn drive<R, F>(opts: &IscsiOptions, target: Option<&str>, script: F) -> Outcome<R>
where
    F: FnOnce(&mut Target) -> R + Send + 'static,
    R: Send + 'static,
{
    drive_with_timeout(opts, target, IO_TIMEOUT, script)
}

/// The operational keys a target echoes to the default options.
const ECHO_DEFAULTS: &[(&str, &str)] = &[
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("MaxRecvDataSegmentLength", "262144"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("ErrorRecoveryLevel", "0"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxBurstLength", "1048576"),
    ("FirstBurstLength", "262144"),
    ("MaxOutstandingR2T", "1"),
    ("MaxConnections", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
];

/// After a successful login the session starts at CmdSN 1 (nothing consumed a CmdSN) and
/// expects the StatSN after the last login response's.
fn assert_sequence_numbers(n: &Negotiated, responses: u32) {
    assert_eq!(n.tsih, TSIH);
    assert_eq!(n.cmd_sn, 1);
    assert_eq!(n.max_cmd_sn, 1 + WINDOW);
    assert_eq!(n.exp_stat_sn, FIRST_STAT_SN.wrapping_add(responses));
}
