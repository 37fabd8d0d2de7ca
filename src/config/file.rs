//! The TOML configuration file: a `[daemon]` table and one `[[lun]]` table per LUN.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    check_block_size, check_lun_number, check_physical_block_size, Config, ConfigError,
    IscsiLoginSettings, LunConfig, LunKind, Secret,
};
use crate::scsi::naa::Naa;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    lun: Vec<RawLun>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    socket: Option<PathBuf>,
    socket_owner: Option<String>,
    socket_group: Option<String>,
    socket_mode: Option<toml::Value>,
    vm_name: Option<String>,
    num_queues: Option<i64>,
    threads: Option<i64>,
    queue_size: Option<i64>,
    reconnect: Option<bool>,
    poll_us: Option<toml::Value>,
    submit_batch: Option<i64>,
    stop_timeout_ms: Option<i64>,
    initiator_name: Option<String>,
    initiator_id: Option<String>,
    state_dir: Option<PathBuf>,
    sandbox: Option<toml::Value>,
    user: Option<String>,
    control: Option<PathBuf>,
    control_owner: Option<String>,
    control_group: Option<String>,
    control_mode: Option<toml::Value>,
    metrics: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLun {
    target: Option<i64>,
    lun: Option<i64>,
    kind: Option<String>,
    path: Option<PathBuf>,
    cache: Option<String>,
    block_size: Option<i64>,
    physical_block_size: Option<i64>,
    readonly: Option<bool>,
    shared: Option<bool>,
    discard: Option<bool>,
    serial: Option<String>,
    wwn: Option<String>,
    url: Option<String>,
    /// `"all"`: every LUN of the iSCSI target.
    luns: Option<String>,
    size: Option<toml::Value>,
    chap_secret_file: Option<PathBuf>,
    chap_secret_env: Option<String>,
    header_digest: Option<bool>,
    data_digest: Option<bool>,
    chap_algorithms: Option<Vec<String>>,
    mutual_user: Option<String>,
    mutual_secret_file: Option<PathBuf>,
    mutual_secret_env: Option<String>,
    discover: Option<bool>,
    paths: Option<Vec<String>>,
    policy: Option<String>,
    failback: Option<String>,
    rr_ios: Option<i64>,
    priorities: Option<Vec<i64>>,
    nop_interval: Option<toml::Value>,
    nop_timeout: Option<toml::Value>,
    no_path_retry: Option<toml::Value>,
    iops: Option<toml::Value>,
    iops_read: Option<toml::Value>,
    iops_write: Option<toml::Value>,
    iops_max: Option<toml::Value>,
    iops_read_max: Option<toml::Value>,
    iops_write_max: Option<toml::Value>,
    bw: Option<toml::Value>,
    bw_read: Option<toml::Value>,
    bw_write: Option<toml::Value>,
    bw_max: Option<toml::Value>,
    bw_read_max: Option<toml::Value>,
    bw_write_max: Option<toml::Value>,
    burst_length: Option<toml::Value>,
}

/// A LUN from the fields of a `[[lun]]` table given as JSON (the control socket's `add`),
/// checked as in a configuration file; errors name the field (`lun.<name>`).
pub fn lun_from_json(v: serde_json::Value) -> Result<LunConfig, ConfigError> {
    let table: toml::Value =
        serde_json::from_value(v).map_err(|e| ConfigError(format!("lun: {e}")))?;
    let raw: RawLun = table
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError(format!("lun: {}", e.message())))?;
    lun_from_raw(raw, 0).map_err(|e| ConfigError(e.0.replacen("lun[0].", "lun.", 1)))
}

/// A time in a TOML value: seconds as a number, or a string like "500ms".
fn time_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(f) => f.to_string(),
        other => format!("{other}"),
    }
}

/// Reads and checks a configuration file.
pub fn parse_config_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config: cannot read {}: {e}", path.display())))?;
    parse_config_text(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
}

