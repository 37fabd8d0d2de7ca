//! What an iSCSI session is set up with: the initiator name, CHAP credentials, digests,
//! the data transfer parameters offered at login, and the timeouts of connecting, logging
//! in, path checking and recovery.

use std::time::Duration;

use super::chap::ChapAlgorithm;

/// CHAP credentials; `mutual` holds the name and secret the target must prove.
#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
    pub mutual: Option<Box<Chap>>,
}

impl std::fmt::Debug for Chap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Chap {{ user: {:?}, mutual: {} }}",
            self.user,
            self.mutual.is_some()
        )
    }
}

/// Session settings. Compared whole by the session registry: LUNs share a session only
/// when they would log in with the same settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiOptions {
    pub initiator_name: String,
    /// Tells apart initiators that share `initiator_name` and run at once (two daemons of a
    /// live migration): part of every session's ISID (`isid`). The daemon's holds its
    /// `initiator_id` and its socket path.
    pub isid_scope: String,
    pub chap: Option<Chap>,
    /// The CHAP digest algorithms offered, preferred first.
    pub chap_algorithms: Vec<ChapAlgorithm>,
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    /// Idle time after which a NOP-Out checks the connection.
    pub nop_interval: Duration,
    /// How long a NOP-Out may go unanswered before the connection counts as dead.
    pub nop_timeout: Duration,
    /// How long commands wait while no path is up (`no_path_retry`) before they fail.
    pub recovery_timeout: Duration,
    pub connect_timeout: Duration,
    pub login_timeout: Duration,
}

impl Default for IscsiOptions {
    fn default() -> Self {
        IscsiOptions {
            initiator_name: default_initiator_name(),
            isid_scope: String::new(),
            chap: None,
            chap_algorithms: ChapAlgorithm::DEFAULT_ORDER.to_vec(),
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: false,
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            // Sub-second path checking: a silent path is failed within about
            // interval + timeout (+ one check tick) of its last PDU.
            nop_interval: Duration::from_millis(200),
            nop_timeout: Duration::from_millis(400),
            recovery_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            login_timeout: Duration::from_secs(10),
        }
    }
}

/// The host's name (uname's nodename; /proc/sys may be hidden from a sandboxed service).
fn host_name() -> String {
    // SAFETY: an all-zero utsname is a valid value for uname to overwrite.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes one utsname into `uts`, which lives across the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = uts
        .nodename
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// `iqn.2024-01.io.vscsid:<hostname>`.
pub fn default_initiator_name() -> String {
    let host = host_name().to_lowercase();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!(
        "iqn.2024-01.io.vscsid:{}",
        if host.is_empty() { "host" } else { &host }
    )
}
