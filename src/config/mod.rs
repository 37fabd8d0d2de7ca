//! Daemon configuration: the LUN table's contents and the device's shape, from the command
//! line and from a TOML file. Every error names the offending field in one line.

mod disk_spec;
mod file;
mod iscsi_login;
pub mod limits;
mod multipath;
mod toml_field;

use std::path::PathBuf;

use crate::backend::CacheMode;
use crate::iscsi::IscsiUrl;
use crate::sandbox::SandboxMode;
use crate::scsi::naa::Naa;

pub use disk_spec::parse_disk_spec;
pub use file::{lun_from_json, parse_config_file, parse_config_text};
pub use iscsi_login::IscsiLoginSettings;
pub use limits::IoLimits;
pub use multipath::{duration, MultipathSettings};

/// Largest number of request queues a device offers: a virtio device has at most 1024
/// queues (QEMU's VIRTIO_QUEUE_MAX), two of which are virtio-scsi's control and event
/// queues.
pub const MAX_REQUEST_QUEUES: u16 = 1022;
/// Request queues offered unless configured: QEMU sizes num_queues from the guest's vCPU
/// count without asking and refuses to start when the backend offers fewer, so the default
/// is every queue a guest can have. A queue costs a few hundred bytes until the guest
/// uses it; worker threads do not follow the number of queues (see `threads`).
pub const DEFAULT_NUM_QUEUES: u16 = MAX_REQUEST_QUEUES;
/// Largest virtqueue size the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Largest busy-poll budget: polling longer than this only burns CPU.
pub const MAX_POLL_US: u32 = 1_000_000;

/// How a worker polls its queues and completions after work before it sleeps in epoll
/// (`--poll-us`, `daemon.poll_us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollSetting {
    /// Never polls: every request and completion wakes the worker through epoll.
    Off,
    /// Polls for this many microseconds after the last work, whatever it finds.
    Fixed(u32),
    /// Polls only while recent polling found work: the window grows while work arrives
    /// shortly after the last piece and shrinks to nothing when it does not (see
    /// `vhost::poll_budget`).
    #[default]
    Adaptive,
}

impl std::fmt::Display for PollSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollSetting::Off => write!(f, "0"),
            PollSetting::Fixed(us) => write!(f, "{us}"),
            PollSetting::Adaptive => write!(f, "adaptive"),
        }
    }
}

/// Checks a busy-poll budget in microseconds.
pub fn check_poll_us(n: i64, field: &str) -> Result<PollSetting, ConfigError> {
    u32::try_from(n)
        .ok()
        .filter(|&v| v <= MAX_POLL_US)
        .map(|v| {
            if v == 0 {
                PollSetting::Off
            } else {
                PollSetting::Fixed(v)
            }
        })
        .ok_or_else(|| {
            ConfigError(format!(
                "{field}: {n} is out of range 0..={MAX_POLL_US} microseconds (or \"adaptive\")"
            ))
        })
}

/// Parses a busy-poll setting: `adaptive` or microseconds.
pub fn parse_poll(text: &str, field: &str) -> Result<PollSetting, ConfigError> {
    let text = text.trim();
    if text == "adaptive" {
        return Ok(PollSetting::Adaptive);
    }
    match text.parse::<i64>() {
        Ok(n) => check_poll_us(n, field),
        Err(_) => Err(ConfigError(format!(
            "{field}: '{text}' is neither \"adaptive\" nor a number of microseconds"
        ))),
    }
}

/// How long stopping a queue (GET_VRING_BASE) waits for its commands by default: QEMU's
/// main loop, and with it the VM, waits as long.
pub const DEFAULT_STOP_TIMEOUT_MS: u32 = 10_000;
/// Longest accepted stop wait.
pub const MAX_STOP_TIMEOUT_MS: u32 = 60_000;

/// Checks a queue stop wait in milliseconds.
pub fn check_stop_timeout_ms(n: i64, field: &str) -> Result<u32, ConfigError> {
    u32::try_from(n)
        .ok()
        .filter(|&v| v <= MAX_STOP_TIMEOUT_MS)
        .ok_or_else(|| {
            ConfigError(format!(
                "{field}: {n} is out of range 0..={MAX_STOP_TIMEOUT_MS} milliseconds"
            ))
        })
}

