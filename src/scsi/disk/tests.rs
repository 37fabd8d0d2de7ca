//! Tests of the emulated disk, command by command, plus a random-CDB property test.

use super::*;
use crate::frontend::rng::Rng;
use crate::scsi::cdb::{
    COMPARE_AND_WRITE, INQUIRY, MAINTENANCE_IN, MI_REPORT_SUPPORTED_OPCODES, MODE_SELECT_6,
    MODE_SENSE_10, MODE_SENSE_6, READ_10, READ_16, READ_CAPACITY_10, REQUEST_SENSE,
    SAI_READ_CAPACITY_16, SERVICE_ACTION_IN_16, SYNCHRONIZE_CACHE_10, TEST_UNIT_READY, UNMAP,
    VERIFY_10, WRITE_10, WRITE_6, WRITE_SAME_16,
};
use crate::scsi::naa::Naa;
use crate::scsi::write_class;
use crate::scsi::{IoRequest, DATA_IN_SCRATCH};

pub(crate) fn props() -> DiskProperties {
    DiskProperties {
        block_size: 512,
        capacity_blocks: 2048,
        readonly: false,
        write_cache: true,
        discard: true,
        unmap_zeroes: true,
        max_transfer_blocks: 1024,
        serial: "SER123".into(),
        naa: Naa::Short(0x3000_0000_dead_beef),
        vendor: "VSCSID".into(),
        product: "VIRTUAL-DISK".into(),
        revision: "0.1".into(),
        rotational: Some(false),
        physical_block_size: 512,
    }
}

fn disk() -> EmulatedDisk {
    EmulatedDisk::new(props())
}

fn run(d: &EmulatedDisk, cdb: &[u8], out: &[u8]) -> (Outcome, Vec<u8>) {
    let mut c = [0u8; 32];
    c[..cdb.len()].copy_from_slice(cdb);
    let mut buf = vec![0u8; 4096];
    let o = d.execute(&c, &out, &mut buf);
    let n = match o {
        Outcome::Good { data_in_len } => data_in_len,
        _ => 0,
    };
    buf.truncate(n);
    (o, buf)
}

fn check(o: Outcome) -> (u8, u8, u8) {
    match o {
        Outcome::Check(s) => (s.key, s.asc, s.ascq),
        other => panic!("expected CHECK CONDITION, got {other:?}"),
    }
}

#[test]
fn standard_inquiry() {
    let (o, d) = run(&disk(), &[INQUIRY, 0, 0, 0, 96, 0], &[]);
    assert_eq!(o, Outcome::Good { data_in_len: 74 });
    assert_eq!(usize::from(d[4]) + 5, d.len());
    assert_eq!(d[0], 0);
    assert_eq!(d[2], 6);
    assert_eq!(d[3] & 0x0f, 2);
    assert_eq!(d[7] & 0x02, 0x02);
    assert_eq!(&d[8..16], b"VSCSID  ");
    assert_eq!(&d[16..32], b"VIRTUAL-DISK    ");
    assert_eq!(&d[32..36], b"0.1 ");
    // Allocation length cuts the answer.
    let (o, _) = run(&disk(), &[INQUIRY, 0, 0, 0, 5, 0], &[]);
    assert_eq!(o, Outcome::Good { data_in_len: 5 });
    // A page code without EVPD, or CmdDt, is invalid.
    assert_eq!(
        check(run(&disk(), &[INQUIRY, 0, 0x80, 0, 96, 0], &[]).0),
        (5, 0x24, 0)
    );
    assert_eq!(
        check(run(&disk(), &[INQUIRY, 2, 0, 0, 96, 0], &[]).0),
        (5, 0x24, 0)
    );
}

