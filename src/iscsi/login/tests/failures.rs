//! Logins that fail, and fail promptly with the error that says why: rejections by status,
//! an unknown target, a target that closes, goes silent, sends the wrong PDU, never ends
//! its text or never leaves a stage.

use super::*;

#[test]
fn endless_continuation_is_refused() {
    // The script's own bound must be the larger, or it would end the login first.
    const _: () = assert!(MAX_TEXT_PDUS + 2 < MAX_ROUNDS);
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let mut served = 0;
        while let Some(r) = t.try_recv() {
            if t.rounds >= MAX_ROUNDS {
                break;
            }
            let reply = Reply {
                cont: true,
                csg: OPERATIONAL,
                data: b"X-Filler=".to_vec(),
                ..Reply::default()
            };
            t.reply(&r, reply);
            served += 1;
        }
        served
    });
    let e = out.result.expect_err("a response that never ends");
    assert!(matches!(e, LoginError::Protocol(_)), "{e:?}");
    // The target would have gone on for longer: the initiator stopped it (possibly after
    // asking for one more piece it then did not wait for).
    assert!(
        out.target <= MAX_TEXT_PDUS + 1,
        "{} continuations",
        out.target
    );
}

#[test]
fn target_not_found_in_a_later_round_names_the_target() {
    let out = drive(&options(), Some(TARGET), move |t| {
        let r = t.recv();
        t.reply(&r, Reply::stay(SECURITY, &[("AuthMethod", "None")]));
        let r = t.recv();
        t.reply(&r, Reply::fail(SECURITY, 0x0203));
    });
    match out.result {
        Err(LoginError::NotFound(name)) => assert_eq!(name, TARGET),
        other => panic!("{other:?}"),
    }
}

#[test]
fn login_status_maps_to_the_error_variant() {
    for status in [0x0201u16, 0x0202] {
        let out = drive(&options(), Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::fail(SECURITY, status));
        });
        let e = out.result.expect_err("failed login");
        assert!(
            matches!(e, LoginError::Authentication(_)),
            "{status:#06x}: {e:?}"
        );
    }
    for status in [0x0203u16, 0x0204] {
        let out = drive(&options(), Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::fail(SECURITY, status));
        });
        match out.result {
            Err(LoginError::NotFound(name)) => assert_eq!(name, TARGET, "{status:#06x}"),
            other => panic!("{status:#06x}: {other:?}"),
        }
    }
    // Other initiator errors and target errors are rejections naming the code.
    for status in [0x0200u16, 0x0205, 0x0300, 0x0301] {
        let out = drive(&options(), Some(TARGET), move |t| {
            let r = t.recv();
            t.reply(&r, Reply::fail(SECURITY, status));
        });
        match out.result {
            Err(LoginError::Rejected(msg)) => {
                let want = format!("status class {} detail {}", status >> 8, status & 0xff);
                assert!(msg.contains(&want), "{status:#06x}: {msg}");
            }
            other => panic!("{status:#06x}: {other:?}"),
        }
    }
    // A redirect names its address; one without an address is the target's error.
    for (status, permanent) in [(0x0101u16, false), (0x0102, true)] {
        let out = drive(&options(), Some(TARGET), move |t| {
            let r = t.recv();
            let mut reply = Reply::fail(SECURITY, status);
            reply.data = kv(&[("TargetAddress", "127.0.0.9:3262,3")]);
            t.reply(&r, reply);
        });
        match out.result {
            Err(LoginError::Redirected {
                address,
                permanent: p,
            }) => {
                assert_eq!((address.as_str(), p), ("127.0.0.9:3262", permanent));
            }
            other => panic!("{status:#06x}: {other:?}"),
        }
    }
    let out = drive(&options(), Some(TARGET), |t| {
        let r = t.recv();
        t.reply(&r, Reply::fail(SECURITY, 0x0101));
    });
    assert!(
        matches!(&out.result, Err(LoginError::Protocol(m)) if m.contains("TargetAddress")),
        "{:?}",
        out.result
    );
    // A failure in the operational stage counts just the same.
    let out = drive(&options(), Some(TARGET), |t| {
        t.security_none(Some(TARGET));
        let r = t.recv();
        t.reply(&r, Reply::fail(OPERATIONAL, 0x0201));
    });
    assert!(
        matches!(out.result, Err(LoginError::Authentication(_))),
        "{:?}",
        out.result
    );
}

