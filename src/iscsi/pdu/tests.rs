//! Tests of PDU encoding and decoding: lengths, padding, digests, fields.

use super::*;
use crate::scsi::cdb::{READ_10, WRITE_BUFFER};
use crate::scsi::LunId;

/// The LUN field of LUN `n`.
fn lun(n: u16) -> u64 {
    LunId::new(n).expect("lun").to_u64()
}

#[test]
fn crc32c_known_vector() {
    // RFC 3720 appendix B.4: 32 bytes of zeroes.
    assert_eq!(digest(&[&[0u8; 32]]), 0x8a91_36aa);
    assert_eq!(digest(&[&[0xffu8; 32]]), 0x62a8_ab43);
}

#[test]
fn encode_pads_and_sets_lengths() {
    let mut p = Pdu::new(op::TEXT_REQ);
    p.set_flags(F_FINAL);
    p.set_itt(0x1234_5678);
    p.data = b"SendTargets=All\0".to_vec();
    p.data.push(b'x');
    let bytes = encode(&p, &Framing::default());
    assert_eq!(bytes.len(), 48 + 20);
    assert_eq!(bytes[0], 0x04);
    assert_eq!(bytes[1], 0x80);
    assert_eq!(&bytes[5..8], &[0, 0, 17]);
    assert_eq!(&bytes[16..20], &[0x12, 0x34, 0x56, 0x78]);
    assert_eq!(&bytes[65..68], &[0, 0, 0]);
}

#[test]
fn a_whole_pdu_is_told_from_a_part() {
    let mut p = Pdu::new(op::DATA_IN);
    p.ahs = vec![1, 2, 3, 4];
    p.data = vec![7; 5];
    for f in [
        Framing::default(),
        Framing {
            header_digest: true,
            data_digest: true,
            max_recv_data: 8192,
        },
    ] {
        let mut bytes = encode(&p, &f);
        let whole = bytes.len();
        assert!(whole_pdu_in(&bytes, &f));
        assert!(!whole_pdu_in(&bytes[..whole - 1], &f), "{f:?}");
        assert!(!whole_pdu_in(&bytes[..BHS_LEN - 1], &f));
        // More after it (the next PDU's start) does not matter.
        bytes.extend_from_slice(&[0; 10]);
        assert!(whole_pdu_in(&bytes, &f));
    }
    // Without data, no data digest either.
    let f = Framing {
        header_digest: false,
        data_digest: true,
        max_recv_data: 8192,
    };
    let bytes = encode(&Pdu::new(op::SCSI_RESP), &f);
    assert_eq!(bytes.len(), BHS_LEN);
    assert!(whole_pdu_in(&bytes, &f));
}

#[test]
fn round_trip_with_digests() {
    let f = Framing {
        header_digest: true,
        data_digest: true,
        max_recv_data: 65536,
    };
    let mut p = Pdu::new(op::DATA_OUT);
    p.set_lun(lun(1));
    p.ahs = vec![1, 2, 3, 4];
    p.data = vec![7u8; 1001];
    let bytes = encode(&p, &f);
    assert_eq!(bytes.len(), 48 + 4 + 4 + 1004 + 4);
    let back = read_pdu(&mut &bytes[..], &f).expect("decode");
    assert_eq!(back.data, p.data);
    assert_eq!(back.ahs, p.ahs);
    assert_eq!(back.lun(), 0x0001_0000_0000_0000);
    let mut corrupt = bytes.clone();
    corrupt[60] ^= 1;
    assert!(read_pdu(&mut &corrupt[..], &f).is_err());
    let mut corrupt = bytes;
    corrupt[2] ^= 1;
    assert!(read_pdu(&mut &corrupt[..], &f).is_err());
}

#[test]
fn oversized_data_segment_is_refused() {
    let mut b = [0u8; 48];
    b[0] = op::DATA_IN;
    b[5] = 0x10; // 1 MiB
    assert!(read_pdu(&mut &b[..], &Framing::default()).is_err());
    // Truncated input is an error, not a panic.
    assert!(read_pdu(&mut &b[..10], &Framing::default()).is_err());
}

