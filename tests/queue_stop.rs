//! Stopping a queue (GET_VRING_BASE) while a command is stuck on its medium (the LUN's
//! image is on a loop-mounted ext4 the test freezes). The answer comes once
//! `--stop-timeout-ms` has passed, not when the medium comes back; the ring is the
//! frontend's again from then on and the late completion never writes to it; with an
//! in-flight region, the command is served again when the queue restarts, exactly once.
//! Needs root, mkfs.ext4, mount and fsfreeze.

mod common;

use std::time::{Duration, Instant};

use common::ext4::{write_durably, Ext4};
use common::*;
use vm_memory::{Bytes, GuestAddress};
use vscsid::frontend::{ConnectOptions, ScsiFrontend, VirtioScsiRequest};

const Q: usize = 2;
const ABORT_TASK_SET: u32 = 1;

fn daemon_on(fs: &Ext4) -> Daemon {
    let image = fs.file("lun.img");
    write_durably(&image, &vec![0u8; 4 << 20]);
    let name = image.to_str().expect("path").to_string();
    Daemon::start(
        &[Disk {
            name: &name,
            size: 4 << 20,
            opts: "cache=none",
        }],
        &["--num-queues", "1", "--stop-timeout-ms", "500"],
    )
}

fn connect(d: &Daemon, inflight: bool) -> ScsiFrontend {
    let opts = ConnectOptions {
        queues: 3,
        memory_size: 48 << 20,
        inflight,
        ..ConnectOptions::default()
    };
    let mut fe = ScsiFrontend::connect(&d.socket, &opts).expect("connect");
    fe.timeout = Duration::from_secs(20);
    fe
}

fn write_req<'a>(cdb: &'a [u8], data: &'a [u8], tag: u64) -> VirtioScsiRequest<'a> {
    VirtioScsiRequest {
        lun: lun(0),
        tag,
        cdb,
        data_out: data,
        data_in_len: 0,
    }
}

/// The used ring as guest memory holds it: flags, index, every entry, avail_event.
fn used_ring(fe: &ScsiFrontend, q: usize) -> Vec<u8> {
    let v = &fe.conn.queues[q];
    let mut b = vec![0u8; 6 + 8 * usize::from(v.size)];
    fe.conn
        .mem
        .read_slice(&mut b, GuestAddress(v.used))
        .expect("used ring");
    b
}

/// Freezes the file system and leaves one write stuck on queue `Q`; returns its head.
fn stuck_write(fs: &Ext4, d: &Daemon, fe: &mut ScsiFrontend, data: &[u8]) -> u16 {
    good(
        &fe.command_on(Q, &write_req(&write16(0, 8), data, 1))
            .expect("first write"),
    );
    fs.freeze();
    let head = fe
        .submit(Q, &write_req(&write16(8, 8), data, 2))
        .expect("submit");
    wait_until(
        "the write reaches the kernel",
        Duration::from_secs(10),
        || d.io_waiting_in_kernel(),
    );
    head
}

/// Stops queue `Q`; the answer must not wait for the medium.
fn stop(fe: &mut ScsiFrontend) -> u16 {
    let t = Instant::now();
    let base = fe.conn.stop_queue(Q).expect("GET_VRING_BASE");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "GET_VRING_BASE waited for the stuck medium"
    );
    u16::try_from(base).expect("16-bit base")
}

#[test]
fn a_ring_handed_back_is_never_written_by_a_late_completion() {
    let fs = Ext4::new();
    let d = daemon_on(&fs);
    let _thaw = fs.thaw_on_drop();
    let mut fe = connect(&d, false);
    let data = pattern(3, 4096);
    stuck_write(&fs, &d, &mut fe, &data);
    stop(&mut fe);
    let handed_back = used_ring(&fe, Q);
    fs.thaw();
    // The command ends at its LUN once the kernel completes it: task management on the
    // control queue answers only then.
    assert_eq!(
        fe.tmf(ABORT_TASK_SET, lun(0), 0).expect("ABORT TASK SET"),
        0
    );
    assert!(!d.io_waiting_in_kernel());
    assert_eq!(
        used_ring(&fe, Q),
        handed_back,
        "the used ring changed after it was handed back"
    );
}

#[test]
fn with_an_in_flight_region_a_stopped_queue_resumes_its_command_exactly_once() {
    let fs = Ext4::new();
    let d = daemon_on(&fs);
    let _thaw = fs.thaw_on_drop();
    let mut fe = connect(&d, true);
    let data = pattern(4, 4096);
    let head = stuck_write(&fs, &d, &mut fe, &data);
    let base = stop(&mut fe);
    let used: u16 = fe
        .conn
        .mem
        .read_obj(GuestAddress(fe.conn.queues[Q].used + 2))
        .expect("used idx");
    assert_eq!(used, 1, "only the first write completed");
    fs.thaw();
    fe.conn
        .start_queue(Q, base, 128)
        .expect("restart the queue");
    let (h, r) = fe
        .complete(Q)
        .expect("the stuck write completes after the restart");
    assert_eq!(h, head);
    good(&r);
    good(
        &fe.command_on(Q, &cmd(0, &inquiry(96), &[], 96))
            .expect("INQUIRY"),
    );
    let used: u16 = fe
        .conn
        .mem
        .read_obj(GuestAddress(fe.conn.queues[Q].used + 2))
        .expect("used idx");
    assert_eq!(used, 3, "the stuck write completed once, then the INQUIRY");
    let r = fe
        .command_on(Q, &cmd(0, &read16(8, 8), &[], 4096))
        .expect("READ");
    good(&r);
    assert_eq!(r.data_in, data);
}
