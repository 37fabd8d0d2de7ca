//! Login state-machine tests: `login()` runs against a scripted fake target on the other end
//! of a Unix socket pair. The target decodes every Login Request itself, checks the header
//! fields and text keys against RFC 7143 sections 6.3 and 11.12, and answers with Login
//! Responses it builds byte by byte. Every socket has a read timeout and every loop a bound,
//! so a broken initiator fails a test instead of hanging it.

use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::*;
use crate::iscsi::options::Chap;
use crate::iscsi::pdu::{BHS_LEN, F_IMMEDIATE};

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
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret.as_bytes());
    h.update(challenge);
    h.finalize().to_vec()
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

/// The target end of the connection and what it has checked so far.
struct Target {
    s: UnixStream,
    stat_sn: u32,
    rounds: usize,
    /// StatSN of the last response: the next request must acknowledge it.
    last_stat_sn: Option<u32>,
    itt: Option<u32>,
}

impl Target {
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
        assert_eq!(&pdu.bhs[8..14], &ISID, "ISID");
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

    /// CHAP up to the challenge: AuthMethod=CHAP, then CHAP_A=5 answered with `id` and
    /// `challenge`. Returns the request carrying CHAP_N and CHAP_R, unanswered.
    fn chap_challenge(&mut self, id: u8, challenge: &[u8]) -> Request {
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
        r.assert_keys(&[("CHAP_A", "5")]);
        let id = id.to_string();
        let c = hex(challenge);
        self.reply(
            &r,
            Reply::stay(
                SECURITY,
                &[("CHAP_A", "5"), ("CHAP_I", &id), ("CHAP_C", &c)],
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
            s: tgt,
            stat_sn: FIRST_STAT_SN,
            rounds: 0,
            last_stat_sn: None,
            itt: None,
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

#[test]
fn auth_none_negotiates_and_reaches_full_feature() {
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.operational(ECHO_DEFAULTS);
        // The initiator offers everything it needs for a normal session.
        r.assert_keys(ECHO_DEFAULTS);
        t.expect_close();
    });
    let n = out.result.expect("login");
    assert_eq!(
        n.framing,
        Framing {
            header_digest: false,
            data_digest: false,
            max_recv_data: 262_144,
        }
    );
    assert_eq!(n.target_max_recv, 262_144);
    assert_eq!(n.max_burst, 1 << 20);
    assert_eq!(n.first_burst, 262_144);
    assert!(n.immediate_data);
    assert!(!n.initial_r2t);
    // Two responses, starting two below the wrap: ExpStatSN wraps to 0.
    assert_sequence_numbers(&n, 2);
    assert_eq!(n.exp_stat_sn, 0);
}

#[test]
fn discovery_login_offers_only_connection_keys() {
    let out = drive(&options(), None, |t| {
        t.security_none(None);
        let r = t.operational(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "8192"),
        ]);
        r.assert_keys(&[
            ("HeaderDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
        ]);
        // Session-wide keys are irrelevant to (and refused in) a discovery session.
        for k in [
            "InitialR2T",
            "ImmediateData",
            "MaxBurstLength",
            "FirstBurstLength",
        ] {
            r.assert_no_key(k);
        }
        t.expect_close();
    });
    let n = out.result.expect("discovery login");
    assert_eq!(n.target_max_recv, 8192);
    assert_sequence_numbers(&n, 2);
}

#[test]
fn one_way_chap() {
    const ID: u8 = 173;
    const CHALLENGE: [u8; 16] = *b"0123456789abcdef";
    let out = drive(&chap_options(None), Some(TARGET), |t| {
        let r = t.chap_challenge(ID, &CHALLENGE);
        r.assert_keys(&[("CHAP_N", "alice")]);
        let got = unhex(r.key("CHAP_R").expect("CHAP_R"));
        assert_eq!(got, md5_response(ID, "alice-secret-12", &CHALLENGE));
        // One-way: the initiator does not challenge the target.
        r.assert_no_key("CHAP_I");
        r.assert_no_key("CHAP_C");
        t.reply(&r, Reply::go(SECURITY, OPERATIONAL, &[]));
        t.operational(ECHO_DEFAULTS);
        t.expect_close();
    });
    let n = out.result.expect("CHAP login");
    assert_sequence_numbers(&n, 4);
}

/// Security stage of a mutual CHAP login in which the target proves itself with `name`
/// and a response computed from `secret`.
fn mutual_chap_script(
    name: &'static str,
    secret: &'static str,
) -> impl FnOnce(&mut Target) + Send + 'static {
    move |t| {
        const ID: u8 = 7;
        let challenge = [0xa5u8; 24];
        let r = t.chap_challenge(ID, &challenge);
        assert_eq!(
            unhex(r.key("CHAP_R").expect("CHAP_R")),
            md5_response(ID, "alice-secret-12", &challenge)
        );
        let their_id: u8 = r.key("CHAP_I").expect("CHAP_I").parse().expect("CHAP_I");
        let their_challenge = unhex(r.key("CHAP_C").expect("CHAP_C"));
        assert!(their_challenge.len() >= 16, "a short mutual challenge");
        let resp = hex(&md5_response(their_id, secret, &their_challenge));
        t.reply(
            &r,
            Reply::go(
                SECURITY,
                OPERATIONAL,
                &[("CHAP_N", name), ("CHAP_R", &resp)],
            ),
        );
        // Right or wrong, the answer decides: accepted, the initiator goes on to the
        // operational stage; refused, it must go no further.
        match t.try_recv() {
            None => {}
            Some(r) => {
                r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
                t.reply(
                    &r,
                    Reply::go(OPERATIONAL, FULL_FEATURE, ECHO_DEFAULTS).tsih(TSIH),
                );
                t.expect_close();
            }
        }
    }
}