// Golden images, written out by hand from the RFC 7143 section 11 layouts. A builder
// that drifted by a byte would still round-trip through its own decoder, so these pin
// the wire format itself.

/// Framing for the golden images: no digests, and room for any data segment here.
fn plain() -> Framing {
    Framing {
        header_digest: false,
        data_digest: false,
        max_recv_data: 65536,
    }
}

/// Decodes a complete image and checks that nothing was left over.
fn decode_all(image: &[u8], f: &Framing) -> Pdu {
    let mut rest = image;
    let p = read_pdu(&mut rest, f).expect("decode golden image");
    assert!(rest.is_empty(), "{} bytes left after the PDU", rest.len());
    p
}

/// A decoded PDU matches the one built, apart from the length fields that only
/// `encode` fills in.
fn assert_decodes_to(decoded: &Pdu, built: &Pdu) {
    let mut bhs = decoded.bhs;
    bhs[4..8].fill(0);
    assert_eq!(bhs, built.bhs);
    assert_eq!(decoded.ahs, built.ahs);
    assert_eq!(decoded.data, built.data);
}

#[test]
fn golden_scsi_command_read_without_immediate_data() {
    let mut p = Pdu::new(op::SCSI_CMD);
    // F | R | ATTR=Ordered(2).
    p.set_flags(F_FINAL | 0x40 | 0x02);
    p.set_lun(lun(3));
    p.set_itt(0x0000_1001);
    p.set_u32(20, 4096);
    p.set_u32(24, 0x0102_0304);
    p.set_u32(28, 0xa0b0_c0d0);
    // READ(10), LBA 0x12345678, 8 blocks.
    let cdb = [
        READ_10, 0x00, 0x12, 0x34, 0x56, 0x78, 0x00, 0x00, 0x08, 0x00,
    ];
    p.bhs[32..32 + cdb.len()].copy_from_slice(&cdb);
    #[rustfmt::skip]
    let want: [u8; 48] = [
        0x01,                   // byte 0: opcode 0x01, I=0
        0xc2,                   // byte 1: F=1 R=1 W=0, ATTR=2 (Ordered)
        0x00, 0x00,             // bytes 2-3: reserved
        0x00,                   // byte 4: TotalAHSLength
        0x00, 0x00, 0x00,       // bytes 5-7: DataSegmentLength
        0x00, 0x03, 0x00, 0x00, // bytes 8-15: LUN 3, single level
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x10, 0x01, // bytes 16-19: Initiator Task Tag
        0x00, 0x00, 0x10, 0x00, // bytes 20-23: Expected Data Transfer Length 4096
        0x01, 0x02, 0x03, 0x04, // bytes 24-27: CmdSN
        0xa0, 0xb0, 0xc0, 0xd0, // bytes 28-31: ExpStatSN
        0x28, 0x00, 0x12, 0x34, // bytes 32-47: CDB, READ(10) padded to 16 bytes
        0x56, 0x78, 0x00, 0x00,
        0x08, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
    ];
    assert_eq!(encode(&p, &plain()), want);
    assert_decodes_to(&decode_all(&want, &plain()), &p);
}

