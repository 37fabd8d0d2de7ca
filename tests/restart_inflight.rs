//! A daemon killed with commands in flight, completed out of order: the frontend keeps the
//! in-flight region (INFLIGHT_SHMFD) and hands it to the next daemon, which serves the
//! unfinished commands again and only those: each command the guest sent completes
//! exactly once. One command is held by a frozen file system (its LUN's image is on a
//! loop-mounted ext4) while later ones on another LUN complete, then the daemon is killed
//! with SIGKILL. Needs root, mkfs.ext4, mount and fsfreeze.

mod common;

use std::time::Duration;

use common::ext4::{write_durably, Ext4};
use common::*;
use vm_memory::{Bytes, GuestAddress};
use vscsid::frontend::{ConnectOptions, ScsiFrontend, VirtioScsiRequest};

const MIB: u64 = 1 << 20;
const Q: usize = 2;

fn options() -> ConnectOptions {
    ConnectOptions {
        queues: 3,
        memory_size: 48 << 20,
        inflight: true,
        ..ConnectOptions::default()
    }
}

fn write_req<'a>(l: u16, cdb: &'a [u8], data: &'a [u8], tag: u64) -> VirtioScsiRequest<'a> {
    VirtioScsiRequest {
        lun: lun(l),
        tag,
        cdb,
        data_out: data,
        data_in_len: 0,
    }
}

fn used_idx(fe: &ScsiFrontend, q: usize) -> u16 {
    fe.conn
        .mem
        .read_obj(GuestAddress(fe.conn.queues[q].used + 2))
        .expect("used index")
}

fn read_back(fe: &mut ScsiFrontend, l: u16, lba: u64, len: u32) -> Vec<u8> {
    let r = fe
        .command(&cmd(l, &read16(lba, len / 512), &[], len))
        .expect("READ");
    good(&r);
    r.data_in
}

#[test]
fn commands_in_flight_at_a_kill_complete_exactly_once_on_the_next_daemon() {
    let fs = Ext4::new();
    let held_image = fs.file("held.img");
    write_durably(&held_image, &vec![0u8; 4 << 20]);
    let held_name = held_image.to_str().expect("path").to_string();
    let mut d = Daemon::start(
        &[
            Disk {
                name: &held_name,
                size: 4 * MIB,
                opts: "cache=none",
            },
            Disk {
                name: "free.img",
                size: 4 * MIB,
                opts: "",
            },
        ],
        &["--num-queues", "1"],
    );
    let _thaw = fs.thaw_on_drop();
    let mut fe = ScsiFrontend::connect(&d.socket, &options()).expect("connect");
    fe.timeout = Duration::from_secs(20);
    assert!(
        fe.conn.inflight.is_some(),
        "the daemon gave an in-flight region"
    );

    // The first command is held by the frozen file system ...
    let held = pattern(11, 8192);
    fs.freeze();
    let held_head = fe
        .submit(Q, &write_req(0, &write16(16, 16), &held, 1))
        .expect("submit");
    wait_until(
        "the held write reaches the kernel",
        Duration::from_secs(10),
        || d.io_waiting_in_kernel(),
    );
    // ... while later ones, on the other LUN, complete.
    let later = pattern(12, 4096);
    for i in 0..4u64 {
        let r = fe
            .command_on(Q, &write_req(1, &write16(i * 8, 8), &later, 10 + i))
            .expect("later write");
        good(&r);
    }
    let used_before = used_idx(&fe, Q);
    assert_eq!(
        used_before, 4,
        "the four later writes completed, the held one not"
    );

    // The daemon dies; its process ends once the file system lets the write go.
    d.child.kill().expect("SIGKILL");
    fs.thaw();
    assert!(
        d.wait_exit(Duration::from_secs(20)).is_some() || !d.is_running(),
        "the killed daemon ended"
    );
    d.respawn();
    fe.conn.reattach(&d.socket, &options()).expect("reattach");

    // The held write completes once, on the new daemon.
    let (head, r) = fe.complete(Q).expect("the held write completes");
    assert_eq!(head, held_head);
    good(&r);
    assert_eq!(
        used_idx(&fe, Q),
        used_before + 1,
        "exactly one more used entry"
    );
    // Nothing else was run again: the next used entry is the next command's.
    let r = fe
        .command_on(Q, &cmd(0, &inquiry(96), &[], 96))
        .expect("INQUIRY");
    good(&r);
    assert_eq!(used_idx(&fe, Q), used_before + 2);
    assert_eq!(read_back(&mut fe, 0, 16, 8192), held);
    for i in 0..4u64 {
        assert_eq!(read_back(&mut fe, 1, i * 8, 4096), later);
    }
}
