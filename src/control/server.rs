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

use super::protocol::{error_reply, parse_request, LunEntry, Request, MAX_REQUEST};
use crate::config::{lun_from_spec, IoLimits, SocketAccess};
use crate::lun::live::REMOVE_DRAIN;
use crate::lun::LiveLuns;
use crate::vhost::{SocketRemover, VhostSocket};

/// Clients served at once; more are told the daemon is busy.
pub const MAX_CLIENTS: usize = 8;

/// How long a client may take to send a request line, or to read a reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ControlServer {
    remover: SocketRemover,
}

impl ControlServer {
    /// Binds `path` (0600, only a stale socket is replaced) and serves it on a thread.
    pub fn start(path: &Path, luns: Arc<LiveLuns>) -> Result<ControlServer, String> {
        let socket = VhostSocket::bind(path, &SocketAccess::default())
            .map_err(|e| e.replacen("socket:", "control:", 1))?;
        let remover = socket.remover();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&socket, &luns))
            .map_err(|e| format!("control: cannot start its thread: {e}"))?;
        tracing::info!(control = %path.display(), "control socket listening");
        Ok(ControlServer { remover })
    }

    /// Removes the socket (at shutdown).
    pub fn remover(&self) -> &SocketRemover {
        &self.remover
    }
}

fn accept_loop(socket: &VhostSocket, luns: &Arc<LiveLuns>) {
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in socket.listener().incoming() {
        let Ok(mut stream) = conn else {
            continue;
        };
        if let Err(why) = check_peer(&stream) {
            tracing::warn!("control: {why}");
            let _ = reply(&mut stream, &error_reply(&why));
            continue;
        }
        if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::AcqRel);
            let _ = reply(&mut stream, &error_reply("busy: too many control clients"));
            continue;
        }
        let (luns, count) = (luns.clone(), clients.clone());
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                serve_client(stream, &luns);
                count.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Only the daemon's own user and root may manage it.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
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
    if cred.uid == me || cred.uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "refused a client of uid {} (pid {}): only uid {me} or root may manage this daemon",
            cred.uid, cred.pid
        ))
    }
}

fn reply(stream: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())
}

fn serve_client(stream: UnixStream, luns: &LiveLuns) {
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
            Ok(req) => execute(luns, req),
            Err(e) => error_reply(&e),
        };
        if reply(&mut out, &answer).is_err() {
            return;
        }
    }
}

/// Carries out one request.
pub fn execute(luns: &LiveLuns, req: Request) -> Value {
    let done = match req {
        Request::Luns => Ok(json!({ "ok": true, "luns": list(luns) })),
        Request::Add {
            kind,
            spec,
            target,
            lun,
        } => add(luns, &kind, &spec, target.unwrap_or(0), lun),
        Request::Remove { target, lun } => luns
            .remove(target, lun, REMOVE_DRAIN)
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
    };
    done.unwrap_or_else(|e| error_reply(&e))
}

fn add(
    luns: &LiveLuns,
    kind: &str,
    spec: &str,
    target: u8,
    lun: Option<u16>,
) -> Result<Value, String> {
    let lun = match lun {
        Some(l) => l,
        None => luns
            .next_free_lun(target)
            .ok_or_else(|| format!("target {target} has no free LUN"))?,
    };
    let l = lun_from_spec(kind, spec, target, lun).map_err(|e| e.0)?;
    luns.add(&l)?;
    Ok(json!({ "ok": true, "target": target, "lun": lun }))
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

/// The limits that are set, by key.
fn limits_map(l: &IoLimits) -> BTreeMap<String, u64> {
    l.pairs()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}