/// Parses configuration text (the file's contents).
pub fn parse_config_text(text: &str) -> Result<Config, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        match e.span().map(|s| super::toml_field::locate(text, s.start)) {
            Some((line, Some(field))) => ConfigError(format!("line {line}: {field}: {msg}")),
            Some((line, None)) => ConfigError(format!("line {line}: {msg}")),
            None => ConfigError(msg),
        }
    })?;
    let mut cfg = Config::default();
    let d = raw.daemon;
    cfg.socket = d.socket;
    cfg.control = d.control;
    match &d.metrics {
        None => {}
        Some(toml::Value::String(text)) => {
            cfg.metrics = Some(super::parse_metrics_addr(text, "daemon.metrics")?);
        }
        Some(toml::Value::Integer(port)) => {
            cfg.metrics = Some(super::parse_metrics_addr(
                &port.to_string(),
                "daemon.metrics",
            )?);
        }
        Some(other) => {
            return Err(ConfigError(format!(
                "daemon.metrics: {other} is not <port> or \"<address>:<port>\""
            )))
        }
    }
    if let Some(owner) = &d.socket_owner {
        cfg.socket_access.owner = Some(super::check_account_name(owner, "daemon.socket_owner")?);
    }
    if let Some(group) = &d.socket_group {
        cfg.socket_access.group = Some(super::check_account_name(group, "daemon.socket_group")?);
    }
    if let Some(mode) = &d.socket_mode {
        cfg.socket_access.mode = toml_mode(mode, "daemon.socket_mode")?;
    }
    cfg.control_access.owner = d
        .control_owner
        .as_deref()
        .map(|o| super::check_account_name(o, "daemon.control_owner"))
        .transpose()?;
    cfg.control_access.group = d
        .control_group
        .as_deref()
        .map(|g| super::check_account_name(g, "daemon.control_group"))
        .transpose()?;
    if let Some(mode) = &d.control_mode {
        cfg.control_access.mode = toml_mode(mode, "daemon.control_mode")?;
    }
    if let Some(name) = d.vm_name {
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(ConfigError(
                "daemon.vm_name: empty or holds control characters".into(),
            ));
        }
        cfg.vm_name = Some(name);
    }
    if let Some(n) = d.num_queues {
        cfg.num_queues = u16::try_from(n)
            .map_err(|_| ConfigError(format!("daemon.num_queues: {n} is out of range")))?;
    }
    if let Some(n) = d.threads {
        cfg.threads = Some(
            u16::try_from(n)
                .map_err(|_| ConfigError(format!("daemon.threads: {n} is out of range")))?,
        );
    }
    if let Some(n) = d.queue_size {
        cfg.queue_size = u16::try_from(n)
            .map_err(|_| ConfigError(format!("daemon.queue_size: {n} is out of range")))?;
    }
    cfg.reconnect = d.reconnect.unwrap_or(false);
    if let Some(v) = &d.poll_us {
        cfg.poll_us = match v {
            toml::Value::Integer(n) => super::check_poll_us(*n, "daemon.poll_us")?,
            toml::Value::String(text) => super::parse_poll(text, "daemon.poll_us")?,
            _ => {
                return Err(ConfigError(
                    "daemon.poll_us: expected \"adaptive\" or a number of microseconds".into(),
                ))
            }
        };
    }
    if let Some(n) = d.submit_batch {
        cfg.submit_batch = super::check_submit_batch(n, "daemon.submit_batch")?;
    }
    if let Some(n) = d.stop_timeout_ms {
        cfg.stop_timeout_ms = super::check_stop_timeout_ms(n, "daemon.stop_timeout_ms")?;
    }
    cfg.initiator_name = d.initiator_name;
    cfg.initiator_id = d
        .initiator_id
        .as_deref()
        .map(|id| super::check_initiator_id(id, "daemon.initiator_id"))
        .transpose()?;
    if let Some(dir) = d.state_dir {
        if dir.as_os_str().is_empty() {
            return Err(ConfigError("daemon.state_dir: empty".into()));
        }
        cfg.state_dir = Some(dir);
    }
    match &d.sandbox {
        None => {}
        Some(toml::Value::String(text)) => {
            cfg.sandbox = super::parse_sandbox(text, "daemon.sandbox")?;
        }
        Some(toml::Value::Boolean(on)) => {
            cfg.sandbox = if *on {
                crate::sandbox::SandboxMode::On
            } else {
                crate::sandbox::SandboxMode::Off
            };
        }
        Some(other) => {
            return Err(ConfigError(format!(
                "daemon.sandbox: {other} is not \"on\", \"off\" or \"log\""
            )))
        }
    }
    if let Some(user) = &d.user {
        cfg.user = Some(super::check_user_spec(user, "daemon.user")?);
    }
    for (i, l) in raw.lun.into_iter().enumerate() {
        let lun = lun_from_raw(l, i)?;
        cfg.add_lun(lun, &format!("lun[{i}]"))?;
    }
    Ok(cfg)
}