/// Default I/Os gathered per io_uring submission. One per submission starts each I/O at
/// once but rings the disk's doorbell for each (a VM exit on a virtual disk); a whole
/// pass per submission leaves the disk idle while the guest's batch is read. Four was
/// measured as good as one or better on every workload, at 13-25 % less CPU per I/O at
/// queue depth 32 (README, Performance).
pub const DEFAULT_SUBMIT_BATCH: u32 = 4;
/// Largest submission batch: a virtqueue pass never queues more than a ring holds.
pub const MAX_SUBMIT_BATCH: u32 = 1024;

/// Checks an io_uring submission batch size.
pub fn check_submit_batch(n: i64, field: &str) -> Result<u32, ConfigError> {
    u32::try_from(n)
        .ok()
        .filter(|v| (1..=MAX_SUBMIT_BATCH).contains(v))
        .ok_or_else(|| {
            ConfigError(format!(
                "{field}: {n} is out of range 1..={MAX_SUBMIT_BATCH}"
            ))
        })
}

/// The socket's mode unless configured: only its owner may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Who may connect to the vhost-user socket: the file's owner, group and permission bits
/// (a QEMU running as another user needs write permission on it). Owner and group are
/// names or numeric IDs, resolved when the socket is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAccess {
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: u32,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            owner: None,
            group: None,
            mode: DEFAULT_SOCKET_MODE,
        }
    }
}

/// Checks a socket mode given as octal text (`0660`, `660`, `0o660`).
pub fn parse_socket_mode(text: &str, field: &str) -> Result<u32, ConfigError> {
    let digits = text.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| !digits.is_empty() && *m <= 0o777)
        .ok_or_else(|| {
            ConfigError(format!(
                "{field}: '{text}' is not an octal permission mode (0000..=0777)"
            ))
        })
}

/// Checks a user or group name (or numeric ID) for the socket.
pub fn check_account_name(name: &str, field: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'));
    if ok {
        Ok(name.to_string())
    } else {
        Err(ConfigError(format!(
            "{field}: '{name}' is not a user or group name"
        )))
    }
}

/// A secret that never shows up in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Environment variable holding the CHAP secret of an iSCSI URL that names a user but no
/// password (so the secret need not appear in `ps`).
pub const CHAP_SECRET_ENV: &str = "VSCSID_CHAP_SECRET";

/// What a LUN is backed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LunKind {
    /// A disk vscsid emulates on a file, partition or block device.
    Disk { path: PathBuf, cache: CacheMode },
    /// A null disk of `size` bytes: reads return zeroes, writes are dropped. For measuring
    /// the daemon's own overhead, and as a placeholder disk.
    Null { size: u64 },
    /// A LUN of an iSCSI target, passed through: the guest's CDBs go there unchanged.
    Iscsi {
        url: IscsiUrl,
        /// CHAP secret for the URL's user when the URL carries none.
        chap_secret: Option<Secret>,
        /// Digests, CHAP algorithms, mutual CHAP, discovery.
        login: Box<IscsiLoginSettings>,
        /// Extra portals, path policy, path checking, no-path queueing.
        multipath: Box<MultipathSettings>,
        /// Every LUN the target reports (`iscsi://host/iqn/*`, TOML `luns = "all"`), each
        /// with these settings, numbered from this LUN's number up; `url`'s LUN is unused.
        /// The LUN table opens them (`lun::iscsi::expand_all_luns`).
        all_luns: bool,
    },
    /// A SCSI generic device (`/dev/sgN`) passed through: every CDB goes to the device
    /// (QEMU's `scsi-generic`).
    Sg { path: PathBuf },
    /// A SCSI disk's block device (`/dev/sdX`) passed through (QEMU's `scsi-block`):
    /// READ and WRITE go through io_uring with `cache`, every other CDB through SG_IO.
    BlockPassthrough { path: PathBuf, cache: CacheMode },
}

/// Cache modes a block-passthrough LUN takes: those that bypass the host's page cache.
/// Commands sent with SG_IO (WRITE SAME, UNMAP, SYNCHRONIZE CACHE, ...) go around the
/// page cache, so a cached copy would go stale and a flush through SG_IO would not write
/// it back.
pub fn check_passthrough_cache(mode: CacheMode, field: &str) -> Result<CacheMode, ConfigError> {
    match mode {
        CacheMode::None | CacheMode::Directsync => Ok(mode),
        other => Err(ConfigError(format!(
            "{field}: '{other}' does not apply to a passthrough disk (use none or directsync: commands passed through bypass the host page cache)"
        ))),
    }
}

