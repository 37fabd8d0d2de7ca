//! The daemon driven by the in-process vhost-user frontend: INQUIRY, capacity, data written
//! and read back (also straight from the backing file), many commands in flight on several
//! queues, error sense, REPORT LUNS, missing LUNs and targets, task management, discard.

mod common;

use std::time::Duration;

use common::*;
use vscsid::frontend::{lun_address, ScsiFrontend, VirtioScsiRequest};

const MIB: u64 = 1 << 20;

fn two_luns() -> Daemon {
    Daemon::start(
        &[
            Disk {
                name: "a.img",
                size: 64 * MIB,
                opts: "cache=none",
            },
            Disk {
                name: "b.img",
                size: 16 * MIB,
                opts: "readonly,block-size=4096,cache=writeback",
            },
        ],
        &["--num-queues", "2"],
    )
}

#[test]
fn inquiry_and_capacity() {
    let d = two_luns();
    let mut fe = d.connect(1);
    let r = fe.command(&cmd(0, &inquiry(96), &[], 96)).unwrap();
    good(&r);
    // Up to the version descriptors (bytes 58..73).
    assert_eq!(r.data_in.len(), 74);
    assert_eq!(&r.data_in[8..16], b"VSCSID  ");
    assert_eq!(r.resid, 22);
    let r = fe.command(&cmd(0, &read_capacity16(32), &[], 32)).unwrap();
    good(&r);
    assert_eq!(
        u64::from_be_bytes(r.data_in[0..8].try_into().unwrap()) + 1,
        64 * MIB / 512
    );
    assert_eq!(
        u32::from_be_bytes(r.data_in[8..12].try_into().unwrap()),
        512
    );
    let r = fe.command(&cmd(1, &read_capacity16(32), &[], 32)).unwrap();
    good(&r);
    assert_eq!(
        u64::from_be_bytes(r.data_in[0..8].try_into().unwrap()) + 1,
        16 * MIB / 4096
    );
    assert_eq!(
        u32::from_be_bytes(r.data_in[8..12].try_into().unwrap()),
        4096
    );
}

#[test]
fn written_data_reads_back_and_reaches_the_file() {
    let d = two_luns();
    let mut fe = d.connect(1);
    // Read back, then after SYNCHRONIZE CACHE the bytes are in the backing file at LBA 100.
    let data = pattern(7, 64 * 1024);
    write_read_back_flushed(&mut fe, 0, 100, &data, &d.path("a.img"));
}

/// Writes `pattern(lba)` of `blocks` blocks at every LBA on queue `q` of LUN 0, all
/// submitted before any completes, and checks that each completes GOOD.
fn write_patterns_at_once(fe: &mut ScsiFrontend, q: usize, lbas: &[u64], blocks: u32) {
    let mut heads = Vec::new();
    for (tag, &lba) in lbas.iter().enumerate() {
        let data = pattern(lba, blocks as usize * 512);
        let req = VirtioScsiRequest {
            lun: lun(0),
            tag: tag as u64,
            cdb: &write16(lba, blocks),
            data_out: &data,
            data_in_len: 0,
        };
        heads.push(fe.submit(q, &req).unwrap());
    }
    for _ in lbas {
        let (h, r) = fe.complete(q).expect("completion");
        assert!(heads.contains(&h));
        good(&r);
    }
}

#[test]
fn many_commands_in_flight_on_two_queues() {
    let d = two_luns();
    let mut fe = d.connect(2);
    // 32 writes of distinct patterns per queue, all submitted before any completes.
    for q in [2usize, 3] {
        let lbas: Vec<u64> = (0..32u64).map(|i| (q as u64) * 10_000 + i * 16).collect();
        write_patterns_at_once(&mut fe, q, &lbas, 16);
    }
    for q in [2usize, 3] {
        for i in 0..32u64 {
            let lba = (q as u64) * 10_000 + i * 16;
            fe.submit(q, &cmd(0, &read16(lba, 16), &[], 8192)).unwrap();
        }
        let mut seen = 0;
        for _ in 0..32 {
            let (_, r) = fe.complete(q).expect("completion");
            good(&r);
            let lba = (0..32u64)
                .map(|i| (q as u64) * 10_000 + i * 16)
                .find(|&lba| pattern(lba, 8192) == r.data_in);
            assert!(lba.is_some(), "read returned data of no write");
            seen += 1;
        }
        assert_eq!(seen, 32);
    }
}