#[test]
fn mutual_chap_accepts_the_right_target_response() {
    let opts = chap_options(Some(("iqn.2003-01.org.example", "target-secret-1")));
    let out = drive(
        &opts,
        Some(TARGET),
        mutual_chap_script("iqn.2003-01.org.example", "target-secret-1"),
    );
    let n = out.result.expect("mutual CHAP login");
    assert_sequence_numbers(&n, 4);
}

#[test]
fn mutual_chap_rejects_a_wrong_target_response() {
    let opts = chap_options(Some(("iqn.2003-01.org.example", "target-secret-1")));
    for (name, secret) in [
        ("iqn.2003-01.org.example", "not-the-secret!"),
        ("iqn.2003-01.org.impostor", "target-secret-1"),
    ] {
        let out = drive(&opts, Some(TARGET), mutual_chap_script(name, secret));
        let e = out.result.expect_err("a target that cannot prove itself");
        assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("CHAP") || msg.contains("authentication"),
            "{msg}"
        );
    }
}

#[test]
fn mutual_chap_requires_the_target_to_answer() {
    let opts = chap_options(Some(("iqn.2003-01.org.example", "target-secret-1")));
    let out = drive(&opts, Some(TARGET), |t| {
        let r = t.chap_challenge(9, &[1u8; 16]);
        // The target accepts the initiator but ignores its challenge.
        t.reply(&r, Reply::go(SECURITY, OPERATIONAL, &[]));
        assert!(t.try_recv().is_none(), "the initiator went on unverified");
    });
    let e = out.result.expect_err("an unproven target");
    assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
}

#[test]
fn chap_initiator_refuses_a_target_without_chap() {
    let out = drive(&chap_options(None), Some(TARGET), |t| {
        let r = t.recv();
        r.assert_keys(&[("AuthMethod", "CHAP")]);
        // A target that skips authentication must not get the session.
        t.reply(
            &r,
            Reply::go(SECURITY, OPERATIONAL, &[("AuthMethod", "None")]),
        );
        assert!(t.try_recv().is_none(), "the initiator went on without CHAP");
    });
    let e = out.result.expect_err("AuthMethod=None to a CHAP initiator");
    assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
}