fn lun_from_raw(l: RawLun, i: usize) -> Result<LunConfig, ConfigError> {
    let field = |name: &str| format!("lun[{i}].{name}");
    let target = l.target.unwrap_or(0);
    let target = u8::try_from(target).map_err(|_| {
        ConfigError(format!(
            "{}: target {target} is out of range 0..=255",
            field("target")
        ))
    })?;
    let lun_no = check_lun_number(
        l.lun
            .ok_or_else(|| ConfigError(format!("{}: missing", field("lun"))))?,
        &field("lun"),
    )?;
    let kind = l.kind.as_deref().unwrap_or("disk");
    check_keys_apply(&l, kind, i)?;
    let mut cfg = LunConfig::disk(target, lun_no, PathBuf::new());
    match kind {
        "disk" => {
            let path = l.path.ok_or_else(|| {
                ConfigError(format!("{}: missing backing file path", field("path")))
            })?;
            if path.as_os_str().is_empty() {
                return Err(ConfigError(format!("{}: empty", field("path"))));
            }
            let cache = match l.cache {
                Some(c) => c
                    .parse()
                    .map_err(|e: String| ConfigError(format!("{}: {e}", field("cache"))))?,
                None => Default::default(),
            };
            cfg.kind = LunKind::Disk { path, cache };
        }
        "iscsi" => {
            let url = l
                .url
                .clone()
                .ok_or_else(|| ConfigError(format!("{}: missing iscsi:// URL", field("url"))))?;
            let mut k = LunKind::iscsi(&url, &field("url"))?;
            if let LunKind::Iscsi {
                url,
                chap_secret,
                login,
                multipath,
                all_luns,
                ..
            } = &mut k
            {
                match l.luns.as_deref() {
                    None => {}
                    Some("all") => *all_luns = true,
                    Some(other) => {
                        return Err(ConfigError(format!(
                            "{}: '{other}' is not \"all\" (the one value it takes)",
                            field("luns")
                        )))
                    }
                }
                let mut set = |name: &str, value: String| {
                    multipath
                        .set(name, &value)
                        .map_err(|e| ConfigError(format!("{}: {e}", field(name))))
                };
                for p in l.paths.iter().flatten() {
                    set("paths", p.clone())?;
                }
                if let Some(v) = &l.policy {
                    set("policy", v.clone())?;
                }
                if let Some(v) = &l.failback {
                    set("failback", v.clone())?;
                }
                if let Some(v) = l.rr_ios {
                    set("rr_ios", v.to_string())?;
                }
                if let Some(v) = &l.priorities {
                    let list: Vec<String> = v.iter().map(|n| n.to_string()).collect();
                    set("priorities", list.join(":"))?;
                }
                for (name, v) in [
                    ("nop_interval", &l.nop_interval),
                    ("nop_timeout", &l.nop_timeout),
                    ("no_path_retry", &l.no_path_retry),
                ] {
                    if let Some(v) = v {
                        set(name, time_text(v))?;
                    }
                }
                multipath
                    .check((&url.host, url.port))
                    .map_err(|e| ConfigError(format!("{}: {e}", field("paths"))))?;
                if let Some(p) = &l.chap_secret_file {
                    let s = std::fs::read_to_string(p).map_err(|e| {
                        ConfigError(format!(
                            "{}: cannot read {}: {e}",
                            field("chap_secret_file"),
                            p.display()
                        ))
                    })?;
                    *chap_secret = Some(Secret(s.trim_end_matches(['\n', '\r']).to_string()));
                }
                if let Some(var) = &l.chap_secret_env {
                    let s = std::env::var(var).map_err(|_| {
                        ConfigError(format!(
                            "{}: environment variable {var} is not set",
                            field("chap_secret_env")
                        ))
                    })?;
                    *chap_secret = Some(Secret(s));
                }
                login_settings(login, &l, &field)?;
                let secret = url
                    .password
                    .as_deref()
                    .or(chap_secret.as_ref().map(|s| s.0.as_str()));
                login
                    .check(url.user.as_deref().map(|u| (u, secret)))
                    .map_err(|e| ConfigError(format!("lun[{i}].{e}")))?;
            }
            cfg.kind = k;
            cfg.discard = false;
        }
        "sg" => {
            cfg.kind = LunKind::Sg {
                path: device_path(l.path.clone(), &field("path"), "SCSI generic device")?,
            };
            cfg.discard = false;
        }
        "block-passthrough" => {
            let path = device_path(l.path.clone(), &field("path"), "block device")?;
            let cache = match &l.cache {
                Some(c) => c
                    .parse()
                    .map_err(|e: String| ConfigError(format!("{}: {e}", field("cache"))))?,
                None => Default::default(),
            };
            let cache = super::check_passthrough_cache(cache, &field("cache"))?;
            cfg.kind = LunKind::BlockPassthrough { path, cache };
            cfg.discard = false;
        }
        "null" => {
            let size = match &l.size {
                Some(toml::Value::Integer(n)) if *n > 0 => *n as u64,
                Some(toml::Value::String(s)) => super::parse_size(s)
                    .map_err(|e| ConfigError(format!("{}: {e}", field("size"))))?,
                Some(_) => {
                    return Err(ConfigError(format!(
                        "{}: must be a positive size",
                        field("size")
                    )))
                }
                None => {
                    return Err(ConfigError(format!(
                        "{}: missing (bytes or e.g. \"1G\")",
                        field("size")
                    )))
                }
            };
            cfg.kind = LunKind::Null { size };
        }
        other => {
            return Err(ConfigError(format!(
            "{}: unknown LUN kind '{other}' (expected disk, null, iscsi, sg or block-passthrough)",
            field("kind")
        )))
        }
    }
    for (key, v) in [
        ("iops", &l.iops),
        ("iops_read", &l.iops_read),
        ("iops_write", &l.iops_write),
        ("iops_max", &l.iops_max),
        ("iops_read_max", &l.iops_read_max),
        ("iops_write_max", &l.iops_write_max),
        ("bw", &l.bw),
        ("bw_read", &l.bw_read),
        ("bw_write", &l.bw_write),
        ("bw_max", &l.bw_max),
        ("bw_read_max", &l.bw_read_max),
        ("bw_write_max", &l.bw_write_max),
        ("burst_length", &l.burst_length),
    ] {
        let text = match v {
            None => continue,
            Some(toml::Value::Integer(n)) if *n >= 0 => n.to_string(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(ConfigError(format!(
                    "{}: must be a number (or, for bw*, a size such as \"10M\")",
                    field(key)
                )))
            }
        };
        cfg.limits
            .set_text(key, &text)
            .map_err(|e| ConfigError(format!("lun[{i}].{e}")))?;
    }
    cfg.limits
        .check()
        .map_err(|e| ConfigError(format!("lun[{i}].{e}")))?;
    if let Some(bs) = l.block_size {
        cfg.block_size = check_block_size(bs, &field("block_size"))?;
    }
    if let Some(p) = l.physical_block_size {
        cfg.physical_block_size = Some(check_physical_block_size(
            p,
            cfg.block_size,
            &field("physical_block_size"),
        )?);
    }
    cfg.readonly = l.readonly.unwrap_or(false);
    cfg.shared = l.shared.unwrap_or(false);
    if let Some(d) = l.discard {
        cfg.discard = d;
    }
    if let Some(s) = l.serial {
        cfg.serial = Some(check_serial(&s, &field("serial"))?);
    }
    if let Some(w) = l.wwn {
        cfg.wwn = Some(parse_wwn(&w, &field("wwn"))?);
    }
    Ok(cfg)
}