impl LunKind {
    /// An iSCSI LUN from a URL, optionally followed by path options
    /// (`iscsi://host/iqn/0,path=host2:3260,policy=failover`); a user without password
    /// takes the secret from [`CHAP_SECRET_ENV`].
    pub fn iscsi(url: &str, field: &str) -> Result<LunKind, ConfigError> {
        Self::iscsi_spec(url, field, None)
    }

    /// [`LunKind::iscsi`] for the `--iscsi` shorthand (and `vscsid ctl add iscsi`), whose
    /// options may also say `readonly` (`ro`, `readonly=on|off`) as `--disk`'s do: set in
    /// `readonly` when given. Without it (the TOML `url`, which has its own `readonly`
    /// key) the option is refused.
    fn iscsi_spec(
        url: &str,
        field: &str,
        mut readonly: Option<&mut bool>,
    ) -> Result<LunKind, ConfigError> {
        let (url, options) = split_iscsi_options(url);
        let mut paths = MultipathSettings::default();
        let mut login = IscsiLoginSettings::default();
        for opt in options.split(',').filter(|o| !o.is_empty()) {
            let (k, v) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            if let (Some(ro), "readonly" | "ro") = (readonly.as_deref_mut(), k) {
                *ro = match v {
                    None => true,
                    Some(v) => disk_spec::parse_bool(v)
                        .map_err(|e| ConfigError(format!("{field}: {e}")))?,
                };
                continue;
            }
            if let Some(r) = login.set(k, v) {
                r.map_err(|e| ConfigError(format!("{field}: {e}")))?;
                continue;
            }
            paths
                .set(k, v.unwrap_or(""))
                .map_err(|e| ConfigError(format!("{field}: {e}")))?;
        }
        // `/*` in place of the LUN number: every LUN of the target.
        let (url, all_luns) = match url.strip_suffix("/*") {
            Some(target) => (format!("{target}/0"), true),
            None => (url.to_string(), false),
        };
        let url = IscsiUrl::parse(&url).map_err(|e| ConfigError(format!("{field}: {e}")))?;
        paths
            .check((&url.host, url.port))
            .map_err(|e| ConfigError(format!("{field}: {e}")))?;
        let chap_secret = if url.user.is_some() && url.password.is_none() {
            std::env::var(CHAP_SECRET_ENV).ok().map(Secret)
        } else {
            None
        };
        Ok(LunKind::Iscsi {
            url,
            chap_secret,
            login: Box::new(login),
            multipath: Box::new(paths),
            all_luns,
        })
    }
}

/// Splits `URL,options` at the first comma after which the URL is whole: a password may
/// hold commas and slashes, an option's value (a file path) slashes.
fn split_iscsi_options(spec: &str) -> (&str, &str) {
    // `/*` in place of the LUN number parses as LUN 0 (every LUN of the target).
    let parses = |url: &str| match url.strip_suffix("/*") {
        Some(target) => IscsiUrl::parse(&format!("{target}/0")).is_ok(),
        None => IscsiUrl::parse(url).is_ok(),
    };
    for (comma, _) in spec.match_indices(',') {
        if parses(&spec[..comma]) {
            return (&spec[..comma], &spec[comma + 1..]);
        }
    }
    (spec, "")
}

/// One LUN of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunConfig {
    pub target: u8,
    pub lun: u16,
    pub kind: LunKind,
    pub readonly: bool,
    pub block_size: u32,
    /// Report and perform UNMAP / WRITE SAME(UNMAP).
    pub discard: bool,
    /// Unit serial number (VPD 0x80); derived from the backing path when absent.
    pub serial: Option<String>,
    /// NAA identifier (VPD 0x83); derived from the backing path when absent.
    pub wwn: Option<Naa>,
    /// Physical block size of a disk LUN, a power-of-two multiple of `block_size`
    /// (READ CAPACITY(16), VPD 0xB0); the logical block size when absent.
    pub physical_block_size: Option<u32>,
    /// Other VMs may write the image at the same time (a cluster disk): its image lock
    /// lets them.
    pub shared: bool,
    /// I/O limits (none by default).
    pub limits: IoLimits,
}

