//! Persistent reservations on a disk two daemons share (two VMs of a cluster): each
//! daemon is one I_T nexus, the reservation state lives in a state file both open. Real
//! daemons, real vhost-user connections from the in-process frontend.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::ext4::{write_durably, Ext4};
use common::*;
use vscsid::frontend::{CmdResponse, ScsiFrontend, VirtioScsiRequest};

const RESERVATION_CONFLICT: u8 = 0x18;
const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const PREEMPT_AND_ABORT: u8 = 5;
const EXCLUSIVE_ACCESS: u8 = 3;
const WRITE_EXCLUSIVE: u8 = 1;

/// A daemon serving `image` (shared) as LUN 0, keeping reservations in `state`.
fn node(image: &Path, state: &Path, id: &str) -> Daemon {
    let image = image.to_str().unwrap().to_string();
    Daemon::start(
        &[Disk {
            name: &image,
            size: 8 << 20,
            opts: "shared,cache=none",
        }],
        &["--state-dir", state.to_str().unwrap(), "--initiator-id", id],
    )
}

fn pr_out(sa: u8, kind: u8) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5f;
    c[1] = sa;
    c[2] = kind;
    c[8] = 24;
    c
}

fn pr_params(key: u64, sa_key: u64, aptpl: bool) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    p
}

fn pr_in(sa: u8) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x5e;
    c[1] = sa;
    c[7..9].copy_from_slice(&512u16.to_be_bytes());
    c
}

fn out(fe: &mut ScsiFrontend, sa: u8, kind: u8, key: u64, sa_key: u64, aptpl: bool) -> CmdResponse {
    let p = pr_params(key, sa_key, aptpl);
    fe.command(&cmd(0, &pr_out(sa, kind), &p, 0))
        .expect("PR OUT")
}