#[test]
fn malformed_chap_challenges_are_authentication_errors() {
    let cases: [&[(&str, &str)]; 4] = [
        // CHAP with SHA-256 (RFC 7143 12.1.3 allows it); we offered MD5 only.
        &[
            ("CHAP_A", "7"),
            ("CHAP_I", "1"),
            ("CHAP_C", "0x00112233445566778899"),
        ],
        &[("CHAP_A", "5"), ("CHAP_C", "0x00112233445566778899")],
        &[("CHAP_A", "5"), ("CHAP_I", "1")],
        &[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0xnothex")],
    ];
    for pairs in cases {
        let out = drive(&chap_options(None), Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "CHAP")]));
            let r = t.recv();
            t.reply(&r, Reply::stay(SECURITY, pairs));
            assert!(t.try_recv().is_none(), "the initiator answered {pairs:?}");
        });
        let e = out.result.expect_err("a malformed challenge");
        assert!(
            matches!(e, LoginError::Authentication(_)),
            "{pairs:?}: {e:?}"
        );
    }
}

#[test]
fn chap_refused_by_the_target() {
    let out = drive(&chap_options(None), Some(TARGET), |t| {
        let r = t.chap_challenge(1, &[0x11; 16]);
        // 0x0201: authentication failure.
        t.reply(&r, Reply::fail(SECURITY, 0x0201));
    });
    let e = out.result.expect_err("refused credentials");
    assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
}

#[test]
fn negotiated_reflects_what_the_target_answered() {
    let opts = IscsiOptions {
        header_digest: true,
        data_digest: true,
        ..options()
    };
    let out = drive(&opts, Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.operational(&[
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "16384"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxBurstLength", "65536"),
            ("FirstBurstLength", "32768"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
        ]);
        // Digests are offered as a preference list, CRC32C first.
        r.assert_keys(&[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "CRC32C,None"),
        ]);
        t.expect_close();
    });
    let n = out.result.expect("login");
    assert_eq!(
        n.framing,
        Framing {
            header_digest: true,
            data_digest: false,
            // Ours, declared to the target; its own limit is separate.
            max_recv_data: 262_144,
        }
    );
    assert_eq!(n.target_max_recv, 16384);
    assert_eq!(n.max_burst, 65536);
    assert_eq!(n.first_burst, 32768);
    assert!(!n.immediate_data);
    assert!(n.initial_r2t);
    assert_sequence_numbers(&n, 2);
}

#[test]
fn operational_answers_may_span_rounds() {
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.recv();
        r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
        // Part of the answer, without transiting yet.
        t.reply(
            &r,
            Reply::stay(
                OPERATIONAL,
                &[
                    ("MaxRecvDataSegmentLength", "4096"),
                    ("ImmediateData", "No"),
                ],
            ),
        );
        let r = t.recv();
        r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
        assert!(r.keys.is_empty(), "offers repeated: {:?}", r.keys);
        t.reply(
            &r,
            Reply::go(OPERATIONAL, FULL_FEATURE, &[("MaxBurstLength", "131072")]).tsih(TSIH),
        );
        t.expect_close();
    });
    let n = out.result.expect("login");
    assert_eq!(n.target_max_recv, 4096);
    assert!(!n.immediate_data);
    assert_eq!(n.max_burst, 131_072);
    assert_sequence_numbers(&n, 3);
}