#[test]
fn golden_scsi_command_write_with_padded_immediate_data() {
    let mut p = Pdu::new(op::SCSI_CMD);
    p.set_immediate();
    // F | W | ATTR=Simple(1).
    p.set_flags(F_FINAL | 0x20 | 0x01);
    p.set_lun(lun(1));
    p.set_itt(0x0000_002a);
    p.set_u32(20, 5);
    p.set_u32(24, 7);
    p.set_u32(28, 9);
    // WRITE BUFFER, mode 02h (data), parameter list length 5.
    let mut cdb = [0u8; 10];
    cdb[0] = WRITE_BUFFER;
    cdb[1] = 0x02;
    cdb[8] = 5;
    p.bhs[32..32 + cdb.len()].copy_from_slice(&cdb);
    p.data = b"hello".to_vec();
    #[rustfmt::skip]
    let want: [u8; 56] = [
        0x41,                   // byte 0: I=1, opcode 0x01
        0xa1,                   // byte 1: F=1 R=0 W=1, ATTR=1 (Simple)
        0x00, 0x00,             // bytes 2-3: reserved
        0x00,                   // byte 4: TotalAHSLength
        0x00, 0x00, 0x05,       // bytes 5-7: DataSegmentLength 5 (unpadded)
        0x00, 0x01, 0x00, 0x00, // bytes 8-15: LUN 1
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x2a, // bytes 16-19: Initiator Task Tag
        0x00, 0x00, 0x00, 0x05, // bytes 20-23: Expected Data Transfer Length
        0x00, 0x00, 0x00, 0x07, // bytes 24-27: CmdSN
        0x00, 0x00, 0x00, 0x09, // bytes 28-31: ExpStatSN
        0x3b, 0x02, 0x00, 0x00, // bytes 32-47: CDB, WRITE BUFFER
        0x00, 0x00, 0x00, 0x00,
        0x05, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        b'h', b'e', b'l', b'l', // immediate data
        b'o', 0x00, 0x00, 0x00, // ... and three pad bytes to a 4-byte boundary
    ];
    assert_eq!(encode(&p, &plain()), want);
    let back = decode_all(&want, &plain());
    assert_eq!(back.bhs[0] & F_IMMEDIATE, F_IMMEDIATE);
    assert_eq!(back.data, b"hello", "padding is not part of the data");
    assert_decodes_to(&back, &p);
}

#[test]
fn golden_scsi_command_rfc3720_crc_vector() {
    // The iSCSI Read PDU of RFC 3720 appendix B.4, whose header digest the RFC gives
    // as the wire bytes 56 3a 96 d9.
    let mut p = Pdu::new(op::SCSI_CMD);
    p.set_flags(F_FINAL | 0x40);
    p.set_itt(0x1400_0000);
    p.set_u32(20, 0x400);
    p.set_u32(24, 0x14);
    p.set_u32(28, 0x18);
    p.bhs[32] = READ_10;
    p.bhs[40] = 0x02;
    let f = Framing {
        header_digest: true,
        ..plain()
    };
    let bytes = encode(&p, &f);
    assert_eq!(bytes.len(), 52);
    assert_eq!(&bytes[48..], &[0x56, 0x3a, 0x96, 0xd9]);
    assert_decodes_to(&decode_all(&bytes, &f), &p);
}