/// The registered keys (READ KEYS).
fn keys(fe: &mut ScsiFrontend) -> Vec<u64> {
    let r = fe.command(&cmd(0, &pr_in(0), &[], 512)).expect("READ KEYS");
    good(&r);
    let len = u32::from_be_bytes(r.data_in[4..8].try_into().unwrap()) as usize;
    r.data_in[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

/// The reservation (READ RESERVATION): holder's key and type.
fn reservation(fe: &mut ScsiFrontend) -> Option<(u64, u8)> {
    let r = fe
        .command(&cmd(0, &pr_in(1), &[], 512))
        .expect("READ RESERVATION");
    good(&r);
    (u32::from_be_bytes(r.data_in[4..8].try_into().unwrap()) == 16).then(|| {
        (
            u64::from_be_bytes(r.data_in[8..16].try_into().unwrap()),
            r.data_in[21] & 0x0f,
        )
    })
}

fn write(fe: &mut ScsiFrontend, lba: u64, seed: u64) -> CmdResponse {
    let data = pattern(seed, 4096);
    fe.command(&cmd(0, &write16(lba, 8), &data, 0))
        .expect("WRITE")
}

fn read(fe: &mut ScsiFrontend, lba: u64) -> CmdResponse {
    fe.command(&cmd(0, &read16(lba, 8), &[], 4096))
        .expect("READ")
}

fn status(r: &CmdResponse) -> u8 {
    assert_eq!(r.response, 0, "virtio response {r:?}");
    r.status
}

/// A command after another nexus changed the reservations: the unit attention it is owed
/// first (each once), then the command's own answer.
fn after_attention(
    fe: &mut ScsiFrontend,
    ua: (u8, u8),
    mut run: impl FnMut(&mut ScsiFrontend) -> CmdResponse,
) -> CmdResponse {
    let r = run(fe);
    assert_eq!(sense(&r), (6, ua.0, ua.1), "unit attention first");
    run(fe)
}

#[test]
fn exclusive_access_fences_the_other_daemon() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = dir.path().join("cluster.img");
    let state = dir.path().join("state");
    let a = node(&image, &state, "iqn.2026-12.test:node-a");
    let b = node(&image, &state, "iqn.2026-12.test:node-b");
    let mut fa = a.connect(1);
    let mut fb = b.connect(1);
    good(&out(&mut fa, REGISTER, 0, 0, 0xa, false));
    good(&out(&mut fb, REGISTER, 0, 0, 0xb, false));
    assert_eq!(keys(&mut fb), vec![0xa, 0xb]);
    // A wrong key conflicts.
    assert_eq!(
        status(&out(&mut fa, RESERVE, EXCLUSIVE_ACCESS, 0xb, 0, false)),
        RESERVATION_CONFLICT
    );
    good(&out(&mut fa, RESERVE, EXCLUSIVE_ACCESS, 0xa, 0, false));
    assert_eq!(reservation(&mut fb), Some((0xa, EXCLUSIVE_ACCESS)));
    // The holder reads and writes; the other daemon's guest gets RESERVATION CONFLICT
    // for both, and INQUIRY still works.
    good(&write(&mut fa, 0, 1));
    good(&read(&mut fa, 0));
    assert_eq!(status(&write(&mut fb, 0, 2)), RESERVATION_CONFLICT);
    assert_eq!(status(&read(&mut fb, 0)), RESERVATION_CONFLICT);
    good(&fb.command(&cmd(0, &inquiry(96), &[], 96)).unwrap());
    let on_disk = std::fs::read(&image).unwrap();
    assert_eq!(
        &on_disk[..4096],
        &pattern(1, 4096)[..],
        "the fenced write did not land"
    );
    // B takes over: A loses its registration and is told so once, then is fenced.
    good(&out(
        &mut fb,
        PREEMPT_AND_ABORT,
        WRITE_EXCLUSIVE,
        0xb,
        0xa,
        false,
    ));
    let r = after_attention(&mut fa, (0x2a, 0x05), |fe| write(fe, 8, 3));
    assert_eq!(status(&r), RESERVATION_CONFLICT);
    assert_eq!(reservation(&mut fa), Some((0xb, WRITE_EXCLUSIVE)));
    // Write exclusive: A may still read, B writes.
    good(&read(&mut fa, 0));
    good(&write(&mut fb, 8, 4));
    assert_eq!(keys(&mut fa), vec![0xb]);
}

#[test]
fn preempt_and_abort_waits_for_the_other_daemons_commands() {
    let fs = Ext4::new();
    let image = fs.file("cluster.img");
    write_durably(&image, &vec![0u8; 8 << 20]);
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    let mut a = node(&image, &state, "iqn.2026-12.test:node-a");
    let b = node(&image, &state, "iqn.2026-12.test:node-b");
    let mut fa = a.connect(1);
    let mut fb = b.connect(1);
    good(&out(&mut fa, REGISTER, 0, 0, 0xa, false));
    good(&out(&mut fb, REGISTER, 0, 0, 0xb, false));
    good(&out(&mut fa, RESERVE, EXCLUSIVE_ACCESS, 0xa, 0, false));
    // A's write waits in the kernel (frozen file system) when B preempts and aborts.
    let thaw = fs.thaw_on_drop();
    fs.freeze();
    let data = pattern(5, 4096);
    let cdb = write16(0, 8);
    let req = VirtioScsiRequest {
        lun: lun(0),
        tag: 7,
        cdb: &cdb,
        data_out: &data,
        data_in_len: 0,
    };
    fa.submit(2, &req).expect("submit");
    wait_until(
        "A's write never reached the kernel",
        Duration::from_secs(10),
        || a.io_waiting_in_kernel(),
    );
    let p = pr_params(0xb, 0xa, false);
    let cdb = pr_out(PREEMPT_AND_ABORT, EXCLUSIVE_ACCESS);
    let preempt = VirtioScsiRequest {
        lun: lun(0),
        tag: 8,
        cdb: &cdb,
        data_out: &p,
        data_in_len: 0,
    };
    fb.submit(2, &preempt).expect("submit preempt");
    // While A's write is stuck, B's PREEMPT AND ABORT is not answered.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        fb.complete(2).is_none(),
        "answered before A's command ended"
    );
    drop(thaw);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some((_, r)) = fb.complete(2) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "PREEMPT AND ABORT never answered"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    good(&answer);
    // A's write ended (it was accepted before the preemption); A is fenced now.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fa.complete(2).is_none() {
        assert!(Instant::now() < deadline, "A's write never ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = after_attention(&mut fa, (0x2a, 0x05), |fe| write(fe, 0, 6));
    assert_eq!(status(&r), RESERVATION_CONFLICT);
    assert!(a.is_running());
}

#[test]
fn aptpl_state_survives_restarting_both_daemons_and_the_rest_does_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = dir.path().join("cluster.img");
    let state = dir.path().join("state");
    let mut a = node(&image, &state, "iqn.2026-12.test:node-a");
    let mut b = node(&image, &state, "iqn.2026-12.test:node-b");
    {
        let mut fa = a.connect(1);
        good(&out(&mut fa, REGISTER, 0, 0, 0xa, true));
        good(&out(&mut fa, RESERVE, WRITE_EXCLUSIVE, 0xa, 0, false));
        // REPORT CAPABILITIES: persistence is capable and active.
        let r = fa.command(&cmd(0, &pr_in(2), &[], 8)).unwrap();
        good(&r);
        assert_eq!((r.data_in[2] & 1, r.data_in[3] & 1), (1, 1));
    }
    // Both daemons go (killed: a power cut to the cluster) and come back.
    a.respawn();
    b.respawn();
    wait_until("daemons back", Duration::from_secs(10), || {
        a.socket.exists() && b.socket.exists()
    });
    let mut fb = reconnect(&b);
    assert_eq!(keys(&mut fb), vec![0xa]);
    assert_eq!(reservation(&mut fb), Some((0xa, WRITE_EXCLUSIVE)));
    assert_eq!(status(&write(&mut fb, 0, 1)), RESERVATION_CONFLICT);
    // Without APTPL the next power cycle forgets it.
    let mut fa = reconnect(&a);
    good(&out(&mut fa, REGISTER, 0, 0xa, 0xa, false));
    drop((fa, fb));
    a.respawn();
    b.respawn();
    let mut fb = reconnect(&b);
    assert_eq!(keys(&mut fb), Vec::<u64>::new());
    assert_eq!(reservation(&mut fb), None);
    good(&write(&mut fb, 0, 2));
}

