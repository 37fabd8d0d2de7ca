//! The reservation rules, checked against SPC-4's and SBC-3's tables.

use super::access::action;
use super::*;
use crate::scsi::cdb;

const A: &str = "iqn.2026-12.io.vscsid:a";
const B: &str = "iqn.2026-12.io.vscsid:b";
const C: &str = "iqn.2026-12.io.vscsid:c";

fn pr_out(sa: u8, kind: u8) -> [u8; 32] {
    let mut c = [0u8; 32];
    c[0] = PERSISTENT_RESERVE_OUT;
    c[1] = sa;
    c[2] = kind;
    c[5..9].copy_from_slice(&24u32.to_be_bytes());
    c
}

fn params(key: u64, sa_key: u64, flags: u8) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = flags;
    p
}

fn run(
    s: &mut ReservationState,
    me: &str,
    sa: u8,
    kind: u8,
    key: u64,
    sa_key: u64,
) -> Result<PrOutEffect, PrAnswer> {
    let p = params(key, sa_key, 0);
    let before = s.clone();
    let r = persistent_reserve_out(s, me, &pr_out(sa, kind), &&p[..], true, 7);
    if r.is_err() {
        assert_eq!(*s, before, "a refused command changed the state");
    }
    r
}

fn register(s: &mut ReservationState, me: &str, key: u64) {
    run(s, me, action::REGISTER, 0, 0, key).expect("register");
}

fn reserved(kind: u8) -> ReservationState {
    let mut s = ReservationState::default();
    register(&mut s, A, 0xa);
    register(&mut s, B, 0xb);
    run(&mut s, A, action::RESERVE, kind, 0xa, 0).expect("reserve");
    s
}

fn cdb_of(op: u8) -> [u8; 32] {
    let mut c = [0u8; 32];
    c[0] = op;
    c
}

/// (type, class sample, holder, registered non-holder, unregistered): SPC-4 table 43 and
/// SBC-3 table 13 for a read, a write and a parameter read.
#[test]
fn access_follows_the_tables() {
    use Access::{Allowed as Y, Conflict as N};
    let read = cdb_of(cdb::READ_10);
    let write = cdb_of(cdb::WRITE_10);
    let sense = cdb_of(cdb::MODE_SENSE_10);
    let sync = cdb_of(cdb::SYNCHRONIZE_CACHE_10);
    let inquiry = cdb_of(cdb::INQUIRY);
    #[rustfmt::skip]
    let table: &[(u8, &[u8; 32], Access, Access, Access)] = &[
        // WRITE EXCLUSIVE: reads for all, writes for the holder.
        (1, &read, Y, Y, Y), (1, &write, Y, N, N), (1, &sense, Y, Y, Y), (1, &sync, Y, N, N),
        // EXCLUSIVE ACCESS: the holder only; registered nexuses read parameters.
        (3, &read, Y, N, N), (3, &write, Y, N, N), (3, &sense, Y, Y, N), (3, &inquiry, Y, Y, Y),
        // Registrants only: registered nexuses as the holder.
        (5, &read, Y, Y, Y), (5, &write, Y, Y, N), (6, &read, Y, Y, N), (6, &write, Y, Y, N),
        (6, &sense, Y, Y, N), (6, &inquiry, Y, Y, Y),
        // All registrants: every registrant is a holder.
        (7, &read, Y, Y, Y), (7, &write, Y, Y, N), (8, &read, Y, Y, N), (8, &write, Y, Y, N),
    ];
    for &(kind, c, holder, reg, unreg) in table {
        let s = reserved(kind);
        assert_eq!(
            access(&s, A, c),
            holder,
            "type {kind} op {:#x} holder",
            c[0]
        );
        assert_eq!(
            access(&s, B, c),
            reg,
            "type {kind} op {:#x} registered",
            c[0]
        );
        assert_eq!(
            access(&s, C, c),
            unreg,
            "type {kind} op {:#x} unregistered",
            c[0]
        );
    }
}

