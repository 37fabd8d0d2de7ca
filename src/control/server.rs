//! The control socket's server: accepts clients of the daemon's own user (or root), reads
//! one request line at a time (bounded in size and time), carries it out on the live LUN
//! table and writes one reply line. Each client gets a thread, up to
//! [`MAX_CLIENTS`] at once; a removal that waits for in-flight commands holds up only its
//! own client. Nothing a client sends can stall the guest's I/O: the workers never wait
//! for this code (a change is published with one atomic store).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::metrics::{render, request_queues};
use super::protocol::{
    error_reply, parse_request, ByKind, ErrorCounts, Latency, LunEntry, LunStatsEntry, PathAction,
    QueueEntry, Request, MAX_REQUEST,
};
use crate::config::{lun_from_json, lun_from_spec, IoLimits, SocketAccess};
use crate::lun::live::{LunCounters, REMOVE_DRAIN};
use crate::lun::stats::{bucket_bound_us, HOST_ERROR_NAMES, SENSE_KEY_NAMES};
use crate::lun::LiveLuns;
use crate::vhost::{group_id, SocketRemover, VhostSocket};

/// Clients served at once; more are told the daemon is busy.
pub const MAX_CLIENTS: usize = 8;

/// How long a client may take to send a request line, or to read a reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ControlServer {
    remover: SocketRemover,
}

impl ControlServer {
    /// Binds `path` with `access` (0600 by default; only a stale socket is replaced) and
    /// serves it on a thread. Members of `access.group` may use it besides the daemon's
    /// user and root. `vm` names the VM in the metrics.
    pub fn start(
        path: &Path,
        access: &SocketAccess,
        luns: Arc<LiveLuns>,
        vm: String,
    ) -> Result<ControlServer, String> {
        let control = |e: String| e.replacen("socket:", "control:", 1);
        let group = access
            .group
            .as_deref()
            .map(group_id)
            .transpose()
            .map_err(control)?;
        let socket = VhostSocket::bind(path, access).map_err(control)?;
        let remover = socket.remover();
        crate::sandbox::spawn(crate::sandbox::ThreadKind::Control, "control", move || {
            accept_loop(&socket, &luns, group, &vm)
        })
        .map_err(|e| format!("control: cannot start its thread: {e}"))?;
        tracing::info!(control = %path.display(), "control socket listening");
        Ok(ControlServer { remover })
    }

    /// Removes the socket (at shutdown).
    pub fn remover(&self) -> &SocketRemover {
        &self.remover
    }
}

fn accept_loop(socket: &VhostSocket, luns: &Arc<LiveLuns>, group: Option<u32>, vm: &str) {
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in socket.listener().incoming() {
        let Ok(mut stream) = conn else {
            continue;
        };
        if let Err(why) = check_peer(&stream, group) {
            tracing::warn!("control: {why}");
            let _ = reply(&mut stream, &error_reply(&why));
            continue;
        }
        if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::AcqRel);
            let _ = reply(&mut stream, &error_reply("busy: too many control clients"));
            continue;
        }
        let (luns, count, vm) = (luns.clone(), clients.clone(), vm.to_string());
        let spawned = crate::sandbox::spawn(
            crate::sandbox::ThreadKind::Control,
            "control-client",
            move || {
                serve_client(stream, &luns, &vm);
                count.fetch_sub(1, Ordering::AcqRel);
            },
        );
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The supplementary groups of the peer (SO_PEERGROUPS, Linux 4.13+); empty when the
/// kernel cannot tell.
fn peer_groups(stream: &UnixStream) -> Vec<u32> {
    const SO_PEERGROUPS: libc::c_int = 59;
    let mut groups = vec![0u32; 256];
    let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
    // SAFETY: SO_PEERGROUPS writes at most `len` bytes of gid_t values into `groups`,
    // which holds that many bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERGROUPS,
            groups.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<u32>());
    groups
}