#[test]
fn one_daemon_restarting_keeps_the_clusters_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = dir.path().join("cluster.img");
    let state = dir.path().join("state");
    let mut a = node(&image, &state, "iqn.2026-12.test:node-a");
    let b = node(&image, &state, "iqn.2026-12.test:node-b");
    {
        let mut fa = a.connect(1);
        good(&out(&mut fa, REGISTER, 0, 0, 0xa, false));
        good(&out(&mut fa, RESERVE, EXCLUSIVE_ACCESS, 0xa, 0, false));
    }
    // A restarts (an upgrade, a crash) while B runs: the LUN saw no power cycle, and A
    // comes back as the same nexus, still the holder.
    a.respawn();
    let mut fa = reconnect(&a);
    good(&write(&mut fa, 0, 1));
    let mut fb = b.connect(1);
    assert_eq!(status(&write(&mut fb, 0, 2)), RESERVATION_CONFLICT);
    assert_eq!(keys(&mut fb), vec![0xa]);
}

#[test]
fn a_shared_disk_without_a_state_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = dir.path().join("d.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vscsid"))
        .args(["--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--disk")
        .arg(format!("{},shared", image.display()))
        .env_remove("STATE_DIRECTORY")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--state-dir"), "{err}");
}

/// Connects again (bounded): a restarted daemon accepts once it listens.
fn reconnect(d: &Daemon) -> ScsiFrontend {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.connect(1)));
        match fe {
            Ok(fe) => return fe,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => std::panic::resume_unwind(e),
        }
    }
}

