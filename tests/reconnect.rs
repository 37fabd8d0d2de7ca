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
