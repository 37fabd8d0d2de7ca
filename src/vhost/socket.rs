//! The vhost-user listening socket: bound before any LUN is opened, never at the cost of
//! something else at its path, and removed when the daemon ends.
//!
//! Only a stale socket (a socket file nobody listens on, left by a daemon that died) is
//! replaced. A regular file (a typo naming a disk image), a symlink, a directory or a socket
//! a live process listens on is refused with one line. Whether a socket is live is read
//! from `/proc/net/unix` rather than by connecting: a connection would be taken by a live
//! vscsid as its frontend, and one without `--reconnect` would exit when it closes.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vhost::vhost_user::Listener;

/// `__SO_ACCEPTCON` in `/proc/net/unix`'s flags: the socket listens.
const SO_ACCEPTCON: u32 = 1 << 16;

/// The daemon's listening socket and the identity of the file it created.
pub struct VhostSocket {
    pub(super) listener: Listener,
    path: PathBuf,
    inode: (u64, u64),
}

impl VhostSocket {
    /// Binds `path` readable and writable by its owner only (mode 0600), replacing only a
    /// stale socket. Errors are one line naming the socket.
    pub fn bind(path: &Path) -> Result<VhostSocket, String> {
        // Bound by its absolute path, so other processes see which socket it is in
        // /proc/net/unix (it shows the path as given to bind).
        let path = &std::path::absolute(path)
            .map_err(|e| format!("socket: cannot resolve {}: {e}", path.display()))?;
        refuse_unless_stale(path)?;
        // SAFETY: umask only changes this process's file creation mask.
        let old = unsafe { libc::umask(0o177) };
        // Nothing but a stale socket is left at the path: the listener may unlink it.
        let listener = Listener::new(path, true);
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        let listener =
            listener.map_err(|e| format!("socket: cannot listen on {}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("socket: cannot set the mode of {}: {e}", path.display()))?;
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| format!("socket: cannot inspect {}: {e}", path.display()))?;
        Ok(VhostSocket {
            listener,
            path: path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle that removes the socket file at exit (from a signal handler's thread),
    /// if it is still the one this daemon created.
    pub fn remover(&self) -> SocketRemover {
        SocketRemover {
            path: self.path.clone(),
            inode: self.inode,
        }
    }
}

/// Removes the daemon's socket file unless something else took its path meanwhile.
#[derive(Clone)]
pub struct SocketRemover {
    path: PathBuf,
    inode: (u64, u64),
}

impl SocketRemover {
    pub fn remove(&self) {
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
    let text = std::fs::read_to_string("/proc/net/unix")?;
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
        let err = VhostSocket::bind(&file).err().expect("refused");
        assert!(err.contains("regular file"), "{err}");
        assert_eq!(std::fs::read(&file).expect("kept"), b"precious");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        let err = VhostSocket::bind(&link).err().expect("refused");
        assert!(err.contains("symbolic link"), "{err}");
        // A live listener is refused; once it is gone its socket file is stale.
        let sock = dir.path().join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&sock).expect("listener");
        let err = VhostSocket::bind(&sock).err().expect("refused");
        assert!(err.contains("in use"), "{err}");
        drop(live);
        let ours = VhostSocket::bind(&sock).expect("stale socket replaced");
        let remover = ours.remover();
        remover.remove();
        assert!(!sock.exists());
    }
}