#[test]
fn the_operator_sees_the_state_both_daemons_share() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = dir.path().join("cluster.img");
    let state = dir.path().join("state");
    let a = node(&image, &state, "iqn.2026-12.test:node-a");
    let image_arg = image.to_str().unwrap().to_string();
    let b = Daemon::start(
        &[Disk {
            name: &image_arg,
            size: 8 << 20,
            opts: "shared,cache=none",
        }],
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--initiator-id",
            "iqn.2026-12.test:node-b",
            "--control",
            "{dir}/control.sock",
        ],
    );
    let control = b.path("control.sock");
    wait_until("control socket", Duration::from_secs(10), || {
        control.exists()
    });
    let (ok, text, err) = ctl(&control, &["reservations", "0:0"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("this daemon: iqn.2026-12.test:node-b"),
        "{text}"
    );
    assert!(text.contains("not reserved"), "{text}");
    let mut fa = a.connect(1);
    good(&out(&mut fa, REGISTER, 0, 0, 0x1234, false));
    good(&out(&mut fa, RESERVE, WRITE_EXCLUSIVE, 0x1234, 0, false));
    // B's daemon reports what A's guest did.
    let (ok, text, err) = ctl(&control, &["reservations", "0:0"]);
    assert!(ok, "{err}");
    assert!(
        text.contains("registered iqn.2026-12.test:node-a key 0x1234"),
        "{text}"
    );
    assert!(
        text.contains("reserved WriteExclusive by iqn.2026-12.test:node-a"),
        "{text}"
    );
    let (ok, json, _) = ctl(&control, &["--json", "reservations", "0:0"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
    assert_eq!(v["state"]["registrations"][0]["key"], 0x1234);
    assert_eq!(v["state"]["generation"], 1);
}

#[test]
fn a_shared_disk_added_while_the_daemon_runs_is_served_under_the_filters() {
    let dir = tempfile::tempdir().expect("tmp");
    let image = dir.path().join("added.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 << 20))
        .unwrap();
    let state = dir.path().join("state");
    let mut d = Daemon::start(
        &[Disk {
            name: "root.img",
            size: 4 << 20,
            opts: "",
        }],
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--control",
            "{dir}/control.sock",
            "--sandbox",
            "on",
        ],
    );
    let control = d.path("control.sock");
    wait_until("control socket", Duration::from_secs(10), || {
        control.exists()
    });
    let spec = format!("{},shared", image.display());
    let (ok, out, err) = ctl(&control, &["add", "disk", &spec]);
    assert!(ok, "{out} {err}");
    let (ok, text, err) = ctl(&control, &["reservations", "0:1"]);
    assert!(ok, "{err}");
    assert!(text.contains("not reserved"), "{text}");
    // The reservation thread of the new LUN runs under its filter: still alive after a
    // few of its periods.
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.is_running());
}

#[test]
fn a_reload_adding_a_shared_disk_is_served_under_the_filters() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    let config = dir.path().join("vscsid.toml");
    let image = dir.path().join("shared.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 << 20))
        .unwrap();
    std::fs::write(&config, "").unwrap();
    let mut d = Daemon::start(
        &[Disk {
            name: "root.img",
            size: 4 << 20,
            opts: "",
        }],
        &[
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--sandbox",
            "on",
        ],
    );
    // SIGHUP reads the configuration again on the signal thread, under its filter.
    std::fs::write(
        &config,
        format!(
            "[[lun]]\nlun = 5\npath = \"{}\"\nshared = true\n",
            image.display()
        ),
    )
    .unwrap();
    // SAFETY: kill() sends a signal to the daemon this test started.
    assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) }, 0);
    let mut fe = d.connect(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = fe
            .command(&cmd(5, &test_unit_ready(), &[], 0))
            .expect("TEST UNIT READY");
        if (r.response, r.status) == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "LUN 5 never came: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = pr_params(0, 7, false);
    good(&fe.command(&cmd(5, &pr_out(REGISTER, 0), &p, 0)).unwrap());
    assert!(d.is_running());
}
