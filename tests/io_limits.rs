//! Per-LUN I/O limits through the in-process frontend: a limited LUN completes what its
//! limit allows over 2 s (within 10 %), while an unlimited LUN on the same queue and
//! worker completes many more in the same time; `vscsid ctl set` changes the rate at run
//! time and `luns` shows it; a bandwidth limit holds; task management ends commands held
//! back by a limit at once; stopping a queue lets them go at once; a connection that drops
//! with held-back commands leaves the LUN with nothing in flight.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use vscsid::frontend::{ScsiFrontend, VirtioScsiRequest};

const Q: usize = 2;
/// Commands each LUN keeps outstanding during a measurement.
const DEPTH: usize = 8;
/// virtio-scsi response ABORTED.
const ABORTED: u8 = 2;

/// A daemon with two null LUNs (LUN 0 with `limits`, LUN 1 without) on one request queue
/// (one worker), and its control socket.
fn start(limits: &str, extra: &[&str]) -> (Daemon, PathBuf, ScsiFrontend) {
    start_queues(1, limits, extra)
}

/// [`start`] with `queues` request queues, each on its own worker thread.
fn start_queues(queues: u16, limits: &str, extra: &[&str]) -> (Daemon, PathBuf, ScsiFrontend) {
    let limited = format!("64M,{limits}");
    let n = queues.to_string();
    let mut args = vec![
        "--num-queues",
        &n,
        "--threads",
        &n,
        "--null",
        &limited,
        "--null",
        "64M",
        "--control",
        "{dir}/control.sock",
    ];
    args.extend_from_slice(extra);
    let d = Daemon::start(&[], &args);
    let control = d.control_socket();
    let fe = d.connect(queues);
    (d, control, fe)
}

/// Keeps `DEPTH` READs of `blocks` blocks outstanding on each LUN of `luns` for `span`;
/// returns how many completed GOOD per LUN within it (bounded in time and count; the
/// commands still out at the end are waited for, not counted).
fn measure(fe: &mut ScsiFrontend, luns: &[u16], blocks: u32, span: Duration) -> Vec<u64> {
    measure_on(fe, &[Q], luns, blocks, span)
}

/// [`measure`] with `DEPTH` commands per LUN on each of `queues`, served in turn.
fn measure_on(
    fe: &mut ScsiFrontend,
    queues: &[usize],
    luns: &[u16],
    blocks: u32,
    span: Duration,
) -> Vec<u64> {
    let len = blocks * 512;
    let cdb = read16(0, blocks);
    let mut out: HashMap<(usize, u16), u16> = HashMap::new(); // (queue, head) -> LUN
    let mut outstanding = vec![vec![0usize; luns.len()]; queues.len()];
    let mut done = vec![0u64; luns.len()];
    let start = Instant::now();
    let end = start + span;
    for turn in 0..10_000_000usize {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let qi = turn % queues.len();
        let q = queues[qi];
        for (i, &l) in luns.iter().enumerate() {
            while outstanding[qi][i] < DEPTH {
                let head = fe.submit(q, &cmd(l, &cdb, &[], len)).expect("submit");
                out.insert((q, head), l);
                outstanding[qi][i] += 1;
            }
        }
        let (head, r) = fe.complete(q).expect("a completion within the timeout");
        let l = out.remove(&(q, head)).expect("known head");
        let i = luns.iter().position(|&x| x == l).expect("lun");
        outstanding[qi][i] -= 1;
        good(&r);
        if Instant::now() <= end {
            done[i] += 1;
        }
    }
    // Let what is still out finish (bounded by the frontend's timeout each).
    for (qi, &q) in queues.iter().enumerate() {
        for _ in 0..outstanding[qi].iter().sum::<usize>() {
            let (head, _) = fe.complete(q).expect("the rest completes");
            out.remove(&(q, head));
        }
    }
    eprintln!("completed per LUN {luns:?} in {span:?}: {done:?}");
    done
}

fn within_10_percent(got: u64, want: f64) -> bool {
    let g = got as f64;
    g >= want * 0.9 && g <= want * 1.1
}