#[test]
fn continued_login_response_is_reassembled() {
    // RFC 7143 6.1: a key=value pair may span PDU boundaries; the pieces of PDUs with C=1
    // and the final one with C=0 form one logical text segment.
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.recv();
        r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
        let full = kv(&[
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "65536"),
            ("FirstBurstLength", "16384"),
        ]);
        // Cut inside the MaxBurstLength value and again inside FirstBurstLength's key.
        let after = |needle: &[u8]| {
            full.windows(needle.len())
                .position(|w| w == needle)
                .expect("needle")
                + needle.len()
        };
        let cut1 = after(b"MaxBurstLength=65");
        let cut2 = after(b"FirstBurst");
        let pieces = [&full[..cut1], &full[cut1..cut2], &full[cut2..]];
        let mut req = r;
        for (i, piece) in pieces.iter().enumerate() {
            let last = i == pieces.len() - 1;
            let reply = Reply {
                transit: last,
                cont: !last,
                csg: OPERATIONAL,
                nsg: if last { FULL_FEATURE } else { 0 },
                data: piece.to_vec(),
                tsih: if last { TSIH } else { 0 },
                ..Reply::default()
            };
            t.reply(&req, reply);
            if !last {
                // RFC 7143 11.12.2: the initiator asks for the rest with an empty request,
                // T=0, in the same stage.
                req = t.recv();
                req.assert_stage(false, OPERATIONAL, 0);
                assert_eq!(req.pdu.flags() & C_BIT, 0);
                assert!(req.pdu.data.is_empty());
            }
        }
        t.expect_close();
    });
    let n = out.result.expect("login");
    assert_eq!(n.target_max_recv, 65536);
    assert_eq!(n.max_burst, 65536);
    assert_eq!(n.first_burst, 16384);
    assert_sequence_numbers(&n, 4);
}

#[test]
fn endless_continuation_is_refused() {
    // The script's own bound must be the larger, or it would end the login first.
    const _: () = assert!(MAX_TEXT_PDUS + 2 < MAX_ROUNDS);
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let mut served = 0;
        while let Some(r) = t.try_recv() {
            if t.rounds >= MAX_ROUNDS {
                break;
            }
            let reply = Reply {
                cont: true,
                csg: OPERATIONAL,
                data: b"X-Filler=".to_vec(),
                ..Reply::default()
            };
            t.reply(&r, reply);
            served += 1;
        }
        served
    });
    let e = out.result.expect_err("a response that never ends");
    assert!(matches!(e, LoginError::Protocol(_)), "{e:?}");
    // The target would have gone on for longer: the initiator stopped it (possibly after
    // asking for one more piece it then did not wait for).
    assert!(
        out.target <= MAX_TEXT_PDUS + 1,
        "{} continuations",
        out.target
    );
}

#[test]
fn target_not_found_in_a_later_round_names_the_target() {
    let out = drive(&options(), Some(TARGET), move |t| {
        let r = t.recv();
        t.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "None")]));
        let r = t.recv();
        t.reply(&r, Reply::fail(SECURITY, 0x0203));
    });
    match out.result {
        Err(LoginError::NotFound(name)) => assert_eq!(name, TARGET),
        other => panic!("{other:?}"),
    }
}

#[test]
fn login_status_maps_to_the_error_variant() {
    for status in [0x0201u16, 0x0202] {
        let out = drive(&options(), Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::fail(SECURITY, status));
        });
        let e = out.result.expect_err("failed login");
        assert!(
            matches!(e, LoginError::Authentication(_)),
            "{status:#06x}: {e:?}"
        );
    }
    for status in [0x0203u16, 0x0204] {
        let out = drive(&options(), Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::fail(SECURITY, status));
        });
        match out.result {
            Err(LoginError::NotFound(name)) => assert_eq!(name, TARGET, "{status:#06x}"),
            other => panic!("{status:#06x}: {other:?}"),
        }
    }
    // Other initiator errors, redirection and target errors are rejections naming the code.
    for status in [0x0200u16, 0x0205, 0x0101, 0x0300, 0x0301] {
        let out = drive(&options(), Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::fail(SECURITY, status));
        });
        match out.result {
            Err(LoginError::Rejected(msg)) => {
                let want = format!("status class {} detail {}", status >> 8, status & 0xff);
                assert!(msg.contains(&want), "{status:#06x}: {msg}");
            }
            other => panic!("{status:#06x}: {other:?}"),
        }
    }
    // A failure in the operational stage counts just the same.
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.recv();
        t.reply(&r, Reply::fail(OPERATIONAL, 0x0201));
    });
    assert!(
        matches!(out.result, Err(LoginError::Authentication(_))),
        "{:?}",
        out.result
    );
}

