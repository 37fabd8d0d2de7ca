//! CHAP (RFC 1994, RFC 7143 12.1.3): one-way and mutual, the target's proof checked, and
//! every way a target can leave the initiator unauthenticated refused.

use super::*;

#[test]
fn one_way_chap() {
    const ID: u8 = 173;
    const CHALLENGE: [u8; 16] = *b"0123456789abcdef";
    let out = drive(&chap_options(None), Some(TARGET), |t| {
        let r = t.chap_challenge(ID, &CHALLENGE);
        r.assert_keys(&[("CHAP_N", "alice")]);
        let got = unhex(r.key("CHAP_R").expect("CHAP_R"));
        assert_eq!(got, md5_response(ID, "alice-secret-12", &CHALLENGE));
        // One-way: the initiator does not challenge the target.
        r.assert_no_key("CHAP_I");
        r.assert_no_key("CHAP_C");
        t.reply(&r, Reply::go(SECURITY, OPERATIONAL, &[]));
        t.operational(ECHO_DEFAULTS);
        t.expect_close();
    });
    let n = out.result.expect("CHAP login");
    assert_sequence_numbers(&n, 4);
}

/// Security stage of a mutual CHAP login in which the target proves itself with `name`
/// and a response computed from `secret`.
fn mutual_chap_script(
    name: &'static str,
    secret: &'static str,
) -> impl FnOnce(&mut Target) + Send + 'static {
    move |t| {
        const ID: u8 = 7;
        let challenge = [0xa5u8; 24];
        let r = t.chap_challenge(ID, &challenge);
        assert_eq!(
            unhex(r.key("CHAP_R").expect("CHAP_R")),
            md5_response(ID, "alice-secret-12", &challenge)
        );
        let their_id: u8 = r.key("CHAP_I").expect("CHAP_I").parse().expect("CHAP_I");
        let their_challenge = unhex(r.key("CHAP_C").expect("CHAP_C"));
        assert!(their_challenge.len() >= 16, "a short mutual challenge");
        let resp = hex(&md5_response(their_id, secret, &their_challenge));
        t.reply(
            &r,
            Reply::go(
                SECURITY,
                OPERATIONAL,
                &[("CHAP_N", name), ("CHAP_R", &resp)],
            ),
        );
        // Right or wrong, the answer decides: accepted, the initiator goes on to the
        // operational stage; refused, it must go no further.
        match t.try_recv() {
            None => {}
            Some(r) => {
                r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
                t.reply(
                    &r,
                    Reply::go(OPERATIONAL, FULL_FEATURE, ECHO_DEFAULTS).tsih(TSIH),
                );
                t.expect_close();
            }
        }
    }
}

#[test]
fn mutual_chap_accepts_the_right_target_response() {
    let opts = chap_options(Some(("iqn.2003-01.org.example", "target-secret-1")));
    let out = drive(
        &opts,
        Some(TARGET),
        mutual_chap_script("iqn.2003-01.org.example", "target-secret-1"),
    );
    let n = out.result.expect("mutual CHAP login");
    assert_sequence_numbers(&n, 4);
}

#[test]
fn mutual_chap_rejects_a_wrong_target_response() {
    let opts = chap_options(Some(("iqn.2003-01.org.example", "target-secret-1")));
    for (name, secret) in [
        ("iqn.2003-01.org.example", "not-the-secret!"),
        ("iqn.2003-01.org.impostor", "target-secret-1"),
    ] {
        let out = drive(&opts, Some(TARGET), mutual_chap_script(name, secret));
        let e = out.result.expect_err("a target that cannot prove itself");
        assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("CHAP") || msg.contains("authentication"),
            "{msg}"
        );
    }
}

#[test]
fn mutual_chap_requires_the_target_to_answer() {
    let opts = chap_options(Some(("iqn.2003-01.org.example", "target-secret-1")));
    let out = drive(&opts, Some(TARGET), |t| {
        let r = t.chap_challenge(9, &[1u8; 16]);
        // The target accepts the initiator but ignores its challenge.
        t.reply(&r, Reply::go(SECURITY, OPERATIONAL, &[]));
        assert!(t.try_recv().is_none(), "the initiator went on unverified");
    });
    let e = out.result.expect_err("an unproven target");
    assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
}

#[test]
fn chap_initiator_refuses_a_target_without_chap() {
    let out = drive(&chap_options(None), Some(TARGET), |t| {
        let r = t.recv();
        r.assert_keys(&[("AuthMethod", "CHAP")]);
        // A target that skips authentication must not get the session.
        t.reply(
            &r,
            Reply::go(SECURITY, OPERATIONAL, &[("AuthMethod", "None")]),
        );
        assert!(t.try_recv().is_none(), "the initiator went on without CHAP");
    });
    let e = out.result.expect_err("AuthMethod=None to a CHAP initiator");
    assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
}

#[test]
fn malformed_chap_challenges_are_authentication_errors() {
    let cases: [&[(&str, &str)]; 4] = [
        // An algorithm nobody registered.
        &[
            ("CHAP_A", "9"),
            ("CHAP_I", "1"),
            ("CHAP_C", "0x00112233445566778899"),
        ],
        &[("CHAP_A", "5"), ("CHAP_C", "0x00112233445566778899")],
        &[("CHAP_A", "5"), ("CHAP_I", "1")],
        &[("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0xnothex")],
    ];
    for pairs in cases {
        let out = drive(&chap_options(None), Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "CHAP")]));
            let r = t.recv();
            t.reply(&r, Reply::stay(SECURITY, pairs));
            assert!(t.try_recv().is_none(), "the initiator answered {pairs:?}");
        });
        let e = out.result.expect_err("a malformed challenge");
        assert!(
            matches!(e, LoginError::Authentication(_)),
            "{pairs:?}: {e:?}"
        );
    }
}

#[test]
fn chap_refused_by_the_target() {
    let out = drive(&chap_options(None), Some(TARGET), |t| {
        let r = t.chap_challenge(1, &[0x11; 16]);
        // 0x0201: authentication failure.
        t.reply(&r, Reply::fail(SECURITY, 0x0201));
    });
    let e = out.result.expect_err("refused credentials");
    assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
}
