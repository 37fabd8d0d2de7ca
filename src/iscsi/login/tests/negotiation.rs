//! Logins that succeed: the keys the initiator offers for a normal and a discovery
//! session, what it makes of the target's answers (also when they span rounds or
//! continued PDUs), the sequence numbers it starts the session with, and its ISID.

use super::*;

#[test]
fn auth_none_negotiates_and_reaches_full_feature() {
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.operational(ECHO_DEFAULTS);
        // The initiator offers everything it needs for a normal session.
        r.assert_keys(ECHO_DEFAULTS);
        t.expect_close();
    });
    let n = out.result.expect("login");
    assert_eq!(
        n.framing,
        Framing {
            header_digest: false,
            data_digest: false,
            max_recv_data: 262_144,
        }
    );
    assert_eq!(n.target_max_recv, 262_144);
    assert_eq!(n.max_burst, 1 << 20);
    assert_eq!(n.first_burst, 262_144);
    assert!(n.immediate_data);
    assert!(!n.initial_r2t);
    // Two responses, starting two below the wrap: ExpStatSN wraps to 0.
    assert_sequence_numbers(&n, 2);
    assert_eq!(n.exp_stat_sn, 0);
}

#[test]
fn discovery_login_offers_only_connection_keys() {
    let out = drive(&options(), None, |t| {
        t.security_none(None);
        let r = t.operational(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "8192"),
        ]);
        r.assert_keys(&[
            ("HeaderDigest", "None"),
            ("MaxRecvDataSegmentLength", "262144"),
        ]);
        // Session-wide keys are irrelevant to (and refused in) a discovery session.
        for k in [
            "InitialR2T",
            "ImmediateData",
            "MaxBurstLength",
            "FirstBurstLength",
        ] {
            r.assert_no_key(k);
        }
        t.expect_close();
    });
    let n = out.result.expect("discovery login");
    assert_eq!(n.target_max_recv, 8192);
    assert_sequence_numbers(&n, 2);
}

#[test]
fn negotiated_reflects_what_the_target_answered() {
    let opts = IscsiOptions {
        header_digest: true,
        data_digest: true,
        ..options()
    };
    let out = drive(&opts, Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.operational(&[
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "None"),
            ("MaxRecvDataSegmentLength", "16384"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "0"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxBurstLength", "65536"),
            ("FirstBurstLength", "32768"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "1"),
            ("DataPDUInOrder", "Yes"),
            ("DataSequenceInOrder", "Yes"),
        ]);
        // Digests are offered as a preference list, CRC32C first.
        r.assert_keys(&[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "CRC32C,None"),
        ]);
        t.expect_close();
    });
    let n = out.result.expect("login");
    assert_eq!(
        n.framing,
        Framing {
            header_digest: true,
            data_digest: false,
            // Ours, declared to the target; its own limit is separate.
            max_recv_data: 262_144,
        }
    );
    assert_eq!(n.target_max_recv, 16384);
    assert_eq!(n.max_burst, 65536);
    assert_eq!(n.first_burst, 32768);
    assert!(!n.immediate_data);
    assert!(n.initial_r2t);
    assert_sequence_numbers(&n, 2);
}

#[test]
fn operational_answers_may_span_rounds() {
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.recv();
        r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
        // Part of the answer, without transiting yet.
        t.reply(
            &r,
            Reply::stay(
                OPERATIONAL,
                &[
                    ("MaxRecvDataSegmentLength", "4096"),
                    ("ImmediateData", "No"),
                ],
            ),
        );
        let r = t.recv();
        r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
        assert!(r.keys.is_empty(), "offers repeated: {:?}", r.keys);
        t.reply(
            &r,
            Reply::go(OPERATIONAL, FULL_FEATURE, &[("MaxBurstLength", "131072")]).tsih(TSIH),
        );
        t.expect_close();
    });
    let n = out.result.expect("login");
    assert_eq!(n.target_max_recv, 4096);
    assert!(!n.immediate_data);
    assert_eq!(n.max_burst, 131_072);
    assert_sequence_numbers(&n, 3);
}

#[test]
fn continued_login_response_is_reassembled() {
    // RFC 7143 6.1: a key=value pair may span PDU boundaries; the pieces of PDUs with C=1
    // and the final one with C=0 form one logical text segment.
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.recv();
        r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
        let full = kv(&[
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "65536"),
            ("FirstBurstLength", "16384"),
        ]);
        // Cut inside the MaxBurstLength value and again inside FirstBurstLength's key.
        let after = |needle: &[u8]| {
            full.windows(needle.len())
                .position(|w| w == needle)
                .expect("needle")
                + needle.len()
        };
        let cut1 = after(b"MaxBurstLength=65");
        let cut2 = after(b"FirstBurst");
        let pieces = [&full[..cut1], &full[cut1..cut2], &full[cut2..]];
        let mut req = r;
        for (i, piece) in pieces.iter().enumerate() {
            let last = i == pieces.len() - 1;
            let reply = Reply {
                transit: last,
                cont: !last,
                csg: OPERATIONAL,
                nsg: if last { FULL_FEATURE } else { 0 },
                data: piece.to_vec(),
                tsih: if last { TSIH } else { 0 },
                ..Reply::default()
            };
            t.reply(&req, reply);
            if !last {
                // RFC 7143 11.12.2: the initiator asks for the rest with an empty request,
                // T=0, in the same stage.
                req = t.recv();
                req.assert_stage(false, OPERATIONAL, 0);
                assert_eq!(req.pdu.flags() & C_BIT, 0);
                assert!(req.pdu.data.is_empty());
            }
        }
        t.expect_close();
    });
    let n = out.result.expect("login");
    assert_eq!(n.target_max_recv, 65536);
    assert_eq!(n.max_burst, 65536);
    assert_eq!(n.first_burst, 16384);
    assert_sequence_numbers(&n, 4);
}

#[test]
fn isid_has_random_type() {
    let a = new_isid();
    assert_eq!(a[0], 0x80);
}
