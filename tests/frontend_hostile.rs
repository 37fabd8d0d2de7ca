//! Hostile guests: descriptor chains and requests no well-behaved driver sends. After each,
//! the daemon must have answered (or returned the chain) and must keep serving.

mod common;

use std::time::Duration;

use common::*;
use vm_memory::{Bytes, GuestAddress};
use vscsid::frontend::rng::Rng;
use vscsid::frontend::{
    ScsiFrontend, VirtioScsiRequest, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

const MIB: u64 = 1 << 20;
/// The queue hostile chains go to; queue 2 stays well-formed to check the daemon serves.
const RAW_Q: usize = 3;
const W: u16 = VRING_DESC_F_WRITE;
const N: u16 = VRING_DESC_F_NEXT;

fn daemon() -> Daemon {
    Daemon::start(
        &[Disk {
            name: "a.img",
            size: 64 * MIB,
            opts: "",
        }],
        &["--num-queues", "2"],
    )
}

/// Guest scratch area for raw requests: a valid INQUIRY header at `hdr`, a response
/// buffer at `resp`, data at `data`.
struct Scratch {
    hdr: u64,
    resp: u64,
    data: u64,
}

fn scratch(fe: &mut ScsiFrontend, cdb: &[u8]) -> Scratch {
    let base = fe.conn.alloc(64 * 1024, 4096).expect("scratch");
    let mut h = [0u8; 51];
    h[0] = 1;
    h[19..19 + cdb.len()].copy_from_slice(cdb);
    fe.conn
        .mem
        .write_slice(&h, GuestAddress(base))
        .expect("hdr");
    fe.conn
        .mem
        .write_slice(&[0xffu8; 108], GuestAddress(base + 1024))
        .expect("resp");
    Scratch {
        hdr: base,
        resp: base + 1024,
        data: base + 8192,
    }
}

/// Sends `descs` on the raw queue and waits for the answer.
fn raw(fe: &mut ScsiFrontend, descs: &[(u64, u32, u16, u16)]) -> Option<(u16, u32)> {
    raw_chain(fe, RAW_Q, descs)
}

/// One descriptor of an indirect table as it sits in guest memory (virtq_desc: address,
/// length, flags, next; little-endian).
fn table_desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0..8].copy_from_slice(&addr.to_le_bytes());
    e[8..12].copy_from_slice(&len.to_le_bytes());
    e[12..14].copy_from_slice(&flags.to_le_bytes());
    e[14..16].copy_from_slice(&next.to_le_bytes());
    e
}

fn response_byte(fe: &ScsiFrontend, s: &Scratch) -> u8 {
    let mut r = [0u8; 108];
    fe.conn
        .mem
        .read_slice(&mut r, GuestAddress(s.resp))
        .expect("read resp");
    r[11]
}

#[test]
fn buffers_outside_guest_memory() {
    let d = daemon();
    let mut fe = d.connect(2);
    let s = scratch(&mut fe, &inquiry(96));
    let outside = fe.conn.memory_size() + 0x1000;
    // Response buffer outside memory: nothing can be written, the chain still comes back.
    let u = raw(&mut fe, &[(s.hdr, 51, N, 1), (outside, 108, W, 0)]).expect("chain returned");
    assert_eq!(u.1, 0);
    // Header outside memory: the response says FAILURE.
    let u = raw(&mut fe, &[(outside, 51, N, 1), (s.resp, 108, W, 0)]).expect("chain returned");
    assert_eq!(u.1, 108);
    assert_eq!(response_byte(&fe, &s), 9);
    // Address + length overflowing u64.
    let u = raw(&mut fe, &[(s.hdr, 51, N, 1), (u64::MAX - 10, 108, W, 0)]).expect("chain returned");
    assert_eq!(u.1, 0);
    // A data-in buffer straddling the end of guest memory for a READ: CHECK CONDITION,
    // and nothing written outside.
    let s2 = scratch(&mut fe, &read16(0, 8));
    let edge = fe.conn.memory_size() - 1024;
    let u = raw(
        &mut fe,
        &[
            (s2.hdr, 51, N, 1),
            (s2.resp, 108, W | N, 2),
            (edge, 4096, W, 0),
        ],
    )
    .expect("returned");
    assert!(u.1 >= 108);
    let mut r = [0u8; 108];
    fe.conn
        .mem
        .read_slice(&mut r, GuestAddress(s2.resp))
        .unwrap();
    assert_eq!(
        r[10], 2,
        "READ into a buffer leaving guest memory must fail"
    );
    assert_serving(&mut fe);
}

