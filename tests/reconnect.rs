//! `--reconnect`: a daemon serves one frontend after another, and nothing accumulates from
//! one connection to the next, also when a frontend dies (QEMU killed) with I/O in flight.

mod common;

use common::*;

/// Open descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("read the daemon's descriptors")
}

/// Threads of a process.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .expect("read the daemon's threads")
}

/// Waits (bounded) until `count` stops changing, or drops to `want`; returns it.
fn settle(count: impl Fn() -> usize, want: Option<usize>) -> usize {
    let mut n = count();
    for _ in 0..150 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let m = count();
        if want.is_some_and(|w| m <= w) || (want.is_none() && m == n) {
            return m;
        }
        n = m;
    }
    n
}

/// A frontend that submits writes on every queue and disappears without waiting for
/// them, as a killed QEMU does (its socket and memory descriptor close with it).
fn die_mid_io(d: &Daemon) {
    let mut fe = d.connect(4);
    let data = pattern(9, 64 << 10);
    for q in 2..6 {
        for i in 0..8u64 {
            let lba = (q as u64 * 8 + i) * 128;
            fe.submit(q, &cmd(0, &write16(lba, 128), &data, 0))
                .expect("submit");
        }
    }
    drop(fe);
}

#[test]
fn frontends_killed_mid_io_leave_no_thread_or_descriptor_behind() {
    let mut d = Daemon::start(
        &[Disk {
            name: "d.img",
            size: 64 << 20,
            opts: "cache=none",
        }],
        &["--reconnect", "--num-queues", "4"],
    );
    let pid = d.child.id();
    die_mid_io(&d);
    let fds = settle(|| open_fds(pid), None);
    let tasks = settle(|| threads(pid), None);
    for _ in 0..20 {
        die_mid_io(&d);
    }
    let mut fe = d.connect(4);
    good(
        &fe.command(&cmd(0, &test_unit_ready(), &[], 0))
            .expect("served after 21 deaths"),
    );
    drop(fe);
    assert!(d.is_running());
    let fds_after = settle(|| open_fds(pid), Some(fds));
    let tasks_after = settle(|| threads(pid), Some(tasks));
    assert!(
        fds_after <= fds,
        "{fds} descriptors after one death, {fds_after} after 21"
    );
    // The frontends' guest memory (their memfds) is unmapped once their connections end.
    let guest_maps = settle(
        || {
            std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .map(|m| m.lines().filter(|l| l.contains("vscsid-frontend")).count())
                .unwrap_or(usize::MAX)
        },
        Some(0),
    );
    assert_eq!(
        guest_maps, 0,
        "guest memory of ended connections is still mapped"
    );
    assert!(
        tasks_after <= tasks,
        "{tasks} threads after one death, {tasks_after} after 21"
    );
}

#[test]
fn without_reconnect_the_daemon_exits_0_when_its_frontend_dies_mid_io() {
    let mut d = Daemon::start(
        &[Disk {
            name: "d.img",
            size: 64 << 20,
            opts: "cache=none",
        }],
        &["--num-queues", "4"],
    );
    die_mid_io(&d);
    assert_eq!(d.wait_exit(std::time::Duration::from_secs(30)), Some(0));
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