/// The path of a passthrough LUN's device: present and not empty.
fn device_path(path: Option<PathBuf>, field: &str, what: &str) -> Result<PathBuf, ConfigError> {
    match path {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        Some(_) => Err(ConfigError(format!("{field}: empty"))),
        None => Err(ConfigError(format!("{field}: missing {what} path"))),
    }
}

/// LUN kinds a key applies to.
const DISK: &[&str] = &["disk"];
/// The login keys of an iSCSI `[[lun]]` table; errors name the field.
fn login_settings(
    login: &mut IscsiLoginSettings,
    l: &RawLun,
    field: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let named = |name: &'static str| move |e: String| ConfigError(format!("{}: {e}", field(name)));
    login.header_digest = l.header_digest.unwrap_or(false);
    login.data_digest = l.data_digest.unwrap_or(false);
    login.discover = l.discover.unwrap_or(false);
    if let Some(list) = &l.chap_algorithms {
        login
            .set_algorithms(list.iter().map(String::as_str))
            .map_err(named("chap_algorithms"))?;
    }
    if let Some(u) = &l.mutual_user {
        if u.is_empty() {
            return Err(named("mutual_user")("empty".into()));
        }
        login.mutual_user = Some(u.clone());
    }
    if let Some(p) = &l.mutual_secret_file {
        login
            .read_secret_file(p)
            .map_err(named("mutual_secret_file"))?;
    }
    if let Some(var) = &l.mutual_secret_env {
        login
            .read_secret_env(var)
            .map_err(named("mutual_secret_env"))?;
    }
    Ok(())
}