/// A daemon with one 16 MiB cache=none disk and two request queues, plus `args`.
fn direct_disk_on_two_queues(args: &[&str]) -> Daemon {
    let mut all = vec!["--num-queues", "2"];
    all.extend_from_slice(args);
    Daemon::start(
        &[Disk {
            name: "a.img",
            size: 16 * MIB,
            opts: "cache=none",
        }],
        &all,
    )
}

/// Writes bursts of 16 requests at once on two queues of a daemon started with `args`,
/// then reads every block back.
fn bursts_read_back(args: &[&str]) {
    let d = direct_disk_on_two_queues(args);
    let mut fe = d.connect(2);
    for q in [2usize, 3] {
        for round in 0..4u64 {
            let lbas: Vec<u64> = (0..16u64)
                .map(|i| (q as u64) * 4096 + (round * 16 + i) * 8)
                .collect();
            write_patterns_at_once(&mut fe, q, &lbas, 8);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        for i in 0..64u64 {
            let lba = (q as u64) * 4096 + i * 8;
            let r = fe
                .command_on(q, &cmd(0, &read16(lba, 8), &[], 4096))
                .unwrap();
            good(&r);
            assert_eq!(r.data_in, pattern(lba, 4096), "LBA {lba} on queue {q}");
        }
    }
}

#[test]
fn busy_polling_serves_the_same_data() {
    // With --poll-us the workers pick up requests and completions without sleeping; what
    // is written still reads back, on every queue, and an idle daemon still answers.
    bursts_read_back(&["--poll-us", "200"]);
}

#[test]
fn batched_submission_serves_the_same_data() {
    // By default 4 I/Os go to the kernel together (fewer when they move 64 KiB); with a
    // batch of 5 a burst of 16 goes in three batches and a remainder at the pass's end,
    // with a batch of 1 each I/O as soon as it is decoded.
    bursts_read_back(&["--submit-batch", "5"]);
    bursts_read_back(&["--submit-batch", "1"]);
}

#[test]
fn errors_give_the_right_sense() {
    let d = two_luns();
    let mut fe = d.connect(1);
    // Read-only LUN: DATA PROTECT / WRITE PROTECTED.
    let r = fe
        .command(&cmd(1, &write16(0, 1), &[0u8; 4096], 0))
        .unwrap();
    assert_eq!(sense(&r), (7, 0x27, 0));
    // LBA out of range.
    let r = fe
        .command(&cmd(0, &read16(64 * MIB / 512, 1), &[], 512))
        .unwrap();
    assert_eq!(sense(&r), (5, 0x21, 0));
    // Unknown opcode.
    let r = fe.command(&cmd(0, &[0xc4, 0, 0, 0, 0, 0], &[], 0)).unwrap();
    assert_eq!(sense(&r), (5, 0x20, 0));
}

#[test]
fn report_luns_and_missing_luns_and_targets() {
    let d = two_luns();
    let mut fe = d.connect(1);
    let rl = report_luns(255);
    let r = fe.command(&cmd(0, &rl, &[], 255)).unwrap();
    good(&r);
    assert_eq!(&r.data_in[0..4], &16u32.to_be_bytes());
    assert_eq!(&r.data_in[8..10], &[0, 0]);
    assert_eq!(&r.data_in[16..18], &[0, 1]);
    // A LUN the target lacks.
    let r = fe.command(&cmd(7, &test_unit_ready(), &[], 0)).unwrap();
    assert_eq!(sense(&r), (5, 0x25, 0));
    // REPORT LUNS through a missing LUN still lists the target's LUNs.
    let r = fe.command(&cmd(7, &rl, &[], 255)).unwrap();
    good(&r);
    assert_eq!(&r.data_in[0..4], &16u32.to_be_bytes());
    // A target that does not exist: BAD_TARGET.
    let req = VirtioScsiRequest {
        lun: lun_address(5, 0),
        tag: 1,
        cdb: &test_unit_ready(),
        data_out: &[],
        data_in_len: 0,
    };
    assert_eq!(fe.command(&req).unwrap().response, 3);
}

#[test]
fn task_management() {
    let d = two_luns();
    let mut fe = d.connect(1);
    // LOGICAL UNIT RESET and ABORT TASK SET answer FUNCTION COMPLETE once drained.
    assert_eq!(fe.tmf(5, lun(0), 0).unwrap(), 0);
    assert_eq!(fe.tmf(1, lun(0), 0).unwrap(), 0);
    assert_eq!(fe.tmf(0, lun(0), 42).unwrap(), 0);
    // QUERY TASK for a task not in flight: FUNCTION COMPLETE.
    assert_eq!(fe.tmf(6, lun(0), 42).unwrap(), 0);
    // CLEAR ACA is not supported: FUNCTION REJECTED.
    assert_eq!(fe.tmf(2, lun(0), 0).unwrap(), 11);
    // Missing LUN: INCORRECT LUN; missing target: BAD TARGET.
    assert_eq!(fe.tmf(5, lun(9), 0).unwrap(), 12);
    assert_eq!(fe.tmf(5, lun_address(4, 0), 0).unwrap(), 3);
    // AN query: no events, response OK.
    let mut an = [0u8; 16];
    an[0] = 1;
    an[4..12].copy_from_slice(&lun(0));
    let (resp, used) = fe.control(&an, 5).unwrap();
    assert_eq!((&resp[..], used), (&[0u8, 0, 0, 0, 0][..], 5));
    // The reset is reported once, as UNIT ATTENTION 29/00, then the LUN serves again.
    let r = fe.command(&cmd(0, &test_unit_ready(), &[], 0)).unwrap();
    assert_eq!(sense(&r), (6, 0x29, 0x00));
    assert_serving(&mut fe);
}

#[test]
fn unmap_makes_the_file_sparse_again() {
    let d = two_luns();
    let mut fe = d.connect(1);
    let data = pattern(3, 1 << 20);
    good(&fe.command(&cmd(0, &write16(0, 2048), &data, 0)).unwrap());
    good(&fe.command(&cmd(0, &synchronize_cache10(), &[], 0)).unwrap());
    let before = allocated_bytes(&d.path("a.img"));
    assert!(before >= 1 << 20, "written data allocates {before}");
    let (c, list) = unmap(0, 2048);
    let r = fe.command(&cmd(0, &c, &list, 0)).unwrap();
    good(&r);
    let after = allocated_bytes(&d.path("a.img"));
    assert!(after < before / 4, "allocation {before} -> {after}");
    let r = fe.command(&cmd(0, &read16(0, 8), &[], 4096)).unwrap();
    good(&r);
    assert!(r.data_in.iter().all(|&b| b == 0));
}

#[test]
fn write_same_compare_and_write_and_verify() {
    let d = two_luns();
    let mut fe = d.connect(1);
    // WRITE SAME(16) of a pattern block over 64 blocks.
    let block = pattern(11, 512);
    good(
        &fe.command(&cmd(0, &write_same16(1000, 64), &block, 0))
            .unwrap(),
    );
    let r = fe
        .command(&cmd(0, &read16(1000, 64), &[], 64 * 512))
        .unwrap();
    good(&r);
    assert!(r.data_in.chunks(512).all(|c| c == &block[..]));
    // VERIFY(16) BYTCHK=1 matching, then a miscompare.
    let v = verify16(1000, 1);
    good(&fe.command(&cmd(0, &v, &block, 0)).unwrap());
    let mut other = block.clone();
    other[100] ^= 0xff;
    let r = fe.command(&cmd(0, &v, &other, 0)).unwrap();
    assert_eq!(sense(&r), (0x0e, 0x1d, 0));
    // COMPARE AND WRITE: matching compare writes, a stale compare does not.
    let caw = compare_and_write(1000, 1);
    let new = pattern(12, 512);
    let mut out = block.clone();
    out.extend_from_slice(&new);
    good(&fe.command(&cmd(0, &caw, &out, 0)).unwrap());
    let r = fe.command(&cmd(0, &caw, &out, 0)).unwrap();
    assert_eq!(sense(&r), (0x0e, 0x1d, 0));
    let r = fe.command(&cmd(0, &read16(1000, 1), &[], 512)).unwrap();
    assert_eq!(r.data_in, new);
}

#[test]
fn write_and_verify_log_sense_and_physical_block_size() {
    let d = Daemon::start(
        &[Disk {
            name: "p.img",
            size: 16 * MIB,
            opts: "cache=none,physical-block-size=4096",
        }],
        &["--num-queues", "1"],
    );
    let mut fe = d.connect(1);
    // WRITE AND VERIFY(10) of two blocks at LBA 8 reads back.
    let data = pattern(21, 1024);
    let mut wav = [0u8; 10];
    wav[0] = 0x2e;
    wav[2..6].copy_from_slice(&8u32.to_be_bytes());
    wav[7..9].copy_from_slice(&2u16.to_be_bytes());
    good(&fe.command(&cmd(0, &wav, &data, 0)).unwrap());
    let r = fe.command(&cmd(0, &read16(8, 2), &[], 1024)).unwrap();
    good(&r);
    assert_eq!(r.data_in, data);
    // BYTCHK 01b is not supported.
    wav[1] = 0x02;
    assert_eq!(
        sense(&fe.command(&cmd(0, &wav, &data, 0)).unwrap()),
        (5, 0x24, 0)
    );
    // LOG SENSE: the supported pages, then the provisioning page with the file's usage.
    let log_sense = |page: u8| {
        let mut c = [0u8; 10];
        c[0] = 0x4d;
        c[2] = 0x40 | page;
        c[7..9].copy_from_slice(&64u16.to_be_bytes());
        c
    };
    let r = fe.command(&cmd(0, &log_sense(0), &[], 64)).unwrap();
    good(&r);
    assert_eq!(r.data_in, [0x80, 0, 0, 2, 0x00, 0x0c]);
    let r = fe.command(&cmd(0, &log_sense(0x0c), &[], 64)).unwrap();
    good(&r);
    assert_eq!(&r.data_in[4..6], &[0, 2], "used LBA mapping resource count");
    let used = u32::from_be_bytes(r.data_in[8..12].try_into().unwrap());
    assert!(
        used >= 2 && used < 16 * MIB as u32 / 512,
        "{used} blocks used"
    );
    // READ CAPACITY(16): 8 logical blocks per physical block.
    let r = fe.command(&cmd(0, &read_capacity16(32), &[], 32)).unwrap();
    good(&r);
    assert_eq!(r.data_in[13] & 0x0f, 3);
}

#[test]
fn daemon_exits_when_the_frontend_disconnects() {
    let mut d = two_luns();
    {
        let mut fe = d.connect(1);
        assert_serving(&mut fe);
    }
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn reconnect_option_serves_a_second_frontend() {
    let mut d = Daemon::start(
        &[Disk {
            name: "a.img",
            size: 8 * MIB,
            opts: "",
        }],
        &["--reconnect", "--num-queues", "1"],
    );
    let data = pattern(5, 4096);
    {
        let mut fe = d.connect(1);
        good(&fe.command(&cmd(0, &write16(8, 8), &data, 0)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(d.is_running(), "daemon exited despite --reconnect");
    let mut fe = d.connect(1);
    let r = fe.command(&cmd(0, &read16(8, 8), &[], 4096)).unwrap();
    assert_eq!(r.data_in, data);
}

#[test]
fn sigterm_exits_cleanly() {
    let mut d = two_luns();
    let mut fe = d.connect(1);
    assert_serving(&mut fe);
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
}

#[test]
fn null_lun_reads_zeroes_and_drops_writes() {
    let d = Daemon::start(
        &[Disk {
            name: "a.img",
            size: 8 * MIB,
            opts: "",
        }],
        &["--null", "1G", "--num-queues", "1"],
    );
    let mut fe = d.connect(1);
    let r = fe.command(&cmd(1, &inquiry(96), &[], 96)).unwrap();
    good(&r);
    assert_eq!(&r.data_in[16..25], b"NULL-DISK");
    good(
        &fe.command(&cmd(1, &write16(10, 8), &pattern(1, 4096), 0))
            .unwrap(),
    );
    let r = fe
        .command(&cmd(1, &read16(10, 256), &[], 128 * 1024))
        .unwrap();
    good(&r);
    assert_eq!(r.data_in.len(), 128 * 1024);
    assert!(r.data_in.iter().all(|&b| b == 0));
    let r = fe
        .command(&cmd(1, &read16((1 << 30) / 512, 1), &[], 512))
        .unwrap();
    assert_eq!(sense(&r), (5, 0x21, 0));
}

#[test]
fn scattered_guest_buffers_reach_the_right_blocks() {
    // A guest's data is rarely one buffer: pages scattered through guest memory go to the
    // file in one vectored I/O straight from guest memory, pieces O_DIRECT cannot take go
    // through a bounce buffer; either way every byte must land on its own block and come
    // back in order, and a single page takes the plain read/write path.
    use vm_memory::{Bytes, GuestAddress};
    use vscsid::frontend::{VRING_DESC_F_NEXT as N, VRING_DESC_F_WRITE as W};
    let d = direct_disk_on_two_queues(&[]);
    let mut fe = d.connect(2);
    let raw_q = 3;
    let area = fe.conn.alloc(128 * 1024, 4096).expect("guest area");
    let page = |n: u64| area + n * 4096;
    let (hdr, resp) = (page(0), page(0) + 1024);
    let cases: [(u64, Vec<(u64, u32)>); 3] = [
        // Aligned pages, out of order.
        (64, vec![(page(5), 4096), (page(2), 4096), (page(9), 4096)]),
        // Odd addresses and lengths: bounced.
        (
            200,
            vec![
                (page(12) + 100, 1000),
                (page(14) + 3, 7192),
                (page(20), 4096),
            ],
        ),
        // One page.
        (999, vec![(page(24), 4096)]),
    ];
    for (lba, segs) in cases {
        let total: u32 = segs.iter().map(|s| s.1).sum();
        let data = pattern(lba, total as usize);
        let blocks = total / 512;
        let run = |fe: &mut ScsiFrontend, cdb: [u8; 16], data_out: bool| {
            let mut h = [0u8; 51];
            h[0..8].copy_from_slice(&lun_address(0, 0));
            h[19..35].copy_from_slice(&cdb);
            fe.conn.mem.write_slice(&h, GuestAddress(hdr)).unwrap();
            fe.conn
                .mem
                .write_slice(&[0xff; 108], GuestAddress(resp))
                .unwrap();
            // Device-writable: the response and, for a read, the data.
            let data_flags = if data_out { 0 } else { W };
            let mut descs = vec![(hdr, 51, 0, 0)];
            let seg_descs = segs.iter().map(|&(a, l)| (a, l, data_flags, 0));
            if data_out {
                descs.extend(seg_descs);
                descs.push((resp, 108, W, 0));
            } else {
                descs.push((resp, 108, W, 0));
                descs.extend(seg_descs);
            }
            let n = descs.len();
            for (i, dsc) in descs.iter_mut().enumerate().take(n - 1) {
                dsc.2 |= N;
                dsc.3 = (i + 1) as u16;
            }
            raw_chain(fe, raw_q, &descs).expect("answered");
            let mut r = [0u8; 108];
            fe.conn.mem.read_slice(&mut r, GuestAddress(resp)).unwrap();
            assert_eq!((r[11], r[10]), (0, 0), "LBA {lba}: response/status");
        };
        let mut at = 0;
        for &(a, l) in &segs {
            let piece = &data[at..at + l as usize];
            fe.conn.mem.write_slice(piece, GuestAddress(a)).unwrap();
            at += l as usize;
        }
        run(&mut fe, write16(lba, blocks), true);
        let file = std::fs::read(d.path("a.img")).unwrap();
        let off = (lba * 512) as usize;
        assert_eq!(&file[off..off + data.len()], &data[..], "LBA {lba} on disk");
        for &(a, l) in &segs {
            fe.conn
                .mem
                .write_slice(&vec![0xee; l as usize], GuestAddress(a))
                .unwrap();
        }
        run(&mut fe, read16(lba, blocks), false);
        let mut back = Vec::new();
        for &(a, l) in &segs {
            let mut piece = vec![0u8; l as usize];
            fe.conn.mem.read_slice(&mut piece, GuestAddress(a)).unwrap();
            back.extend(piece);
        }
        assert_eq!(back, data, "LBA {lba} read back scattered");
    }
}

#[test]
fn compare_and_write_is_atomic_against_writes_from_other_queues() {
    // COMPARE AND WRITE (A -> B) on one queue races plain writes of C to the same block on
    // another queue, served by another thread. Whatever the order, the result must be one
    // a serial order gives: the compare saw A and C came after (B overwritten by C), or C
    // came first and the compare failed. B left on the medium means a write slipped in
    // between the compare and the write.
    let d = direct_disk_on_two_queues(&[]);
    let mut fe = d.connect(2);
    let lba = 100u64;
    let (mut swapped, mut miscompared) = (0, 0);
    for i in 0..300u64 {
        let (a, b, c) = (
            pattern(3 * i, 512),
            pattern(3 * i + 1, 512),
            pattern(3 * i + 2, 512),
        );
        good(&fe.command(&cmd(0, &write16(lba, 1), &a, 0)).unwrap());
        let caw = compare_and_write(lba, 1);
        let compare_then_write = [a.clone(), b.clone()].concat();
        let caw_req = VirtioScsiRequest {
            lun: lun(0),
            tag: 1,
            cdb: &caw,
            data_out: &compare_then_write,
            data_in_len: 0,
        };
        let write_req = VirtioScsiRequest {
            lun: lun(0),
            tag: 2,
            cdb: &write16(lba, 1),
            data_out: &c,
            data_in_len: 0,
        };
        // Alternate which one is submitted first.
        if i % 2 == 0 {
            fe.submit(2, &caw_req).unwrap();
            fe.submit(3, &write_req).unwrap();
        } else {
            fe.submit(3, &write_req).unwrap();
            fe.submit(2, &caw_req).unwrap();
        }
        let (_, caw_r) = fe.complete(2).expect("COMPARE AND WRITE answered");
        let (_, write_r) = fe.complete(3).expect("WRITE answered");
        good(&write_r);
        let r = fe.command(&cmd(0, &read16(lba, 1), &[], 512)).unwrap();
        good(&r);
        assert_ne!(
            r.data_in, b,
            "round {i}: a write landed inside COMPARE AND WRITE"
        );
        assert_eq!(r.data_in, c, "round {i}");
        if caw_r.status == 0 {
            swapped += 1;
        } else {
            assert_eq!(sense(&caw_r), (0x0e, 0x1d, 0), "round {i}: MISCOMPARE");
            miscompared += 1;
        }
    }
    assert_eq!(swapped + miscompared, 300);
}

/// QEMU gives a guest one request queue per vCPU unless told otherwise, and refuses to
/// start when the backend offers fewer: the default configuration must serve a guest with
/// more queues than any thread mask holds, on every queue.
#[test]
fn a_guest_with_a_hundred_queues_is_served_on_all_of_them() {
    let d = Daemon::start(
        &[Disk {
            name: "a.img",
            size: 4 << 20,
            opts: "",
        }],
        &[],
    );
    let opts = vscsid::frontend::ConnectOptions {
        queues: 102,
        queue_size: 64,
        // Sparse: only what the test touches is ever allocated.
        memory_size: 102 * (36 << 20),
        ..Default::default()
    };
    let mut fe = ScsiFrontend::connect(&d.socket, &opts).expect("connect with 100 queues");
    fe.timeout = Duration::from_secs(20);
    for q in 2..102 {
        let r = fe
            .command_on(q, &cmd(0, &inquiry(96), &[], 96))
            .unwrap_or_else(|e| panic!("INQUIRY on queue {q}: {e}"));
        good(&r);
    }
}
