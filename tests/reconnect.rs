//! `--reconnect`: a daemon serves one frontend after another, and nothing accumulates from
//! one connection to the next.

mod common;

use common::*;

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("read the daemon's descriptors")
}

#[test]
fn many_connections_leak_no_descriptor() {
    let d = Daemon::start(
        &[Disk {
            name: "d.img",
            size: 1 << 20,
            opts: "",
        }],
        &["--reconnect", "--num-queues", "4"],
    );
    let cycle = || {
        let mut fe = d.connect(4);
        good(
            &fe.command(&cmd(0, &test_unit_ready(), &[], 0))
                .expect("TEST UNIT READY"),
        );
    };
    // Warm up: the first connections open what the daemon keeps for its life.
    for _ in 0..5 {
        cycle();
    }
    // The previous connection's teardown may still be under way: settle, bounded.
    let settle = |want: Option<usize>| {
        let mut n = open_fds(d.child.id());
        for _ in 0..100 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let m = open_fds(d.child.id());
            if want.is_some_and(|w| m <= w) || (want.is_none() && m == n) {
                return m;
            }
            n = m;
        }
        n
    };
    let before = settle(None);
    for _ in 0..200 {
        cycle();
    }
    let after = settle(Some(before));
    assert!(
        after <= before,
        "{before} descriptors after 5 connections, {after} after 200 more"
    );
}

/// A started queue that gets a new call descriptor interrupts the guest once through it.
/// QEMU gives the call last when it restarts the device after a reconnection, and the
/// guest may then wait for used entries nobody told it about (the previous daemon died
/// between putting them on the ring and its call): without that interrupt, with EVENT_IDX,
/// no later completion would reach it.
#[test]
fn a_started_queue_signals_a_new_call_once() {
    use vhost::VhostBackend;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let d = Daemon::start(
        &[Disk {
            name: "d.img",
            size: 1 << 20,
            opts: "",
        }],
        &["--num-queues", "1"],
    );
    let mut fe = d.connect(1);
    good(
        &fe.command(&cmd(0, &test_unit_ready(), &[], 0))
            .expect("TEST UNIT READY"),
    );
    let call = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    fe.conn
        .frontend
        .set_vring_call(2, &call)
        .expect("SET_VRING_CALL");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let signalled = loop {
        if call.read().is_ok() {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(signalled, "the new call descriptor was never signalled");
}