impl LunConfig {
    /// A disk LUN with the defaults of the `--disk` shorthand.
    pub fn disk(target: u8, lun: u16, path: PathBuf) -> LunConfig {
        LunConfig {
            target,
            lun,
            kind: LunKind::Disk {
                path,
                cache: CacheMode::default(),
            },
            readonly: false,
            block_size: 512,
            discard: true,
            serial: None,
            wwn: None,
            physical_block_size: None,
            shared: false,
            limits: IoLimits::default(),
        }
    }
}

/// Everything the daemon needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: Option<PathBuf>,
    /// Owner, group and mode of the socket vscsid creates (not of one systemd passes).
    pub socket_access: SocketAccess,
    /// The VM this daemon serves, for the logs (the journal's `VM=` field); default: the
    /// socket file's name without its extension.
    pub vm_name: Option<String>,
    pub num_queues: u16,
    /// Worker threads serving request queues (each queue belongs to one thread; queues are
    /// dealt out in turn). Default: one per CPU the daemon may run on, at most one per
    /// request queue.
    pub threads: Option<u16>,
    pub queue_size: u16,
    /// Keep listening for the next frontend after a disconnect instead of exiting.
    pub reconnect: bool,
    /// How long a worker keeps polling its queues and completions after the last work
    /// before it sleeps.
    pub poll_us: PollSetting,
    /// I/Os a worker queues before it hands them to the kernel, within one pass over a
    /// virtqueue (the rest go at the pass's end). 1 starts each I/O as soon as it is
    /// decoded, so the device works while the guest's batch is still being read: lowest
    /// latency where submitting is expensive (a virtual disk, one exit per kick); larger
    /// batches save system calls.
    pub submit_batch: u32,
    /// How long stopping a queue waits for its commands (milliseconds). Commands still
    /// running then are answered later only if the frontend keeps an in-flight region
    /// (they are served again when the queue restarts); otherwise the guest never gets
    /// their answer and retries them after its own timeout.
    pub stop_timeout_ms: u32,
    /// The destination of a live migration: images are opened without their locks, which
    /// are taken when QEMU starts the device, after the source let go.
    pub incoming: bool,
    /// iSCSI initiator name; derived from the host name when absent.
    pub initiator_name: Option<String>,
    /// This daemon's name as an initiator of its LUNs (the I_T nexus reservations are held
    /// by); see [`Config::initiator_id`] for the default.
    pub initiator_id: Option<String>,
    /// Where reservation state is kept (`--state-dir`, `daemon.state_dir`, or systemd's
    /// `$STATE_DIRECTORY`); required for shared disks.
    pub state_dir: Option<PathBuf>,
    /// The system call filters (`--sandbox`, `daemon.sandbox`).
    pub sandbox: SandboxMode,
    /// The user (and group) to continue as once the LUNs and the socket are open
    /// (`--user`, `daemon.user`), with the option it came from for errors.
    pub user: Option<UserSpec>,
    /// The control socket (`vscsid ctl`); none unless configured.
    pub control: Option<PathBuf>,
    /// Owner, group and mode of the control socket; members of its group may use it.
    pub control_access: SocketAccess,
    /// Where the Prometheus metrics are served over HTTP; none unless configured.
    pub metrics: Option<std::net::SocketAddr>,
    pub luns: Vec<LunConfig>,
}

/// Prefix of the default initiator identity (an iSCSI qualified name).
pub const INITIATOR_ID_PREFIX: &str = "iqn.2026-12.io.vscsid:";

impl Config {
    /// This daemon's nexus name: `initiator_id` as configured, else one derived from what
    /// names the VM and stays across restarts: the VM name, else the socket path as
    /// written. Never random: a restarted daemon must be the same nexus, or the guest
    /// loses its reservations.
    pub fn initiator_id(&self) -> String {
        if let Some(id) = &self.initiator_id {
            return id.clone();
        }
        let source = match (&self.vm_name, &self.socket) {
            (Some(name), _) => name.clone(),
            (None, Some(path)) => path.to_string_lossy().into_owned(),
            (None, None) => "vscsid".to_string(),
        };
        // iSCSI names take lower-case letters, digits, '.', '-' and ':'.
        let tail: String = source
            .trim_start_matches('/')
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '.' | '-' | ':') => c,
                _ => '.',
            })
            .take(200)
            .collect();
        format!("{INITIATOR_ID_PREFIX}{tail}")
    }
}

