//! Login redirects and the per-path memory of [`PathLogin`], against scripted targets on
//! TCP listeners of 127.0.0.0/8: a temporary redirect is followed on every login, a
//! permanent one moves the path, loops and chains longer than the bound end the login, and
//! a target refusing a SHA-256 response is asked again without SHA-256.

use std::net::{TcpListener, TcpStream};

use crate::iscsi::url::IscsiUrl;

use super::*;

/// A listener on `ip` whose thread runs `script` on each of `connections` accepted
/// connections. Accepting is bounded by [`IO_TIMEOUT`] per connection.
struct Portal {
    addr: String,
    thread: thread::JoinHandle<()>,
}

impl Portal {
    fn start<F>(ip: &str, connections: usize, script: F) -> Portal
    where
        F: Fn(&mut Target, usize) + Send + 'static,
    {
        Self::start_at(&format!("{ip}:0"), connections, script)
    }

    /// [`Portal::start`] on a given address (port 0: any).
    fn start_at<F>(addr: &str, connections: usize, script: F) -> Portal
    where
        F: Fn(&mut Target, usize) + Send + 'static,
    {
        let listener = TcpListener::bind(addr).expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let thread = thread::spawn(move || {
            for n in 0..connections {
                let deadline = Instant::now() + IO_TIMEOUT;
                let s = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            assert!(Instant::now() < deadline, "no connection {n}");
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                };
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
                s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
                script(&mut Target::on(Box::new(s)), n);
            }
        });
        Portal { addr, thread }
    }

    /// Waits for the script; a failed check in it fails the test here.
    fn join(self) {
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    /// Connects and hangs up, for a listener the initiator was not to reach.
    fn release(self) {
        drop(TcpStream::connect(&self.addr));
        self.join();
    }
}

/// Answers the first login request with a redirect to `to`.
fn redirect(t: &mut Target, status: u16, to: &str) {
    if let Some(r) = t.try_recv() {
        let mut reply = Reply::fail(SECURITY, status);
        reply.data = kv(&[("TargetAddress", &format!("{to},1"))]);
        t.reply(&r, reply);
        assert!(
            t.try_recv().is_none(),
            "the initiator went on after a redirect"
        );
    }
}

/// A whole login without authentication.
fn accept_login(t: &mut Target) {
    t.security_none(Some(TARGET));
    t.operational(ECHO_DEFAULTS);
}

fn establish(path: &PathLogin, opts: &IscsiOptions) -> Result<Negotiated, LoginError> {
    path.establish(opts, Some(TARGET), ISID).map(|(_, n)| n)
}

#[test]
fn a_temporary_redirect_is_followed_on_every_login() {
    let to = Portal::start("127.0.0.2", 2, |t, _| accept_login(t));
    let to_addr = to.addr.clone();
    let from = Portal::start("127.0.0.1", 2, move |t, _| redirect(t, 0x0101, &to_addr));
    let path = PathLogin::new(&from.addr);
    for round in 0..2 {
        establish(&path, &options()).unwrap_or_else(|e| panic!("login {round}: {e}"));
        assert_eq!(
            path.address(),
            from.addr,
            "a temporary redirect moved the path"
        );
    }
    from.join();
    to.join();
}

#[test]
fn a_permanent_redirect_moves_the_path() {
    let to = Portal::start("127.0.0.3", 2, |t, _| accept_login(t));
    let to_addr = to.addr.clone();
    let from = Portal::start("127.0.0.1", 1, move |t, _| redirect(t, 0x0102, &to_addr));
    let from_addr = from.addr.clone();
    let path = PathLogin::new(&from_addr);
    establish(&path, &options()).expect("first login");
    assert_eq!(path.address(), to.addr);
    // The old portal is gone: the next login must go straight to the new one.
    from.join();
    establish(&path, &options()).expect("login at the new address");
    to.join();
}

#[test]
fn a_redirect_loop_is_named() {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a_addr = a.local_addr().expect("address").to_string();
    drop(a);
    // B sends the initiator back to A, which sends it to B: A is bound again below.
    let b = Portal::start("127.0.0.4", 1, {
        let a_addr = a_addr.clone();
        move |t, _| redirect(t, 0x0101, &a_addr)
    });
    let b_addr = b.addr.clone();
    let a = Portal::start_at(&a_addr, 1, move |t, _| redirect(t, 0x0101, &b_addr));
    let e = establish(&PathLogin::new(&a_addr), &options()).expect_err("a loop");
    let msg = e.to_string();
    assert!(msg.contains("redirect loop"), "{msg}");
    assert!(
        msg.contains(&format!("{a_addr} -> {} -> {a_addr}", b.addr)),
        "{msg}"
    );
    a.join();
    b.join();
}