#[test]
fn pr_out_actions_allowed_to_non_holders() {
    let s = reserved(3);
    for (sa, reg, unreg) in [
        (action::REGISTER, true, true),
        (action::REGISTER_AND_IGNORE, true, true),
        (action::RESERVE, false, false),
        (action::RELEASE, true, false),
        (action::CLEAR, true, false),
        (action::PREEMPT, true, false),
        (action::PREEMPT_AND_ABORT, true, false),
        (action::REGISTER_AND_MOVE, false, false),
    ] {
        let c = pr_out(sa, 3);
        assert_eq!(
            access(&s, B, &c) == Access::Allowed,
            reg,
            "sa {sa} registered"
        );
        assert_eq!(
            access(&s, C, &c) == Access::Allowed,
            unreg,
            "sa {sa} unregistered"
        );
    }
}

#[test]
fn register_checks_the_key_and_counts_generations() {
    let mut s = ReservationState::default();
    // An unregistered nexus must give key 0.
    assert_eq!(
        run(&mut s, A, action::REGISTER, 0, 5, 6),
        Err(PrAnswer::Conflict)
    );
    register(&mut s, A, 6);
    assert_eq!(s.generation, 1);
    assert_eq!(
        run(&mut s, A, action::REGISTER, 0, 5, 9),
        Err(PrAnswer::Conflict)
    );
    run(&mut s, A, action::REGISTER, 0, 6, 9).expect("change key");
    assert_eq!(s.key_of(A), Some(9));
    run(&mut s, A, action::REGISTER_AND_IGNORE, 0, 1234, 10).expect("ignore");
    assert_eq!(s.key_of(A), Some(10));
    run(&mut s, A, action::REGISTER, 0, 10, 0).expect("unregister");
    assert_eq!(s.key_of(A), None);
    assert_eq!(s.generation, 4);
    // Registering key 0 while unregistered does nothing.
    assert_eq!(
        run(&mut s, A, action::REGISTER, 0, 0, 0),
        Ok(PrOutEffect::default())
    );
    assert_eq!(s.generation, 4);
}

#[test]
fn reserve_and_release() {
    let mut s = ReservationState::default();
    register(&mut s, A, 1);
    register(&mut s, B, 2);
    assert_eq!(
        run(&mut s, C, action::RESERVE, 1, 0, 0),
        Err(PrAnswer::Conflict)
    );
    assert_eq!(
        run(&mut s, A, action::RESERVE, 1, 9, 0),
        Err(PrAnswer::Conflict)
    );
    run(&mut s, A, action::RESERVE, 1, 1, 0).expect("reserve");
    // Again with the same type: GOOD; another type, or another nexus: conflict.
    assert!(run(&mut s, A, action::RESERVE, 1, 1, 0).is_ok());
    assert_eq!(
        run(&mut s, A, action::RESERVE, 3, 1, 0),
        Err(PrAnswer::Conflict)
    );
    assert_eq!(
        run(&mut s, B, action::RESERVE, 1, 2, 0),
        Err(PrAnswer::Conflict)
    );
    // Scope other than LU and invalid types are refused.
    assert!(matches!(
        run(&mut s, A, action::RESERVE, 0x11, 1, 0),
        Err(PrAnswer::Check(_))
    ));
    assert!(matches!(
        run(&mut s, A, action::RESERVE, 2, 1, 0),
        Err(PrAnswer::Check(_))
    ));
    // A non-holder's RELEASE does nothing; the wrong type is INVALID RELEASE.
    run(&mut s, B, action::RELEASE, 1, 2, 0).expect("no-op");
    assert!(s.reservation.is_some());
    assert_eq!(
        run(&mut s, A, action::RELEASE, 3, 1, 0),
        Err(PrAnswer::Check(Sense::new(5, 0x26, 0x04)))
    );
    run(&mut s, A, action::RELEASE, 1, 1, 0).expect("release");
    assert!(s.reservation.is_none());
    // WE/EA release tells nobody; generation unchanged by reserve/release.
    assert!(s.attentions.is_empty());
    assert_eq!(s.generation, 2);
}