/// The daemon's own user and root may manage it, and members of the control socket's
/// group when one is configured.
fn check_peer(stream: &UnixStream, group: Option<u32>) -> Result<(), String> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(format!(
            "cannot read a client's credentials: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    let in_group = |g: u32| cred.gid == g || peer_groups(stream).contains(&g);
    if cred.uid == me || cred.uid == 0 || group.is_some_and(in_group) {
        Ok(())
    } else {
        Err(format!(
            "refused a client of uid {} (pid {}): only uid {me}, root{} may manage this daemon",
            cred.uid,
            cred.pid,
            group.map_or(String::new(), |g| format!(" and members of group {g}"))
        ))
    }
}

fn reply(stream: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

fn serve_client(stream: UnixStream, luns: &LiveLuns, vm: &str) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let limit = (MAX_REQUEST + 1) as u64;
        match reader.by_ref().take(limit).read_line(&mut line) {
            Ok(0) => return,
            Ok(n) if n > MAX_REQUEST || !line.ends_with('\n') => {
                let why = if n > MAX_REQUEST {
                    format!("request longer than {MAX_REQUEST} bytes")
                } else {
                    "request not ended by a newline".to_string()
                };
                let _ = reply(&mut out, &error_reply(&why));
                return;
            }
            Ok(_) => {}
            // A client that sends nothing within the timeout, or bytes that are not UTF-8.
            Err(e) => {
                let _ = reply(
                    &mut out,
                    &error_reply(&format!("cannot read the request: {e}")),
                );
                return;
            }
        }
        let answer = match parse_request(line.trim_end()) {
            Ok(req) => execute(luns, vm, req),
            Err(e) => error_reply(&e),
        };
        if reply(&mut out, &answer).is_err() {
            return;
        }
    }
}

/// Carries out one request; `vm` names the VM in the metrics.
pub fn execute(luns: &LiveLuns, vm: &str, req: Request) -> Value {
    let done = match req {
        Request::Luns => Ok(json!({
            "ok": true,
            "luns": list(luns),
            "iscsi_sessions": iscsi_sessions(),
        })),
        Request::Add {
            kind,
            spec,
            lun_config,
            target,
            lun,
        } => add(luns, kind, spec, lun_config, target, lun),
        Request::Remove {
            target,
            lun,
            wait_ms,
        } => luns
            .remove(
                target,
                lun,
                wait_ms.map_or(REMOVE_DRAIN, |ms| {
                    Duration::from_millis(u64::from(ms.min(60_000)))
                }),
            )
            .map(|left| json!({ "ok": true, "target": target, "lun": lun, "still_in_flight": left })),
        Request::Resize {
            target,
            lun,
            size,
            force,
        } => luns.resize(target, lun, size, force).map(|(old, new)| {
            json!({ "ok": true, "target": target, "lun": lun, "old_blocks": old, "new_blocks": new })
        }),
        Request::Set {
            target,
            lun,
            limits,
        } => {
            let changes: Vec<(String, u64)> = limits.into_iter().collect();
            luns.set_limits(target, lun, &changes).map(|now| {
                json!({ "ok": true, "target": target, "lun": lun, "limits": limits_map(&now) })
            })
        }
        Request::Reservations { target, lun } => luns.reservations(target, lun).map(|r| {
            json!({
                "ok": true, "target": target, "lun": lun, "nexus": r.nexus,
                "state_file": r.state_file, "state": r.state,
            })
        }),
        Request::Paths { target, lun } => luns
            .paths(target, lun)
            .map(|p| json!({ "ok": true, "target": target, "lun": lun, "paths": p })),
        Request::Path {
            target,
            lun,
            portal,
            action,
        } => luns
            .set_path_failed(target, lun, &portal, action == PathAction::Fail)
            .map(|()| json!({ "ok": true, "target": target, "lun": lun, "portal": portal })),
        Request::Stats { target, lun } => stats(luns, target, lun),
        Request::Metrics => Ok(json!({ "ok": true, "text": render(luns, vm) })),
    };
    done.unwrap_or_else(|e| error_reply(&e))
}