#[test]
fn target_closing_mid_login_is_an_error() {
    // Each script stops at a different point and drops the connection.
    type Script = fn(&mut Target);
    let scripts: [(&str, Script); 5] = [
        ("before any response", |t| {
            t.recv();
        }),
        ("inside a response header", |t| {
            t.recv();
            let mut p = Pdu::new(op::LOGIN_RESP);
            p.set_flags(T_BIT | (SECURITY << 2) | OPERATIONAL);
            let bytes = pdu::encode(&p, &Framing::default());
            t.s.write_all(&bytes[..20]).expect("write");
        }),
        ("inside a response's text", |t| {
            let r = t.recv();
            let mut p = Pdu::new(op::LOGIN_RESP);
            p.set_flags(T_BIT | (SECURITY << 2) | OPERATIONAL);
            p.set_itt(r.pdu.itt());
            p.data = kv(&[("AuthMethod", "None")]);
            let bytes = pdu::encode(&p, &Framing::default());
            t.s.write_all(&bytes[..BHS_LEN + 5]).expect("write");
        }),
        ("after the security stage", |t| {
            t.security_none(Some(TARGET));
            t.recv();
        }),
        ("in the middle of CHAP", |t| {
            t.chap_challenge(3, &[0x42; 16]);
        }),
    ];
    for (when, script) in scripts {
        let opts = if when.contains("CHAP") {
            chap_options(None)
        } else {
            options()
        };
        let out = drive(&opts, Some(TARGET), script);
        let e = out.result.expect_err(when);
        assert!(matches!(e, LoginError::Protocol(_)), "{when}: {e:?}");
        assert!(out.elapsed < PROMPT, "{when}: took {:?}", out.elapsed);
    }
}

#[test]
fn silent_target_times_out() {
    let out = drive_with_timeout(&options(), Some(TARGET), Duration::from_millis(200), |t| {
        t.recv();
        // Say nothing; wait for the initiator to give up and close.
        t.expect_close();
    });
    let e = out.result.expect_err("no answer");
    assert!(matches!(e, LoginError::Protocol(_)), "{e:?}");
    assert!(out.elapsed < PROMPT, "took {:?}", out.elapsed);
}

#[test]
fn wrong_opcode_during_login_is_an_error() {
    let out = drive(&options(), Some(TARGET), |t| {
        let r = t.recv();
        let mut p = Pdu::new(op::REJECT);
        p.set_flags(F_FINAL);
        p.bhs[2] = 0x04; // reason: protocol error
        p.data = r.pdu.bhs.to_vec();
        pdu::write_pdu(&mut t.s, &p, &Framing::default()).expect("write");
        assert!(t.try_recv().is_none());
    });
    match out.result {
        Err(LoginError::Protocol(msg)) => assert!(msg.contains("0x3f"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn target_that_never_transits_is_given_up_on() {
    // The target keeps answering T=0 in one stage. The initiator must give up after a
    // bounded number of rounds rather than ping-pong for ever.
    for stage in [SECURITY, OPERATIONAL] {
        let out = drive(&options(), Some(TARGET), move |t| {
            if stage == OPERATIONAL {
                t.security_none(Some(TARGET));
            }
            let mut served = 0;
            while let Some(r) = t.try_recv() {
                if t.rounds >= MAX_ROUNDS {
                    break;
                }
                assert_eq!(r.csg(), stage);
                t.reply(&r, Reply::stay(stage, &[]));
                served += 1;
            }
            served
        });
        let e = out.result.expect_err("a target that never transits");
        assert!(matches!(e, LoginError::Protocol(_)), "stage {stage}: {e:?}");
        assert!(
            out.target <= MAX_STAGE_ROUNDS + 1,
            "stage {stage}: the initiator stopped only when the target did, after {} rounds",
            out.target
        );
    }
}

#[test]
fn isid_has_random_type() {
    let a = new_isid();
    assert_eq!(a[0], 0x80);
}
