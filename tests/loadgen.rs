//! The load generator's engine against real backends: it must complete I/O and report
//! sane numbers (no timing thresholds: speed is for benches/compare.sh to measure).

mod common;

use std::time::Duration;

use common::*;
use vscsid::frontend::loadgen::{run, Args, Proto};

fn args(socket: &std::path::Path, rw: &str, bs: u64, qd: usize, pid: u32) -> Args {
    Args {
        socket: socket.to_path_buf(),
        proto: Proto::Scsi,
        rw: rw.into(),
        bs,
        iodepth: qd,
        queues: 1,
        runtime: Duration::from_millis(300),
        size: 64 << 20,
        lun: 0,
        backend_pid: Some(pid),
        target_pid: Some(pid),
        system: "test".into(),
        workload: format!("{rw}-{qd}"),
        idle: Duration::ZERO,
        start_at: None,
        spin: false,
    }
}

fn field(json: &str, key: &str) -> f64 {
    let at = json.find(&format!("\"{key}\": ")).expect(key) + key.len() + 4;
    json[at..]
        .split([',', '}'])
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("number")
}

/// vscsid with one 64 MiB file LUN (cache=none) on one queue, as each workload test uses.
fn one_disk_daemon() -> Daemon {
    Daemon::start(
        &[Disk {
            name: "a.img",
            size: 64 << 20,
            opts: "cache=none",
        }],
        &["--num-queues", "1", "--reconnect"],
    )
}

#[test]
fn drives_vscsid_with_every_workload() {
    let d = one_disk_daemon();
    for (rw, bs, qd) in [
        ("randread", 4096, 1),
        ("randwrite", 4096, 32),
        ("read", 131072, 8),
        ("write", 65536, 4),
    ] {
        let out = run(&args(&d.socket, rw, bs, qd, d.child.id())).expect("load run");
        assert!(
            out.contains(&format!("\"workload\": \"{rw}-{qd}\"")),
            "{out}"
        );
        let iops = field(&out, "iops");
        assert!(iops > 0.0, "{out}");
        assert!(
            (field(&out, "bw_mib_s") - iops * bs as f64 / 1048576.0).abs() < 1.0,
            "{out}"
        );
        assert!(
            field(&out, "lat_p99_us") >= field(&out, "lat_mean_us") * 0.5,
            "{out}"
        );
        assert!(field(&out, "cpu_us_per_io") >= 0.0, "{out}");
        // The daemon named as the target too: the same process's CPU over (nearly) the
        // same window, so the backend's figure within a clock tick (10 ms) or two spread
        // over the run's I/Os (about 0.3 s of them).
        let target = field(&out, "target_cpu_us_per_io");
        let backend = field(&out, "cpu_us_per_io");
        let ios = field(&out, "iops") * 0.3;
        assert!(target > 0.0, "{out}");
        assert!(
            (target - backend).abs() <= 20_000.0 / ios.max(1.0) + 0.01,
            "{out}"
        );
        assert!(field(&out, "target_busy_pct") > 0.0, "{out}");
        assert!(field(&out, "gen_cpu_us_per_io") > 0.0, "{out}");
        let machine = field(&out, "machine_busy_pct");
        assert!(machine > 0.0 && machine <= 100.0, "{out}");
    }
    // The writes went to the file.
    assert!(allocated_bytes(&d.path("a.img")) > 0);
}

#[test]
fn a_polling_generator_asks_for_no_notifications() {
    let d = one_disk_daemon();
    for qd in [1, 32] {
        let mut a = args(&d.socket, "randread", 4096, qd, d.child.id());
        a.spin = true;
        let out = run(&a).expect("load run");
        assert!(field(&out, "iops") > 0.0, "{out}");
        // With EVENT_IDX and the used event left where it was, the device notifies once
        // when its used index passes it, then only after the index wraps (65 536 I/Os).
        let ios = field(&out, "iops") * 0.3;
        assert!(
            field(&out, "calls_per_io") * ios <= 2.0 + ios / 65536.0,
            "{out}"
        );
        // Without polling the same device notifies (the generator sleeps for it).
        a.spin = false;
        let out = run(&a).expect("load run");
        assert!(field(&out, "calls_per_io") > 0.0, "{out}");
    }
}

#[test]
fn reports_failed_io_as_an_error() {
    // A read-only LUN refuses writes: the run must fail, not report a speed.
    let d = Daemon::start(
        &[Disk {
            name: "ro.img",
            size: 64 << 20,
            opts: "readonly",
        }],
        &["--num-queues", "1"],
    );
    let err = run(&args(&d.socket, "randwrite", 4096, 4, d.child.id())).unwrap_err();
    assert!(err.contains("failed"), "{err}");
}
