//! Writes the seed inputs of every fuzz target into `fuzz/seeds/<target>/`, from what the
//! project's tests and examples use: the emulated disk's command table (one CDB per
//! supported command, and every other opcode), the CDBs and parameter lists of the unit
//! and integration tests, the virtio-scsi requests and task management functions of the
//! frontend tests, the PDUs of the login and session tests, and the configuration
//! examples of README.md and qemu-examples/. `scripts/fuzz-seeds.sh` runs it and merges
//! the seeds into the committed corpora with `cargo fuzz cmin`.
//!
//! Run from the `fuzz` directory: `cargo +nightly run --example write_seeds`.

use std::path::{Path, PathBuf};

use vscsid::iscsi::pdu::{self, op, Framing, Pdu};
use vscsid::scsi::disk::SUPPORTED_COMMANDS;
use vscsid_fuzz::cdb;
use vscsid_fuzz::iscsi_target::{
    data_in_with_status, login_response, r2t, scsi_response, standard_inquiry, FULL_FEATURE,
    OPERATIONAL, OPERATIONAL_KEYS, SECURITY,
};
use vscsid_fuzz::virtio::{
    cmd_header, place_command, ImageBuilder, BUFFERS, CTRL_AVAIL, CTRL_DESC, DESC_INDIRECT,
    DESC_NEXT, DESC_WRITE, REGION_BYTES, REQ_AVAIL, REQ_DESC,
};

struct Seeds {
    dir: PathBuf,
    count: usize,
}

impl Seeds {
    fn new(root: &Path, target: &str) -> Seeds {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("seed directory");
        Seeds { dir, count: 0 }
    }

    fn put(&mut self, name: &str, bytes: &[u8]) {
        self.count += 1;
        let file = self.dir.join(format!("{:03}-{name}", self.count));
        std::fs::write(file, bytes).expect("write seed");
    }
}

/// One test command: a name, the CDB, its data-out and the data-in room it needs.
struct TestCommand {
    name: String,
    cdb: Vec<u8>,
    data_out: Vec<u8>,
    data_in: u16,
}

fn tc(name: &str, cdb: &[u8], data_out: Vec<u8>, data_in: u16) -> TestCommand {
    TestCommand {
        name: name.to_string(),
        cdb: cdb.to_vec(),
        data_out,
        data_in,
    }
}

