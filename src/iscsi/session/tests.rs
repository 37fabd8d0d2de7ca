//! The session against scripted targets on 127.0.0.1: a close during login, and the
//! round-robin across LUNs while the CmdSN window is full.

use super::*;
use crate::iscsi::pdu::{self, Framing};
use std::net::TcpListener;

#[test]
fn serial_arithmetic_wraps() {
    assert!(sn_le(1, 1));
    assert!(sn_le(1, 2));
    assert!(!sn_le(2, 1));
    assert!(sn_le(u32::MAX, 0));
    assert!(!sn_le(0, u32::MAX));
}

/// A target on 127.0.0.1 that answers the Login Requests of one connection (security
/// to operational, operational to full feature), running `before_last` just before it
/// sends the response that ends the login. Bounded by socket timeouts.
fn login_target(before_last: impl FnOnce() + Send + 'static) -> (u16, std::thread::JoinHandle<()>) {
    scripted_target(32, before_last, |_, _| {})
}

/// [`login_target`] opening a CmdSN window of `window` commands, then running `script`
/// on the connection in full feature phase (with the next StatSN).
fn scripted_target(
    window: u32,
    before_last: impl FnOnce() + Send + 'static,
    script: impl FnOnce(&mut std::net::TcpStream, u32) + Send + 'static,
) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("port").port();
    let target = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut before_last = Some(before_last);
        for stat_sn in 1..8u32 {
            let Ok(req) = pdu::read_pdu(&mut s, &Framing::default()) else {
                return;
            };
            let csg = (req.flags() >> 2) & 3;
            let nsg = if csg == 0 { 1 } else { 3 };
            let mut p = Pdu::new(op::LOGIN_RESP);
            p.set_flags(0x80 | (csg << 2) | nsg);
            p.set_itt(req.itt());
            p.set_u32(24, stat_sn);
            p.set_u32(28, req.u32_at(24));
            p.set_u32(32, req.u32_at(24).wrapping_add(window - 1));
            if nsg == 3 {
                if let Some(f) = before_last.take() {
                    f();
                }
            }
            if pdu::write_pdu(&mut s, &p, &Framing::default()).is_err() {
                return;
            }
            if nsg == 3 {
                script(&mut s, stat_sn + 1);
                break;
            }
        }
        // Until the initiator closes the connection.
        let mut b = [0u8; 64];
        while matches!(std::io::Read::read(&mut s, &mut b), Ok(n) if n > 0) {}
    });
    (port, target)
}

#[test]
fn a_session_closed_during_its_login_stays_down() {
    let slot: Arc<Mutex<Option<Arc<Session>>>> = Arc::default();
    let closer = slot.clone();
    let (port, target) = login_target(move || {
        if let Some(s) = closer.lock().expect("slot").as_ref() {
            s.close(Duration::ZERO);
        }
    });
    let url =
        IscsiUrl::parse(&format!("iscsi://127.0.0.1:{port}/iqn.2024-01.test:t/0")).expect("url");
    let session = Session::new(0, &url, &IscsiOptions::default());
    *slot.lock().expect("slot") = Some(session.clone());
    // The target closes the session before it answers the last login request: the
    // login completes, but the session must not come up on it.
    assert!(session.establish().is_err());
    assert!(!session.is_up());
    assert!(session.lock().writer.is_none());
    target.join().expect("target");
    // And once closed, it does not even connect.
    assert!(session.establish().is_err());
    assert!(!session.is_up());
}

/// Answers SCSI command `cmd` with status GOOD and StatSN `stat_sn` (then the next one),
/// leaving a CmdSN window of `window` commands after it; false when the write failed.
fn answer_good(s: &mut impl std::io::Write, cmd: &Pdu, stat_sn: &mut u32, window: u32) -> bool {
    let cmd_sn = cmd.u32_at(24);
    let mut p = Pdu::new(op::SCSI_RESP);
    p.set_flags(0x80);
    p.set_itt(cmd.itt());
    p.set_u32(24, *stat_sn);
    p.set_u32(28, cmd_sn.wrapping_add(1));
    p.set_u32(32, cmd_sn.wrapping_add(window));
    *stat_sn += 1;
    pdu::write_pdu(s, &p, &Framing::default()).is_ok()
}

