//! CHAP digest algorithms: what is offered and in which order, each algorithm one-way and
//! mutual (the target's answers computed here with the hash crates; the known-answer
//! vectors of `chap::algorithm` check the hashes apart from them), a target choosing what
//! was not offered, and challenges replayed back at us.

use super::*;
use crate::iscsi::chap::ChapAlgorithm;

const SECRET: &str = "alice-secret-12";
const TARGET_USER: &str = "iqn.2003-01.org.example";
const TARGET_SECRET: &str = "target-secret-1";

fn with_algorithms(mut o: IscsiOptions, algorithms: &[ChapAlgorithm]) -> IscsiOptions {
    o.chap_algorithms = algorithms.to_vec();
    o
}

#[test]
fn each_algorithm_one_way() {
    for (code, len) in [("8", 32), ("7", 32), ("6", 20), ("5", 16)] {
        let out = drive(&chap_options(None), Some(TARGET), move |t| {
            let challenge = [0x5au8; 40];
            let r = t.chap_challenge_with("8,7,6,5", code, 21, &challenge);
            let got = unhex(r.key("CHAP_R").expect("CHAP_R"));
            assert_eq!(got.len(), len, "CHAP_A={code}: response length");
            assert_eq!(
                got,
                chap_response(code, 21, SECRET, &challenge),
                "CHAP_A={code}"
            );
            t.reply(&r, Reply::go(SECURITY, OPERATIONAL, &[]));
            t.operational(ECHO_DEFAULTS);
            t.expect_close();
        });
        out.result.unwrap_or_else(|e| panic!("CHAP_A={code}: {e}"));
    }
}

/// The target's side of a mutual login with `code`: checks the initiator's response and
/// challenge, and proves itself with `secret`. Returns the initiator's challenge.
fn mutual_script(
    code: &'static str,
    secret: &'static str,
) -> impl FnOnce(&mut Target) -> Vec<u8> + Send + 'static {
    move |t| {
        let challenge = [0xc3u8; 32];
        let r = t.chap_challenge_with("8,7,6,5", code, 99, &challenge);
        assert_eq!(
            unhex(r.key("CHAP_R").expect("CHAP_R")),
            chap_response(code, 99, SECRET, &challenge)
        );
        let their_id: u8 = r.key("CHAP_I").expect("CHAP_I").parse().expect("id");
        let theirs = unhex(r.key("CHAP_C").expect("CHAP_C"));
        let want_len = match code {
            "5" => 16,
            "6" => 20,
            _ => 32,
        };
        assert_eq!(theirs.len(), want_len, "challenge length for CHAP_A={code}");
        assert_ne!(theirs, challenge, "the initiator reused our challenge");
        let resp = hex(&chap_response(code, their_id, secret, &theirs));
        t.reply(
            &r,
            Reply::go(
                SECURITY,
                OPERATIONAL,
                &[("CHAP_N", TARGET_USER), ("CHAP_R", &resp)],
            ),
        );
        if let Some(r) = t.try_recv() {
            r.assert_stage(true, OPERATIONAL, FULL_FEATURE);
            t.reply(
                &r,
                Reply::go(OPERATIONAL, FULL_FEATURE, ECHO_DEFAULTS).tsih(TSIH),
            );
            t.expect_close();
        }
        theirs
    }
}

#[test]
fn each_algorithm_mutual_and_a_wrong_target_secret() {
    let opts = chap_options(Some((TARGET_USER, TARGET_SECRET)));
    for code in ["8", "7", "6", "5"] {
        let out = drive(&opts, Some(TARGET), mutual_script(code, TARGET_SECRET));
        out.result
            .unwrap_or_else(|e| panic!("mutual CHAP_A={code}: {e}"));
        let out = drive(&opts, Some(TARGET), mutual_script(code, "wrong-secret-99"));
        let e = out.result.expect_err("a target with the wrong secret");
        assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
        assert!(e.to_string().contains("mutual CHAP response"), "{e}");
    }
}

