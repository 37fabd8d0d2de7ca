//! Unit attentions of a new I_T nexus, kept from the guest.
//!
//! A target reports POWER ON, RESET OR BUS DEVICE RESET OCCURRED (ASC 29h) to the first
//! command of every new I_T nexus: after vscsid's first login, after a re-login that is a
//! new nexus to the target, and on the destination of a live migration (its daemon logs in
//! with its own ISID). Nothing was reset from the guest's point of view (the guest's
//! device is vscsid's LUN, which lives on), so passing it through would show the guest a
//! device reset that did not happen to it (Linux logs "Power-on or device reset
//! occurred" and retries). After each login, before any guest command goes down the
//! path, TEST UNIT READY is sent until it reports no such attention (at most
//! [`MAX_TRIES`] times), as initiators that hide their sessions from their users do.
//!
//! ASYMMETRIC ACCESS STATE CHANGED (2Ah/06h) is vscsid's news, not the guest's: vscsid
//! picks the path by the ALUA states (`alua_follow` re-reads them), and the guest's one
//! path to its LUN did not change. It is consumed the same way.
//!
//! Any other unit attention met on the way (capacity data changed, inquiry data changed,
//! reported LUNs changed ...) is news for the guest: its sense is held and given, once, as
//! the answer to the guest's next command (see [`HeldAttention`]), as the target would
//! have done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::scsi::cdb::TEST_UNIT_READY as TUR_OPCODE;
use crate::scsi::status::CHECK_CONDITION;
use crate::scsi::task::ScsiCompletion;

/// TEST UNIT READYs sent after a login, at most: a target queues a few attentions per
/// nexus, each command takes one.
pub const MAX_TRIES: usize = 6;

const TEST_UNIT_READY: [u8; 6] = [TUR_OPCODE, 0, 0, 0, 0, 0];
const UNIT_ATTENTION: u8 = 0x6;
/// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED and its qualifiers (29h/00h-07h).
const ASC_POWER_ON_RESET: u8 = 0x29;

/// Sense key and additional sense code of fixed (70h/71h) or descriptor (72h/73h) sense.
pub fn key_and_asc(sense: &[u8]) -> Option<(u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 => Some((sense.get(2)? & 0x0f, *sense.get(12)?)),
        0x72 | 0x73 => Some((sense.get(1)? & 0x0f, *sense.get(2)?)),
        _ => None,
    }
}

/// What a command of vscsid's own (TEST UNIT READY after a login ...) said.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The new nexus's reset attention: consumed, ask again.
    NexusReset,
    /// ASYMMETRIC ACCESS STATE CHANGED: consumed (the ALUA states are re-read), ask again.
    AccessStateChanged,
    /// Another unit attention, for the guest.
    Other(Vec<u8>),
    /// No attention (GOOD, NOT READY, a transport error ...): done.
    Clear,
}

pub fn classify(c: &ScsiCompletion) -> Outcome {
    let Ok(st) = &c.result else {
        return Outcome::Clear;
    };
    if st.status != CHECK_CONDITION {
        return Outcome::Clear;
    }
    if crate::iscsi::alua::sense_refusal(&st.sense)
        == Some(crate::iscsi::alua::Refusal::StateChanged)
    {
        return Outcome::AccessStateChanged;
    }
    match key_and_asc(&st.sense) {
        Some((UNIT_ATTENTION, ASC_POWER_ON_RESET)) => Outcome::NexusReset,
        Some((UNIT_ATTENTION, _)) => Outcome::Other(st.sense.clone()),
        _ => Outcome::Clear,
    }
}

/// Sends TEST UNIT READY through `exec` (None: no answer) until no nexus reset (or ALUA
/// state change) attention is reported. Returns the sense of another unit attention it
/// consumed, if one came, and how many reset and state change attentions it consumed.
pub fn clear_after_login(
    mut exec: impl FnMut(&[u8]) -> Option<ScsiCompletion>,
) -> (Option<Vec<u8>>, usize) {
    let mut consumed = 0;
    for _ in 0..MAX_TRIES {
        let Some(c) = exec(&TEST_UNIT_READY) else {
            break;
        };
        match classify(&c) {
            Outcome::NexusReset | Outcome::AccessStateChanged => consumed += 1,
            Outcome::Other(sense) => return (Some(sense), consumed),
            Outcome::Clear => break,
        }
    }
    (None, consumed)
}

/// A unit attention taken from the target for the guest, given as the answer to the
/// guest's next command. The flag keeps the per-command check to one atomic load.
#[derive(Default)]
pub struct HeldAttention {
    present: AtomicBool,
    sense: Mutex<Option<Vec<u8>>>,
}

impl HeldAttention {
    pub fn hold(&self, sense: Vec<u8>) {
        *self.sense.lock().unwrap_or_else(|p| p.into_inner()) = Some(sense);
        self.present.store(true, Ordering::Release);
    }