#[test]
fn releasing_registrants_only_tells_the_others() {
    let mut s = reserved(5);
    register(&mut s, C, 0xc);
    run(&mut s, A, action::RELEASE, 5, 0xa, 0).expect("release");
    assert!(s.owes_attention(B) && s.owes_attention(C) && !s.owes_attention(A));
    assert_eq!(s.take_attention(B), Some(Sense::new(6, 0x2a, 0x04)));
    assert!(!s.owes_attention(B));
}

#[test]
fn holder_unregistering_releases() {
    let mut s = reserved(1);
    run(&mut s, A, action::REGISTER, 0, 0xa, 0).expect("unregister");
    assert!(s.reservation.is_none());
    // All registrants: held while any registrant is left.
    let mut s = reserved(7);
    run(&mut s, A, action::REGISTER, 0, 0xa, 0).expect("unregister a");
    assert!(s.reservation.is_some() && s.holds(B));
    run(&mut s, B, action::REGISTER, 0, 0xb, 0).expect("unregister b");
    assert!(s.reservation.is_none());
}

#[test]
fn clear_removes_everything_and_tells_the_others() {
    let mut s = reserved(3);
    run(&mut s, B, action::CLEAR, 0, 0xb, 0).expect("clear");
    assert!(s.registrations.is_empty() && s.reservation.is_none());
    assert_eq!(s.take_attention(A), Some(Sense::new(6, 0x2a, 0x03)));
    assert!(!s.owes_attention(B));
}

#[test]
fn preempt_takes_the_reservation_and_removes_the_holder() {
    let mut s = reserved(3);
    let e = run(&mut s, B, action::PREEMPT, 1, 0xb, 0xa).expect("preempt");
    assert!(e.aborted.is_empty());
    assert_eq!(s.key_of(A), None);
    assert!(s.holds(B));
    assert_eq!(
        s.reservation.as_ref().map(|r| r.kind),
        Some(PrType::WriteExclusive)
    );
    assert_eq!(s.take_attention(A), Some(Sense::new(6, 0x2a, 0x05)));
    // Key 0 against a non-all-registrants reservation is an invalid parameter.
    assert_eq!(
        run(&mut s, B, action::PREEMPT, 1, 0xb, 0),
        Err(PrAnswer::Check(Sense::invalid_field_in_parameter_list()))
    );
    // A key nobody has: conflict.
    assert_eq!(
        run(&mut s, B, action::PREEMPT, 1, 0xb, 0x77),
        Err(PrAnswer::Conflict)
    );
}

#[test]
fn preempt_of_a_non_holder_key_only_removes_registrations() {
    let mut s = reserved(1);
    register(&mut s, C, 0xc);
    run(&mut s, A, action::PREEMPT, 1, 0xa, 0xc).expect("preempt");
    assert_eq!(s.key_of(C), None);
    assert!(s.holds(A) && s.key_of(B).is_some());
}

#[test]
fn preempt_and_abort_asks_the_losers_to_drain() {
    let mut s = reserved(3);
    register(&mut s, C, 0xa); // same key as the holder
    let e = run(&mut s, B, action::PREEMPT_AND_ABORT, 3, 0xb, 0xa).expect("preempt");
    let mut lost = e.aborted.clone();
    lost.sort();
    assert_eq!(lost, vec![A.to_string(), C.to_string()]);
    assert_eq!(s.aborts.len(), 2);
    assert!(s.aborts.iter().all(|a| a.id == 7));
    assert!(s.holds(B));
}

#[test]
fn preempt_all_registrants_with_key_zero() {
    let mut s = reserved(8);
    register(&mut s, C, 0xc);
    run(&mut s, B, action::PREEMPT, 3, 0xb, 0).expect("preempt");
    assert_eq!(s.registrations.len(), 1);
    assert!(s.holds(B));
    assert_eq!(
        s.reservation.as_ref().and_then(|r| r.holder.clone()),
        Some(B.to_string())
    );
}

