//! A network path the test can break: a TCP relay listening on its own loopback address
//! (127.0.0.2, 127.0.0.3 ...) in front of tgtd's portal, so one target gets several
//! portals. `cut_reset` breaks the path like a link whose peer resets (every connection
//! gets a RST, new ones are reset at once); `cut_silent` breaks it like a firewall DROP or
//! a dead switch (connections stay open but nothing passes any more, and new ones are
//! never answered); `restore` heals it.

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
        let (m, c, s) = (mode.clone(), conns.clone(), stop.clone());
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
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let m = m.clone();
                        std::thread::spawn(move || pump(from, to, m));
                    }
                }
            }
        });
        Link {
            addr,
            mode,
            conns,
            stop,
        }
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

/// Copies bytes one way while the link passes; holds them while it is silent.
fn pump(mut from: TcpStream, mut to: TcpStream, mode: Arc<AtomicU8>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(10)));
    let mut buf = vec![0u8; 256 * 1024];
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