fn rw16(op: u8, lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw10(op: u8, lba: u32, blocks: u16, flags: u8) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw12(op: u8, lba: u32, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// The CDBs and parameter lists of the disk, LUN and frontend tests.
fn test_commands() -> Vec<TestCommand> {
    let unmap_list = {
        let mut l = vec![0u8; 24];
        l[0..2].copy_from_slice(&22u16.to_be_bytes());
        l[2..4].copy_from_slice(&16u16.to_be_bytes());
        l[8..16].copy_from_slice(&16u64.to_be_bytes());
        l[16..20].copy_from_slice(&8u32.to_be_bytes());
        l
    };
    // MODE SELECT(6) of the caching page with WCE cleared.
    let mode_select6 = {
        let mut l = vec![0u8; 4 + 20];
        l[4] = 0x08;
        l[5] = 0x12;
        l
    };
    let mode_select10 = {
        let mut l = vec![0u8; 8 + 20];
        l[8] = 0x08;
        l[9] = 0x12;
        l[10] = 0x04;
        l
    };
    let mut caw = vec![0x11u8; 512];
    caw.extend_from_slice(&[0x22u8; 512]);
    vec![
        tc("test-unit-ready", &[0; 6], vec![], 0),
        tc("request-sense", &[0x03, 0, 0, 0, 252, 0], vec![], 252),
        tc("request-sense-desc", &[0x03, 1, 0, 0, 252, 0], vec![], 252),
        tc("inquiry", &[0x12, 0, 0, 0, 96, 0], vec![], 96),
        tc("inquiry-vpd-00", &[0x12, 1, 0x00, 1, 0, 0], vec![], 256),
        tc("inquiry-vpd-80", &[0x12, 1, 0x80, 1, 0, 0], vec![], 256),
        tc("inquiry-vpd-83", &[0x12, 1, 0x83, 1, 0, 0], vec![], 256),
        tc("inquiry-vpd-b0", &[0x12, 1, 0xb0, 1, 0, 0], vec![], 256),
        tc("inquiry-vpd-b1", &[0x12, 1, 0xb1, 1, 0, 0], vec![], 256),
        tc("inquiry-vpd-b2", &[0x12, 1, 0xb2, 1, 0, 0], vec![], 256),
        tc("mode-sense6-all", &[0x1a, 0, 0x3f, 0, 0xff, 0], vec![], 255),
        tc(
            "mode-sense6-caching",
            &[0x1a, 8, 0x08, 0, 0xff, 0],
            vec![],
            255,
        ),
        tc(
            "mode-sense10-control",
            &[0x5a, 0, 0x0a, 0, 0, 0, 0, 1, 0, 0],
            vec![],
            256,
        ),
        tc(
            "mode-sense10-changeable",
            &[0x5a, 0, 0x48, 0, 0, 0, 0, 1, 0, 0],
            vec![],
            256,
        ),
        tc("mode-select6", &[0x15, 0x10, 0, 0, 24, 0], mode_select6, 0),
        tc(
            "mode-select10",
            &[0x55, 0x10, 0, 0, 0, 0, 0, 0, 28, 0],
            mode_select10,
            0,
        ),
        tc(
            "read-capacity10",
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            8,
        ),
        tc(
            "read-capacity16",
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            vec![],
            32,
        ),
        tc(
            "get-lba-status",
            &[0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 64, 0, 0],
            vec![],
            64,
        ),
        tc(
            "report-luns",
            &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
            256,
        ),
        tc(
            "report-opcodes-all",
            &[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
            vec![],
            4096,
        ),
        tc(
            "report-opcodes-one",
            &[0xa3, 0x0c, 1, 0x28, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
            256,
        ),
        tc(
            "report-opcodes-sa",
            &[0xa3, 0x0c, 2, 0x9e, 0, 0x10, 0, 0, 1, 0, 0, 0],
            vec![],
            256,
        ),
        tc(
            "report-opcodes-timeouts",
            &[0xa3, 0x0c, 0x80, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
            vec![],
            4096,
        ),
        tc(
            "report-target-port-groups",
            &[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
            256,
        ),
        tc("read6", &[0x08, 0, 0, 8, 2, 0], vec![], 1024),
        tc("read10", &rw10(0x28, 8, 2, 0), vec![], 1024),
        tc("read12", &rw12(0xa8, 8, 2), vec![], 1024),
        tc("read16", &rw16(0x88, 8, 2, 0), vec![], 1024),
        tc("read16-fua", &rw16(0x88, 8, 2, 0x08), vec![], 1024),
        tc("read16-past-end", &rw16(0x88, 2047, 2, 0), vec![], 1024),
        tc("write6", &[0x0a, 0, 0, 8, 2, 0], pattern(1, 1024), 0),
        tc("write10", &rw10(0x2a, 8, 2, 0), pattern(2, 1024), 0),
        tc("write12", &rw12(0xaa, 8, 2), pattern(3, 1024), 0),
        tc("write16", &rw16(0x8a, 8, 2, 0), pattern(4, 1024), 0),
        tc("write16-fua", &rw16(0x8a, 8, 2, 0x08), pattern(5, 1024), 0),
        tc(
            "write16-short-buffer",
            &rw16(0x8a, 8, 4, 0),
            pattern(6, 1024),
            0,
        ),
        tc(
            "write-and-verify10",
            &rw10(0x2e, 16, 1, 0x02),
            pattern(7, 512),
            0,
        ),
        tc(
            "write-and-verify16",
            &rw16(0x8e, 16, 1, 0x02),
            pattern(8, 512),
            0,
        ),
        tc("verify10", &rw10(0x2f, 8, 2, 0), vec![], 0),
        tc(
            "verify10-bytchk",
            &rw10(0x2f, 8, 2, 0x02),
            pattern(2, 1024),
            0,
        ),
        tc("verify12", &rw12(0xaf, 8, 2), vec![], 0),
        tc(
            "verify16-bytchk",
            &rw16(0x8f, 8, 2, 0x02),
            pattern(4, 1024),
            0,
        ),
        tc(
            "synchronize-cache10",
            &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            0,
        ),
        tc("synchronize-cache16", &rw16(0x91, 0, 0, 0), vec![], 0),
        tc("write-same10", &rw10(0x41, 32, 8, 0), pattern(9, 512), 0),
        tc(
            "write-same10-unmap",
            &rw10(0x41, 32, 8, 0x08),
            vec![0; 512],
            0,
        ),
        tc("write-same16", &rw16(0x93, 32, 8, 0), pattern(10, 512), 0),
        tc(
            "write-same16-unmap",
            &rw16(0x93, 32, 8, 0x08),
            vec![0; 512],
            0,
        ),
        tc("write-same16-ndob", &rw16(0x93, 32, 8, 0x09), vec![], 0),
        tc("unmap", &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], unmap_list, 0),
        tc(
            "compare-and-write",
            &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0],
            caw,
            0,
        ),
        tc("start-stop-unit", &[0x1b, 0, 0, 0, 1, 0], vec![], 0),
        tc("prevent-allow", &[0x1e, 0, 0, 0, 1, 0], vec![], 0),
        tc(
            "log-sense",
            &[0x4d, 0, 0x40, 0, 0, 0, 0, 1, 0, 0],
            vec![],
            256,
        ),
        tc(
            "write-buffer",
            &[0x3b, 0x02, 0, 0, 0, 0, 0, 2, 0, 0],
            pattern(11, 512),
            0,
        ),
        tc(
            "persistent-reserve-out",
            &[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0],
            vec![0; 24],
            0,
        ),
        tc(
            "variable-length",
            &[0x7f, 0, 0, 0, 0, 0, 0, 0x18, 0, 0x09],
            vec![],
            0,
        ),
    ]
}

fn cdb_seeds(root: &Path) {
    let mut s = Seeds::new(root, "cdb");
    for c in test_commands() {
        s.put(&c.name, &cdb::input(0, c.data_in, &c.cdb, &c.data_out));
    }
    // The 4096-byte O_DIRECT disk, the read-only disk, the null LUN and a missing LUN.
    s.put(
        "lun1-read16",
        &cdb::input(1, 8192, &rw16(0x88, 1, 2, 0), &[]),
    );
    s.put(
        "lun1-write16",
        &cdb::input(1, 0, &rw16(0x8a, 1, 1, 0), &pattern(12, 4096)),
    );
    s.put(
        "lun1-unmap",
        &cdb::input(1, 0, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &{
            let mut l = vec![0u8; 24];
            l[0..2].copy_from_slice(&22u16.to_be_bytes());
            l[2..4].copy_from_slice(&16u16.to_be_bytes());
            l[15] = 4;
            l[19] = 2;
            l
        }),
    );
    s.put(
        "lun2-readonly-write10",
        &cdb::input(2, 0, &rw10(0x2a, 0, 1, 0), &pattern(13, 512)),
    );
    s.put(
        "lun3-null-read16",
        &cdb::input(3, 4096, &rw16(0x88, 0, 8, 0), &[]),
    );
    s.put(
        "lun3-null-write16",
        &cdb::input(3, 0, &rw16(0x8a, 0, 1, 0), &pattern(14, 512)),
    );
    s.put(
        "missing-lun-inquiry",
        &cdb::input(4, 96, &[0x12, 0, 0, 0, 96, 0], &[]),
    );
    s.put(
        "missing-lun-request-sense",
        &cdb::input(4, 252, &[0x03, 0, 0, 0, 252, 0], &[]),
    );
    // Every supported command with its service action and the largest allocation length
    // its usage bitmap allows, then every opcode.
    for c in SUPPORTED_COMMANDS {
        let mut cdb = vec![0u8; c.cdb_len()];
        cdb[0] = c.opcode;
        if let Some(sa) = c.service_action {
            if c.opcode == 0x7f {
                cdb[8..10].copy_from_slice(&sa.to_be_bytes());
            } else {
                cdb[1] = sa as u8;
            }
        }
        let last = cdb.len() - 2;
        cdb[last] = 0x40;
        let name = format!(
            "supported-{:02x}-{:x}",
            c.opcode,
            c.service_action.unwrap_or(0)
        );
        s.put(&name, &cdb::input(0, 4096, &cdb, &[0u8; 512]));
    }
    for opcode in 0..=255u8 {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        cdb[4] = 0x20;
        s.put(
            &format!("opcode-{opcode:02x}"),
            &cdb::input(0, 512, &cdb, &[0u8; 64]),
        );
    }
}

/// One request per test command, each in its own guest memory image.
fn virtio_seeds(root: &Path) {
    let mut s = Seeds::new(root, "virtio_request");
    for (i, c) in test_commands().iter().enumerate() {
        let mut img = ImageBuilder::default();
        let h = cmd_header(0, 0, i as u64 + 1, &c.cdb);
        place_command(&mut img, 0, BUFFERS, &h, &c.data_out, u32::from(c.data_in));
        img.avail(REQ_AVAIL, &[0]);
        s.put(&c.name, &[&[0u8][..], &img.bytes].concat());
    }
    // Several requests in one kick: a write, a read of it, COMPARE AND WRITE over it.
    {
        let mut img = ImageBuilder::default();
        let cmds = test_commands();
        let pick = |n: &str| cmds.iter().find(|c| c.name == n).expect("command");
        let mut heads = Vec::new();
        let (mut d, mut at) = (0u16, BUFFERS);
        for (tag, name) in [
            "write16",
            "read16",
            "compare-and-write",
            "synchronize-cache10",
        ]
        .iter()
        .enumerate()
        {
            let c = pick(name);
            heads.push(d);
            let h = cmd_header(0, 0, tag as u64 + 1, &c.cdb);
            (d, at) = place_command(&mut img, d, at, &h, &c.data_out, u32::from(c.data_in));
        }
        img.avail(REQ_AVAIL, &heads);
        s.put(
            "batch-write-read-caw-sync",
            &[&[0u8][..], &img.bytes].concat(),
        );
        s.put("batch-event-idx", &[&[1u8][..], &img.bytes].concat());
    }
    // Every LUN of the table, a missing LUN and a bad target.
    for (i, (target, lun)) in [(0u8, 1u16), (0, 2), (1, 0), (0, 9), (5, 0)]
        .iter()
        .enumerate()
    {
        let mut img = ImageBuilder::default();
        let h = cmd_header(*target, *lun, i as u64, &rw16(0x88, 0, 1, 0));
        place_command(&mut img, 0, BUFFERS, &h, &[], 4096);
        img.avail(REQ_AVAIL, &[0]);
        s.put(
            &format!("read-t{target}-l{lun}"),
            &[&[0u8][..], &img.bytes].concat(),
        );
    }
    // An indirect descriptor table holding header, response and data-in.
    {
        let mut img = ImageBuilder::default();
        let table = 0x2000u64;
        let h = cmd_header(0, 0, 7, &rw10(0x28, 0, 1, 0));
        img.put(BUFFERS, &h);
        img.desc(table, 0, BUFFERS, 51, DESC_NEXT, 1);
        img.desc(table, 1, 0x1000, 108, DESC_WRITE | DESC_NEXT, 2);
        img.desc(table, 2, 0x1100, 512, DESC_WRITE, 0);
        img.desc(REQ_DESC, 0, table, 48, DESC_INDIRECT, 0);
        img.avail(REQ_AVAIL, &[0]);
        s.put("indirect-read10", &[&[0u8][..], &img.bytes].concat());
    }
    // Data-in straddling the boundary between the two memory regions, in two descriptors.
    {
        let mut img = ImageBuilder::default();
        let h = cmd_header(0, 1, 8, &rw16(0x88, 0, 1, 0));
        img.put(BUFFERS, &h);
        img.chain(
            REQ_DESC,
            0,
            &[
                (BUFFERS, 51, false),
                (0x1000, 108, true),
                (REGION_BYTES - 0x300, 0x200, true),
                (REGION_BYTES - 0x100, 0xe00, true),
            ],
        );
        img.avail(REQ_AVAIL, &[0]);
        s.put(
            "read16-straddles-regions",
            &[&[0u8][..], &img.bytes].concat(),
        );
    }
    // Malformed chains: a readable descriptor after a writable one, a short header, no
    // room for the response.
    {
        let mut img = ImageBuilder::default();
        let h = cmd_header(0, 0, 9, &[0; 6]);
        img.put(BUFFERS, &h);
        img.chain(
            REQ_DESC,
            0,
            &[
                (BUFFERS, 51, false),
                (0x1000, 108, true),
                (BUFFERS, 16, false),
            ],
        );
        img.chain(REQ_DESC, 3, &[(BUFFERS, 40, false), (0x1000, 108, true)]);
        img.chain(REQ_DESC, 5, &[(BUFFERS, 51, false), (0x1000, 50, true)]);
        img.avail(REQ_AVAIL, &[0, 3, 5]);
        s.put("malformed-chains", &[&[0u8][..], &img.bytes].concat());
    }
}

/// Control queue requests next to a request in flight.
fn control_seeds(root: &Path) {
    let mut s = Seeds::new(root, "control_queue");
    let tmf = |subtype: u32, target: u8, lun: u16, tag: u64| {
        let mut r = vec![0u8; 24];
        r[4..8].copy_from_slice(&subtype.to_le_bytes());
        r[8..16].copy_from_slice(&vscsid_fuzz::luns::lun_address(target, lun));
        r[16..24].copy_from_slice(&tag.to_le_bytes());
        r
    };
    let an = |kind: u32, events: u32| {
        let mut r = vec![0u8; 16];
        r[0..4].copy_from_slice(&kind.to_le_bytes());
        r[4..12].copy_from_slice(&vscsid_fuzz::luns::lun_address(0, 0));
        r[12..16].copy_from_slice(&events.to_le_bytes());
        r
    };
    let mut requests: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let names = [
        "abort-task",
        "abort-task-set",
        "clear-aca",
        "clear-task-set",
        "i-t-nexus-reset",
        "logical-unit-reset",
        "query-task",
        "query-task-set",
        "unknown-subtype",
    ];
    for (subtype, name) in names.iter().enumerate() {
        requests.push((name.to_string(), tmf(subtype as u32, 0, 0, 1), 1));
    }
    requests.push(("lun-reset-missing-lun".into(), tmf(5, 0, 9, 0), 1));
    requests.push(("lun-reset-bad-target".into(), tmf(5, 7, 0, 0), 1));
    requests.push(("nexus-reset-target1".into(), tmf(4, 1, 0, 0), 1));
    requests.push(("an-query".into(), an(1, 0x10), 5));
    requests.push(("an-subscribe".into(), an(2, 0x7e), 5));
    requests.push(("unknown-type".into(), an(9, 0), 5));
    for (name, req, resp_len) in requests {
        for (flags, order) in [(0u8, "after"), (0x20, "before")] {
            let mut img = ImageBuilder::default();
            // A 32 KiB write to LUN 0/1 (O_DIRECT) in flight, tag 1; its data-out is the
            // zeroed memory past the image.
            let h = cmd_header(0, 1, 1, &rw16(0x8a, 0, 8, 0));
            img.put(BUFFERS + 0x100, &h);
            img.chain(
                REQ_DESC,
                0,
                &[
                    (BUFFERS + 0x100, 51, false),
                    (0x8000, 0x8000, false),
                    (BUFFERS + 0x140, 108, true),
                ],
            );
            img.avail(REQ_AVAIL, &[0]);
            img.put(BUFFERS, &req);
            img.chain(
                CTRL_DESC,
                0,
                &[
                    (BUFFERS, req.len() as u32, false),
                    (BUFFERS + 0x80, resp_len, true),
                ],
            );
            img.avail(CTRL_AVAIL, &[0]);
            s.put(
                &format!("{name}-{order}-write"),
                &[&[flags][..], &img.bytes].concat(),
            );
        }
    }
}

fn wire(pdus: &[Pdu]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pdus {
        pdu::encode_into(p, &p.data, &Framing::default(), &mut out);
    }
    out
}

fn nop_in(itt: u32, ttt: u32, stat_sn: u32, cmd_sn: u32) -> Pdu {
    let mut p = Pdu::new(op::NOP_IN);
    p.set_flags(0x80);
    p.set_itt(itt);
    p.set_u32(20, ttt);
    p.set_u32(24, stat_sn);
    p.set_u32(28, cmd_sn);
    p.set_u32(32, cmd_sn + 31);
    p
}

fn simple(opcode: u8, itt: u32, stat_sn: u32, cmd_sn: u32) -> Pdu {
    let mut p = Pdu::new(opcode);
    p.set_flags(0x80);
    p.set_itt(itt);
    p.set_u32(24, stat_sn);
    p.set_u32(28, cmd_sn);
    p.set_u32(32, cmd_sn + 31);
    p
}

/// INQUIRY with TPGS, VPD 0x83 naming target port group 2, REPORT TARGET PORT GROUPS
/// with group 2 active/optimized: the data of the ALUA unit tests.
fn alua_data() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let inquiry = standard_inquiry(1);
    let mut vpd83 = vec![0, 0x83, 0, 0];
    vpd83.extend_from_slice(&[0x01, 0x03, 0, 8, 0x60, 1, 2, 3, 4, 5, 6, 7]);
    vpd83.extend_from_slice(&[0x01, 0x15, 0, 4, 0, 0, 0, 2]);
    let n = (vpd83.len() - 4) as u16;
    vpd83[2..4].copy_from_slice(&n.to_be_bytes());
    let mut rtpg = vec![0u8; 4];
    rtpg.extend_from_slice(&[0x80, 0x0f, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1]);
    let n = (rtpg.len() - 4) as u32;
    rtpg[0..4].copy_from_slice(&n.to_be_bytes());
    (inquiry, vpd83, rtpg)
}

/// Target PDUs of the session tests: Data-In, SCSI Response with and without sense and
/// residuals, R2T, NOP-In both ways, async messages, reject, TMF and logout responses.
fn session_pdus() -> Vec<(&'static str, Vec<Pdu>)> {
    // After login the initiator sends TEST UNIT READY (ITT 1) and INQUIRY (ITT 2), which the
    // scripted target answers (StatSN 0x101, 0x102... 0x103); the harness's READ, WRITE
    // and TEST UNIT READY are ITT 3, 4 and 5 with CmdSN 3 to 5.
    let (sn, cmd) = (0x104u32, 6u32);
    let mut split_first = data_in_with_status(3, sn, cmd, 0, &pattern(1, 2048));
    split_first.set_flags(0x00);
    let mut split_second = data_in_with_status(3, sn, cmd, 0, &pattern(2, 2048));
    split_second.set_u32(36, 1);
    split_second.set_u32(40, 2048);
    let mut underflow = scsi_response(3, sn, cmd, 0, &[]);
    underflow.set_flags(0x82);
    underflow.set_u32(44, 4096);
    let mut async_logout = simple(op::ASYNC_MSG, 0xffff_ffff, sn, cmd);
    async_logout.bhs[36] = 1;
    let mut async_info = simple(op::ASYNC_MSG, 0xffff_ffff, sn, cmd);
    async_info.bhs[36] = 4;
    let mut reject = simple(op::REJECT, 0xffff_ffff, sn, cmd);
    reject.bhs[2] = 0x09;
    let mut rejected = vec![0u8; 48];
    rejected[0] = op::SCSI_CMD;
    rejected[16..20].copy_from_slice(&3u32.to_be_bytes());
    reject.data = rejected;
    let sense = [
        0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
    ];
    vec![
        (
            "all-answered",
            vec![
                data_in_with_status(3, sn, cmd, 0, &pattern(3, 4096)),
                r2t(4, 0x10, sn + 1, cmd, 512, 3584),
                scsi_response(4, sn + 1, cmd, 0, &[]),
                scsi_response(5, sn + 2, cmd, 0, &[]),
            ],
        ),
        (
            "data-in-in-two",
            vec![
                split_first,
                split_second,
                scsi_response(5, sn + 1, cmd, 0, &[]),
            ],
        ),
        (
            "check-condition",
            vec![scsi_response(5, sn, cmd, 2, &sense)],
        ),
        ("underflow", vec![underflow]),
        ("target-failure", {
            let mut p = scsi_response(3, sn, cmd, 0, &[]);
            p.bhs[2] = 1;
            vec![p]
        }),
        (
            "nop-in",
            vec![
                nop_in(0xffff_ffff, 0x77, sn, cmd),
                nop_in(9, 0xffff_ffff, sn, cmd),
            ],
        ),
        (
            "r2t-twice",
            vec![
                r2t(4, 1, sn, cmd, 512, 2048),
                r2t(4, 2, sn, cmd, 2560, 1536),
            ],
        ),
        ("r2t-outside", vec![r2t(4, 1, sn, cmd, 8192, 512)]),
        ("async-logout", vec![async_logout]),
        ("async-info", vec![async_info]),
        ("reject", vec![reject]),
        (
            "tmf-logout-text",
            vec![
                simple(op::TASK_MGMT_RESP, 5, sn, cmd),
                simple(op::LOGOUT_RESP, 6, sn + 1, cmd),
                simple(op::TEXT_RESP, 7, sn + 2, cmd),
            ],
        ),
        ("window-closed", {
            let mut p = nop_in(0xffff_ffff, 0xffff_ffff, sn, cmd);
            p.set_u32(32, cmd - 2);
            vec![p]
        }),
    ]
}

fn iscsi_seeds(root: &Path) {
    let mut session = Seeds::new(root, "iscsi_session");
    session.put("closes-at-once", &[]);
    for (name, pdus) in session_pdus() {
        session.put(name, &wire(&pdus));
    }

    let mut pdus = Seeds::new(root, "iscsi_pdu");
    for (name, list) in session_pdus() {
        pdus.put(name, &[&[0u8][..], &wire(&list)].concat());
    }
    let (inquiry, vpd83, rtpg) = alua_data();
    let alua = [
        data_in_with_status(1, 1, 1, 0, &inquiry),
        data_in_with_status(1, 2, 1, 0, &vpd83),
        data_in_with_status(1, 3, 1, 0, &rtpg),
    ];
    pdus.put("alua-answers", &[&[0u8][..], &wire(&alua)].concat());
    let login = [
        login_response(
            true,
            SECURITY,
            OPERATIONAL,
            1,
            1,
            0,
            &[("AuthMethod", "None")],
        ),
        login_response(true, OPERATIONAL, FULL_FEATURE, 2, 1, 0, &OPERATIONAL_KEYS),
    ];
    pdus.put("login-responses", &[&[0u8][..], &wire(&login)].concat());
    let mut text = simple(op::TEXT_RESP, 1, 1, 1);
    text.data =
        b"TargetName=iqn.2003-01.org.example:disk1\0TargetAddress=127.0.0.1:3260,1\0".to_vec();
    pdus.put(
        "send-targets",
        &[&[0u8][..], &wire(&[text.clone()])].concat(),
    );
    let framing = Framing {
        header_digest: true,
        data_digest: true,
        max_recv_data: 8192,
    };
    let mut digested = Vec::new();
    pdu::encode_into(&text, &text.data, &framing, &mut digested);
    pdus.put("digests", &[&[3u8][..], &digested].concat());
    let mut ahs = simple(op::SCSI_RESP, 1, 1, 1);
    ahs.ahs = vec![0, 4, 1, 0, 0, 0, 0, 0];
    pdus.put("ahs", &[&[0u8][..], &wire(&[ahs])].concat());

    login_seeds(root);
}

/// Login response sequences of the login tests: no authentication, CHAP (one-way and
/// mutual), continued text, digests negotiated, discovery, and failures.
fn login_seeds(root: &Path) {
    let mut s = Seeds::new(root, "iscsi_login");
    let none = login_response(
        true,
        SECURITY,
        OPERATIONAL,
        1,
        1,
        0,
        &[("AuthMethod", "None")],
    );
    let op_done = login_response(true, OPERATIONAL, FULL_FEATURE, 2, 1, 0, &OPERATIONAL_KEYS);
    s.put(
        "none",
        &[&[0u8][..], &wire(&[none.clone(), op_done.clone()])].concat(),
    );
    let digests = login_response(
        true,
        OPERATIONAL,
        FULL_FEATURE,
        2,
        1,
        0,
        &[
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "CRC32C"),
            ("MaxRecvDataSegmentLength", "8192"),
            ("MaxBurstLength", "65536"),
            ("FirstBurstLength", "131072"),
            ("ImmediateData", "No"),
            ("InitialR2T", "Yes"),
        ],
    );
    s.put(
        "digests",
        &[&[12u8][..], &wire(&[none.clone(), digests])].concat(),
    );
    let stay = login_response(
        false,
        OPERATIONAL,
        0,
        2,
        1,
        0,
        &[("MaxBurstLength", "262144")],
    );
    let op_late = login_response(true, OPERATIONAL, FULL_FEATURE, 3, 1, 0, &[]);
    s.put(
        "operational-two-rounds",
        &[&[0u8][..], &wire(&[none.clone(), stay, op_late])].concat(),
    );
    let chap_method = login_response(false, SECURITY, 0, 1, 1, 0, &[("AuthMethod", "CHAP")]);
    let chap_challenge = login_response(
        false,
        SECURITY,
        0,
        2,
        1,
        0,
        &[
            ("CHAP_A", "5"),
            ("CHAP_I", "7"),
            ("CHAP_C", "0x0123456789abcdef0123456789abcdef"),
        ],
    );
    let chap_ok = login_response(true, SECURITY, OPERATIONAL, 3, 1, 0, &[]);
    let chap_mutual = login_response(
        true,
        SECURITY,
        OPERATIONAL,
        3,
        1,
        0,
        &[
            ("CHAP_N", "target"),
            ("CHAP_R", "0x00112233445566778899aabbccddeeff"),
        ],
    );
    let op4 = login_response(true, OPERATIONAL, FULL_FEATURE, 4, 1, 0, &OPERATIONAL_KEYS);
    s.put(
        "chap",
        &[
            &[1u8][..],
            &wire(&[
                chap_method.clone(),
                chap_challenge.clone(),
                chap_ok,
                op4.clone(),
            ]),
        ]
        .concat(),
    );
    s.put(
        "chap-mutual",
        &[
            &[2u8][..],
            &wire(&[chap_method, chap_challenge, chap_mutual, op4]),
        ]
        .concat(),
    );
    // The operational answer continued over two PDUs, split inside a key.
    let mut first = login_response(false, OPERATIONAL, 0, 2, 1, 0, &OPERATIONAL_KEYS);
    let whole = first.data.clone();
    first.data = whole[..20].to_vec();
    first.set_flags(0x40 | (OPERATIONAL << 2));
    let mut second = login_response(true, OPERATIONAL, FULL_FEATURE, 3, 1, 0, &[]);
    second.data = whole[20..].to_vec();
    s.put(
        "continued-text",
        &[&[0u8][..], &wire(&[none.clone(), first, second])].concat(),
    );
    s.put(
        "discovery",
        &[&[64u8][..], &wire(&[none.clone(), op_done])].concat(),
    );
    for (status, name) in [
        (0x0201u16, "auth-failed"),
        (0x0202, "not-authorised"),
        (0x0203, "not-found"),
        (0x0300, "target-error"),
    ] {
        let fail = login_response(false, SECURITY, 0, 1, 1, status, &[]);
        s.put(name, &[&[0u8][..], &wire(&[fail])].concat());
    }
    let wrong = simple(op::NOP_IN, 0, 1, 1);
    s.put("wrong-opcode", &[&[0u8][..], &wire(&[wrong])].concat());
    let loop_security = login_response(false, SECURITY, 0, 1, 1, 0, &[]);
    s.put(
        "never-transits",
        &[&[0u8][..], &wire(&vec![loop_security; 10])].concat(),
    );
}

/// The ```toml blocks of a Markdown file.
fn toml_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => current = Some(String::new()),
            (Some(_), l) if l.starts_with("```") => out.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    out
}

fn config_seeds(root: &Path, repo: &Path) {
    let mut s = Seeds::new(root, "config_toml");
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    for (i, block) in toml_blocks(&readme).iter().enumerate() {
        s.put(&format!("readme-{i}.toml"), block.as_bytes());
    }
    let example = std::fs::read_to_string(repo.join("qemu-examples/vscsid.toml")).expect("example");
    // The example with its commented-out iSCSI LUN enabled too.
    let uncommented: String = example
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| !r.starts_with(' '))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n");
    s.put("qemu-example.toml", example.as_bytes());
    s.put("qemu-example-iscsi.toml", uncommented.as_bytes());
    s.put(
        "null-and-iscsi.toml",
        b"[daemon]\nsocket = \"/run/v.sock\"\ninitiator_name = \"iqn.2024-01.test:host\"\n\
          [[lun]]\nlun = 0\nkind = \"null\"\nsize = \"1G\"\nblock_size = 4096\n\
          [[lun]]\nlun = 1\nkind = \"iscsi\"\nurl = \"iscsi://alice%pw@127.0.0.1/iqn.x:y/1\"\n\
          header_digest = true\nnop_interval = 0.5\nnop_timeout = \"400ms\"\npriorities = [0, 1]\n\
          paths = [\"127.0.0.2:3260\"]\nfailback = \"manual\"\npolicy = \"failover\"\n",
    );

    let mut l = Seeds::new(root, "lun_spec");
    let lines = [
        "d /var/lib/vm1/root.img,cache=none",
        "d /var/lib/vm1/data.img,readonly,block-size=4096",
        "d /d.img,readonly,cache=writeback,block-size=4096,discard=ignore,serial=S1,wwn=0x6001405abcdef012",
        "i iscsi://10.0.1.10:3260/iqn.2003-01.com.example:array/0,path=10.0.2.10:3260,policy=round-robin,no-path-retry=30",
        "i iscsi://alice%s3cret@10.0.0.5:3261/iqn.2024-01.com.example:disk1/2,priority=0:1,failback=manual,nop-interval=500ms,nop-timeout=2s,rr-ios=8",
        "i iscsi://[::1]:3262/iqn.x:y/16383",
        "n 1G,block-size=4096",
        "n 512K",
    ];
    for (i, line) in lines.iter().enumerate() {
        l.put(&format!("line-{i}"), line.as_bytes());
    }
    l.put("all", lines.join("\n").as_bytes());
}

fn main() {
    let fuzz_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz_dir.parent().expect("repository").to_path_buf();
    let root = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| fuzz_dir.join("seeds"));
    cdb_seeds(&root);
    virtio_seeds(&root);
    control_seeds(&root);
    iscsi_seeds(&root);
    config_seeds(&root, &repo);
    println!("seeds written under {}", root.display());
}