#[test]
fn write_from_outside_guest_memory_fails_and_leaves_the_disk_alone() {
    let d = daemon();
    let mut fe = d.connect(2);
    let s = scratch(&mut fe, &write16(0, 1));
    let outside = fe.conn.memory_size() + 4096;
    let u = raw(
        &mut fe,
        &[(s.hdr, 51, N, 1), (outside, 512, N, 2), (s.resp, 108, W, 0)],
    )
    .expect("returned");
    assert_eq!(u.1, 108);
    let mut r = [0u8; 108];
    fe.conn
        .mem
        .read_slice(&mut r, GuestAddress(s.resp))
        .unwrap();
    assert_eq!((r[11], r[10]), (0, 2));
    assert_eq!(std::fs::read(d.path("a.img")).unwrap()[..512], [0u8; 512]);
    assert_serving(&mut fe);
}

#[test]
fn looping_and_overlong_chains() {
    let d = daemon();
    let mut fe = d.connect(2);
    let s = scratch(&mut fe, &inquiry(96));
    // A descriptor whose next points at itself.
    assert!(raw(&mut fe, &[(s.hdr, 51, N, 0)]).is_some());
    // Two descriptors pointing at each other, the second writable.
    assert!(raw(&mut fe, &[(s.hdr, 51, N, 1), (s.resp, 108, W | N, 0)]).is_some());
    // An indirect table of 2000 one-byte readable descriptors then a response: more
    // segments than any request may have; the answer is FAILURE.
    let table = fe.conn.alloc(16 * 2001, 16).unwrap();
    for i in 0..2000u64 {
        let e = table_desc(s.hdr, 1, N, (i + 1) as u16);
        fe.conn
            .mem
            .write_slice(&e, GuestAddress(table + 16 * i))
            .unwrap();
    }
    let e = table_desc(s.resp, 108, W, 0);
    fe.conn
        .mem
        .write_slice(&e, GuestAddress(table + 16 * 2000))
        .unwrap();
    let u = raw(&mut fe, &[(table, 16 * 2001, VRING_DESC_F_INDIRECT, 0)]).expect("returned");
    assert_eq!(u.1, 108);
    assert_eq!(response_byte(&fe, &s), 9);
    assert_serving(&mut fe);
}

#[test]
fn bad_indirect_tables() {
    let d = daemon();
    let mut fe = d.connect(2);
    let outside = fe.conn.memory_size() + 0x10000;
    // Indirect table outside guest memory.
    assert!(raw(&mut fe, &[(outside, 64, VRING_DESC_F_INDIRECT, 0)]).is_some());
    // Indirect table whose length is not a multiple of 16.
    let s = scratch(&mut fe, &inquiry(96));
    assert!(raw(&mut fe, &[(s.data, 17, VRING_DESC_F_INDIRECT, 0)]).is_some());
    // An indirect table that contains another indirect descriptor.
    let e = table_desc(s.data, 16, VRING_DESC_F_INDIRECT, 0);
    fe.conn.mem.write_slice(&e, GuestAddress(s.data)).unwrap();
    assert!(raw(&mut fe, &[(s.data, 16, VRING_DESC_F_INDIRECT, 0)]).is_some());
    assert_serving(&mut fe);
}

#[test]
fn short_headers_and_responses() {
    let d = daemon();
    let mut fe = d.connect(2);
    let s = scratch(&mut fe, &inquiry(96));
    // Request header shorter than virtio_scsi_cmd_req.
    let u = raw(&mut fe, &[(s.hdr, 20, N, 1), (s.resp, 108, W, 0)]).expect("returned");
    assert_eq!(u.1, 108);
    assert_eq!(response_byte(&fe, &s), 9);
    // Response buffer shorter than virtio_scsi_cmd_resp: nothing is written to it.
    fe.conn
        .mem
        .write_slice(&[0xffu8; 108], GuestAddress(s.resp))
        .unwrap();
    let u = raw(&mut fe, &[(s.hdr, 51, N, 1), (s.resp, 50, W, 0)]).expect("returned");
    assert_eq!(u.1, 0);
    let mut r = [0u8; 50];
    fe.conn
        .mem
        .read_slice(&mut r, GuestAddress(s.resp))
        .unwrap();
    assert!(r.iter().all(|&b| b == 0xff));
    // No writable descriptor at all.
    assert_eq!(raw(&mut fe, &[(s.hdr, 51, 0, 0)]).expect("returned").1, 0);
    // A readable descriptor after a writable one.
    let u = raw(
        &mut fe,
        &[
            (s.hdr, 51, N, 1),
            (s.resp, 108, W | N, 2),
            (s.data, 16, 0, 0),
        ],
    )
    .expect("returned");
    assert_eq!(u.1, 108);
    assert_eq!(response_byte(&fe, &s), 9);
    // Zero-length descriptors in the middle are harmless.
    let u = raw(
        &mut fe,
        &[
            (s.hdr, 51, N, 1),
            (s.data, 0, N, 2),
            (s.resp, 108, W | N, 3),
            (s.data, 96, W, 0),
        ],
    )
    .expect("returned");
    assert_eq!(u.1, 108 + 74);
    assert_eq!(response_byte(&fe, &s), 0);
    assert_serving(&mut fe);
}