#[test]
fn register_and_move_hands_the_reservation_over() {
    let mut s = reserved(1);
    let tid = nexus_transport_id(C);
    let mut p = vec![0u8; 24 + tid.len()];
    p[0..8].copy_from_slice(&0xau64.to_be_bytes());
    p[8..16].copy_from_slice(&0xcu64.to_be_bytes());
    p[17] = 0x02; // UNREG
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p[24..].copy_from_slice(&tid);
    let mut c = pr_out(action::REGISTER_AND_MOVE, 1);
    c[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    persistent_reserve_out(&mut s, A, &c, &&p[..], true, 0).expect("move");
    assert!(s.holds(C) && s.key_of(C) == Some(0xc));
    assert_eq!(s.key_of(A), None);
    // Moving to oneself is refused.
    let mut s = reserved(1);
    let tid = nexus_transport_id(A);
    p.truncate(24);
    p.extend_from_slice(&tid);
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    c[5..9].copy_from_slice(&(p.len() as u32).to_be_bytes());
    assert_eq!(
        persistent_reserve_out(&mut s, A, &c, &&p[..], true, 0),
        Err(PrAnswer::Check(Sense::invalid_field_in_parameter_list()))
    );
}

#[test]
fn bad_parameter_lists_are_refused() {
    let mut s = ReservationState::default();
    let mut c = pr_out(action::REGISTER, 0);
    c[5..9].copy_from_slice(&16u32.to_be_bytes());
    let p = params(0, 1, 0);
    assert_eq!(
        persistent_reserve_out(&mut s, A, &c, &&p[..], true, 0),
        Err(PrAnswer::Check(Sense::parameter_list_length_error()))
    );
    // SPEC_I_PT and ALL_TG_PT are not supported; APTPL only when persistence is.
    for flags in [0x08, 0x04] {
        let p = params(0, 1, flags);
        assert_eq!(
            persistent_reserve_out(&mut s, A, &pr_out(0, 0), &&p[..], true, 0),
            Err(PrAnswer::Check(Sense::invalid_field_in_parameter_list()))
        );
    }
    let p = params(0, 1, 0x01);
    assert!(persistent_reserve_out(&mut s, A, &pr_out(0, 0), &&p[..], false, 0).is_err());
    persistent_reserve_out(&mut s, A, &pr_out(0, 0), &&p[..], true, 0).expect("aptpl");
    assert!(s.aptpl);
    // A short data-out buffer.
    let mut s = ReservationState::default();
    assert!(persistent_reserve_out(&mut s, A, &pr_out(0, 0), &&p[..10], true, 0).is_err());
    // Unknown service action.
    assert_eq!(
        persistent_reserve_out(&mut s, A, &pr_out(0x10, 0), &&p[..], true, 0),
        Err(PrAnswer::Check(Sense::invalid_field_in_cdb()))
    );
}

#[test]
fn registrations_are_bounded() {
    let mut s = ReservationState::default();
    for i in 0..MAX_REGISTRATIONS {
        register(&mut s, &format!("iqn.x:{i}"), 1);
    }
    assert_eq!(
        run(&mut s, A, action::REGISTER, 0, 0, 1),
        Err(PrAnswer::Check(Sense::new(5, 0x55, 0x04)))
    );
}

#[test]
fn power_on_keeps_only_what_aptpl_keeps() {
    let mut s = reserved(1);
    s.spc2_holder = None;
    let mut t = s.clone();
    s.power_on();
    assert!(s.registrations.is_empty() && s.reservation.is_none());
    t.aptpl = true;
    t.attentions.push(OwedAttention {
        nexus: B.into(),
        asc: 0x2a,
        ascq: 3,
    });
    t.power_on();
    assert!(t.holds(A) && t.attentions.is_empty());
}

fn pr_in(sa: u8) -> [u8; 32] {
    let mut c = [0u8; 32];
    c[0] = PERSISTENT_RESERVE_IN;
    c[1] = sa;
    c[7..9].copy_from_slice(&1024u16.to_be_bytes());
    c
}

#[test]
fn pr_in_reports_keys_reservation_capabilities_and_status() {
    let s = reserved(5);
    let mut buf = [0u8; 1024];
    assert_eq!(
        persistent_reserve_in(&s, &pr_in(0), true, &mut buf),
        PrAnswer::Good(24)
    );
    assert_eq!(&buf[0..4], &2u32.to_be_bytes());
    assert_eq!(&buf[4..8], &16u32.to_be_bytes());
    assert_eq!(&buf[8..16], &0xau64.to_be_bytes());
    assert_eq!(
        persistent_reserve_in(&s, &pr_in(1), true, &mut buf),
        PrAnswer::Good(24)
    );
    assert_eq!(&buf[8..16], &0xau64.to_be_bytes());
    assert_eq!(buf[21], 5);
    assert_eq!(
        persistent_reserve_in(&s, &pr_in(2), true, &mut buf),
        PrAnswer::Good(8)
    );
    assert_eq!(&buf[0..2], &8u16.to_be_bytes());
    assert_eq!(buf[2] & 0x11, 0x11); // CRH, PTPL_C
    assert_eq!((buf[4], buf[5]), (0xea, 0x01));
    let PrAnswer::Good(n) = persistent_reserve_in(&s, &pr_in(3), true, &mut buf) else {
        panic!("full status");
    };
    // Two descriptors: A holds (R_HOLDER, type 5), B does not.
    let len = u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize;
    assert_eq!(n, 8 + len);
    let first = &buf[8..];
    assert_eq!(&first[0..8], &0xau64.to_be_bytes());
    assert_eq!((first[12], first[13]), (1, 5));
    let tid_len = u32::from_be_bytes(first[20..24].try_into().unwrap()) as usize;
    assert_eq!(
        parse_transport_id(&first[24..24 + tid_len]).map(|t| t.0),
        Some(A.to_string())
    );
    let second = &first[24 + tid_len..];
    assert_eq!(&second[0..8], &0xbu64.to_be_bytes());
    assert_eq!(second[12], 0);
    // Cut to the allocation length.
    let mut c = pr_in(0);
    c[7..9].copy_from_slice(&4u16.to_be_bytes());
    assert_eq!(
        persistent_reserve_in(&s, &c, true, &mut buf),
        PrAnswer::Good(4)
    );
    assert_eq!(
        persistent_reserve_in(&s, &pr_in(9), true, &mut buf),
        PrAnswer::Check(Sense::invalid_field_in_cdb())
    );
}

#[test]
fn spc2_reserve_release() {
    let mut s = ReservationState::default();
    let reserve = cdb_of(RESERVE_6);
    let release = cdb_of(RELEASE_6);
    assert_eq!(reserve_release(&mut s, A, &reserve), Ok(true));
    assert_eq!(reserve_release(&mut s, A, &reserve), Ok(false));
    assert_eq!(
        reserve_release(&mut s, B, &reserve),
        Err(PrAnswer::Conflict)
    );
    // Only a few commands pass another's RESERVE.
    assert_eq!(access(&s, B, &cdb_of(cdb::READ_10)), Access::Conflict);
    assert_eq!(
        access(&s, B, &cdb_of(cdb::TEST_UNIT_READY)),
        Access::Conflict
    );
    assert_eq!(access(&s, B, &cdb_of(cdb::INQUIRY)), Access::Allowed);
    assert_eq!(access(&s, B, &pr_out(0, 0)), Access::Conflict);
    assert_eq!(access(&s, A, &cdb_of(cdb::WRITE_10)), Access::Allowed);
    assert_eq!(reserve_release(&mut s, B, &release), Ok(false));
    assert_eq!(s.spc2_holder.as_deref(), Some(A));
    assert_eq!(reserve_release(&mut s, A, &release), Ok(true));
    assert!(s.spc2_holder.is_none());
    // Third-party reservations are not supported.
    let mut c = cdb_of(RESERVE_10);
    c[1] = 0x10;
    assert!(matches!(
        reserve_release(&mut s, A, &c),
        Err(PrAnswer::Check(_))
    ));
}

#[test]
fn spc2_with_registrations_is_compatible_handling() {
    let mut s = reserved(1);
    let reserve = cdb_of(RESERVE_10);
    let release = cdb_of(RELEASE_10);
    assert_eq!(reserve_release(&mut s, A, &reserve), Ok(false));
    assert_eq!(
        reserve_release(&mut s, B, &reserve),
        Err(PrAnswer::Conflict)
    );
    assert_eq!(reserve_release(&mut s, B, &release), Ok(false));
    assert_eq!(
        reserve_release(&mut s, C, &release),
        Err(PrAnswer::Conflict)
    );
    assert!(s.spc2_holder.is_none());
}

#[test]
fn the_state_round_trips_through_json() {
    let mut s = reserved(6);
    s.aborts.push(AbortRequest {
        nexus: B.into(),
        id: 3,
    });
    let text = serde_json::to_vec(&s).expect("encode");
    let back: ReservationState = serde_json::from_slice(&text).expect("decode");
    assert_eq!(back, s);
}

#[test]
fn random_reservation_commands_never_panic_and_keep_the_state_sane() {
    let mut rng = crate::frontend::rng::Rng::new(0x5eed_0f9e_5e7e_5501);
    let nexuses = [A, B, C];
    let mut s = ReservationState::default();
    let mut buf = vec![0u8; 600];
    for i in 0..20_000 {
        let me = nexuses[(rng.next_u64() % 3) as usize];
        let mut cdb = [0u8; 32];
        rng.fill(&mut cdb);
        cdb[0] = [
            PERSISTENT_RESERVE_OUT,
            PERSISTENT_RESERVE_IN,
            RESERVE_6,
            RELEASE_10,
        ][(rng.next_u64() % 4) as usize];
        // Mostly sane service actions, types and lengths, so the state gets somewhere.
        if i % 4 != 0 {
            cdb[1] &= 0x07;
            cdb[2] = [1, 3, 5, 6, 7, 8][(rng.next_u64() % 6) as usize];
            cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
        }
        let mut data = vec![0u8; (rng.next_u64() % 80) as usize];
        rng.fill(&mut data);
        if i % 3 != 0 && data.len() >= 16 {
            // Keys from a small set, so they match sometimes.
            let k = rng.next_u64() % 4;
            data[0..8].copy_from_slice(&k.to_be_bytes());
            data[8..16].copy_from_slice(&(rng.next_u64() % 4).to_be_bytes());
        }
        let before = s.clone();
        let len = (rng.next_u64() % 600) as usize;
        match cdb[0] {
            PERSISTENT_RESERVE_OUT => {
                if access(&s, me, &cdb) == Access::Allowed
                    && persistent_reserve_out(&mut s, me, &cdb, &&data[..], true, 1).is_err()
                {
                    assert_eq!(s, before);
                }
            }
            PERSISTENT_RESERVE_IN => {
                if let PrAnswer::Good(n) = persistent_reserve_in(&s, &cdb, true, &mut buf[..len]) {
                    assert!(n <= len);
                }
            }
            _ => {
                let _ = reserve_release(&mut s, me, &cdb);
            }
        }
        assert!(s.registrations.len() <= MAX_REGISTRATIONS);
        let mut names: Vec<&str> = s.registrations.iter().map(|r| r.nexus.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            s.registrations.len(),
            "one registration per nexus"
        );
        if let Some(Reservation {
            holder: Some(h), ..
        }) = &s.reservation
        {
            assert!(s.key_of(h).is_some(), "the holder is registered");
        }
        s.aborts.clear();
        s.attentions.clear();
    }
}