    /// The held sense, once, for a command that may report it. INQUIRY, REPORT LUNS and
    /// REQUEST SENSE never get a unit attention (SPC-4 5.14): they leave it held.
    pub fn take_for(&self, cdb: &[u8]) -> Option<Vec<u8>> {
        if !self.present.load(Ordering::Acquire) {
            return None;
        }
        use crate::scsi::cdb::{INQUIRY, REPORT_LUNS, REQUEST_SENSE};
        if matches!(cdb.first(), Some(&INQUIRY | &REPORT_LUNS | &REQUEST_SENSE)) {
            return None;
        }
        let taken = self.sense.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.present.store(false, Ordering::Release);
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::task::{Residual, ScsiStatus};

    fn answer(status: u8, sense: &[u8]) -> ScsiCompletion {
        ScsiCompletion {
            result: Ok(ScsiStatus {
                status,
                sense: sense.to_vec(),
            }),
            data_in: Vec::new(),
            residual: Residual::default(),
        }
    }

    fn fixed(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = key;
        s[7] = 10;
        s[12] = asc;
        s[13] = ascq;
        s
    }

    #[test]
    fn sense_formats_are_read() {
        assert_eq!(key_and_asc(&fixed(6, 0x29, 0)), Some((6, 0x29)));
        assert_eq!(key_and_asc(&[0x72, 0x06, 0x2a, 0x09]), Some((6, 0x2a)));
        assert_eq!(key_and_asc(&[0xf0, 0, 6]), None, "fixed sense cut short");
        assert_eq!(key_and_asc(&[]), None);
        assert_eq!(key_and_asc(&[0x7f, 0, 0]), None);
    }

    #[test]
    fn reset_attentions_are_consumed_until_the_unit_answers() {
        let mut answers = vec![
            answer(CHECK_CONDITION, &fixed(6, 0x29, 0)),
            answer(CHECK_CONDITION, &fixed(6, 0x29, 7)),
            answer(0, &[]),
        ]
        .into_iter();
        let mut sent = 0;
        let (held, consumed) = clear_after_login(|cdb| {
            assert_eq!(cdb, &TEST_UNIT_READY);
            sent += 1;
            answers.next()
        });
        assert_eq!((held, consumed, sent), (None, 2, 3));
    }

    #[test]
    fn another_attention_is_kept_for_the_guest() {
        let capacity_changed = fixed(6, 0x2a, 0x09);
        let mut answers = vec![
            answer(CHECK_CONDITION, &fixed(6, 0x29, 0)),
            answer(CHECK_CONDITION, &capacity_changed),
            answer(0, &[]),
        ]
        .into_iter();
        let (held, consumed) = clear_after_login(|_| answers.next());
        assert_eq!((held, consumed), (Some(capacity_changed), 1));
    }

    #[test]
    fn an_alua_state_change_is_consumed_not_held() {
        let mut answers = vec![
            answer(CHECK_CONDITION, &fixed(6, 0x29, 0)),
            answer(CHECK_CONDITION, &fixed(6, 0x2a, 0x06)),
            answer(CHECK_CONDITION, &[0x72, 0x06, 0x2a, 0x06]),
            answer(0, &[]),
        ]
        .into_iter();
        let (held, consumed) = clear_after_login(|_| answers.next());
        assert_eq!((held, consumed), (None, 3));
        let c = answer(CHECK_CONDITION, &fixed(6, 0x2a, 0x06));
        assert_eq!(classify(&c), Outcome::AccessStateChanged);
    }

    #[test]
    fn not_ready_or_no_answer_ends_it_and_the_loop_is_bounded() {
        let (held, consumed) =
            clear_after_login(|_| Some(answer(CHECK_CONDITION, &fixed(2, 0x04, 1))));
        assert_eq!((held, consumed), (None, 0));
        assert_eq!(clear_after_login(|_| None), (None, 0));
        let mut sent = 0;
        let (held, consumed) = clear_after_login(|_| {
            sent += 1;
            Some(answer(CHECK_CONDITION, &fixed(6, 0x29, 0)))
        });
        assert_eq!((held, consumed, sent), (None, MAX_TRIES, MAX_TRIES));
    }

    #[test]
    fn a_held_attention_answers_one_command_but_not_inquiry() {
        use crate::scsi::cdb::{INQUIRY, READ_10};
        let h = HeldAttention::default();
        assert_eq!(h.take_for(&[READ_10]), None);
        h.hold(fixed(6, 0x2a, 9));
        assert_eq!(h.take_for(&[INQUIRY]), None);
        assert_eq!(h.take_for(&[READ_10]), Some(fixed(6, 0x2a, 9)));
        assert_eq!(h.take_for(&[READ_10]), None);
    }
}