/// A TEST UNIT READY of LUN `owner` (its LUN number the same) that reports its
/// completion on `done`.
fn tur(owner: u64, done: &std::sync::mpsc::Sender<u64>) -> PathCommand {
    let done = done.clone();
    PathCommand {
        id: owner,
        cmd: crate::scsi::task::command(&[0u8; 6], Vec::new(), 0),
        done: crate::scsi::task::Completer::new(move |c| {
            assert!(c.result.is_ok(), "{:?}", c.result);
            let _ = done.send(owner);
        }),
        reissues: 0,
        probe: false,
    }
}

#[test]
fn a_full_window_serves_the_luns_in_turn() {
    const DEEP: usize = 12;
    let (order_tx, order_rx) = std::sync::mpsc::channel::<Vec<u64>>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    // A window of one command; each answer opens it by one more. The target holds the
    // first command until every command is queued, then records the LUN of each one it
    // receives, in order.
    let (port, target) = scripted_target(
        1,
        || {},
        move |s, mut stat_sn| {
            let mut order = Vec::new();
            for _ in 0..=DEEP {
                let Ok(cmd) = pdu::read_pdu(s, &Framing::default()) else {
                    break;
                };
                if order.is_empty() {
                    let _ = go_rx.recv_timeout(Duration::from_secs(5));
                }
                assert_eq!(cmd.opcode(), op::SCSI_CMD);
                order.push(cmd.lun() >> 48);
                if !answer_good(s, &cmd, &mut stat_sn, 1) {
                    break;
                }
            }
            let _ = order_tx.send(order);
        },
    );
    let url =
        IscsiUrl::parse(&format!("iscsi://127.0.0.1:{port}/iqn.2024-01.test:t/0")).expect("url");
    let session = Session::new(0, &url, &IscsiOptions::default());
    session.establish().expect("login");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let lun = |n| LunId::new(n).expect("lun");
    // LUN 1 queues DEEP commands, then LUN 2 one.
    for _ in 0..DEEP {
        session
            .submit(1, lun(1), tur(1, &done_tx), false)
            .unwrap_or_else(|_| panic!("session down"));
    }
    session
        .submit(2, lun(2), tur(2, &done_tx), false)
        .unwrap_or_else(|_| panic!("session down"));
    go_tx.send(()).expect("go");
    let order = order_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the target's record");
    assert_eq!(order.len(), DEEP + 1, "{order:?}");
    // LUN 1's first command took the window; LUN 2's goes next but one at the latest,
    // not after LUN 1's whole queue.
    let at = order.iter().position(|&l| l == 2).expect("LUN 2 served");
    assert!(
        at <= 2,
        "LUN 2's command went out after {at} others: {order:?}"
    );
    for _ in 0..=DEEP {
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("every command completes");
    }
    session.close(Duration::ZERO);
    target.join().expect("target");
}

