//! Login (RFC 7143 section 6.3): security negotiation (None or CHAP, one-way or mutual:
//! `chap_auth`) and operational parameter negotiation, ending in the full feature phase.
//! `redirect` connects a path and follows the target's login redirects; `discovery` asks a
//! portal for targets and their portals (SendTargets).

mod chap_auth;
mod discovery;
mod redirect;

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::chap;
use super::options::IscsiOptions;
use super::pdu::{self, op, Framing, Pdu};
use super::text;

pub use discovery::{discover, discover_portals};
pub use redirect::{target_address_portal, PathLogin, MAX_REDIRECTS};

/// Why a login failed; the text says which kind of failure it was.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("portal {0} unreachable: {1}")]
    Unreachable(String, String),
    #[error("CHAP authentication failed: {0}")]
    Authentication(String),
    #[error("target {0} not found")]
    NotFound(String),
    #[error("login rejected by the target: {0}")]
    Rejected(String),
    #[error("login protocol error: {0}")]
    Protocol(String),
    /// The target stopped answering within the login timeout; [`LoginError::at`] names
    /// the portal and the timeout.
    #[error("the target did not answer the login in time")]
    TimedOut,
    /// Status class 1: log in at `address` instead ([`PathLogin`] follows it).
    #[error("the target redirected the login ({}) to {address}", if *permanent { "permanently" } else { "temporarily" })]
    Redirected { address: String, permanent: bool },
    /// The target refused our response with SHA-256 (`CHAP_A=7`). tgt and IET take 7 for
    /// SHA-1, an assignment older than IANA's: [`PathLogin`] then logs in again without
    /// offering SHA-256.
    #[error("{0} (the target chose CHAP_A=7, SHA-256; some targets, such as tgt, take 7 for SHA-1: leave sha256 out of chap_algorithms for them)")]
    Sha256Refused(Box<LoginError>),
}

impl From<io::Error> for LoginError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LoginError::TimedOut,
            _ => LoginError::Protocol(e.to_string()),
        }
    }
}

impl LoginError {
    /// The error as the operator should read it for a login through `portal`: a timeout
    /// names the portal and the timeout instead of the socket's EAGAIN.
    pub fn at(self, portal: &str, login_timeout: Duration) -> LoginError {
        match self {
            LoginError::TimedOut => LoginError::Unreachable(
                portal.to_string(),
                format!(
                    "no answer to the login within {} ms (login_timeout)",
                    login_timeout.as_millis()
                ),
            ),
            e => e,
        }
    }
}

/// What the session runs with after login.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// How PDUs from the target are framed (our MaxRecvDataSegmentLength).
    pub framing: Framing,
    /// The target's MaxRecvDataSegmentLength: the longest data segment we may send.
    pub target_max_recv: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub tsih: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub max_cmd_sn: u32,
}

/// Stage codes of the login PDU.
const SECURITY: u8 = 0;
const OPERATIONAL: u8 = 1;
const FULL_FEATURE: u8 = 3;

/// Rounds a stage may take before we give up on a target that never transits, so a
/// misbehaving target cannot keep the login going for ever.
const MAX_STAGE_ROUNDS: usize = 8;
/// PDUs one response's text may be continued over (C bit). The 64 KiB of text RFC 7143 6.1
/// asks us to accept takes 8 PDUs of the 8192 bytes a target may send during login.
const MAX_TEXT_PDUS: usize = 32;

/// A fresh random ISID (RFC 7143 10.12.5, type 10b), for discovery sessions: they are
/// short and hold no state at the target. Sessions of a LUN's paths use `isid`'s stable
/// ones instead.
pub fn new_isid() -> [u8; 6] {
    let r = chap::random_bytes(5);
    [0x80, r[0], r[1], r[2], r[3], r[4]]
}

/// Opens a TCP connection to `portal` with the options' timeouts and socket settings.
pub fn connect(portal: &str, opts: &IscsiOptions) -> Result<TcpStream, LoginError> {
    let unreachable = |e: String| LoginError::Unreachable(portal.to_string(), e);
    let addrs: Vec<_> = portal
        .to_socket_addrs()
        .map_err(|e| unreachable(e.to_string()))?
        .collect();
    let mut last = "no address".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, opts.connect_timeout) {
            Ok(s) => {
                s.set_nodelay(true)
                    .map_err(|e| unreachable(e.to_string()))?;
                set_keepalive(&s, opts.nop_timeout);
                s.set_read_timeout(Some(opts.login_timeout))
                    .map_err(|e| unreachable(e.to_string()))?;
                s.set_write_timeout(Some(opts.login_timeout))
                    .map_err(|e| unreachable(e.to_string()))?;
                return Ok(s);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(unreachable(last))
}

/// TCP keepalive and TCP_USER_TIMEOUT, so a silent peer is noticed by the kernel too.
fn set_keepalive(s: &TcpStream, timeout: Duration) {
    use std::os::unix::io::AsRawFd;
    let fd = s.as_raw_fd();
    let secs = timeout.as_secs().clamp(1, 60) as libc::c_int;
    let ms = timeout.as_millis().clamp(1000, 600_000) as libc::c_uint;
    let set = |level: libc::c_int, name: libc::c_int, v: libc::c_int| {
        // SAFETY: setsockopt reads one int from a valid pointer on our own socket.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3);
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms as libc::c_int);
}

/// The target's answer to one login request: its key=value pairs, whether it transits,
/// and the stage it transits to.
type Answer = (Vec<(String, String)>, bool, u8);

struct Exchange<'a, S: Read + Write> {
    stream: &'a mut S,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    /// Named in a "target not found" error, whichever round it comes in.
    target: String,
}