/// Checks an `initiator_id`: 1 to 223 bytes of printable ASCII without spaces or commas
/// (a TransportID carries it, and a comma would read as an ISID separator).
pub fn check_initiator_id(id: &str, field: &str) -> Result<String, ConfigError> {
    if id.is_empty() || id.len() > 223 || !id.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(ConfigError(format!(
            "{field}: '{id}' must be 1 to 223 printable characters without spaces or commas"
        )));
    }
    Ok(id.to_string())
}

/// `USER[:GROUP]` as written, and where (`--user` or `daemon.user`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub spec: String,
    pub field: &'static str,
}

/// Checks `USER[:GROUP]` (names or numeric IDs); they are looked up at start-up.
pub fn check_user_spec(spec: &str, field: &'static str) -> Result<UserSpec, ConfigError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    check_account_name(user, field)?;
    if let Some(g) = group {
        check_account_name(g, field)?;
    }
    Ok(UserSpec {
        spec: spec.to_string(),
        field,
    })
}

/// Checks a `--sandbox` value.
pub fn parse_sandbox(text: &str, field: &str) -> Result<SandboxMode, ConfigError> {
    SandboxMode::parse(text)
        .ok_or_else(|| ConfigError(format!("{field}: '{text}' is not on, off or log")))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            socket_access: SocketAccess::default(),
            vm_name: None,
            num_queues: DEFAULT_NUM_QUEUES,
            threads: None,
            queue_size: MAX_QUEUE_SIZE,
            reconnect: false,
            poll_us: PollSetting::Adaptive,
            submit_batch: DEFAULT_SUBMIT_BATCH,
            stop_timeout_ms: DEFAULT_STOP_TIMEOUT_MS,
            incoming: false,
            initiator_name: None,
            initiator_id: None,
            state_dir: None,
            sandbox: SandboxMode::default(),
            user: None,
            control: None,
            control_access: SocketAccess::default(),
            metrics: None,
            luns: Vec::new(),
        }
    }
}

/// Where to serve the metrics: `<port>` (on 127.0.0.1), `localhost:<port>`, or
/// `<IP address>:<port>` (`[<IPv6>]:<port>`). Only an address given explicitly leaves the
/// loopback interface.
pub fn parse_metrics_addr(text: &str, what: &str) -> Result<std::net::SocketAddr, ConfigError> {
    use std::net::{Ipv4Addr, SocketAddr};
    let loopback = |port: &str| {
        port.parse::<u16>()
            .ok()
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
    };
    let found = if text.bytes().all(|b| b.is_ascii_digit()) {
        loopback(text)
    } else if let Some(port) = text.strip_prefix("localhost:") {
        loopback(port)
    } else {
        text.parse().ok()
    };
    found.ok_or_else(|| {
        ConfigError(format!(
            "{what}: '{text}' is not <port>, localhost:<port> or <IP address>:<port>"
        ))
    })
}