#[test]
fn golden_data_out_with_header_and_data_digests() {
    let mut p = Pdu::new(op::DATA_OUT);
    p.set_flags(F_FINAL);
    p.set_lun(lun(2));
    p.set_itt(0x0000_0033);
    p.set_u32(20, 0x0000_0777);
    p.set_u32(28, 0x55);
    p.set_u32(36, 2);
    p.set_u32(40, 0x0001_0000);
    p.data = vec![0xde, 0xad, 0xbe, 0xef, 0x01, 0x02];
    #[rustfmt::skip]
    let bhs: [u8; 48] = [
        0x05,                   // byte 0: opcode 0x05 (never immediate)
        0x80,                   // byte 1: F=1
        0x00, 0x00,             // bytes 2-3: reserved
        0x00,                   // byte 4: TotalAHSLength
        0x00, 0x00, 0x06,       // bytes 5-7: DataSegmentLength 6
        0x00, 0x02, 0x00, 0x00, // bytes 8-15: LUN 2
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x33, // bytes 16-19: Initiator Task Tag
        0x00, 0x00, 0x07, 0x77, // bytes 20-23: Target Transfer Tag from the R2T
        0x00, 0x00, 0x00, 0x00, // bytes 24-27: reserved
        0x00, 0x00, 0x00, 0x55, // bytes 28-31: ExpStatSN
        0x00, 0x00, 0x00, 0x00, // bytes 32-35: reserved
        0x00, 0x00, 0x00, 0x02, // bytes 36-39: DataSN
        0x00, 0x01, 0x00, 0x00, // bytes 40-43: Buffer Offset 64 KiB
        0x00, 0x00, 0x00, 0x00, // bytes 44-47: reserved
    ];
    let padded_data = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x00, 0x00];
    assert_eq!(
        encode(&p, &plain())[..],
        [&bhs[..], &padded_data[..]].concat()
    );

    // With digests: CRC32C of the header and of the padded data, each sent
    // least-significant byte first (RFC 7143 13.1, RFC 3720 B.4), computed here with the
    // crc32c crate rather than the module's helper.
    let f = Framing {
        header_digest: true,
        data_digest: true,
        max_recv_data: 8192,
    };
    let hd = crc32c::crc32c(&bhs).to_le_bytes();
    let dd = crc32c::crc32c(&padded_data).to_le_bytes();
    let want = [&bhs[..], &hd, &padded_data, &dd].concat();
    assert_eq!(want.len(), 48 + 4 + 8 + 4);
    assert_eq!(encode(&p, &f), want);
    let back = decode_all(&want, &f);
    assert_decodes_to(&back, &p);
    assert_eq!(back.ttt(), 0x777);
    assert_eq!(back.data_sn(), 2);
    assert_eq!(back.buffer_offset(), 0x0001_0000);
    // Filled in place (data-out from guest memory): the same bytes, digests included;
    // a fill that comes up short leaves the buffer as it was.
    for framing in [plain(), f] {
        let mut out = vec![0x77];
        assert!(encode_filled_into(&p, 6, &framing, &mut out, |dst| {
            dst.copy_from_slice(&p.data);
            true
        }));
        assert_eq!(out[1..], encode(&p, &framing)[..]);
        assert!(!encode_filled_into(&p, 6, &framing, &mut out, |_| false));
        assert_eq!(out[1..], encode(&p, &framing)[..]);
    }

    // A flipped bit in either digest, or anywhere they cover (padding included), is
    // refused.
    for at in [0, 20, 47, 48, 51, 52, 57, 58, 60, 63] {
        let mut bad = want.clone();
        bad[at] ^= 0x10;
        assert!(read_pdu(&mut &bad[..], &f).is_err(), "flip at byte {at}");
    }
}

#[test]
fn golden_nop_out_ping() {
    let mut p = Pdu::new(op::NOP_OUT);
    p.set_immediate();
    p.set_flags(F_FINAL);
    p.set_itt(0x0000_0100);
    p.set_u32(20, 0xffff_ffff);
    p.set_u32(24, 0x0000_0010);
    p.set_u32(28, 0x0000_0020);
    #[rustfmt::skip]
    let want: [u8; 48] = [
        0x40,                   // byte 0: I=1, opcode 0x00
        0x80,                   // byte 1: F=1
        0x00, 0x00,             // bytes 2-3: reserved
        0x00,                   // byte 4: TotalAHSLength
        0x00, 0x00, 0x00,       // bytes 5-7: DataSegmentLength, no ping data
        0x00, 0x00, 0x00, 0x00, // bytes 8-15: LUN, zero for a ping
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x01, 0x00, // bytes 16-19: ITT: a ping that wants a NOP-In
        0xff, 0xff, 0xff, 0xff, // bytes 20-23: TTT 0xffffffff: not answering a NOP-In
        0x00, 0x00, 0x00, 0x10, // bytes 24-27: CmdSN
        0x00, 0x00, 0x00, 0x20, // bytes 28-31: ExpStatSN
        0x00, 0x00, 0x00, 0x00, // bytes 32-47: reserved
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
    ];
    assert_eq!(encode(&p, &plain()), want);
    assert_decodes_to(&decode_all(&want, &plain()), &p);
}

