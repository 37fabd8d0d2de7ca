//! A network path the test can break: a TCP relay listening on its own loopback address
//! (127.0.0.2, 127.0.0.3 ...) in front of tgtd's portal, so one target gets several
//! portals. `cut_reset` breaks the path like a link whose peer resets (every connection
//! gets a RST, new ones are reset at once); `cut_silent` breaks it like a firewall DROP or
//! a dead switch (connections stay open but nothing passes any more, and new ones are
//! never answered); `restore` heals it. `logins` lists the ISID of every connection's
//! first Login Request that passed, as the target saw it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PASS: u8 = 0;
const SILENT: u8 = 1;
const RESET: u8 = 2;

pub struct Link {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    logins: Arc<Mutex<Vec<[u8; 6]>>>,
}

/// Makes a closed socket send RST instead of FIN.
fn set_linger_zero(s: &TcpStream) {
    use std::os::unix::io::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct from a valid pointer on our own socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

impl Link {
    /// Listens on `ip` (any free port) and relays to `upstream`.
    pub fn start(ip: &str, upstream: SocketAddr) -> Link {
        let listener = TcpListener::bind((ip, 0)).expect("bind the relay");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("relay address");
        let mode = Arc::new(AtomicU8::new(PASS));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let logins = Arc::new(Mutex::new(Vec::new()));
        let (m, c, s, l) = (mode.clone(), conns.clone(), stop.clone(), logins.clone());
        std::thread::spawn(move || {
            // Connections accepted while silent: held open, never relayed.
            let mut held = Vec::new();
            while !s.load(Ordering::Acquire) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        if m.load(Ordering::Acquire) != SILENT {
                            held.clear();
                        }
                        continue;
                    }
                    Err(_) => break,
                };
                match m.load(Ordering::Acquire) {
                    RESET => {
                        set_linger_zero(&client);
                        drop(client);
                        continue;
                    }
                    SILENT => {
                        held.push(client);
                        continue;
                    }
                    _ => {}
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    c.lock().unwrap().extend([c2, s2]);
                }
                for (from, to, logins) in [
                    (client.try_clone(), server.try_clone(), Some(l.clone())),
                    (server.try_clone(), client.try_clone(), None),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let m = m.clone();
                        std::thread::spawn(move || pump(from, to, m, logins));
                    }
                }
            }
        });
        Link {
            addr,
            mode,
            conns,
            stop,
            logins,
        }
    }

    /// The ISIDs of the logins that passed, oldest first.
    pub fn logins(&self) -> Vec<[u8; 6]> {
        self.logins.lock().unwrap().clone()
    }

    pub fn portal(&self) -> String {
        self.addr.to_string()
    }

    /// Every connection is reset now, and new ones are reset as they come.
    pub fn cut_reset(&self) {
        self.mode.store(RESET, Ordering::Release);
        for s in self.conns.lock().unwrap().drain(..) {
            set_linger_zero(&s);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Nothing passes any more, in either direction; connections stay open.
    pub fn cut_silent(&self) {
        self.mode.store(SILENT, Ordering::Release);
    }

    /// Heals the path. Connections that went silent are dropped (as a peer that gave up
    /// on them would), new ones are relayed again.
    pub fn restore(&self) {
        if self.mode.swap(PASS, Ordering::AcqRel) == SILENT {
            for s in self.conns.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut_reset();
    }
}

/// Copies bytes one way while the link passes; holds them while it is silent. With
/// `logins`, the ISID of the connection's first PDU is added to it when that PDU is a
/// Login Request.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: Arc<AtomicU8>,
    mut logins: Option<Arc<Mutex<Vec<[u8; 6]>>>>,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buf = vec![0u8; 256 * 1024];
    // The first bytes that passed, until the ISID (bytes 8..14 of the header) is in.
    let mut head = Vec::new();
    loop {
        match mode.load(Ordering::Acquire) {
            SILENT => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            RESET => return,
            _ => {}
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A cut that happened during the read drops what was read.
                if mode.load(Ordering::Acquire) != PASS {
                    continue;
                }
                if let Some(l) = &logins {
                    head.extend_from_slice(&buf[..n.min(14)]);
                    if head.len() >= 14 {
                        // Opcode 0x03 (Login Request), with or without the immediate bit.
                        if head[0] & 0x3f == 0x03 {
                            l.lock().unwrap().push(head[8..14].try_into().unwrap());
                        }
                        logins = None;
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