/// Makes `fd`'s socket buffer `opt` (SO_SNDBUF or SO_RCVBUF) as small as the kernel allows.
fn shrink_socket_buffer(fd: std::os::fd::RawFd, opt: libc::c_int) {
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads one c_int from a live local for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

#[test]
fn an_answer_is_delivered_while_a_send_is_blocked() {
    use std::os::fd::AsRawFd;
    const WRITES: usize = 24;
    let (got_tur_tx, got_tur_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (drain_tx, drain_rx) = std::sync::mpsc::channel::<()>();
    // The target reads the TEST UNIT READY, then stops reading until told to answer it,
    // and reads (and answers) the writes only when told to drain.
    let (port, target) = scripted_target(
        64,
        || {},
        move |s, mut stat_sn| {
            shrink_socket_buffer(s.as_raw_fd(), libc::SO_RCVBUF);
            let Ok(tur) = pdu::read_pdu(s, &Framing::default()) else {
                return;
            };
            let _ = got_tur_tx.send(());
            if go_rx.recv_timeout(Duration::from_secs(10)).is_err()
                || !answer_good(s, &tur, &mut stat_sn, 64)
            {
                return;
            }
            if drain_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                return;
            }
            for _ in 0..WRITES {
                match pdu::read_pdu(s, &Framing::default()) {
                    Ok(cmd) if answer_good(s, &cmd, &mut stat_sn, 64) => {}
                    _ => return,
                }
            }
        },
    );
    let url =
        IscsiUrl::parse(&format!("iscsi://127.0.0.1:{port}/iqn.2024-01.test:t/0")).expect("url");
    let session = Session::new(0, &url, &IscsiOptions::default());
    session.establish().expect("login");
    let fd = session
        .lock()
        .writer
        .as_ref()
        .expect("connected")
        .as_raw_fd();
    shrink_socket_buffer(fd, libc::SO_SNDBUF);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let lun = LunId::new(0).expect("lun");
    session
        .submit(0, lun, tur(7, &done_tx), false)
        .unwrap_or_else(|_| panic!("session down"));
    got_tur_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the target reads the TEST UNIT READY");
    // Writes of 8 KiB each (immediate data): far more than the two shrunk socket buffers
    // hold while the target does not read, so the flush blocks in its write.
    let flushed = Arc::new(AtomicBool::new(false));
    let (writes_done_tx, writes_done_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let session = session.clone();
        let flushed = flushed.clone();
        std::thread::spawn(move || {
            let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 16, 0];
            for _ in 0..WRITES {
                let done = writes_done_tx.clone();
                let cmd = PathCommand {
                    id: 1,
                    cmd: crate::scsi::task::command(&write10, vec![0x5a; 8192], 0),
                    done: crate::scsi::task::Completer::new(move |c| {
                        assert!(c.result.is_ok(), "{:?}", c.result);
                        let _ = done.send(());
                    }),
                    reissues: 0,
                    probe: false,
                };
                session
                    .submit(0, lun, cmd, true)
                    .unwrap_or_else(|_| panic!("session down"));
            }
            session.flush();
            flushed.store(true, Ordering::SeqCst);
        })
    };
    // Let the flush reach its blocked write, then have the target answer the TEST UNIT
    // READY: the answer arrives while the write is still blocked.
    std::thread::sleep(Duration::from_millis(300));
    go_tx.send(()).expect("go");
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(5)),
        Ok(7),
        "the answer waited for the blocked send"
    );
    assert!(
        !flushed.load(Ordering::SeqCst),
        "the send did not block: the test shows nothing"
    );
    drain_tx.send(()).expect("drain");
    writer.join().expect("writer");
    for _ in 0..WRITES {
        writes_done_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("every write completes");
    }
    session.close(Duration::ZERO);
    target.join().expect("target");
}

/// Counts what a worker would be handed: each delivery as the ids in it.
struct BatchRecorder(std::sync::mpsc::Sender<Vec<usize>>);

impl crate::scsi::task::CompletionSink for BatchRecorder {
    fn complete(&self, id: usize, _: ScsiCompletion) {
        let _ = self.0.send(vec![id]);
    }

    fn complete_all(&self, answers: &mut dyn Iterator<Item = (usize, ScsiCompletion)>) {
        let _ = self.0.send(answers.map(|(id, _)| id).collect());
    }
}

#[test]
fn answers_that_arrive_together_are_delivered_together() {
    const COMMANDS: usize = 4;
    // The target reads every command, then answers them all in one write: they reach the
    // reader in one segment.
    let (port, target) = scripted_target(
        64,
        || {},
        move |s, mut stat_sn| {
            let mut answers = Vec::new();
            for _ in 0..COMMANDS {
                let Ok(cmd) = pdu::read_pdu(s, &Framing::default()) else {
                    return;
                };
                assert!(answer_good(&mut answers, &cmd, &mut stat_sn, 64));
            }
            let _ = std::io::Write::write_all(s, &answers);
        },
    );
    let url =
        IscsiUrl::parse(&format!("iscsi://127.0.0.1:{port}/iqn.2024-01.test:t/0")).expect("url");
    let session = Session::new(0, &url, &IscsiOptions::default());
    session.establish().expect("login");
    let (tx, rx) = std::sync::mpsc::channel();
    let sink: Arc<dyn crate::scsi::task::CompletionSink> = Arc::new(BatchRecorder(tx));
    let lun = LunId::new(0).expect("lun");
    for id in 0..COMMANDS {
        let cmd = PathCommand {
            id: 0,
            cmd: crate::scsi::task::command(&[0u8; 6], Vec::new(), 0),
            done: crate::scsi::task::Completer::Sink(sink.clone(), id),
            reissues: 0,
            probe: false,
        };
        session
            .submit(0, lun, cmd, false)
            .unwrap_or_else(|_| panic!("session down"));
    }
    session.flush();
    let batch = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the answers are delivered");
    assert_eq!(
        batch,
        (0..COMMANDS).collect::<Vec<_>>(),
        "one delivery for all"
    );
    session.close(Duration::ZERO);
    target.join().expect("target");
}