/// A configuration error, already phrased for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Adds a LUN, refusing a (target, LUN) pair already present.
    pub fn add_lun(&mut self, lun: LunConfig, field: &str) -> Result<(), ConfigError> {
        if self
            .luns
            .iter()
            .any(|l| l.target == lun.target && l.lun == lun.lun)
        {
            return Err(ConfigError(format!(
                "{field}: target {} LUN {} is configured twice",
                lun.target, lun.lun
            )));
        }
        self.luns.push(lun);
        Ok(())
    }

    /// An iSCSI passthrough LUN with the defaults of the `--iscsi` shorthand.
    pub fn add_iscsi(&mut self, url: &str) -> Result<(), ConfigError> {
        let field = format!("--iscsi '{}'", crate::iscsi::redact_password(url));
        let mut readonly = false;
        let kind = LunKind::iscsi_spec(url, &field, Some(&mut readonly))?;
        let mut lun = LunConfig::disk(0, self.next_lun_of_target0(), PathBuf::new());
        lun.kind = kind;
        lun.readonly = readonly;
        lun.discard = false;
        self.add_lun(lun, &field)
    }

    /// A SCSI generic LUN from the `--sg <path>[,readonly][,<I/O limit>=<n>...]` shorthand.
    pub fn add_sg(&mut self, spec: &str) -> Result<(), ConfigError> {
        let field = format!("--sg '{spec}'");
        let lun = parse_sg_spec(spec, self.next_lun_of_target0())
            .map_err(|e| ConfigError(format!("{field}: {}", e.0)))?;
        self.add_lun(lun, &field)
    }

    /// A null LUN from the `--null <size>[,block-size=<512|4096>]` shorthand.
    pub fn add_null(&mut self, spec: &str) -> Result<(), ConfigError> {
        let field = format!("--null '{spec}'");
        let mut parts = spec.split(',');
        let size = parse_size(parts.next().unwrap_or_default())
            .map_err(|e| ConfigError(format!("{field}: size: {e}")))?;
        let mut lun = LunConfig::disk(0, self.next_lun_of_target0(), PathBuf::new());
        lun.kind = LunKind::Null { size };
        for opt in parts {
            match opt.split_once('=') {
                Some(("block-size", v)) => {
                    let n: i64 = v.parse().map_err(|_| {
                        ConfigError(format!("{field}: block-size: '{v}' is not a number"))
                    })?;
                    lun.block_size = check_block_size(n, "block-size")
                        .map_err(|e| ConfigError(format!("{field}: {}", e.0)))?;
                }
                Some((k, v)) if IoLimits::is_key(k) => lun
                    .limits
                    .set_text(k, v)
                    .map_err(|e| ConfigError(format!("{field}: {e}")))?,
                _ => return Err(ConfigError(format!("{field}: {opt}: unknown option"))),
            }
        }
        lun.limits
            .check()
            .map_err(|e| ConfigError(format!("{field}: {e}")))?;
        self.add_lun(lun, &field)
    }

    /// The next free LUN number of target 0, for the `--disk` shorthand.
    pub fn next_lun_of_target0(&self) -> u16 {
        self.luns
            .iter()
            .filter(|l| l.target == 0)
            .map(|l| l.lun + 1)
            .max()
            .unwrap_or(0)
    }

    /// Checks the whole configuration once it is assembled.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.socket.is_none() {
            return Err(ConfigError(
                "socket: no socket path given (use --socket or [daemon] socket)".into(),
            ));
        }
        if self.num_queues == 0 || self.num_queues > MAX_REQUEST_QUEUES {
            return Err(ConfigError(format!(
                "num_queues: {} is out of range 1..={MAX_REQUEST_QUEUES}",
                self.num_queues
            )));
        }
        if let Some(t) = self.threads {
            if t == 0 || t > self.num_queues {
                return Err(ConfigError(format!(
                    "threads: {t} is out of range 1..={} (num_queues)",
                    self.num_queues
                )));
            }
        }
        if !self.queue_size.is_power_of_two() || !(16..=MAX_QUEUE_SIZE).contains(&self.queue_size) {
            return Err(ConfigError(format!(
                "queue_size: {} must be a power of two in 16..={MAX_QUEUE_SIZE}",
                self.queue_size
            )));
        }
        if self.luns.is_empty() {
            return Err(ConfigError(
                "lun: no LUN configured (use --disk or [[lun]] entries)".into(),
            ));
        }
        for l in &self.luns {
            check_chap_secret(l)?;
        }
        Ok(())
    }
}

/// Parses the value of `--sg` into a LUN of target 0 numbered `lun`.
pub fn parse_sg_spec(spec: &str, lun: u16) -> Result<LunConfig, ConfigError> {
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(ConfigError("path: missing SCSI generic device path".into()));
    }
    let mut l = LunConfig::disk(0, lun, PathBuf::new());
    l.kind = LunKind::Sg { path: path.into() };
    l.discard = false;
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "readonly" || opt == "ro" => l.readonly = true,
            Some(("readonly" | "ro", v)) => {
                l.readonly = match v {
                    "on" | "true" | "yes" | "1" => true,
                    "off" | "false" | "no" | "0" => false,
                    other => return Err(ConfigError(format!("readonly: '{other}' is not on/off"))),
                }
            }
            Some((k, v)) if IoLimits::is_key(k) => l.limits.set_text(k, v).map_err(ConfigError)?,
            _ => {
                let key = opt.split('=').next().unwrap_or(opt);
                return Err(ConfigError(match key {
                    "" => "empty option".to_string(),
                    "cache"
                    | "block-size"
                    | "physical-block-size"
                    | "serial"
                    | "wwn"
                    | "discard"
                    | "shared"
                    | "passthrough" => {
                        format!("{key}: does not apply to a SCSI generic LUN")
                    }
                    _ => format!("{key}: unknown option"),
                }));
            }
        }
    }
    l.limits.check().map_err(ConfigError)?;
    Ok(l)
}

