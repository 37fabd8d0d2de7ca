//! Fuzz target: iSCSI PDUs as a target sends them. Byte 0 picks the framing (header and
//! data digests, MaxRecvDataSegmentLength); the rest is read as a stream of PDUs. Every PDU
//! read must encode and read back to itself; its data segment goes through the text-key
//! parser and the ALUA parsers (INQUIRY TPGS, VPD 0x83 port group, REPORT TARGET PORT
//! GROUPS), and the PDUs' data answer an ALUA query in turn.
#![no_main]

use std::cell::Cell;

use libfuzzer_sys::fuzz_target;
use vscsid::iscsi::pdu::{self, Framing, Pdu};
use vscsid::iscsi::{alua, text};
use vscsid::scsi::task::{Residual, ScsiCompletion, ScsiStatus};

/// At most this many PDUs per input.
const MAX_PDUS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else {
        return;
    };
    let framing = Framing {
        header_digest: pick & 1 != 0,
        data_digest: pick & 2 != 0,
        max_recv_data: [512, 8192, 65536, 262_144][usize::from((pick >> 2) & 3)],
    };
    let mut r = stream;
    let mut pdus: Vec<Pdu> = Vec::new();
    while pdus.len() < MAX_PDUS {
        let Ok(p) = pdu::read_pdu(&mut r, &framing) else {
            break;
        };
        let wire = pdu::encode(&p, &framing);
        let again = pdu::read_pdu(&mut &wire[..], &framing).expect("an encoded PDU reads back");
        assert_eq!(again, p, "PDU changed through encode and read");
        let pairs = text::parse(&p.data);
        for (k, v) in &pairs {
            assert!(text::get(&pairs, k).is_some());
            let _ = text::yes(v);
        }
        let _ = alua::tpgs(&p.data);
        if let Some(group) = alua::port_group(&p.data) {
            let _ = alua::group_state(&p.data, group);
        }
        let _ = alua::group_state(&p.data, u16::from_be_bytes([p.bhs[2], p.bhs[3]]));
        let _ = alua::relative_port(&p.data);
        let _ = alua::parse_rtpg(&p.data);
        let _ = alua::sense_refusal(&p.data);
        pdus.push(p);
    }
    // The PDUs' data segments as the answers to an ALUA query, in order.
    let next = Cell::new(0usize);
    let _ = alua::query(|_cdb, len| {
        let i = next.get();
        next.set(i + 1);
        let p = pdus.get(i)?;
        let mut data_in = p.data.clone();
        data_in.truncate(len as usize);
        Some(ScsiCompletion {
            result: Ok(ScsiStatus {
                status: p.bhs[3] & 0x02,
                sense: Vec::new(),
            }),
            data_in,
            residual: Residual::default(),
        })
    });
});
