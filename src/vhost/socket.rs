//! The vhost-user listening socket: bound before any LUN is opened, never at the cost of
//! something else at its path, and removed when the daemon ends.
//!
//! Only a stale socket (a socket file nobody listens on, left by a daemon that died) is
//! replaced. A regular file (a typo naming a disk image), a symlink, a directory or a socket
//! a live process listens on is refused with one line. Whether a socket is live is read
//! from `/proc/net/unix` rather than by connecting: a connection would be taken by a live
//! vscsid as its frontend, and one without `--reconnect` would exit when it closes.
//!
//! The socket is created with mode 0600 and then given its configured owner, group and
//! mode (`--socket-owner/-group/-mode`), so it is never more open than configured. A socket
//! systemd passes (socket activation) keeps what its unit set and stays when vscsid ends:
//! it belongs to the `.socket` unit.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use crate::config::SocketAccess;

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s flags: the socket listens.
const SO_ACCEPTCON: u32 = 1 << 16;

/// `LISTEN_FDNAMES` of a socket vscsid bound itself and hands over to the program it
/// executes (an upgrade): that program removes it when it ends. Any other name is a socket
/// systemd passed, which stays.
const HANDOVER_NAME_BOUND: &str = "vhost-user";
/// `LISTEN_FDNAMES` of a socket systemd passed, handed over at an upgrade.
const HANDOVER_NAME_SYSTEMD: &str = "vhost-user-systemd";

/// The daemon's listening socket and the identity of the file it created.
pub struct VhostSocket {
    pub(super) listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
    /// vscsid created the file (it removes it when it ends); false for a socket systemd
    /// passed.
    bound_here: bool,
}