/// Kinds opened from a path.
const WITH_PATH: &[&str] = &["disk", "sg", "block-passthrough"];
/// Kinds with a host cache mode.
const CACHED: &[&str] = &["disk", "block-passthrough"];
const NULL: &[&str] = &["null"];
const ISCSI: &[&str] = &["iscsi"];
/// What vscsid emulates (for an iSCSI LUN the target decides).
const EMULATED: &[&str] = &["disk", "null"];

/// Refuses a key of a `[[lun]]` table that the LUN's kind does not use: silently ignoring
/// it would let a setting such as `cache` on an iSCSI LUN look effective when it is not.
/// The keys not listed (target, lun, kind, readonly, the I/O limits) apply to every kind.
fn check_keys_apply(l: &RawLun, kind: &str, i: usize) -> Result<(), ConfigError> {
    let keys: [(&str, bool, &[&str]); 28] = [
        ("path", l.path.is_some(), WITH_PATH),
        ("cache", l.cache.is_some(), CACHED),
        ("shared", l.shared.is_some(), DISK),
        ("physical_block_size", l.physical_block_size.is_some(), DISK),
        ("block_size", l.block_size.is_some(), EMULATED),
        ("discard", l.discard.is_some(), EMULATED),
        ("serial", l.serial.is_some(), EMULATED),
        ("wwn", l.wwn.is_some(), EMULATED),
        ("size", l.size.is_some(), NULL),
        ("url", l.url.is_some(), ISCSI),
        ("luns", l.luns.is_some(), ISCSI),
        ("chap_secret_file", l.chap_secret_file.is_some(), ISCSI),
        ("chap_secret_env", l.chap_secret_env.is_some(), ISCSI),
        ("header_digest", l.header_digest.is_some(), ISCSI),
        ("data_digest", l.data_digest.is_some(), ISCSI),
        ("chap_algorithms", l.chap_algorithms.is_some(), ISCSI),
        ("mutual_user", l.mutual_user.is_some(), ISCSI),
        ("mutual_secret_file", l.mutual_secret_file.is_some(), ISCSI),
        ("mutual_secret_env", l.mutual_secret_env.is_some(), ISCSI),
        ("discover", l.discover.is_some(), ISCSI),
        ("paths", l.paths.is_some(), ISCSI),
        ("policy", l.policy.is_some(), ISCSI),
        ("failback", l.failback.is_some(), ISCSI),
        ("rr_ios", l.rr_ios.is_some(), ISCSI),
        ("priorities", l.priorities.is_some(), ISCSI),
        ("nop_interval", l.nop_interval.is_some(), ISCSI),
        ("nop_timeout", l.nop_timeout.is_some(), ISCSI),
        ("no_path_retry", l.no_path_retry.is_some(), ISCSI),
    ];
    if !matches!(kind, "disk" | "null" | "iscsi" | "sg" | "block-passthrough") {
        // An unknown kind is reported as such by the caller.
        return Ok(());
    }
    match keys
        .iter()
        .find(|(_, given, kinds)| *given && !kinds.contains(&kind))
    {
        Some((key, ..)) => Err(ConfigError(format!(
            "lun[{i}].{key}: does not apply to {kind} LUNs"
        ))),
        None => Ok(()),
    }
}

/// A unit serial number: printable ASCII, at most 36 characters (what fits VPD 0x80 sanely).
pub(crate) fn check_serial(s: &str, field: &str) -> Result<String, ConfigError> {
    if s.is_empty() || s.len() > 36 || !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ConfigError(format!(
            "{field}: '{s}' must be 1 to 36 printable ASCII characters without spaces"
        )));
    }
    Ok(s.to_string())
}

/// An NAA identifier in hex (optional `0x`): 16 digits of type 2, 3 or 5, or 32 of type 6.
pub(crate) fn parse_wwn(s: &str, field: &str) -> Result<Naa, ConfigError> {
    Naa::parse(s).map_err(|e| ConfigError(format!("{field}: {e}")))
}

/// A socket's permission bits from TOML: octal text ("0660") or an octal literal (0o660).
fn toml_mode(v: &toml::Value, field: &str) -> Result<u32, ConfigError> {
    match v {
        toml::Value::String(text) => super::parse_socket_mode(text, field),
        // A TOML octal literal (0o660) arrives as its value.
        toml::Value::Integer(n) => {
            u32::try_from(*n)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    ConfigError(format!(
                    "{field}: {n} is out of range (write it as a string, \"0660\", or as 0o660)"
                ))
                })
        }
        other => Err(ConfigError(format!(
            "{field}: {other} is not an octal permission mode (\"0660\")"
        ))),
    }
}

#[cfg(test)]
mod tests;