#[test]
fn the_configured_order_is_offered_and_md5_can_be_left_out() {
    let opts = with_algorithms(
        chap_options(None),
        &[ChapAlgorithm::Sha1, ChapAlgorithm::Sha3_256],
    );
    let out = drive(&opts, Some(TARGET), |t| {
        let r = t.chap_challenge_with("6,8", "8", 4, &[7u8; 32]);
        assert_eq!(
            unhex(r.key("CHAP_R").expect("CHAP_R")),
            chap_response("8", 4, SECRET, &[7u8; 32])
        );
        t.reply(&r, Reply::go(SECURITY, OPERATIONAL, &[]));
        t.operational(ECHO_DEFAULTS);
        t.expect_close();
    });
    out.result.expect("login with SHA3-256 chosen from 6,8");
}

#[test]
fn a_target_choosing_an_algorithm_not_offered_gets_no_answer() {
    let opts = with_algorithms(
        chap_options(None),
        &[ChapAlgorithm::Sha3_256, ChapAlgorithm::Sha256],
    );
    for chosen in ["5", "6", "Reject"] {
        let out = drive(&opts, Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "CHAP")]));
            let r = t.recv();
            r.assert_keys(&[("CHAP_A", "8,7")]);
            t.reply(
                &r,
                Reply::stay(
                    SECURITY,
                    &[("CHAP_A", chosen), ("CHAP_I", "1"), ("CHAP_C", "0x0011")],
                ),
            );
            assert!(t.try_recv().is_none(), "the initiator answered {chosen}");
        });
        let e = out.result.expect_err(chosen);
        let msg = e.to_string();
        assert!(matches!(e, LoginError::Authentication(_)), "{e:?}");
        assert!(msg.contains("sha3-256, sha256"), "{chosen}: {msg}");
    }
}

#[test]
fn a_target_refusing_every_algorithm_names_them() {
    let opts = with_algorithms(chap_options(None), &[ChapAlgorithm::Sha1]);
    let out = drive(&opts, Some(TARGET), |t| {
        let r = t.recv();
        t.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "CHAP")]));
        let r = t.recv();
        r.assert_keys(&[("CHAP_A", "6")]);
        // tgt answers an offer without MD5 this way.
        t.reply(&r, Reply::fail(SECURITY, 0x0201));
    });
    let msg = out.result.expect_err("no common algorithm").to_string();
    assert!(
        msg.contains("none of the CHAP algorithms offered (sha1)"),
        "{msg}"
    );
}

#[test]
fn a_refused_sha256_response_is_reported_as_such() {
    let out = drive(&chap_options(None), Some(TARGET), |t| {
        let r = t.chap_challenge_with("8,7,6,5", "7", 1, &[3u8; 16]);
        t.reply(&r, Reply::fail(SECURITY, 0x0201));
    });
    let e = out.result.expect_err("refused");
    assert!(matches!(e, LoginError::Sha256Refused(_)), "{e:?}");
}

#[test]
fn a_target_replaying_our_challenge_gets_no_answer() {
    let opts = chap_options(Some((TARGET_USER, TARGET_SECRET)));
    let out = drive(&opts, Some(TARGET), mutual_script("7", TARGET_SECRET));
    out.result.expect("mutual login");
    let ours = out.target;
    // Another login (another path, or a reconnect): the target challenges us with the
    // challenge we sent it, hoping for the response it must itself give.
    let out = drive(&opts, Some(TARGET), move |t| {
        let r = t.recv();
        t.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "CHAP")]));
        let r = t.recv();
        let c = hex(&ours);
        t.reply(
            &r,
            Reply::stay(
                SECURITY,
                &[("CHAP_A", "7"), ("CHAP_I", "5"), ("CHAP_C", &c)],
            ),
        );
        assert!(
            t.try_recv().is_none(),
            "the initiator answered its own challenge"
        );
    });
    let e = out.result.expect_err("a reflected challenge");
    assert!(e.to_string().contains("reflection"), "{e}");
}

#[test]
fn the_same_secret_both_ways_is_refused() {
    let opts = chap_options(Some((TARGET_USER, SECRET)));
    let out = drive(&opts, Some(TARGET), |t| {
        let r = t.recv();
        t.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "CHAP")]));
        let r = t.recv();
        t.reply(
            &r,
            Reply::stay(
                SECURITY,
                &[("CHAP_A", "5"), ("CHAP_I", "2"), ("CHAP_C", "0x0909")],
            ),
        );
        assert!(t.try_recv().is_none(), "the initiator answered");
    });
    let e = out.result.expect_err("one secret for both directions");
    assert!(e.to_string().contains("must differ"), "{e}");
}