fn add(
    luns: &LiveLuns,
    kind: Option<String>,
    spec: Option<String>,
    lun_config: Option<Value>,
    target: Option<u8>,
    lun: Option<u16>,
) -> Result<Value, String> {
    let free = |t: u8| {
        luns.next_free_lun(t)
            .ok_or_else(|| format!("target {t} has no free LUN"))
    };
    let l = match (kind, spec, lun_config) {
        (Some(kind), Some(spec), None) => {
            let target = target.unwrap_or(0);
            let lun = match lun {
                Some(l) => l,
                None => free(target)?,
            };
            lun_from_spec(&kind, &spec, target, lun).map_err(|e| e.0)?
        }
        (None, None, Some(Value::Object(mut fields))) => {
            // The request's address, else the table's, else target 0 and its first free LUN.
            let t = match (target, fields.get("target").and_then(Value::as_u64)) {
                (Some(t), _) => t,
                (None, Some(t)) => u8::try_from(t)
                    .map_err(|_| format!("lun.target: {t} is out of range 0..=255"))?,
                (None, None) => 0,
            };
            fields.insert("target".into(), json!(t));
            if let Some(l) = lun {
                fields.insert("lun".into(), json!(l));
            } else if !fields.contains_key("lun") {
                fields.insert("lun".into(), json!(free(t)?));
            }
            lun_from_json(Value::Object(fields)).map_err(|e| e.0)?
        }
        _ => {
            return Err(
                "add needs either kind and spec, or lun_config (an object of [[lun]] fields)"
                    .into(),
            )
        }
    };
    // Every LUN of an iSCSI target ('*'): one LUN each, from `l.lun` up, all or none.
    let (expanded, discovery) =
        crate::lun::expand_all_luns(std::slice::from_ref(&l), &luns.open_options().iscsi)?;
    let taken = luns.configs();
    if let Some(t) = expanded
        .iter()
        .find(|e| taken.contains_key(&(e.target, e.lun)))
    {
        return Err(format!(
            "target {} LUN {} is in use (the target's LUNs are numbered from {} up)",
            t.target, t.lun, l.lun
        ));
    }
    for e in &expanded {
        luns.add(e)?;
    }
    drop(discovery);
    let added: Vec<u16> = expanded.iter().map(|e| e.lun).collect();
    Ok(json!({ "ok": true, "target": l.target, "lun": l.lun, "luns": added }))
}

fn list(luns: &LiveLuns) -> Vec<LunEntry> {
    luns.list()
        .into_iter()
        .map(|i| LunEntry {
            target: i.target,
            lun: i.lun,
            description: i.description,
            size_bytes: i.size_bytes,
            block_size: i.block_size,
            in_flight: i.in_flight,
            paths_down: i.paths_down,
            paths: i.paths,
            limits: limits_map(&i.limits),
        })
        .collect()
}

/// One line per iSCSI session of the daemon: its target, portal, ISID, state and the
/// target's LUNs that share it.
fn iscsi_sessions() -> Vec<String> {
    crate::iscsi::registry::status()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The limits that are set, by key.
fn limits_map(l: &IoLimits) -> BTreeMap<String, u64> {
    l.pairs()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn stats(luns: &LiveLuns, target: Option<u8>, lun: Option<u16>) -> Result<Value, String> {
    let found = luns.stats(target, lun);
    if found.is_empty() {
        if let (Some(t), Some(l)) = (target, lun) {
            return Err(format!("no LUN at target {t} LUN {l}"));
        }
    }
    let entries: Vec<LunStatsEntry> = found.iter().map(stats_entry).collect();
    let queues: Vec<QueueEntry> = request_queues(luns)
        .into_iter()
        .map(|(queue, commands)| QueueEntry { queue, commands })
        .collect();
    let (wakeups, poll_rounds) = luns.queue_stats().worker_activity();
    let workers = json!({ "wakeups": wakeups, "poll_rounds": poll_rounds });
    Ok(json!({ "ok": true, "luns": entries, "queues": queues, "workers": workers }))
}

fn by_kind(v: [u64; 3]) -> ByKind {
    ByKind {
        read: v[0],
        write: v[1],
        other: v[2],
    }
}

fn stats_entry(c: &LunCounters) -> LunStatsEntry {
    let s = &c.stats;
    let seen = |names: &[&str], counts: &[u64]| {
        names
            .iter()
            .zip(counts)
            .filter(|&(_, &n)| n > 0)
            .map(|(k, &n)| (k.to_string(), n))
            .collect()
    };
    let quantile = |q| s.quantile_us(q).flatten();
    LunStatsEntry {
        target: c.target,
        lun: c.lun,
        commands: by_kind(s.commands),
        bytes: by_kind(s.bytes),
        errors: ErrorCounts {
            total: s.errors(),
            sense_keys: seen(&SENSE_KEY_NAMES, &s.sense_keys),
            host: seen(&HOST_ERROR_NAMES, &s.host_errors),
            other_status: s.other_status,
        },
        latency_us: Latency {
            count: s.latency_count(),
            mean: s.mean_us().map(|m| (m * 10.0).round() / 10.0),
            p50: quantile(0.5),
            p99: quantile(0.99),
            p999: quantile(0.999),
            buckets: s
                .latency
                .iter()
                .enumerate()
                .filter(|&(_, &n)| n > 0)
                .map(|(i, &n)| (bucket_bound_us(i), n))
                .collect(),
        },
        in_flight: c.in_flight,
    }
}
