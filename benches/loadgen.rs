//! The load generator's command line:
//!
//!   cargo bench --bench loadgen -- --socket S --proto scsi|blk --rw randread --bs 4096 \
//!       --iodepth 32 --queues 1 --runtime 10 --size 1G [--backend-pid P] [--target-pid P]
//!       [--system NAME] [--workload NAME] [--idle SECS] [--start-at UNIX_SECS] [--spin]
//!
//! Prints one JSON object: system, workload, iops, bw_mib_s, lat_mean_us, lat_p99_us,
//! cpu_us_per_io (backend process CPU time per I/O, from /proc), kicks_per_io (kicks the
//! backend asked for), calls_per_io (notifications the backend sent: a guest's
//! interrupts), idle_cpu_pct (with --idle: the backend's CPU, % of one core, while
//! the generator stays connected without I/O for SECS after the workload). --start-at:
//! connect, then start the workload at that wall-clock time (generators run side by side).
//! Also over the run: target_cpu_us_per_io, target_busy_pct and target_top_thread_pct
//! (with --target-pid: a process the backend depends on, such as an iSCSI target on this
//! machine; the whole process and its busiest thread in % of one core), gen_cpu_us_per_io (the generator's own) and machine_busy_pct (% of all CPUs).
//! --spin: poll the used rings without sleeping and ask the device for no notifications
//! (a guest driver with polling queues), so the generator's wake-ups leave the round trip.
//!
//! With `--host-reference FILE` instead of `--socket`: the same workload's I/O shapes
//! straight on FILE with io_uring and O_DIRECT, no vhost-user in between (the limit
//! vscsid is measured against; `cpu_us_per_io` is then this process's own).

use std::path::PathBuf;
use std::time::Duration;

use vscsid::frontend::loadgen::{run, Args, Proto};

fn parse_args() -> Result<(Args, Option<PathBuf>), String> {
    let mut host_reference = None;
    let mut a = Args {
        socket: PathBuf::new(),
        proto: Proto::Scsi,
        rw: "randread".into(),
        bs: 4096,
        iodepth: 1,
        queues: 1,
        runtime: Duration::from_secs(10),
        size: 1 << 30,
        lun: 0,
        backend_pid: None,
        target_pid: None,
        system: "unknown".into(),
        workload: String::new(),
        idle: Duration::ZERO,
        start_at: None,
        spin: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--bench" {
            continue;
        }
        let mut v = || it.next().ok_or_else(|| format!("{k}: missing value"));
        match k.as_str() {
            "--socket" => a.socket = v()?.into(),
            "--host-reference" => host_reference = Some(PathBuf::from(v()?)),
            "--proto" => {
                a.proto = match v()?.as_str() {
                    "scsi" => Proto::Scsi,
                    "blk" => Proto::Blk,
                    o => return Err(format!("--proto: unknown '{o}'")),
                }
            }
            "--rw" => a.rw = v()?,
            "--bs" => a.bs = v()?.parse().map_err(|_| "--bs: not a number")?,
            "--iodepth" => a.iodepth = v()?.parse().map_err(|_| "--iodepth: not a number")?,
            "--queues" => a.queues = v()?.parse().map_err(|_| "--queues: not a number")?,
            "--runtime" => {
                a.runtime =
                    Duration::from_secs_f64(v()?.parse().map_err(|_| "--runtime: not a number")?)
            }
            "--size" => a.size = vscsid::config::parse_size(&v()?)?,
            "--lun" => a.lun = v()?.parse().map_err(|_| "--lun: not a number")?,
            "--backend-pid" => {
                a.backend_pid = Some(v()?.parse().map_err(|_| "--backend-pid: not a number")?)
            }
            "--target-pid" => {
                a.target_pid = Some(v()?.parse().map_err(|_| "--target-pid: not a number")?)
            }
            "--spin" => a.spin = true,
            "--system" => a.system = v()?,
            "--workload" => a.workload = v()?,
            "--start-at" => {
                let secs: f64 = v()?.parse().map_err(|_| "--start-at: not a number")?;
                a.start_at = Some(std::time::UNIX_EPOCH + Duration::from_secs_f64(secs))
            }
            "--idle" => {
                a.idle = Duration::from_secs_f64(v()?.parse().map_err(|_| "--idle: not a number")?)
            }
            o => return Err(format!("unknown argument {o}")),
        }
    }
    if a.socket.as_os_str().is_empty() && host_reference.is_none() {
        return Err("--socket (or --host-reference) is required".into());
    }
    if !matches!(a.rw.as_str(), "randread" | "randwrite" | "read" | "write") {
        return Err(format!("--rw: unknown '{}'", a.rw));
    }
    if a.workload.is_empty() {
        a.workload = format!("{}-{}k-qd{}", a.rw, a.bs / 1024, a.iodepth);
    }
    Ok((a, host_reference))
}

const USAGE: &str =
    "usage: loadgen --socket S|--host-reference FILE [--proto scsi|blk] [--rw randread|randwrite|read|write] \
[--bs BYTES] [--iodepth N] [--queues N] [--runtime SECS] [--size SIZE] [--lun N] \
[--backend-pid PID] [--target-pid PID] [--system NAME] [--workload NAME] [--idle SECS] [--start-at UNIX_SECS] [--spin]";

fn main() {
    // `cargo test --all-targets` and a bare `cargo bench` run every bench binary with no
    // workload arguments: there is nothing to measure then, so say how to use it and
    // succeed (tests/loadgen.rs exercises the engine itself).
    if std::env::args().skip(1).all(|a| a == "--bench") {
        println!("{USAGE}");
        return;
    }
    let (args, host_reference) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let result = match &host_reference {
        Some(file) => vscsid::frontend::host_reference::run(&args, file),
        None => run(&args),
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("loadgen: {}: {}: {e}", args.system, args.workload);
            std::process::exit(1);
        }
    }
}