#[test]
fn redirects_are_bounded() {
    // A chain longer than the bound, each portal on its own address.
    let mut portals: Vec<Portal> = Vec::new();
    let mut next = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("address")
        .to_string();
    for i in 0..MAX_REDIRECTS + 2 {
        let to = next.clone();
        let p = Portal::start(&format!("127.0.1.{}", i + 1), 1, move |t, _| {
            redirect(t, 0x0101, &to)
        });
        next = p.addr.clone();
        portals.push(p);
    }
    // The last portal started is where the chain begins.
    portals.reverse();
    let e = establish(&PathLogin::new(&portals[0].addr), &options()).expect_err("too many");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("more than {MAX_REDIRECTS} login redirects")),
        "{msg}"
    );
    assert!(msg.contains(&portals[0].addr), "{msg}");
    for (i, p) in portals.into_iter().enumerate() {
        if i <= MAX_REDIRECTS {
            p.join();
        } else {
            p.release();
        }
    }
}

#[test]
fn a_refused_sha256_response_is_retried_without_sha256_and_remembered() {
    let portal = Portal::start("127.0.0.5", 3, |t, n| {
        if n == 0 {
            let r = t.chap_challenge_with("8,7,6,5", "7", 1, &[6u8; 16]);
            // What tgt does with a 32-byte response to its "SHA-1" (7).
            t.reply(&r, Reply::fail(SECURITY, 0x0201));
            return;
        }
        let r = t.chap_challenge_with("8,6,5", "5", 2, &[8u8; 16]);
        assert_eq!(
            unhex(r.key("CHAP_R").expect("CHAP_R")),
            md5_response(2, "alice-secret-12", &[8u8; 16])
        );
        t.reply(&r, Reply::go(SECURITY, OPERATIONAL, &[]));
        t.operational(ECHO_DEFAULTS);
    });
    let path = PathLogin::new(&portal.addr);
    establish(&path, &chap_options(None)).expect("login after dropping SHA-256");
    establish(&path, &chap_options(None)).expect("a later login without SHA-256");
    portal.join();
    // With nothing but SHA-256 to offer, the refusal is the answer.
    let portal = Portal::start("127.0.0.5", 1, |t, _| {
        let r = t.chap_challenge_with("7", "7", 1, &[6u8; 16]);
        t.reply(&r, Reply::fail(SECURITY, 0x0201));
    });
    let opts = IscsiOptions {
        chap_algorithms: vec![crate::iscsi::chap::ChapAlgorithm::Sha256],
        ..chap_options(None)
    };
    let e = establish(&PathLogin::new(&portal.addr), &opts).expect_err("refused");
    assert!(e.to_string().contains("leave sha256 out"), "{e}");
    portal.join();
}

#[test]
fn send_targets_for_one_target_lists_its_portals() {
    let portal = Portal::start("127.0.0.6", 1, |t, _| {
        t.fixed_isid = false;
        t.security_none(None);
        let r = t.recv();
        r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
        t.reply(&r, Reply::go(OPERATIONAL, FULL_FEATURE, &[]).tsih(TSIH));
        let f = Framing::default();
        let q = pdu::read_pdu(&mut t.s, &f).expect("text request");
        assert_eq!(q.opcode(), op::TEXT_REQ);
        assert_eq!(
            text::parse(&q.data),
            [("SendTargets".to_string(), TARGET.to_string())]
        );
        let mut p = Pdu::new(op::TEXT_RESP);
        p.set_flags(F_FINAL);
        p.set_itt(q.itt());
        p.set_u32(20, 0xffff_ffff);
        p.data = kv(&[
            ("TargetName", TARGET),
            ("TargetAddress", "127.0.0.6:3260,1"),
            ("TargetAddress", "127.0.0.7:3261,2"),
            ("TargetAddress", "[::1]:3262,3"),
            ("TargetName", "iqn.2003-01.org.example:other"),
            ("TargetAddress", "127.0.0.8:3260,1"),
        ]);
        pdu::write_pdu(&mut t.s, &p, &f).expect("text response");
    });
    let url = IscsiUrl::parse(&format!("iscsi://{}/{TARGET}/0", portal.addr)).expect("url");
    let found = discover_portals(&url, &options()).expect("discovery");
    assert_eq!(found, ["127.0.0.6:3260", "127.0.0.7:3261", "[::1]:3262"]);
    portal.join();
}