#[test]
fn golden_task_management_request() {
    let mut p = Pdu::new(op::TASK_MGMT_REQ);
    p.set_immediate();
    // Bit 7 of byte 1 is always 1; function 1 = ABORT TASK.
    p.set_flags(0x80 | 0x01);
    p.set_lun(lun(1));
    p.set_itt(0x0000_0200);
    p.set_u32(20, 0x0000_002a);
    p.set_u32(24, 0x0000_0031);
    p.set_u32(28, 0x0000_0042);
    p.set_u32(32, 0x0000_0030);
    #[rustfmt::skip]
    let want: [u8; 48] = [
        0x42,                   // byte 0: I=1, opcode 0x02
        0x81,                   // byte 1: bit 7 set, Function 1 (ABORT TASK)
        0x00, 0x00,             // bytes 2-3: reserved
        0x00,                   // byte 4: TotalAHSLength
        0x00, 0x00, 0x00,       // bytes 5-7: DataSegmentLength
        0x00, 0x01, 0x00, 0x00, // bytes 8-15: LUN 1
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x02, 0x00, // bytes 16-19: ITT of the TMF itself
        0x00, 0x00, 0x00, 0x2a, // bytes 20-23: Referenced Task Tag: the task to abort
        0x00, 0x00, 0x00, 0x31, // bytes 24-27: CmdSN
        0x00, 0x00, 0x00, 0x42, // bytes 28-31: ExpStatSN
        0x00, 0x00, 0x00, 0x30, // bytes 32-35: RefCmdSN
        0x00, 0x00, 0x00, 0x00, // bytes 36-39: ExpDataSN
        0x00, 0x00, 0x00, 0x00, // bytes 40-47: reserved
        0x00, 0x00, 0x00, 0x00,
    ];
    assert_eq!(encode(&p, &plain()), want);
    let back = decode_all(&want, &plain());
    assert_eq!(back.opcode(), op::TASK_MGMT_REQ);
    assert_eq!(back.flags() & 0x7f, 1);
    assert_eq!(back.ttt(), 0x2a, "RTT shares the TTT offset");
}

#[test]
fn golden_scsi_response_with_sense_and_underflow() {
    #[rustfmt::skip]
    let image: [u8; 68] = [
        0x21,                   // byte 0: opcode 0x21
        0x82,                   // byte 1: bit 7 set, U=1 (residual underflow)
        0x00,                   // byte 2: Response 0x00, command completed at target
        0x02,                   // byte 3: Status CHECK CONDITION
        0x00,                   // byte 4: TotalAHSLength
        0x00, 0x00, 0x14,       // bytes 5-7: DataSegmentLength 20
        0x00, 0x00, 0x00, 0x00, // bytes 8-15: reserved
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x2a, // bytes 16-19: Initiator Task Tag
        0x00, 0x00, 0x00, 0x00, // bytes 20-23: SNACK Tag
        0x00, 0x00, 0x01, 0x00, // bytes 24-27: StatSN
        0x00, 0x00, 0x00, 0x08, // bytes 28-31: ExpCmdSN
        0x00, 0x00, 0x00, 0x47, // bytes 32-35: MaxCmdSN
        0x00, 0x00, 0x00, 0x00, // bytes 36-39: ExpDataSN
        0x00, 0x00, 0x00, 0x00, // bytes 40-43: Bidirectional Read Residual Count
        0x00, 0x00, 0x02, 0x00, // bytes 44-47: Residual Count 512
        0x00, 0x12,             // data: SenseLength 18
        0x70, 0x00, 0x05, 0x00, // fixed-format sense, ILLEGAL REQUEST
        0x00, 0x00, 0x00, 0x0a,
        0x00, 0x00, 0x00, 0x00,
        0x24, 0x00, 0x00, 0x00, // ASC 24h: invalid field in CDB
        0x00, 0x00,
    ];
    let p = decode_all(&image, &plain());
    assert_eq!(p.opcode(), op::SCSI_RESP);
    assert_eq!(p.flags(), 0x82);
    assert_eq!(p.flags() & 0x02, 0x02, "underflow");
    assert_eq!(p.flags() & 0x04, 0, "no overflow");
    assert_eq!(p.bhs[2], 0x00, "response");
    assert_eq!(p.bhs[3], 0x02, "status");
    assert!(p.ahs.is_empty());
    assert_eq!(p.lun(), 0);
    assert_eq!(p.itt(), 0x2a);
    assert_eq!(p.ttt(), 0, "SNACK tag");
    assert_eq!(p.stat_sn(), 0x100);
    assert_eq!(p.exp_cmd_sn(), 8);
    assert_eq!(p.max_cmd_sn(), 0x47);
    assert_eq!(p.data_sn(), 0, "ExpDataSN");
    assert_eq!(p.buffer_offset(), 0, "bidirectional read residual");
    assert_eq!(p.residual(), 512);
    assert_eq!(p.data.len(), 20);
    let sense_len = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
    assert_eq!(sense_len, 18);
    let sense = &p.data[2..2 + sense_len];
    assert_eq!(sense[0], 0x70);
    assert_eq!(sense[2] & 0x0f, 0x05, "sense key");
    assert_eq!(sense[12], 0x24, "ASC");
    // Re-encoding reproduces the image byte for byte.
    assert_eq!(encode(&p, &plain()), image);
}