#[test]
fn iops_hold_on_one_lun_while_another_on_the_same_worker_goes() {
    let (_d, control, mut fe) = start("iops=200", &[]);
    let got = measure(&mut fe, &[0, 1], 8, Duration::from_secs(2));
    // 200 a second, plus what the bucket holds at the start (a tenth of a second's worth,
    // and the command that finds it exactly full).
    let want = 2.0 * 200.0 + 21.0;
    assert!(
        within_10_percent(got[0], want),
        "LUN 0: {got:?}, want {want}"
    );
    assert!(
        got[1] > 4 * got[0],
        "the unlimited LUN on the same worker must not wait: {got:?}"
    );

    // `luns` shows the limit; `set` changes it at run time.
    let (ok, table, err) = ctl(&control, &["luns"]);
    assert!(ok, "{err}");
    assert!(table.contains("limits iops=200"), "{table}");
    let (ok, said, err) = ctl(&control, &["set", "0:0", "iops=500"]);
    assert!(ok, "{err}");
    assert_eq!(said.trim(), "ok 0:0 iops=500");
    let got = measure(&mut fe, &[0], 8, Duration::from_secs(2));
    let want = 2.0 * 500.0 + 51.0;
    assert!(
        within_10_percent(got[0], want),
        "after set: {got:?}, want {want}"
    );

    // iops=0 removes the limit.
    let (ok, said, err) = ctl(&control, &["set", "0:0", "iops=0"]);
    assert!(ok, "{err}");
    assert_eq!(said.trim(), "ok 0:0 unlimited");
    let got = measure(&mut fe, &[0], 8, Duration::from_secs(1));
    assert!(got[0] > 2 * 500, "unlimited again: {got:?}");

    // Refusals name the key; nothing changes.
    let (ok, _, err) = ctl(&control, &["set", "0:0", "iops_read=10", "iops=5"]);
    assert!(!ok && err.contains("iops_read:"), "{err}");
    let (ok, _, err) = ctl(&control, &["set", "0:0", "speed=1"]);
    assert!(!ok && err.contains("speed:"), "{err}");
    let (ok, _, err) = ctl(&control, &["set", "0:7", "iops=5"]);
    assert!(!ok && err.contains("no LUN"), "{err}");
    let (ok, json, err) = ctl(&control, &["--json", "luns"]);
    assert!(ok, "{err}");
    assert!(json.contains(r#""limits":{}"#), "{json}");

    // A LUN added at run time takes limits in its spec.
    let (ok, _, err) = ctl(
        &control,
        &["add", "null", "16M,iops=50,bw_write=2M", "--lun", "5"],
    );
    assert!(ok, "{err}");
    let (ok, table, err) = ctl(&control, &["luns"]);
    assert!(ok, "{err}");
    assert!(table.contains("limits iops=50 bw_write=2M"), "{table}");
    let (ok, _, err) = ctl(&control, &["add", "null", "16M,iops=fast", "--lun", "6"]);
    assert!(!ok && err.contains("iops:"), "{err}");
}

#[test]
fn one_limit_holds_across_queues_on_different_workers() {
    let (_d, _control, mut fe) = start_queues(2, "iops=200", &[]);
    let got = measure_on(&mut fe, &[Q, Q + 1], &[0, 1], 8, Duration::from_secs(2));
    let want = 2.0 * 200.0 + 21.0;
    assert!(
        within_10_percent(got[0], want),
        "LUN 0: {got:?}, want {want}"
    );
    assert!(got[1] > 4 * got[0], "{got:?}");
}

#[test]
fn sigterm_lets_held_back_commands_go() {
    let (mut d, _control, mut fe) = start("iops=1", &[]);
    fe.timeout = Duration::from_secs(10);
    let heads = submit_tagged(&mut fe, 6, 600);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let pid = i32::try_from(d.child.id()).expect("pid");
    // SAFETY: kill(2) sends SIGTERM to the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let got = collect(&mut fe, heads.len());
    assert!(heads.iter().all(|h| got.get(h) == Some(&0)), "{got:?}");
    // The limit would let the next one go about 1 s after the first.
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "the drain waited for the limit: {:?}",
        t.elapsed()
    );
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn bandwidth_holds() {
    // With busy polling: a waiting command's time comes while the worker polls.
    let (_d, control, mut fe) = start("bw=4M", &["--poll-us", "200"]);
    // 64 KiB reads: 4 MiB a second is 64 of them.
    let got = measure(&mut fe, &[0, 1], 128, Duration::from_secs(2));
    let bytes = got[0] * 64 * 1024;
    let want = (2.0 * 4.0 + 0.4) * (1 << 20) as f64;
    assert!(
        within_10_percent(bytes, want),
        "LUN 0 moved {bytes} bytes ({got:?}), want {want}"
    );
    assert!(got[1] > 4 * got[0], "{got:?}");
    let (ok, table, err) = ctl(&control, &["luns"]);
    assert!(ok, "{err}");
    assert!(table.contains("limits bw=4M"), "{table}");
    // A read limit leaves writes alone.
    let (ok, said, err) = ctl(&control, &["set", "0:0", "bw=0", "bw_read=1M"]);
    assert!(ok, "{err}");
    assert_eq!(said.trim(), "ok 0:0 bw_read=1M");
}

/// Submits `n` READs to LUN 0 tagged `first..`; returns their heads.
fn submit_tagged(fe: &mut ScsiFrontend, n: u64, first: u64) -> Vec<u16> {
    let cdb = read16(0, 8);
    (first..first + n)
        .map(|tag| {
            let req = VirtioScsiRequest {
                lun: lun(0),
                tag,
                cdb: &cdb,
                data_out: &[],
                data_in_len: 4096,
            };
            fe.submit(Q, &req).expect("submit")
        })
        .collect()
}

/// Collects `n` completions (bounded by the frontend's timeout); returns their responses
/// by head.
fn collect(fe: &mut ScsiFrontend, n: usize) -> HashMap<u16, u8> {
    (0..n)
        .map(|_| {
            let (h, r) = fe.complete(Q).expect("completion");
            (h, r.response)
        })
        .collect()
}

#[test]
fn task_management_ends_held_back_commands_at_once() {
    // Two a second: after the first, each waits half a second.
    let (d, control, mut fe) = start("iops=2", &["--reconnect"]);
    fe.timeout = Duration::from_secs(10);
    let first = submit_tagged(&mut fe, 1, 100);
    let r = collect(&mut fe, 1);
    assert_eq!(r.get(&first[0]), Some(&0));

    // ABORT TASK of one held-back command: only that one ends, ABORTED, at once.
    let heads = submit_tagged(&mut fe, 6, 200);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    assert_eq!(fe.tmf(0, lun(0), 203).unwrap(), 0);
    let (h, r) = fe.complete(Q).expect("the aborted one");
    assert_eq!((h, r.response), (heads[3], ABORTED));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    // ABORT TASK SET: the rest end at once (some may have gone in the meantime).
    let t = Instant::now();
    assert_eq!(fe.tmf(1, lun(0), 0).unwrap(), 0);
    let got = collect(&mut fe, 5);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let aborted = got.values().filter(|&&c| c == ABORTED).count();
    assert!(aborted >= 3, "{got:?}");
    assert!(got.values().all(|&c| c == 0 || c == ABORTED), "{got:?}");

    // LOGICAL UNIT RESET likewise.
    submit_tagged(&mut fe, 6, 300);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    assert_eq!(fe.tmf(5, lun(0), 0).unwrap(), 0);
    let got = collect(&mut fe, 6);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        got.values().filter(|&&c| c == ABORTED).count() >= 4,
        "{got:?}"
    );

    // Commands held back when the connection drops end with it: nothing stays in flight.
    submit_tagged(&mut fe, 8, 400);
    std::thread::sleep(Duration::from_millis(50));
    drop(fe);
    wait_until(
        "no command in flight after the disconnect",
        Duration::from_secs(10),
        || {
            let (ok, json, _) = ctl(&control, &["--json", "luns"]);
            ok && json.matches(r#""in_flight":0"#).count() == 2
        },
    );
    // The daemon serves the next connection.
    let mut fe = d.connect(1);
    fe.timeout = Duration::from_secs(10);
    good(&fe.command(&cmd(1, &read16(0, 1), &[], 512)).unwrap());
}

#[test]
fn stopping_a_queue_lets_held_back_commands_go() {
    // One a second: the 5 held back would take 5 s; the stop waits for none of that.
    let (_d, _control, mut fe) = start("iops=1", &["--stop-timeout-ms", "8000"]);
    fe.timeout = Duration::from_secs(10);
    let heads = submit_tagged(&mut fe, 6, 500);
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    fe.conn.stop_queue(Q).expect("GET_VRING_BASE");
    // The limit would let the next one go about 1 s after the first.
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "the stop waited for the limit: {:?}",
        t.elapsed()
    );
    // Every command was answered, GOOD, before the ring was handed back.
    let got = collect(&mut fe, heads.len());
    assert!(heads.iter().all(|h| got.get(h) == Some(&0)), "{got:?}");
}