#[test]
fn vpd_pages() {
    let d = disk();
    let (_, p0) = run(&d, &[INQUIRY, 1, 0x00, 0, 255, 0], &[]);
    assert_eq!(&p0[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    let (_, p80) = run(&d, &[INQUIRY, 1, 0x80, 0, 255, 0], &[]);
    assert_eq!(&p80[4..], b"SER123");
    let (_, p83) = run(&d, &[INQUIRY, 1, 0x83, 0, 255, 0], &[]);
    assert_eq!(&p83[4..8], &[0x01, 0x03, 0x00, 0x08]);
    assert_eq!(&p83[8..16], &0x3000_0000_dead_beefu64.to_be_bytes());
    assert_eq!(p83[17] & 0x0f, 1); // T10 vendor ID designator
    assert_eq!(
        usize::from(u16::from_be_bytes([p83[2], p83[3]])) + 4,
        p83.len()
    );
    let (_, b0) = run(&d, &[INQUIRY, 1, 0xb0, 0, 255, 0], &[]);
    assert_eq!(b0.len(), 64);
    assert_eq!(b0[4] & 1, 1); // WSNZ
    assert_eq!(u32::from_be_bytes([b0[8], b0[9], b0[10], b0[11]]), 1024);
    assert_eq!(
        u32::from_be_bytes([b0[20], b0[21], b0[22], b0[23]]),
        MAX_UNMAP_BLOCKS
    );
    assert_eq!(u32::from_be_bytes([b0[28], b0[29], b0[30], b0[31]]), 8);
    let (_, b1) = run(&d, &[INQUIRY, 1, 0xb1, 0, 255, 0], &[]);
    assert_eq!(&b1[4..6], &[0, 1]);
    let (_, b2) = run(&d, &[INQUIRY, 1, 0xb2, 0, 255, 0], &[]);
    assert_eq!(b2[5] & 0xe4, 0xe4);
    assert_eq!(b2[6] & 0x07, 2);
    let mut p = props();
    p.unmap_zeroes = false;
    let (_, b2) = run(&EmulatedDisk::new(p), &[INQUIRY, 1, 0xb2, 0, 255, 0], &[]);
    assert_eq!(b2[5] & 0xe4, 0xe0); // LBPU, LBPWS, LBPWS10 without LBPRZ
    assert_eq!(
        check(run(&d, &[INQUIRY, 1, 0x99, 0, 255, 0], &[]).0),
        (5, 0x24, 0)
    );
}

#[test]
fn read_capacity() {
    let (o, d) = run(&disk(), &[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o, Outcome::Good { data_in_len: 8 });
    assert_eq!(&d[0..4], &2047u32.to_be_bytes());
    assert_eq!(&d[4..8], &512u32.to_be_bytes());
    let mut c = [0u8; 16];
    c[0] = SERVICE_ACTION_IN_16;
    c[1] = SAI_READ_CAPACITY_16;
    c[13] = 32;
    let (o, d) = run(&disk(), &c, &[]);
    assert_eq!(o, Outcome::Good { data_in_len: 32 });
    assert_eq!(&d[0..8], &2047u64.to_be_bytes());
    assert_eq!(&d[8..12], &512u32.to_be_bytes());
    assert_eq!(d[14] & 0xc0, 0xc0); // LBPME, LBPRZ
    let mut p = props();
    p.discard = false;
    p.capacity_blocks = 1 << 40;
    let big = EmulatedDisk::new(p);
    let (_, d) = run(&big, &[READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(&d[0..4], &[0xff; 4]);
    let (_, d) = run(&big, &c, &[]);
    assert_eq!(d[14] & 0x80, 0);
    // A device that only discards: thin provisioned, but no LBPRZ.
    let mut p = props();
    p.unmap_zeroes = false;
    let (_, d) = run(&EmulatedDisk::new(p), &c, &[]);
    assert_eq!(d[14] & 0xc0, 0x80);
}

#[test]
fn read_write_become_io() {
    let d = disk();
    let (o, _) = run(&d, &[READ_10, 0, 0, 0, 0, 10, 0, 0, 4, 0], &[]);
    assert_eq!(
        o,
        Outcome::Io(IoRequest::Read {
            offset: 5120,
            len: 2048
        })
    );
    let (o, _) = run(&d, &[WRITE_10, 0x08, 0, 0, 0, 1, 0, 0, 1, 0], &[]);
    assert_eq!(
        o,
        Outcome::Io(IoRequest::Write {
            offset: 512,
            len: 512,
            fua: true
        })
    );
    let (o, _) = run(&d, &[WRITE_10, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[]);
    assert!(matches!(
        o,
        Outcome::Io(IoRequest::Write { fua: false, .. })
    ));
    let (o, _) = run(&d, &[READ_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o, Outcome::Good { data_in_len: 0 });
}

#[test]
fn range_and_size_errors() {
    let d = disk();
    // Last block is fine, one past is not.
    assert!(matches!(
        run(&d, &[READ_10, 0, 0, 0, 0x07, 0xff, 0, 0, 1, 0], &[]).0,
        Outcome::Io(_)
    ));
    assert_eq!(
        check(run(&d, &[READ_10, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0], &[]).0),
        (5, 0x21, 0)
    );
    let mut c = [0u8; 16];
    c[0] = READ_16;
    c[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
    c[13] = 1;
    assert_eq!(check(run(&d, &c, &[]).0), (5, 0x21, 0));
    // More than the maximum transfer length.
    let mut c = [0u8; 16];
    c[0] = READ_16;
    c[10..14].copy_from_slice(&1025u32.to_be_bytes());
    assert_eq!(check(run(&d, &c, &[]).0), (5, 0x24, 0));
}

#[test]
fn readonly_refuses_writes() {
    let mut p = props();
    p.readonly = true;
    let d = EmulatedDisk::new(p);
    assert_eq!(
        check(run(&d, &[WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]).0),
        (7, 0x27, 0)
    );
    assert_eq!(
        check(run(&d, &[WRITE_6, 0, 0, 0, 1, 0], &[]).0),
        (7, 0x27, 0)
    );
    let (_, ms) = run(&d, &[MODE_SENSE_6, 0, 0x3f, 0, 255, 0], &[]);
    assert_eq!(ms[2] & 0x80, 0x80);
    assert!(matches!(
        run(&d, &[READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[]).0,
        Outcome::Io(_)
    ));
}

#[test]
fn unknown_opcode_and_naca() {
    assert_eq!(
        check(run(&disk(), &[0xc5, 0, 0, 0, 0, 0], &[]).0),
        (5, 0x20, 0)
    );
    assert_eq!(
        check(run(&disk(), &[0x04, 0, 0, 0, 0, 0], &[]).0),
        (5, 0x20, 0)
    );
    assert_eq!(
        check(run(&disk(), &[TEST_UNIT_READY, 0, 0, 0, 0, 0x04], &[]).0),
        (5, 0x24, 0)
    );
}

#[test]
fn mode_sense_caching_page_and_select() {
    let d = disk();
    let (o, ms) = run(&d, &[MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], &[]);
    assert_eq!(o, Outcome::Good { data_in_len: 24 });
    assert_eq!(ms[3], 0); // DBD: no block descriptor
    assert_eq!(&ms[4..6], &[0x08, 0x12]);
    assert_eq!(ms[6] & 0x04, 0x04);
    assert_eq!(ms[2] & 0x10, 0x10); // DPOFUA
                                    // Changeable values: only WCE.
    let (_, ch) = run(&d, &[MODE_SENSE_6, 0x08, 0x48, 0, 255, 0], &[]);
    assert_eq!(ch[6], 0x04);
    assert!(ch[7..].iter().all(|&b| b == 0));
    // Saved values are not supported.
    assert_eq!(
        check(run(&d, &[MODE_SENSE_6, 0, 0xc8, 0, 255, 0], &[]).0),
        (5, 0x39, 0)
    );
    // MODE SELECT(6) clearing WCE.
    let mut list = vec![0u8; 4];
    let mut page = ms[4..24].to_vec();
    page[2] &= !0x04;
    list.extend_from_slice(&page);
    let (o, _) = run(&d, &[MODE_SELECT_6, 0x10, 0, 0, list.len() as u8, 0], &list);
    assert_eq!(o, Outcome::Good { data_in_len: 0 });
    assert!(!d.write_cache_enabled());
    let (_, ms) = run(&d, &[MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], &[]);
    assert_eq!(ms[6] & 0x04, 0);
    // With WCE=0 every write is FUA.
    let (o, _) = run(&d, &[WRITE_10, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[]);
    assert!(matches!(o, Outcome::Io(IoRequest::Write { fua: true, .. })));
    d.reset();
    assert!(d.write_cache_enabled());
    // The reset is reported once, to the first command that is not INQUIRY, REPORT LUNS
    // or REQUEST SENSE.
    let (o, _) = run(&d, &[INQUIRY, 0, 0, 0, 36, 0], &[]);
    assert!(matches!(o, Outcome::Good { .. }));
    let (o, _) = run(&d, &[0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o, Outcome::Check(Sense::reset_occurred()));
    let (o, _) = run(&d, &[0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(o, Outcome::Good { data_in_len: 0 });
}

#[test]
fn mode_select_rejects_bad_lists() {
    let d = disk();
    let (_, ms) = run(&d, &[MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], &[]);
    let mut list = vec![0u8; 4];
    let mut page = ms[4..24].to_vec();
    page[3] = 0x55; // an unchangeable field
    list.extend_from_slice(&page);
    assert_eq!(
        check(run(&d, &[MODE_SELECT_6, 0x10, 0, 0, list.len() as u8, 0], &list).0),
        (5, 0x26, 0)
    );
    // PF=0.
    assert_eq!(
        check(run(&d, &[MODE_SELECT_6, 0x00, 0, 0, 24, 0], &list).0),
        (5, 0x24, 0)
    );
    // Guest supplied fewer bytes than the parameter list length.
    assert_eq!(
        check(run(&d, &[MODE_SELECT_6, 0x10, 0, 0, 24, 0], &list[..10]).0),
        (5, 0x1a, 0)
    );
    // Unknown page.
    let bad = [0u8, 0, 0, 0, 0x19, 2, 0, 0];
    assert_eq!(
        check(run(&d, &[MODE_SELECT_6, 0x10, 0, 0, 8, 0], &bad).0),
        (5, 0x26, 0)
    );
}

#[test]
fn mode_sense_10_with_long_lba_block_descriptor() {
    let (o, ms) = run(
        &disk(),
        &[MODE_SENSE_10, 0x10, 0x3f, 0, 0, 0, 0, 0x01, 0, 0],
        &[],
    );
    assert_eq!(
        o,
        Outcome::Good {
            data_in_len: 8 + 16 + 20 + 12
        }
    );
    assert_eq!(ms[4] & 1, 1);
    assert_eq!(&ms[6..8], &16u16.to_be_bytes());
    assert_eq!(&ms[8..16], &2048u64.to_be_bytes());
    assert_eq!(ms[24], 0x08);
    assert_eq!(ms[44], 0x0a);
}

#[test]
fn synchronize_cache_and_verify() {
    let d = disk();
    assert_eq!(
        run(&d, &[SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]).0,
        Outcome::Io(IoRequest::Flush)
    );
    assert_eq!(
        check(
            run(
                &d,
                &[SYNCHRONIZE_CACHE_10, 0, 0, 0, 0x10, 0, 0, 0, 1, 0],
                &[]
            )
            .0
        ),
        (5, 0x21, 0)
    );
    assert_eq!(
        run(&d, &[VERIFY_10, 0x02, 0, 0, 0, 2, 0, 0, 1, 0], &[]).0,
        Outcome::Io(IoRequest::Verify {
            offset: 1024,
            len: 512,
            compare: true
        })
    );
    assert!(matches!(
        run(&d, &[VERIFY_10, 0, 0, 0, 0, 2, 0, 0, 1, 0], &[]).0,
        Outcome::Io(IoRequest::Verify { compare: false, .. })
    ));
    assert_eq!(
        check(run(&d, &[VERIFY_10, 0x04, 0, 0, 0, 2, 0, 0, 1, 0], &[]).0),
        (5, 0x24, 0)
    );
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut l = vec![0u8; 8];
    let bd = (descs.len() * 16) as u16;
    l[0..2].copy_from_slice(&(bd + 6).to_be_bytes());
    l[2..4].copy_from_slice(&bd.to_be_bytes());
    for &(lba, n) in descs {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&n.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

#[test]
fn unmap_reads_its_parameter_list() {
    let d = disk();
    let l = unmap_list(&[(0, 8), (100, 0), (2040, 8)]);
    let c = [UNMAP, 0, 0, 0, 0, 0, 0, 0, l.len() as u8, 0];
    assert_eq!(
        run(&d, &c, &l).0,
        Outcome::Io(IoRequest::Discard {
            ranges: vec![(0, 4096), (2040 * 512, 4096)]
        })
    );
    let l = unmap_list(&[(2041, 8)]);
    let c = [UNMAP, 0, 0, 0, 0, 0, 0, 0, l.len() as u8, 0];
    assert_eq!(check(run(&d, &c, &l).0), (5, 0x21, 0));
    let mut l = unmap_list(&[(0, 8)]);
    l[3] = 15; // not a multiple of 16
    let c = [UNMAP, 0, 0, 0, 0, 0, 0, 0, l.len() as u8, 0];
    assert_eq!(check(run(&d, &c, &l).0), (5, 0x26, 0));
    let c = [UNMAP, 0, 0, 0, 0, 0, 0, 0, 4, 0];
    assert_eq!(check(run(&d, &c, &l).0), (5, 0x1a, 0));
    let c = [UNMAP, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(run(&d, &c, &[]).0, Outcome::Good { data_in_len: 0 });
    let mut p = props();
    p.discard = false;
    assert_eq!(check(run(&EmulatedDisk::new(p), &c, &[]).0), (5, 0x20, 0));
}

#[test]
fn write_same_variants() {
    let d = disk();
    let zero = vec![0u8; 512];
    let mut c = [0u8; 16];
    c[0] = WRITE_SAME_16;
    c[1] = 0x08;
    c[13] = 16;
    assert_eq!(
        run(&d, &c, &zero).0,
        Outcome::Io(IoRequest::Discard {
            ranges: vec![(0, 8192)]
        })
    );
    c[1] = 0;
    assert_eq!(
        run(&d, &c, &zero).0,
        Outcome::Io(IoRequest::WriteZeroes {
            offset: 0,
            len: 8192
        })
    );
    let pattern = vec![0xa5u8; 512];
    assert_eq!(
        run(&d, &c, &pattern).0,
        Outcome::Io(IoRequest::WriteSame {
            offset: 0,
            len: 8192,
            block_len: 512
        })
    );
    c[1] = 0x01; // NDOB: no data-out
    assert!(matches!(
        run(&d, &c, &[]).0,
        Outcome::Io(IoRequest::WriteZeroes { .. })
    ));
    c[1] = 0;
    assert_eq!(check(run(&d, &c, &pattern[..100]).0), (5, 0x1a, 0));
    // Where deallocated blocks do not read as zeroes, WRITE SAME(UNMAP) of zeroes writes
    // them.
    let mut p = props();
    p.unmap_zeroes = false;
    c[1] = 0x08;
    assert_eq!(
        run(&EmulatedDisk::new(p), &c, &zero).0,
        Outcome::Io(IoRequest::WriteZeroes {
            offset: 0,
            len: 8192
        })
    );
    c[1] = 0;
    c[13] = 0;
    assert_eq!(check(run(&d, &c, &pattern).0), (5, 0x24, 0));
}

#[test]
fn compare_and_write_limits() {
    let d = disk();
    let mut c = [0u8; 16];
    c[0] = COMPARE_AND_WRITE;
    c[9] = 4;
    c[13] = 2;
    assert_eq!(
        run(&d, &c, &[]).0,
        Outcome::Io(IoRequest::CompareAndWrite {
            offset: 2048,
            len: 1024,
            fua: false
        })
    );
    c[13] = MAX_COMPARE_AND_WRITE_BLOCKS + 1;
    assert_eq!(check(run(&d, &c, &[]).0), (5, 0x24, 0));
}

#[test]
fn the_report_has_room_for_every_command() {
    assert!(SUPPORTED_COMMANDS.len() <= opcodes::MAX_LISTED);
}

#[test]
fn report_supported_operation_codes() {
    let d = disk();
    let mut c = [0u8; 12];
    c[0] = MAINTENANCE_IN;
    c[1] = MI_REPORT_SUPPORTED_OPCODES;
    c[6..10].copy_from_slice(&4096u32.to_be_bytes());
    let (o, all) = run(&d, &c, &[]);
    let n = SUPPORTED_COMMANDS.len();
    assert_eq!(
        o,
        Outcome::Good {
            data_in_len: 4 + 8 * n
        }
    );
    assert_eq!(&all[0..4], &((8 * n) as u32).to_be_bytes());
    // Every listed command is actually accepted by the dispatcher (never INVALID OPCODE).
    for s in SUPPORTED_COMMANDS {
        if opcodes::answered_outside_the_disk(s.opcode) {
            continue; // the LUN table's and the disk LUN's, covered by their tests
        }
        let mut cdb = [0u8; 32];
        cdb[0] = s.opcode;
        if let Some(sa) = s.service_action {
            cdb[1] = sa as u8;
        }
        let mut buf = [0u8; 4096];
        if let Outcome::Check(sense) = d.execute(&cdb, &&[][..], &mut buf) {
            assert_ne!(
                (sense.key, sense.asc),
                (5, 0x20),
                "opcode {:#x} listed but refused",
                s.opcode
            );
        }
    }
    // One command: READ(10) supported with its usage bitmap.
    c[2] = 0x01;
    c[3] = READ_10;
    let (_, one) = run(&d, &c, &[]);
    assert_eq!(one[1] & 0x07, 0x03);
    assert_eq!(&one[2..4], &10u16.to_be_bytes());
    assert_eq!(one[4], READ_10);
    // Unsupported command.
    c[3] = 0xc1;
    let (_, none) = run(&d, &c, &[]);
    assert_eq!(none[1] & 0x07, 0x01);
    // With timeouts descriptors.
    c[2] = 0x80;
    let (o, _) = run(&d, &c, &[]);
    assert_eq!(
        o,
        Outcome::Good {
            data_in_len: 4 + 20 * n
        }
    );
}

#[test]
fn request_sense_formats() {
    let (o, d) = run(&disk(), &[REQUEST_SENSE, 0, 0, 0, 252, 0], &[]);
    assert_eq!(o, Outcome::Good { data_in_len: 18 });
    assert_eq!((d[0], d[2]), (0x70, 0));
    let (_, d) = run(&disk(), &[REQUEST_SENSE, 1, 0, 0, 252, 0], &[]);
    assert_eq!(d[0], 0x72);
}

#[test]
fn random_cdbs_never_panic_and_stay_in_bounds() {
    let d = disk();
    let cap = props().capacity_blocks * 512;
    // Reproducible without a dependency: the same inputs on every run.
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    let opcodes: Vec<u8> = SUPPORTED_COMMANDS.iter().map(|s| s.opcode).collect();
    let mut data_in = vec![0u8; DATA_IN_SCRATCH];
    for i in 0..50_000 {
        let mut cdb = [0u8; 32];
        rng.fill(&mut cdb);
        if i % 2 == 0 {
            cdb[0] = opcodes[(rng.next_u64() as usize) % opcodes.len()];
        }
        let cdb_len = (rng.next_u64() % 33) as usize;
        let out_len = (rng.next_u64() % 600) as usize;
        let mut out = vec![0u8; out_len];
        rng.fill(&mut out);
        let in_len = (rng.next_u64() % 300) as usize;
        let o = d.execute(&cdb[..cdb_len], &&out[..], &mut data_in[..in_len]);
        match o {
            Outcome::Good { data_in_len } => assert!(data_in_len <= in_len),
            Outcome::Check(_) => {}
            Outcome::Io(req) => {
                let within = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= cap);
                match req {
                    IoRequest::Read { offset, len }
                    | IoRequest::Write { offset, len, .. }
                    | IoRequest::WriteZeroes { offset, len }
                    | IoRequest::WriteSame { offset, len, .. }
                    | IoRequest::CompareAndWrite { offset, len, .. }
                    | IoRequest::Verify { offset, len, .. } => {
                        assert!(within(offset, len) && len > 0, "{req:?}")
                    }
                    IoRequest::Discard { ranges } => {
                        assert!(ranges.iter().all(|&(o, l)| within(o, l)))
                    }
                    IoRequest::Flush => {}
                }
            }
        }
    }
}

#[test]
fn standard_inquiry_claims_sam5_spc4_sbc3() {
    let (_, d) = run(&disk(), &[INQUIRY, 0, 0, 0, 96, 0], &[]);
    let descriptors: Vec<u16> = d[58..74]
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .filter(|&v| v != 0)
        .collect();
    assert_eq!(descriptors, [0x00a0, 0x0460, 0x04c0]);
}

#[test]
fn naa_designator_length_follows_its_type() {
    for (naa, len) in [
        (Naa::Short(0x5000_c500_a1b2_c3d4), 8usize),
        (Naa::Extended(0x6001_405a_abbc_cdd0_0011_2233_4455_6677), 16),
    ] {
        let mut p = props();
        p.naa = naa;
        let (_, p83) = run(&EmulatedDisk::new(p), &[INQUIRY, 1, 0x83, 0, 255, 0], &[]);
        assert_eq!(&p83[4..8], &[0x01, 0x03, 0x00, len as u8]);
        assert_eq!(&p83[8..8 + len], &naa.bytes().0[..len]);
        // The T10 vendor ID designator follows right after.
        assert_eq!(p83[8 + len + 1] & 0x0f, 1);
        assert_eq!(
            usize::from(u16::from_be_bytes([p83[2], p83[3]])) + 4,
            p83.len()
        );
    }
}

#[test]
fn rotation_rate_is_reported_only_when_known() {
    for (rotational, rate) in [(Some(false), 1u16), (Some(true), 0), (None, 0)] {
        let mut p = props();
        p.rotational = rotational;
        let (_, b1) = run(&EmulatedDisk::new(p), &[INQUIRY, 1, 0xb1, 0, 255, 0], &[]);
        assert_eq!(&b1[4..6], &rate.to_be_bytes(), "{rotational:?}");
        assert_eq!(b1.len(), 64);
    }
}

#[test]
fn physical_block_size_shows_in_read_capacity_16_and_block_limits() {
    let mut c = [0u8; 16];
    c[0] = SERVICE_ACTION_IN_16;
    c[1] = SAI_READ_CAPACITY_16;
    c[13] = 32;
    // (logical, physical, exponent, optimal transfer length granularity, unmap granularity)
    for (logical, physical, exp, otlg, unmap_g) in [
        (512u32, 512u32, 0u8, 1u16, 8u32),
        (512, 4096, 3, 8, 8),
        (512, 32768, 6, 64, 64),
        (4096, 4096, 0, 1, 1),
        (4096, 16384, 2, 4, 4),
    ] {
        let mut p = props();
        p.block_size = logical;
        p.physical_block_size = physical;
        let d = EmulatedDisk::new(p);
        let (_, rc) = run(&d, &c, &[]);
        assert_eq!(rc[13] & 0x0f, exp, "{logical}/{physical}");
        assert_eq!(
            &rc[14..16],
            &[0xc0, 0],
            "LBPME, LBPRZ, lowest aligned LBA 0"
        );
        let (_, b0) = run(&d, &[INQUIRY, 1, 0xb0, 0, 255, 0], &[]);
        assert_eq!(u16::from_be_bytes([b0[6], b0[7]]), otlg);
        assert_eq!(
            u32::from_be_bytes([b0[28], b0[29], b0[30], b0[31]]),
            unmap_g
        );
    }
}

#[test]
fn block_limits_unmap_fields_match_what_unmap_accepts() {
    let d = disk();
    let (_, b0) = run(&d, &[INQUIRY, 1, 0xb0, 0, 255, 0], &[]);
    let max_lbas = u32::from_be_bytes([b0[20], b0[21], b0[22], b0[23]]);
    let max_descs = u32::from_be_bytes([b0[24], b0[25], b0[26], b0[27]]);
    assert_eq!(
        (max_lbas, max_descs),
        (MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS)
    );
    let mut p = props();
    p.capacity_blocks = u64::from(MAX_UNMAP_BLOCKS) * 2;
    let big = EmulatedDisk::new(p);
    let unmap = |descs: &[(u64, u32)]| {
        let list = unmap_list(descs);
        let mut c = [0u8; 10];
        c[0] = UNMAP;
        c[7..9].copy_from_slice(&(list.len() as u16).to_be_bytes());
        run(&big, &c, &list).0
    };
    // As many descriptors as reported, adding up to as many blocks as reported.
    let per = max_lbas / max_descs;
    let mut descs: Vec<(u64, u32)> = (0..u64::from(max_descs))
        .map(|i| (i * u64::from(per), per))
        .collect();
    descs.last_mut().expect("one").1 += max_lbas - per * max_descs;
    assert!(matches!(
        unmap(&descs),
        Outcome::Io(IoRequest::Discard { .. })
    ));
    // One block more, or one descriptor more, is refused.
    descs.last_mut().expect("one").1 += 1;
    assert_eq!(check(unmap(&descs)), (5, 0x26, 0));
    let too_many: Vec<(u64, u32)> = (0..u64::from(max_descs) + 1).map(|i| (i, 1)).collect();
    assert_eq!(check(unmap(&too_many)), (5, 0x26, 0));
    // Without discard UNMAP is not supported and the limits are 0.
    let mut p = props();
    p.discard = false;
    let d = EmulatedDisk::new(p);
    let (_, b0) = run(&d, &[INQUIRY, 1, 0xb0, 0, 255, 0], &[]);
    assert!(b0[20..32].iter().all(|&b| b == 0));
    assert_eq!(
        check(run(&d, &[UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0], &[]).0),
        (5, 0x20, 0)
    );
}

#[test]
fn usage_data_marks_dpo_and_fua_when_dpofua_is_set() {
    use crate::scsi::cdb::{
        READ_12, VERIFY_12, VERIFY_16, WRITE_12, WRITE_16, WRITE_AND_VERIFY_10,
        WRITE_AND_VERIFY_12, WRITE_AND_VERIFY_16,
    };
    let d = disk();
    let (_, ms) = run(&d, &[MODE_SENSE_6, 0x08, 0x08, 0, 255, 0], &[]);
    assert_eq!(ms[2] & DEVICE_SPECIFIC_DPOFUA, DEVICE_SPECIFIC_DPOFUA);
    // (opcode, bits of CDB byte 1 the disk honours)
    let cases = [
        (READ_10, DPO | FUA),
        (READ_12, DPO | FUA),
        (READ_16, DPO | FUA),
        (WRITE_10, DPO | FUA),
        (WRITE_12, DPO | FUA),
        (WRITE_16, DPO | FUA),
        (VERIFY_10, DPO),
        (VERIFY_12, DPO),
        (VERIFY_16, DPO),
        (WRITE_AND_VERIFY_10, DPO),
        (WRITE_AND_VERIFY_12, DPO),
        (WRITE_AND_VERIFY_16, DPO),
    ];
    for (op, bits) in cases {
        let mut c = [0u8; 12];
        c[0] = MAINTENANCE_IN;
        c[1] = MI_REPORT_SUPPORTED_OPCODES;
        c[2] = 0x01;
        c[3] = op;
        c[6..10].copy_from_slice(&64u32.to_be_bytes());
        let (_, one) = run(&d, &c, &[]);
        assert_eq!(one[1] & 0x07, 0x03, "{op:#x} supported");
        assert_eq!(one[5] & bits, bits, "{op:#x} usage byte 1 {:#x}", one[5]);
        // The bits marked are accepted: FUA and DPO set together still run.
        let mut cmd = [0u8; 16];
        cmd[0] = op;
        cmd[1] = bits;
        let len_at = match op >> 5 {
            1 => 7,
            5 => 6,
            _ => 10,
        };
        cmd[len_at + if op >> 5 == 1 { 1 } else { 3 }] = 1;
        assert!(
            matches!(run(&d, &cmd, &[]).0, Outcome::Io(_)),
            "{op:#x} with {bits:#x}"
        );
    }
}

/// A CDB of `op` for one block at LBA 0 (the length field where the opcode has it).
fn one_block_cdb(op: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    match op {
        COMPARE_AND_WRITE => c[13] = 1,
        UNMAP => {}
        _ => match op >> 5 {
            0 => c[4] = 1,
            1 | 2 => c[8] = 1,
            5 => c[9] = 1,
            _ => c[13] = 1,
        },
    }
    c
}

#[test]
fn a_readonly_disk_refuses_every_write_class_command_it_supports() {
    let mut p = props();
    p.readonly = true;
    let d = EmulatedDisk::new(p);
    let block = [0u8; 1024];
    let mut write_class_seen = 0;
    for s in SUPPORTED_COMMANDS
        .iter()
        .filter(|s| !opcodes::answered_outside_the_disk(s.opcode))
    {
        let mut c = one_block_cdb(s.opcode);
        if let Some(sa) = s.service_action {
            c[1] = sa as u8;
        }
        let o = run(&d, &c, &block).0;
        if write_class::changes_data(&c) {
            write_class_seen += 1;
            assert_eq!(check(o), (7, 0x27, 0), "opcode {:#x}", s.opcode);
        } else if let Outcome::Check(sense) = o {
            assert_ne!(sense.key, 7, "opcode {:#x} is not a write", s.opcode);
        }
    }
    // WRITE 6/10/12/16, WRITE AND VERIFY 10/12/16, WRITE SAME 10/16, UNMAP, COMPARE AND WRITE.
    assert_eq!(write_class_seen, 11);
}

#[test]
fn write_and_verify_is_a_write_that_reaches_the_medium() {
    use crate::scsi::cdb::{WRITE_AND_VERIFY_10, WRITE_AND_VERIFY_12, WRITE_AND_VERIFY_16};
    let d = disk();
    assert!(d.write_cache_enabled());
    for op in [
        WRITE_AND_VERIFY_10,
        WRITE_AND_VERIFY_12,
        WRITE_AND_VERIFY_16,
    ] {
        let mut c = one_block_cdb(op);
        let lba_at = 2;
        if op == WRITE_AND_VERIFY_16 {
            c[lba_at + 7] = 5;
        } else {
            c[lba_at + 3] = 5;
        }
        assert_eq!(
            run(&d, &c, &[]).0,
            Outcome::Io(IoRequest::Write {
                offset: 5 * 512,
                len: 512,
                fua: true
            }),
            "{op:#x}"
        );
        // BYTCHK 01b and 11b (byte-by-byte comparisons) are not supported, 10b is
        // reserved; WRPROTECT needs protection information.
        for flags in [0x02u8, 0x04, 0x06, 0x20] {
            c[1] = flags;
            assert_eq!(
                check(run(&d, &c, &[]).0),
                (5, 0x24, 0),
                "{op:#x} {flags:#x}"
            );
        }
        c[1] = 0x10; // DPO is accepted
        assert!(matches!(run(&d, &c, &[]).0, Outcome::Io(_)));
        // Past the end of the medium.
        let mut c = one_block_cdb(op);
        c[2..6].copy_from_slice(&2048u32.to_be_bytes());
        assert_eq!(check(run(&d, &c, &[]).0), (5, 0x21, 0));
    }
}