#[test]
fn golden_data_in_with_status_and_residual() {
    #[rustfmt::skip]
    let image: [u8; 56] = [
        0x25,                   // byte 0: opcode 0x25
        0x83,                   // byte 1: F=1 A=0 O=0 U=1 S=1
        0x00,                   // byte 2: reserved
        0x00,                   // byte 3: Status GOOD (valid because S=1)
        0x00,                   // byte 4: TotalAHSLength
        0x00, 0x00, 0x05,       // bytes 5-7: DataSegmentLength 5
        0x00, 0x00, 0x00, 0x00, // bytes 8-15: LUN (reserved when A=0)
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x2b, // bytes 16-19: Initiator Task Tag
        0xff, 0xff, 0xff, 0xff, // bytes 20-23: Target Transfer Tag, none
        0x00, 0x00, 0x01, 0x01, // bytes 24-27: StatSN (valid because S=1)
        0x00, 0x00, 0x00, 0x09, // bytes 28-31: ExpCmdSN
        0x00, 0x00, 0x00, 0x48, // bytes 32-35: MaxCmdSN
        0x00, 0x00, 0x00, 0x03, // bytes 36-39: DataSN
        0x00, 0x00, 0x06, 0x00, // bytes 40-43: Buffer Offset 1536
        0x00, 0x00, 0x01, 0xfb, // bytes 44-47: Residual Count 507
        0x0a, 0x0b, 0x0c, 0x0d, // data
        0x0e, 0x00, 0x00, 0x00, // ... and its padding
    ];
    let p = decode_all(&image, &plain());
    assert_eq!(p.opcode(), op::DATA_IN);
    assert_eq!(p.flags() & F_FINAL, F_FINAL);
    assert_eq!(p.flags() & 0x01, 0x01, "S: status in this PDU");
    assert_eq!(p.flags() & 0x02, 0x02, "U: underflow");
    assert_eq!(p.flags() & 0x44, 0, "neither A nor O");
    assert_eq!(p.bhs[3], 0x00, "status");
    assert_eq!(p.lun(), 0);
    assert_eq!(p.itt(), 0x2b);
    assert_eq!(p.ttt(), 0xffff_ffff);
    assert_eq!(p.stat_sn(), 0x101);
    assert_eq!(p.exp_cmd_sn(), 9);
    assert_eq!(p.max_cmd_sn(), 0x48);
    assert_eq!(p.data_sn(), 3);
    assert_eq!(p.buffer_offset(), 1536);
    assert_eq!(p.residual(), 507);
    assert_eq!(p.data, [0x0a, 0x0b, 0x0c, 0x0d, 0x0e]);
    assert_eq!(encode(&p, &plain()), image);
}