impl<S: Read + Write> Exchange<'_, S> {
    /// Sends one login request and returns the target's answer (pairs, transit, next stage).
    fn round(
        &mut self,
        csg: u8,
        nsg: u8,
        transit: bool,
        pairs: &[(&str, String)],
    ) -> Result<Answer, LoginError> {
        let mut p = Pdu::new(op::LOGIN_REQ);
        p.set_immediate();
        p.set_flags(if transit { 0x80 } else { 0 } | (csg << 2) | if transit { nsg } else { 0 });
        p.bhs[8..14].copy_from_slice(&self.isid);
        p.bhs[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        p.set_itt(self.itt);
        p.set_u32(24, self.cmd_sn);
        p.set_u32(28, self.exp_stat_sn);
        p.data = text::encode(pairs);
        pdu::write_pdu(self.stream, &p, &Framing::default())?;
        // A key=value pair may be split between continued PDUs (RFC 7143 6.1): parse the
        // text only once it is whole.
        let mut text_data = Vec::new();
        for _ in 0..MAX_TEXT_PDUS {
            let r = pdu::read_pdu(
                self.stream,
                &Framing {
                    max_recv_data: 65536,
                    ..Framing::default()
                },
            )?;
            if r.opcode() != op::LOGIN_RESP {
                return Err(LoginError::Protocol(format!(
                    "unexpected opcode {:#x} during login",
                    r.opcode()
                )));
            }
            let class = r.bhs[36];
            let detail = r.bhs[37];
            match (class, detail) {
                (0, _) => {}
                (2, 1) => {
                    return Err(LoginError::Authentication(
                        "the target refused the credentials".into(),
                    ))
                }
                (2, 2) => {
                    return Err(LoginError::Authentication(
                        "the initiator is not authorised".into(),
                    ))
                }
                (2, 3) | (2, 4) => return Err(LoginError::NotFound(self.target.clone())),
                (1, 1) | (1, 2) => {
                    let pairs = text::parse(&r.data);
                    let address = text::get(&pairs, "TargetAddress")
                        .ok_or_else(|| {
                            LoginError::Protocol("a login redirect without TargetAddress".into())
                        })
                        .and_then(|a| {
                            target_address_portal(a)
                                .map_err(|e| LoginError::Protocol(format!("login redirect: {e}")))
                        })?;
                    return Err(LoginError::Redirected {
                        address,
                        permanent: detail == 2,
                    });
                }
                (c, d) => return Err(LoginError::Rejected(format!("status class {c} detail {d}"))),
            }
            self.exp_stat_sn = r.stat_sn().wrapping_add(1);
            self.max_cmd_sn = r.max_cmd_sn();
            self.cmd_sn = r.exp_cmd_sn();
            self.tsih = u16::from_be_bytes([r.bhs[14], r.bhs[15]]);
            text_data.extend_from_slice(&r.data);
            if r.flags() & 0x40 != 0 {
                // Continue: the target has more text; ask for it with an empty request.
                let mut more = Pdu::new(op::LOGIN_REQ);
                more.set_immediate();
                more.set_flags(csg << 2);
                more.bhs[8..14].copy_from_slice(&self.isid);
                more.set_itt(self.itt);
                more.set_u32(24, self.cmd_sn);
                more.set_u32(28, self.exp_stat_sn);
                pdu::write_pdu(self.stream, &more, &Framing::default())?;
                continue;
            }
            let t = r.flags() & 0x80 != 0;
            let nsg = r.flags() & 0x03;
            return Ok((text::parse(&text_data), t, nsg));
        }
        Err(LoginError::Protocol(
            "the target's login response text never ended".into(),
        ))
    }
}