#[test]
fn absurd_transfer_lengths_and_addresses() {
    let d = daemon();
    let mut fe = d.connect(2);
    // Data-in buffer smaller than the transfer: OVERRUN, nothing else.
    let r = fe.command(&cmd(0, &read16(0, 8), &[], 512)).unwrap();
    assert_eq!(r.response, 1);
    // WRITE with less data-out than the transfer: OVERRUN.
    let r = fe.command(&cmd(0, &write16(0, 8), &[1u8; 512], 0)).unwrap();
    assert_eq!(r.response, 1);
    // 0xFFFFFFFF blocks: LBA OUT OF RANGE; a huge transfer inside the disk: INVALID FIELD.
    assert_eq!(
        sense(&fe.command(&cmd(0, &read16(0, u32::MAX), &[], 512)).unwrap()),
        (5, 0x21, 0)
    );
    assert_eq!(
        sense(&fe.command(&cmd(0, &read16(0, 100_000), &[], 512)).unwrap()),
        (5, 0x24, 0)
    );
    // LBA near u64::MAX (overflow in lba + blocks).
    assert_eq!(
        sense(
            &fe.command(&cmd(0, &read16(u64::MAX - 1, 4), &[], 2048))
                .unwrap()
        ),
        (5, 0x21, 0)
    );
    // LUN address with byte 0 != 1, and a LUN field outside the flat space.
    for lun in [[2u8, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0x80, 0, 0, 0, 0, 0]] {
        let req = VirtioScsiRequest {
            lun,
            tag: 1,
            cdb: &test_unit_ready(),
            data_out: &[],
            data_in_len: 0,
        };
        assert_eq!(fe.command(&req).unwrap().response, 3);
    }
    assert_serving(&mut fe);
}

#[test]
fn avail_index_far_ahead_does_not_take_the_daemon_down() {
    let d = daemon();
    let mut fe = d.connect(2);
    {
        let mem = &fe.conn.mem;
        let q = &mut fe.conn.queues[RAW_Q];
        q.set_avail_idx(mem, 1000);
        q.kick();
    }
    std::thread::sleep(Duration::from_millis(200));
    // The broken queue must not keep a worker spinning: over one second the daemon uses
    // far less than the full second of CPU a spinning thread would.
    let before = cpu_ticks(d.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(d.child.id()) - before;
    let hz = 100; // USER_HZ on Linux
    assert!(used < hz / 2, "daemon used {used} ticks in one idle second");
    assert_serving(&mut fe);
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

#[test]
fn random_chains_and_cdbs() {
    let d = daemon();
    let mut fe = d.connect(2);
    let s = scratch(&mut fe, &inquiry(96));
    let size = fe.conn.memory_size();
    // Reproducible without a dependency: the same chains on every run.
    let mut rng = Rng::new(0x5eed_1234_abcd_0001);
    for round in 0..1500 {
        // A random header: random LUN address (mostly valid) and CDB.
        let mut h = [0u8; 51];
        rng.fill(&mut h);
        if round % 3 != 0 {
            h[0..8].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        }
        fe.conn.mem.write_slice(&h, GuestAddress(s.hdr)).unwrap();
        let n = 1 + (rng.next_u64() % 5) as usize;
        let mut descs = Vec::new();
        for i in 0..n {
            let addr = match rng.next_u64() % 4 {
                0 => s.hdr,
                1 => s.resp,
                2 => s.data + (rng.next_u64() % 4096),
                _ => rng.next_u64() % (size + 8192),
            };
            let len = (rng.next_u64() % 70_000) as u32;
            let mut flags = (rng.next_u64() as u16) & (W | N | VRING_DESC_F_INDIRECT);
            if i + 1 < n {
                flags |= N;
            }
            let next = if rng.next_u64().is_multiple_of(8) {
                (rng.next_u64() % 8) as u16
            } else {
                (i + 1) as u16
            };
            descs.push((addr, len, flags, next));
        }
        assert!(
            raw(&mut fe, &descs).is_some(),
            "round {round}: no answer to {descs:?}"
        );
    }
    assert_serving(&mut fe);
}