#[test]
fn golden_r2t() {
    #[rustfmt::skip]
    let image: [u8; 48] = [
        0x31,                   // byte 0: opcode 0x31
        0x80,                   // byte 1: bit 7 always set
        0x00, 0x00,             // bytes 2-3: reserved
        0x00,                   // byte 4: TotalAHSLength
        0x00, 0x00, 0x00,       // bytes 5-7: DataSegmentLength, none
        0x00, 0x01, 0x00, 0x00, // bytes 8-15: LUN 1
        0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x2c, // bytes 16-19: Initiator Task Tag
        0x12, 0x34, 0x56, 0x78, // bytes 20-23: Target Transfer Tag
        0x00, 0x00, 0x01, 0x02, // bytes 24-27: StatSN (not advanced by an R2T)
        0x00, 0x00, 0x00, 0x0a, // bytes 28-31: ExpCmdSN
        0x00, 0x00, 0x00, 0x49, // bytes 32-35: MaxCmdSN
        0x00, 0x00, 0x00, 0x01, // bytes 36-39: R2TSN
        0x00, 0x00, 0x20, 0x00, // bytes 40-43: Buffer Offset 8192
        0x00, 0x01, 0x00, 0x00, // bytes 44-47: Desired Data Transfer Length 65536
    ];
    let p = decode_all(&image, &plain());
    assert_eq!(p.opcode(), op::R2T);
    assert_eq!(p.flags(), 0x80);
    assert_eq!(p.lun(), 0x0001_0000_0000_0000);
    assert_eq!(p.itt(), 0x2c);
    assert_eq!(p.ttt(), 0x1234_5678);
    assert_eq!(p.stat_sn(), 0x102);
    assert_eq!(p.exp_cmd_sn(), 0x0a);
    assert_eq!(p.max_cmd_sn(), 0x49);
    assert_eq!(p.data_sn(), 1, "R2TSN");
    assert_eq!(p.buffer_offset(), 8192);
    assert_eq!(p.residual(), 65536, "desired data transfer length");
    assert!(p.data.is_empty());
    assert_eq!(p.u32_at(20), p.ttt());
}

#[test]
fn every_truncation_is_an_error() {
    // One AHS word, both digests and a padded data segment: a cut anywhere, in the
    // header, the AHS, a digest, the data or its padding, must be an error.
    let f = Framing {
        header_digest: true,
        data_digest: true,
        max_recv_data: 8192,
    };
    let mut p = Pdu::new(op::DATA_IN);
    p.set_flags(F_FINAL);
    p.ahs = vec![0x00, 0x01, 0x02, 0x00];
    p.data = vec![0x5a; 9];
    let bytes = encode(&p, &f);
    assert_eq!(bytes.len(), 48 + 4 + 4 + 12 + 4);
    for n in 0..bytes.len() {
        let mut cut = &bytes[..n];
        assert!(read_pdu(&mut cut, &f).is_err(), "accepted {n} bytes");
    }
    assert_decodes_to(&read_pdu(&mut &bytes[..], &f).expect("whole PDU"), &p);
}

#[test]
fn data_segment_length_is_checked_before_reading() {
    let f = Framing {
        max_recv_data: 16384,
        ..plain()
    };
    let image = |dl: usize| {
        let mut b = vec![0u8; BHS_LEN];
        b[0] = op::DATA_IN;
        b[5] = (dl >> 16) as u8;
        b[6] = (dl >> 8) as u8;
        b[7] = dl as u8;
        b.resize(BHS_LEN + dl + pad4(dl), 0);
        b
    };
    assert_eq!(
        read_pdu(&mut &image(16384)[..], &f)
            .expect("at the limit")
            .data
            .len(),
        16384
    );
    let over = image(16385);
    let e = read_pdu(&mut &over[..], &f).expect_err("over the limit");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    // The largest length the field can carry, with nothing behind it: refused from the
    // header alone, without waiting for (or allocating) 16 MiB.
    let mut huge = [0u8; BHS_LEN];
    huge[0] = op::SCSI_RESP;
    huge[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    let e = read_pdu(&mut &huge[..], &f).expect_err("16 MiB segment");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    // The largest AHS the header can announce, cut short.
    let mut ahs = [0u8; BHS_LEN + 100];
    ahs[0] = op::SCSI_RESP;
    ahs[4] = 0xff;
    assert!(read_pdu(&mut &ahs[..], &f).is_err());
    assert!(read_pdu(&mut &[][..], &f).is_err());
}
