//! Busy polling after work (`--poll-us`): an idle daemon with a connected frontend sleeps
//! in epoll whatever the setting (its worker threads neither wake nor poll), and each
//! setting polls or not as it says. Counted with the daemon's own counters of wake-ups and
//! polling passes (`vscsid ctl stats`), not with a clock.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `(wake-ups, polling passes)` of the daemon's worker threads so far.
fn worker_activity(control: &Path) -> (u64, u64) {
    let (ok, out, err) = ctl(control, &["--json", "stats"]);
    assert!(ok, "stats: {out} {err}");
    let v: Value = serde_json::from_str(&out).expect("stats JSON");
    let w = &v["workers"];
    (
        w["wakeups"].as_u64().expect("wakeups"),
        w["poll_rounds"].as_u64().expect("poll_rounds"),
    )
}

/// A daemon with a null LUN and a control socket, `extra` options added, and a frontend
/// that sent it `reads` READs.
fn daemon_after_io(extra: &[&str], reads: usize) -> (Daemon, vscsid::frontend::ScsiFrontend) {
    let mut args = vec![
        "--num-queues",
        "1",
        "--null",
        "64M",
        "--control",
        "{dir}/control.sock",
    ];
    args.extend_from_slice(extra);
    let d = Daemon::start(&[], &args);
    d.control_socket();
    let mut fe = d.connect(1);
    for i in 0..reads {
        let r = fe
            .command(&cmd(0, &read16(i as u64 * 8, 8), &[], 4096))
            .expect("READ");
        good(&r);
    }
    (d, fe)
}

#[test]
fn an_idle_daemon_with_a_connected_frontend_neither_wakes_nor_polls() {
    for extra in [&[][..], &["--poll-us", "adaptive"], &["--poll-us", "50"]] {
        let (d, fe) = daemon_after_io(extra, 300);
        let control = d.control_socket();
        // Any polling window (at most 50 µs here) has long passed.
        std::thread::sleep(Duration::from_millis(300));
        let (wake0, poll0) = worker_activity(&control);
        std::thread::sleep(Duration::from_secs(1));
        let (wake1, poll1) = worker_activity(&control);
        assert!(wake0 > 0, "{extra:?}: the I/O woke the worker");
        // Generous: a spinning thread makes millions of passes a second.
        assert!(wake1 - wake0 <= 2, "{extra:?}: {wake0} -> {wake1} wake-ups");
        assert!(
            poll1 - poll0 <= 10_000,
            "{extra:?}: {poll0} -> {poll1} passes"
        );
        drop(fe);
    }
}

#[test]
fn polling_follows_the_setting() {
    let (d, _fe) = daemon_after_io(&["--poll-us", "0"], 100);
    let (wakeups, polls) = worker_activity(&d.control_socket());
    assert!(wakeups > 0);
    assert_eq!(polls, 0, "--poll-us 0 never polls");

    // A fixed window polls after every wake-up.
    let (d, _fe) = daemon_after_io(&["--poll-us", "50"], 100);
    let (_, polls) = worker_activity(&d.control_socket());
    assert!(polls > 0, "--poll-us 50 polls");

    // Adaptive polls after a run of I/O however slowly this machine wakes a thread: the
    // window grows when the frontend comes back within the bound as seen from epoll, and
    // a whole window is tried every so many wake-ups when it does not.
    let (d, _fe) = daemon_after_io(&["--poll-us", "adaptive"], 300);
    let (_, polls) = worker_activity(&d.control_socket());
    assert!(polls > 0, "--poll-us adaptive polls after 300 commands");
}

#[test]
fn bad_poll_settings_are_refused_with_the_field_named() {
    for bad in ["sometimes", "-1", "5000000"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vscsid"))
            .args(["--socket", "/nonexistent/s.sock", "--null", "1M"])
            .arg(format!("--poll-us={bad}"))
            .output()
            .expect("run vscsid");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: {err}");
        assert!(err.contains("--poll-us"), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
    }
}
