//! The CHAP part of the security stage (RFC 7143 12.1.3): the digest algorithm is
//! negotiated from the configured list (`CHAP_A`), the initiator answers the target's
//! challenge with it, and with mutual CHAP challenges the target and checks its answer
//! with the same algorithm. A target that replays one of our challenges, or picks an
//! algorithm we did not offer, gets no answer.

use std::io::{Read, Write};

use super::{Exchange, LoginError, OPERATIONAL, SECURITY};
use crate::iscsi::chap::{self, ChapAlgorithm};
use crate::iscsi::options::Chap;
use crate::iscsi::text;

/// Longest challenge a target may send: RFC 7143 12.1.3 bounds CHAP_C to 1024 bytes.
const MAX_CHALLENGE: usize = 1024;

/// Runs CHAP after the target agreed to `AuthMethod=CHAP`; returns the target's transit
/// bit and next stage from its last answer.
pub(super) fn authenticate<S: Read + Write>(
    x: &mut Exchange<'_, S>,
    creds: &Chap,
    offered: &[ChapAlgorithm],
) -> Result<(bool, u8), LoginError> {
    let auth = |m: String| LoginError::Authentication(m);
    if offered.is_empty() {
        return Err(auth("no CHAP algorithm to offer (chap_algorithms)".into()));
    }
    let offer: Vec<String> = offered.iter().map(|a| a.code().to_string()).collect();
    let none_accepted = |why: &str| {
        auth(format!(
            "the target accepts none of the CHAP algorithms offered ({}){why}",
            chap::names(offered)
        ))
    };
    let ans = match x.round(SECURITY, OPERATIONAL, false, &[("CHAP_A", offer.join(","))]) {
        Ok((ans, _, _)) => ans,
        Err(LoginError::Authentication(e) | LoginError::Rejected(e)) => {
            return Err(none_accepted(&format!(": {e}")))
        }
        Err(e) => return Err(e),
    };
    let algorithm = match text::get(&ans, "CHAP_A") {
        None | Some("Reject" | "Irrelevant" | "NotUnderstood") => {
            return Err(none_accepted(""));
        }
        Some(v) => match ChapAlgorithm::from_code(v).filter(|a| offered.contains(a)) {
            Some(a) => a,
            None => {
                return Err(auth(format!(
                    "the target chose CHAP_A={v}, which was not offered ({})",
                    chap::names(offered)
                )))
            }
        },
    };
    let id: u8 = text::get(&ans, "CHAP_I")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| auth("missing CHAP_I".into()))?;
    let challenge = text::get(&ans, "CHAP_C")
        .and_then(chap::from_hex)
        .ok_or_else(|| auth("missing or malformed CHAP_C".into()))?;
    if challenge.len() > MAX_CHALLENGE {
        return Err(auth(format!(
            "the target's challenge is {} bytes, more than {MAX_CHALLENGE}",
            challenge.len()
        )));
    }
    if chap::is_reflected(&challenge) {
        return Err(auth(
            "the target sent one of our own challenges back to us (a reflection): no answer given"
                .into(),
        ));
    }
    let resp = algorithm.response(id, creds.secret.as_bytes(), &challenge);
    let mut pairs = vec![
        ("CHAP_N", creds.user.clone()),
        ("CHAP_R", chap::to_hex(&resp)),
    ];
    let mutual = match creds.mutual.as_deref() {
        None => None,
        Some(m) if m.secret == creds.secret => {
            // RFC 7143 12.1.3: a secret that authenticates initiators must not
            // authenticate targets, or a target could have us answer its own challenge.
            return Err(auth(
                "the mutual CHAP secret is the initiator's own secret; they must differ".into(),
            ));
        }
        Some(m) => {
            let my_id = chap::random_bytes(1)[0];
            let my_challenge = chap::new_challenge(algorithm, &challenge);
            chap::record_sent_challenge(&my_challenge);
            pairs.push(("CHAP_I", my_id.to_string()));
            pairs.push(("CHAP_C", chap::to_hex(&my_challenge)));
            Some((m, my_id, my_challenge))
        }
    };
    let (ans, t, nsg) = x
        .round(SECURITY, OPERATIONAL, true, &pairs)
        .map_err(|e| match e {
            LoginError::Authentication(_) | LoginError::Rejected(_)
                if algorithm == ChapAlgorithm::Sha256 =>
            {
                LoginError::Sha256Refused(Box::new(e))
            }
            e => e,
        })?;
    if let Some((m, my_id, my_challenge)) = mutual {
        let want = algorithm.response(my_id, m.secret.as_bytes(), &my_challenge);
        let got = text::get(&ans, "CHAP_R").and_then(chap::from_hex);
        if text::get(&ans, "CHAP_N") != Some(m.user.as_str()) {
            return Err(auth(format!(
                "the target did not prove itself as '{}' (mutual CHAP)",
                m.user
            )));
        }
        if !got.is_some_and(|got| chap::responses_match(&got, &want)) {
            return Err(auth(format!(
                "the target's mutual CHAP response ({algorithm}) is wrong"
            )));
        }
    }
    Ok((t, nsg))
}