/// Logs in on `stream`: normal session with `target`, or discovery when `target` is None.
pub fn login<S: Read + Write>(
    stream: &mut S,
    opts: &IscsiOptions,
    target: Option<&str>,
    isid: [u8; 6],
) -> Result<Negotiated, LoginError> {
    let mut x = Exchange {
        stream,
        isid,
        tsih: 0,
        itt: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        max_cmd_sn: 1,
        target: target.unwrap_or("(discovery)").to_string(),
    };
    let not_found = || LoginError::NotFound(target.unwrap_or("(discovery)").to_string());
    let mut first: Vec<(&str, String)> = vec![
        ("InitiatorName", opts.initiator_name.clone()),
        (
            "SessionType",
            if target.is_some() {
                "Normal"
            } else {
                "Discovery"
            }
            .into(),
        ),
    ];
    if let Some(t) = target {
        first.push(("TargetName", t.to_string()));
    }
    // Security stage.
    let method = if opts.chap.is_some() { "CHAP" } else { "None" };
    first.push(("AuthMethod", method.into()));
    let (ans, mut t, mut nsg) = x
        .round(SECURITY, OPERATIONAL, opts.chap.is_none(), &first)
        .map_err(|e| match e {
            LoginError::NotFound(_) => not_found(),
            e => e,
        })?;
    if let Some(chap_opts) = &opts.chap {
        match text::get(&ans, "AuthMethod") {
            Some("CHAP") => {}
            Some(other) => {
                return Err(LoginError::Authentication(format!(
                    "the target answered AuthMethod={other}, not CHAP"
                )))
            }
            None => {
                return Err(LoginError::Authentication(
                    "the target did not negotiate CHAP".into(),
                ))
            }
        }
        (t, nsg) = chap_auth::authenticate(&mut x, chap_opts, &opts.chap_algorithms)?;
    }
    let mut rounds = 0;
    while !(t && nsg == OPERATIONAL) {
        rounds += 1;
        if rounds > MAX_STAGE_ROUNDS {
            return Err(LoginError::Protocol(
                "the target never left the security stage".into(),
            ));
        }
        let (_, tt, n) = x.round(SECURITY, OPERATIONAL, true, &[])?;
        if tt && n == FULL_FEATURE {
            break;
        }
        t = tt;
        nsg = n;
    }
    // Operational stage.
    let digest = |on: bool| if on { "CRC32C,None" } else { "None" }.to_string();
    let yn = |b: bool| if b { "Yes" } else { "No" }.to_string();
    let mut ops: Vec<(&str, String)> = vec![
        ("HeaderDigest", digest(opts.header_digest)),
        ("DataDigest", digest(opts.data_digest)),
        (
            "MaxRecvDataSegmentLength",
            opts.max_recv_data_segment_length.to_string(),
        ),
        ("DefaultTime2Wait", "2".into()),
        ("DefaultTime2Retain", "0".into()),
        ("ErrorRecoveryLevel", "0".into()),
    ];
    if target.is_some() {
        ops.extend([
            ("InitialR2T", yn(opts.initial_r2t)),
            ("ImmediateData", yn(opts.immediate_data)),
            ("MaxBurstLength", opts.max_burst_length.to_string()),
            ("FirstBurstLength", opts.first_burst_length.to_string()),
            ("MaxOutstandingR2T", "1".into()),
            ("MaxConnections", "1".into()),
            ("DataPDUInOrder", "Yes".into()),
            ("DataSequenceInOrder", "Yes".into()),
        ]);
    }
    let mut answers = Vec::new();
    let mut offer = ops;
    for _ in 0..MAX_STAGE_ROUNDS {
        let (ans, tt, n) = x.round(OPERATIONAL, FULL_FEATURE, true, &offer)?;
        answers.extend(ans);
        if tt && n == FULL_FEATURE {
            let get = |k: &str| text::get(&answers, k);
            let num = |k: &str, d: u32| get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(d);
            let max_burst = num("MaxBurstLength", 262_144).min(opts.max_burst_length);
            return Ok(Negotiated {
                framing: Framing {
                    header_digest: get("HeaderDigest") == Some("CRC32C"),
                    data_digest: get("DataDigest") == Some("CRC32C"),
                    max_recv_data: opts.max_recv_data_segment_length as usize,
                },
                target_max_recv: num("MaxRecvDataSegmentLength", 8192).max(512),
                max_burst,
                first_burst: num("FirstBurstLength", 65_536)
                    .min(opts.first_burst_length)
                    .min(max_burst),
                immediate_data: opts.immediate_data
                    && get("ImmediateData").and_then(text::yes).unwrap_or(true),
                initial_r2t: opts.initial_r2t
                    || get("InitialR2T").and_then(text::yes).unwrap_or(true),
                tsih: x.tsih,
                cmd_sn: x.cmd_sn,
                exp_stat_sn: x.exp_stat_sn,
                max_cmd_sn: x.max_cmd_sn,
            });
        }
        offer = Vec::new();
    }
    Err(LoginError::Protocol(
        "the target never moved to the full feature phase".into(),
    ))
}

#[cfg(test)]
mod tests;