#[test]
fn target_closing_mid_login_is_an_error() {
    // Each script stops at a different point and drops the connection.
    type Script = fn(&mut Target);
    let scripts: [(&str, Script); 5] = [
        ("before any response", |t| {
            t.recv();
        }),
        ("inside a response header", |t| {
            t.recv();
            let mut p = Pdu::new(op::LOGIN_RESP);
            p.set_flags(T_BIT | (SECURITY << 2) | OPERATIONAL);
            let bytes = pdu::encode(&p, &Framing::default());
            t.s.write_all(&bytes[..20]).expect("write");
        }),
        ("inside a response's text", |t| {
            let r = t.recv();
            let mut p = Pdu::new(op::LOGIN_RESP);
            p.set_flags(T_BIT | (SECURITY << 2) | OPERATIONAL);
            p.set_itt(r.pdu.itt());
            p.data = kv(&[("AuthMethod", "None")]);
            let bytes = pdu::encode(&p, &Framing::default());
            t.s.write_all(&bytes[..BHS_LEN + 5]).expect("write");
        }),
        ("after the security stage", |t| {
            t.security_none(Some(TARGET));
            t.recv();
        }),
        ("in the middle of CHAP", |t| {
            t.chap_challenge(3, &[0x42; 16]);
        }),
    ];
    for (when, script) in scripts {
        let opts = if when.contains("CHAP") {
            chap_options(None)
        } else {
            options()
        };
        let out = drive(&opts, Some(TARGET), script);
        let e = out.result.expect_err(when);
        assert!(matches!(e, LoginError::Protocol(_)), "{when}: {e:?}");
        assert!(out.elapsed < PROMPT, "{when}: took {:?}", out.elapsed);
    }
}

#[test]
fn silent_target_times_out() {
    let out = drive_with_timeout(&options(), Some(TARGET), Duration::from_millis(200), |t| {
        t.recv();
        // Say nothing; wait for the initiator to give up and close.
        t.expect_close();
    });
    let e = out.result.expect_err("no answer");
    assert!(matches!(e, LoginError::TimedOut), "{e:?}");
    assert!(out.elapsed < PROMPT, "took {:?}", out.elapsed);
    // Named for the operator: the portal and the timeout, not the socket's EAGAIN.
    let shown = e
        .at("127.0.0.9:3260", Duration::from_millis(200))
        .to_string();
    assert!(
        shown.contains("127.0.0.9:3260") && shown.contains("200 ms"),
        "{shown}"
    );
}

#[test]
fn wrong_opcode_during_login_is_an_error() {
    let out = drive(&options(), Some(TARGET), |t| {
        let r = t.recv();
        let mut p = Pdu::new(op::REJECT);
        p.set_flags(F_FINAL);
        p.bhs[2] = 0x04; // reason: protocol error
        p.data = r.pdu.bhs.to_vec();
        pdu::write_pdu(&mut t.s, &p, &Framing::default()).expect("write");
        assert!(t.try_recv().is_none());
    });
    match out.result {
        Err(LoginError::Protocol(msg)) => assert!(msg.contains("0x3f"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn target_that_never_transits_is_given_up_on() {
    // The target keeps answering T=0 in one stage. The initiator must give up after a
    // bounded number of rounds rather than ping-pong for ever.
    for stage in [SECURITY, OPERATIONAL] {
        let out = drive(&options(), Some(TARGET), move |t| {
            if stage == OPERATIONAL {
                t.security_none(Some(TARGET));
            }
            let mut served = 0;
            while let Some(r) = t.try_recv() {
                if t.rounds >= MAX_ROUNDS {
                    break;
                }
                assert_eq!(r.csg(), stage);
                t.reply(&r, Reply::stay(stage, &[]));
                served += 1;
            }
            served
        });
        let e = out.result.expect_err("a target that never transits");
        assert!(matches!(e, LoginError::Protocol(_)), "stage {stage}: {e:?}");
        assert!(
            out.target <= MAX_STAGE_ROUNDS + 1,
            "stage {stage}: the initiator stopped only when the target did, after {} rounds",
            out.target
        );
    }
}