impl VhostSocket {
    /// Binds `path` with the owner, group and mode of `access` (default: the daemon's
    /// user, mode 0600), replacing only a stale socket. Errors are one line naming the
    /// socket.
    pub fn bind(path: &Path, access: &SocketAccess) -> Result<VhostSocket, String> {
        // Bound by its absolute path, so other processes see which socket it is in
        // /proc/net/unix (it shows the path as given to bind).
        let path = &std::path::absolute(path)
            .map_err(|e| format!("socket: cannot resolve {}: {e}", path.display()))?;
        refuse_unless_stale(path)?;
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        let listener = UnixListener::bind(path);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener =
            listener.map_err(|e| format!("socket: cannot listen on {}: {e}", path.display()))?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| format!("socket: cannot inspect {}: {e}", path.display()))?;
        let socket = VhostSocket {
            listener,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            bound_here: true,
        };
        // A daemon that refuses to start leaves no socket behind.
        if let Err(e) = socket.set_access(access) {
            socket.remover().remove();
            return Err(e);
        }
        Ok(socket)
    }

    /// Owner and group first, then the mode: the socket is never more open than asked.
    fn set_access(&self, access: &SocketAccess) -> Result<(), String> {
        let shown = self.path.display();
        let uid = access.owner.as_deref().map(user_id).transpose()?;
        let gid = access.group.as_deref().map(group_id).transpose()?;
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::lchown(&self.path, uid, gid).map_err(|e| {
                format!(
                    "socket: cannot give {shown} to {}:{}: {e}",
                    access.owner.as_deref().unwrap_or("-"),
                    access.group.as_deref().unwrap_or("-")
                )
            })?;
        }
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(access.mode))
            .map_err(|e| format!("socket: cannot set the mode of {shown}: {e}"))
    }

    /// The listening socket a previous vscsid handed over (an upgrade in place, see
    /// `upgrade.rs`) or systemd passed (socket activation): descriptor 3 when `LISTEN_FDS`
    /// is set and `LISTEN_PID` is this process. It must be a listening UNIX socket bound
    /// to `path`. None when nothing was passed; the variables are removed once read, so
    /// they do not reach child processes. A socket systemd passed is left in place when
    /// the daemon ends; one a previous vscsid bound is removed, as that one would have.
    pub fn inherited(path: &Path) -> Option<Result<VhostSocket, String>> {
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|p| p == std::process::id());
        let count = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0);
        if !ours || count == 0 {
            return None;
        }
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
        if count > 1 {
            return Some(Err(format!(
                "socket: {count} sockets were passed (LISTEN_FDS); the unit must listen on one"
            )));
        }
        let bound_here = names == HANDOVER_NAME_BOUND;
        Some(Self::from_listen_fd(path, LISTEN_FDS_START, bound_here))
    }

    fn from_listen_fd(path: &Path, fd: RawFd, bound_here: bool) -> Result<VhostSocket, String> {
        let path = &std::path::absolute(path)
            .map_err(|e| format!("socket: cannot resolve {}: {e}", path.display()))?;
        let shown = path.display();
        let bound = bound_path(fd).map_err(|e| {
            format!("socket: the passed descriptor {fd} is not a UNIX socket ({e})")
        })?;
        if bound != *path {
            return Err(format!(
                "socket: the passed socket is bound to {}, not {shown}",
                bound.display()
            ));
        }
        if !is_listening_stream(fd) {
            return Err(format!(
                "socket: the passed descriptor {fd} is not a listening stream socket (the .socket unit needs ListenStream= and Accept=no)"
            ));
        }
        // SAFETY: descriptor 3 was passed to this process for it to own (sd_listen_fds'
        // contract); it was checked above to be a UNIX socket, and nothing else uses it.
        let listener = unsafe { UnixListener::from_raw_fd(fd) };
        set_cloexec(fd, true).map_err(|e| format!("socket: {e}"))?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| format!("socket: cannot inspect {shown}: {e}"))?;
        let from = if bound_here {
            "the previous process"
        } else {
            "systemd"
        };
        tracing::info!(socket = %shown, "listening socket passed by {from}");
        Ok(VhostSocket {
            listener,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            bound_here,
        })
    }

    /// Whether the socket came from systemd (socket activation), directly or through an
    /// upgrade.
    pub fn passed_by_systemd(&self) -> bool {
        !self.bound_here
    }

    /// What is needed to hand the listening socket to a program this process executes.
    pub fn handover(&self) -> SocketHandover {
        SocketHandover {
            fd: self.listener.as_raw_fd(),
            name: if self.bound_here {
                HANDOVER_NAME_BOUND
            } else {
                HANDOVER_NAME_SYSTEMD
            },
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that removes the socket file at exit (from a signal handler's thread),
    /// if it is still the one this daemon created. A socket systemd passed is its
    /// `.socket` unit's and stays.
    /// The listening socket itself (for a socket that is not the vhost-user one: the
    /// control socket is bound with the same rules).
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn remover(&self) -> SocketRemover {
        SocketRemover {
            path: self.path.clone(),
            inode: self.inode,
            keep: !self.bound_here,
        }
    }
}

/// Hands the listening socket over to a program this process executes (an upgrade in
/// place): it becomes descriptor 3 of that program, with `LISTEN_FDS`/`LISTEN_PID` naming
/// it (exec keeps the process ID), and the program takes it with
/// [`VhostSocket::inherited`]. Frontends that connect meanwhile wait in its backlog.
#[derive(Clone, Copy)]
pub struct SocketHandover {
    fd: RawFd,
    /// `LISTEN_FDNAMES`: who created the socket (and so whether it is removed at the end).
    name: &'static str,
}

impl SocketHandover {
    /// Sets `cmd` up to receive the socket, and nothing else: every other descriptor
    /// above stderr is closed by the exec (descriptors received from the frontend,
    /// such as its guest memory, are not close-on-exec and would stay open for ever).
    pub fn prepare(self, cmd: &mut std::process::Command) {
        let fd = self.fd;
        cmd.env("LISTEN_FDS", "1")
            .env("LISTEN_PID", std::process::id().to_string())
            .env("LISTEN_FDNAMES", self.name);
        // SAFETY: the closure runs in the child between fork and exec (or, with `exec`, in
        // this process just before it) and only makes system calls that are
        // async-signal-safe: dup2, fcntl and close_range.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                if fd != LISTEN_FDS_START && libc::dup2(fd, LISTEN_FDS_START) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                set_cloexec(LISTEN_FDS_START, false)?;
                // Marked close-on-exec rather than closed: with `exec` this runs in the
                // daemon itself, whose other threads still use their descriptors until
                // the exec ends them.
                libc::syscall(
                    libc::SYS_close_range,
                    LISTEN_FDS_START + 1,
                    u32::MAX,
                    CLOSE_RANGE_CLOEXEC,
                );
                Ok(())
            });
        }
    }
}

/// close_range(2)'s flag that marks the range close-on-exec instead of closing it.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// The first descriptor a socket-activated process is given (sd_listen_fds(3)).
const LISTEN_FDS_START: RawFd = 3;

fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number only reads or changes its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, new) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is a stream socket that listens (what systemd passes for ListenStream=
/// with Accept=no; a connection or a datagram socket is not).
fn is_listening_stream(fd: RawFd) -> bool {
    let option = |name: libc::c_int| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `value`, which lives across
        // the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(value)
    };
    option(libc::SO_TYPE) == Some(libc::SOCK_STREAM) && option(libc::SO_ACCEPTCONN) == Some(1)
}

/// A user name's ID (a number is taken as the ID itself).
fn user_id(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    crate::sandbox::user::passwd(name)
        .map(|(_, uid, _)| uid)
        .ok_or_else(|| format!("socket: no user '{name}'"))
}

/// A group name's ID (a number is taken as the ID itself).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    crate::sandbox::user::group_id(name).ok_or_else(|| format!("socket: no group '{name}'"))
}