/// A LUN added while the daemon runs, from the same spec as the command line's `--disk`,
/// `--iscsi`, `--sg` or `--null` (`kind`), at `target`/`lun`. Errors are one line naming the spec.
pub fn lun_from_spec(
    kind: &str,
    spec: &str,
    target: u8,
    lun: u16,
) -> Result<LunConfig, ConfigError> {
    let mut scratch = Config::default();
    match kind {
        "disk" => scratch.luns.push(parse_disk_spec(spec, lun)?),
        "iscsi" => scratch.add_iscsi(spec)?,
        "null" => scratch.add_null(spec)?,
        "sg" => scratch.add_sg(spec)?,
        other => {
            return Err(ConfigError(format!(
                "kind: '{other}' is not one of disk, iscsi, sg, null"
            )))
        }
    }
    let mut l = scratch
        .luns
        .pop()
        .ok_or_else(|| ConfigError(format!("'{}': no LUN", crate::iscsi::redact_password(spec))))?;
    if lun > crate::scsi::lun_id::MAX_LUN {
        return Err(ConfigError(format!(
            "lun: {lun} is beyond {}",
            crate::scsi::lun_id::MAX_LUN
        )));
    }
    l.target = target;
    l.lun = lun;
    check_chap_secret(&l)?;
    Ok(l)
}

/// An iSCSI URL naming a CHAP user needs a secret from somewhere: logging in with an empty
/// one would only fail later, at the target, with a less helpful message.
fn check_chap_secret(l: &LunConfig) -> Result<(), ConfigError> {
    let LunKind::Iscsi {
        url,
        chap_secret,
        login,
        ..
    } = &l.kind
    else {
        return Ok(());
    };
    let secret = url
        .password
        .as_deref()
        .or(chap_secret.as_ref().map(|s| s.0.as_str()));
    login
        .check(url.user.as_deref().map(|u| (u, secret)))
        .map_err(|e| ConfigError(format!("target {} LUN {}: {e}", l.target, l.lun)))?;
    let Some(user) = &url.user else {
        return Ok(());
    };
    if secret.is_none_or(str::is_empty) {
        return Err(ConfigError(format!(
            "target {} LUN {}: url: CHAP user '{user}' has no secret (give it in the URL, in {CHAP_SECRET_ENV}, or with chap_secret_file / chap_secret_env)",
            l.target, l.lun
        )));
    }
    Ok(())
}

/// Parses a size: bytes, or a number with a K, M, G or T suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("'{s}' has an unknown unit (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a size"))
}

/// Checks a LUN number is addressable (SAM flat space).
pub(crate) fn check_lun_number(lun: i64, field: &str) -> Result<u16, ConfigError> {
    if (0..=16383).contains(&lun) {
        Ok(lun as u16)
    } else {
        Err(ConfigError(format!(
            "{field}: LUN {lun} is out of range 0..=16383"
        )))
    }
}

/// Largest LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (a 4-bit field of READ CAPACITY(16)).
const MAX_PHYSICAL_BLOCK_EXPONENT: u32 = 15;

/// Checks a physical block size against the logical one: a power-of-two multiple of it.
pub(crate) fn check_physical_block_size(
    physical: i64,
    logical: u32,
    field: &str,
) -> Result<u32, ConfigError> {
    let ratio = u32::try_from(physical)
        .ok()
        .filter(|p| *p >= logical && p % logical == 0)
        .map(|p| p / logical)
        .filter(|r| r.is_power_of_two() && r.trailing_zeros() <= MAX_PHYSICAL_BLOCK_EXPONENT);
    match ratio {
        Some(r) => Ok(r * logical),
        None => Err(ConfigError(format!(
            "{field}: {physical} is not a power-of-two multiple of the {logical}-byte logical block size"
        ))),
    }
}

/// Checks a logical block size.
pub(crate) fn check_block_size(bs: i64, field: &str) -> Result<u32, ConfigError> {
    match bs {
        512 | 4096 => Ok(bs as u32),
        other => Err(ConfigError(format!(
            "{field}: block size {other} is not supported (use 512 or 4096)"
        ))),
    }
}

#[cfg(test)]
mod tests;