/// The path a UNIX socket descriptor is bound to.
fn bound_path(fd: RawFd) -> std::io::Result<PathBuf> {
    // SAFETY: an all-zero sockaddr_un is valid; getsockname writes at most `len` bytes.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writing as described.
    let rc =
        unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if addr.sun_family != libc::AF_UNIX as libc::sa_family_t {
        return Err(std::io::Error::other("not a UNIX socket"));
    }
    let bytes: Vec<u8> = addr
        .sun_path
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let name: std::ffi::OsString = std::os::unix::ffi::OsStringExt::from_vec(bytes);
    Ok(PathBuf::from(name))
}

/// Removes the daemon's socket file unless something else took its path meanwhile.
#[derive(Clone)]
pub struct SocketRemover {
    path: PathBuf,
    inode: (u64, u64),
    /// The socket is systemd's: it stays.
    keep: bool,
}

impl SocketRemover {
    pub fn remove(&self) {
        if self.keep {
            return;
        }
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Ok when nothing is at `path`, or a stale socket (removed here); an error naming what
/// is there otherwise.
fn refuse_unless_stale(path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("socket: cannot inspect {shown}: {e}")),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let what = if ft.is_symlink() {
            "a symbolic link"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Err(format!(
            "socket: {shown} exists and is {what}; refusing to replace it"
        ));
    }
    match listening_paths() {
        Ok(paths) if paths.iter().any(|p| Path::new(p) == path) => Err(format!(
            "socket: {shown} is in use: a running process listens on it"
        )),
        Ok(_) => {
            tracing::info!(socket = %shown, "replacing a stale socket");
            std::fs::remove_file(path)
                .map_err(|e| format!("socket: cannot remove the stale socket {shown}: {e}"))
        }
        Err(e) => Err(format!(
            "socket: {shown} exists and whether a process listens on it cannot be told ({e}); remove it if it is stale"
        )),
    }
}

/// Paths of the UNIX sockets that listen, in this network namespace, as their owners
/// bound them (a socket bound by a relative path elsewhere is not recognised).
fn listening_paths() -> std::io::Result<Vec<String>> {
    // This process's view (/proc/net is a link to it), readable with systemd's
    // ProcSubset=pid.
    let text = std::fs::read_to_string("/proc/self/net/unix")?;
    Ok(parse_listening(&text))
}

/// `/proc/net/unix`: `Num RefCount Protocol Flags Type St Inode [Path]`, hexadecimal flags
/// (the Inode is the socket's own, not its file's: sockets are matched by path).
fn parse_listening(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let flags = u32::from_str_radix(f.nth(3)?, 16).ok()?;
            let path = f.nth(3)?;
            (flags & SO_ACCEPTCON != 0).then(|| path.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_unix_listeners_are_found() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/a.sock\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 4343 /run/b.sock\n\
                    garbage\n";
        assert_eq!(parse_listening(text), vec!["/run/a.sock".to_string()]);
    }

    #[test]
    fn only_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"precious").expect("file");
        let any = SocketAccess::default();
        let err = VhostSocket::bind(&file, &any).err().expect("refused");
        assert!(err.contains("regular file"), "{err}");
        assert_eq!(std::fs::read(&file).expect("kept"), b"precious");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let err = VhostSocket::bind(&link, &any).err().expect("refused");
        assert!(err.contains("symbolic link"), "{err}");
        // A live listener is refused; once it is gone its socket file is stale.
        let sock = dir.path().join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&sock).expect("listener");
        let err = VhostSocket::bind(&sock, &any).err().expect("refused");
        assert!(err.contains("in use"), "{err}");
        drop(live);
        let ours = VhostSocket::bind(&sock, &any).expect("stale socket replaced");
        let remover = ours.remover();
        remover.remove();
        assert!(!sock.exists());
    }

    #[test]
    fn owner_group_and_mode_are_applied_and_unknown_names_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let sock = dir.path().join("s.sock");
        let access = SocketAccess {
            owner: Some("0".into()),
            group: Some("nogroup".into()),
            mode: 0o660,
        };
        let s = VhostSocket::bind(&sock, &access).expect("bound");
        let meta = std::fs::symlink_metadata(&sock).expect("socket");
        assert_eq!(meta.mode() & 0o7777, 0o660);
        assert_eq!(meta.uid(), 0);
        assert_eq!(Ok(meta.gid()), group_id("nogroup"));
        assert!(is_listening_stream(s.listener.as_raw_fd()));
        drop(s);
        let _ = std::fs::remove_file(&sock);
        let bad = SocketAccess {
            group: Some("no-such-group-vscsid".into()),
            ..SocketAccess::default()
        };
        let err = VhostSocket::bind(&sock, &bad).err().expect("refused");
        assert!(err.contains("no group 'no-such-group-vscsid'"), "{err}");
        assert!(!sock.exists(), "a refused socket is removed again");
        assert_eq!(user_id("root"), Ok(0));
        assert!(user_id("no-such-user-vscsid").is_err());
    }

    #[test]
    fn a_connection_is_not_a_listening_socket() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(!is_listening_stream(a.as_raw_fd()));
    }
}
