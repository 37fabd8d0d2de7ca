//! Persistent reservations (SPC-4 5.13) on a LUN with several paths. Each path is its own
//! I_T nexus to the target, and a registration belongs to one nexus: a guest that
//! registers through one path would find its other paths unregistered, and its writes
//! down them refused once it holds a reservation. So, as dm-multipath's `mpathpersist`
//! does:
//!
//! - PERSISTENT RESERVE OUT with REGISTER or REGISTER AND IGNORE EXISTING KEY goes to one
//!   path; once it succeeds, the same parameter data goes to every other logged-in path as
//!   REGISTER AND IGNORE EXISTING KEY (a path that holds the key already does not
//!   conflict), and the guest gets the first path's answer after that.
//! - The LUN remembers the registration. A path that logs in later (after a failover, or a
//!   reconnect, which is a new nexus to targets that tie registrations to the session) is
//!   registered with it before it carries guest I/O, if the key is still registered at the
//!   target (read with PR IN READ KEYS, as multipathd does: a key that another initiator
//!   preempted, or the guest cleared, must not come back through a reconnecting path and
//!   undo a fence). If the guest's last registration removed its key (service action
//!   reservation key 0), a joining path is unregistered the same way, for targets on which
//!   the path's nexus (initiator name and ISID, stable across logins) kept a registration.
//! - RELEASE is repeated the same way, unchanged: the reservation belongs to the nexus
//!   that reserved (unless its type is all-registrants), the guest cannot know which path
//!   that was, and a RELEASE from another nexus succeeds and does nothing (SPC-4 5.13.11).
//!   mpathpersist releases on every path for the same reason. A reservation held through
//!   a nexus that is gone for good (a target that makes every login a new nexus, as
//!   tgtd does, and a path whose session ended) cannot be released that way; the guest
//!   can still PREEMPT its own key or CLEAR.
//! - RESERVE, PREEMPT, CLEAR and the rest go to one path only: the reservation belongs to
//!   the nexus that sent it. With a registrants-only or all-registrants type it holds on
//!   every path, since every path is registered; with WRITE EXCLUSIVE or EXCLUSIVE ACCESS
//!   only the reserving path may write, which is the target's rule and is why multipath
//!   hosts use the registrants types.
//! - RESERVATION CONFLICT, like every status, goes to the guest unchanged.
//!
//! The LUNs of one target share each path's session (`registry`), so they share its I_T
//! nexus. Registrations and reservations are per logical unit, though: each LUN keeps and
//! restores its own, on its own LUN, through the shared session.

use crate::scsi::cdb::PERSISTENT_RESERVE_OUT;

/// PERSISTENT RESERVE IN's operation code.
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
/// PR OUT service actions (SPC-4 6.16.1).
const REGISTER: u8 = 0x00;
const RELEASE: u8 = 0x02;
const CLEAR: u8 = 0x03;
const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
/// PR IN READ KEYS.
const READ_KEYS: u8 = 0x00;
/// The basic PR OUT parameter list: reservation key, service action reservation key,
/// obsolete, flags, obsolete.
pub const PARAMETER_LIST_LEN: usize = 24;
/// Byte 20 of the parameter list: SPEC_I_PT (registrations for other initiator ports,
/// whose transport IDs follow). REGISTER AND IGNORE EXISTING KEY refuses it, and the
/// ports it named were registered by the first path's command.
const SPEC_I_PT: u8 = 0x08;
/// READ KEYS asked for when a path joins: the header and up to 1023 keys.
pub const READ_KEYS_LEN: u16 = 8 + 8 * 1023;

/// A guest's registration, as vscsid sends it to other paths: REGISTER AND IGNORE
/// EXISTING KEY with the guest's parameter list (SPEC_I_PT cleared, so 24 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    parameters: [u8; PARAMETER_LIST_LEN],
}

impl Registration {
    /// The key the guest registered; 0 removes its registration.
    pub fn key(&self) -> u64 {
        let mut k = [0u8; 8];
        k.copy_from_slice(&self.parameters[8..16]);
        u64::from_be_bytes(k)
    }

    /// REGISTER AND IGNORE EXISTING KEY with the guest's parameters.
    pub fn repeat(&self) -> Repeat {
        Repeat {
            cdb: pr_out_cdb(REGISTER_AND_IGNORE_EXISTING_KEY, 0),
            parameters: self.parameters,
        }
    }
}

/// A PR OUT command vscsid sends on other paths after the guest's succeeded on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeat {
    cdb: [u8; 10],
    parameters: [u8; PARAMETER_LIST_LEN],
}

impl Repeat {
    pub fn cdb(&self) -> [u8; 10] {
        self.cdb
    }

    pub fn parameters(&self) -> Vec<u8> {
        self.parameters.to_vec()
    }

    /// The reservation key field, for log lines.
    pub fn key(&self) -> u64 {
        let mut k = [0u8; 8];
        k.copy_from_slice(&self.parameters[..8]);
        u64::from_be_bytes(k)
    }
}

/// PR OUT with `action`, scope LU and `kind`, 24 bytes of parameters.
fn pr_out_cdb(action: u8, kind: u8) -> [u8; 10] {
    let [l0, l1, l2, l3] = (PARAMETER_LIST_LEN as u32).to_be_bytes();
    [
        PERSISTENT_RESERVE_OUT,
        action,
        kind,
        0,
        0,
        l0,
        l1,
        l2,
        l3,
        0,
    ]
}

/// The basic parameter list at the start of `data`, if it is all there.
fn parameter_list(data: &[u8]) -> Option<[u8; PARAMETER_LIST_LEN]> {
    let mut p = [0u8; PARAMETER_LIST_LEN];
    p.copy_from_slice(data.get(..PARAMETER_LIST_LEN)?);
    Some(p)
}

/// What a guest's PERSISTENT RESERVE OUT is, as far as the paths are concerned.
#[derive(Debug, PartialEq, Eq)]
pub enum PrOut {
    /// REGISTER or REGISTER AND IGNORE EXISTING KEY with a full parameter list: repeated
    /// on every path.
    Register(Registration),
    /// RELEASE: repeated unchanged on every path.
    Release(Repeat),
    /// CLEAR: every registration goes, the guest's too.
    Clear,
    /// Sent on one path only.
    Other,
}

/// The PR OUT `cdb` is, with its parameter data; None for any other command.
pub fn classify(cdb: &[u8], data_out: &[u8]) -> Option<PrOut> {
    if cdb.first() != Some(&PERSISTENT_RESERVE_OUT) {
        return None;
    }
    let action = cdb.get(1).map(|b| b & 0x1f)?;
    Some(match action {
        // A parameter list cut short is the target's to refuse: nothing to repeat.
        REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY => match parameter_list(data_out) {
            Some(mut parameters) => {
                parameters[20] &= !SPEC_I_PT;
                PrOut::Register(Registration { parameters })
            }
            None => PrOut::Other,
        },
        RELEASE => match parameter_list(data_out) {
            Some(parameters) => PrOut::Release(Repeat {
                cdb: pr_out_cdb(RELEASE, cdb.get(2).copied().unwrap_or(0)),
                parameters,
            }),
            None => PrOut::Other,
        },
        CLEAR => PrOut::Clear,
        _ => PrOut::Other,
    })
}

/// What the LUN knows of the guest's registration, for paths that log in later.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Remembered {
    /// The guest never registered, or its registration is gone (CLEAR, or preempted).
    #[default]
    Nothing,
    /// Registered with a key: joining paths are registered with it.
    Registered(Registration),
    /// The guest removed its registration (key 0): joining paths are unregistered.
    Unregistered(Registration),
}

impl Remembered {
    /// After the guest's registration succeeded at the target.
    pub fn after(r: Registration) -> Remembered {
        if r.key() == 0 {
            Remembered::Unregistered(r)
        } else {
            Remembered::Registered(r)
        }
    }
}

/// PR IN READ KEYS for `alloc` bytes.
pub fn read_keys_cdb(alloc: u16) -> [u8; 10] {
    let [hi, lo] = alloc.to_be_bytes();
    [PERSISTENT_RESERVE_IN, READ_KEYS, 0, 0, 0, 0, 0, hi, lo, 0]
}

/// The keys in READ KEYS parameter data (as many as arrived, within the additional
/// length the target gave); None when the header is missing.
pub fn parse_read_keys(data: &[u8]) -> Option<Vec<u64>> {
    let header = data.get(..8)?;
    let additional = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let listed = data.get(8..)?;
    let listed = &listed[..listed.len().min(additional)];
    Some(
        listed
            .chunks_exact(8)
            .map(|k| {
                let mut b = [0u8; 8];
                b.copy_from_slice(k);
                u64::from_be_bytes(b)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; PARAMETER_LIST_LEN];
        p[..8].copy_from_slice(&key.to_be_bytes());
        p[8..16].copy_from_slice(&sa_key.to_be_bytes());
        p[20] = flags;
        p
    }

    fn pr_out(action: u8) -> [u8; 10] {
        [PERSISTENT_RESERVE_OUT, action, 0, 0, 0, 0, 0, 0, 24, 0]
    }

    #[test]
    fn register_and_register_ignore_are_repeated_with_the_guests_parameters() {
        for action in [REGISTER, REGISTER_AND_IGNORE_EXISTING_KEY] {
            let data = parameters(0x11, 0xabcd, 0x01);
            let Some(PrOut::Register(r)) = classify(&pr_out(action), &data) else {
                panic!("action {action:#x} not a registration");
            };
            assert_eq!(r.key(), 0xabcd);
            // Always REGISTER AND IGNORE EXISTING KEY on the other paths, 24 bytes.
            assert_eq!(r.repeat().cdb(), [0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0]);
            assert_eq!(r.repeat().parameters(), data, "APTPL kept");
        }
    }

    #[test]
    fn spec_i_pt_is_not_repeated() {
        // SPEC_I_PT with a transport ID after the 24 bytes (and ALL_TG_PT, APTPL).
        let mut data = parameters(0, 7, SPEC_I_PT | 0x04 | 0x01);
        data.extend_from_slice(&[0, 0, 0, 8, 0x45, 0, 0, 4, b'i', b'q', b'n', 0]);
        let Some(PrOut::Register(r)) = classify(&pr_out(REGISTER), &data) else {
            panic!("not a registration");
        };
        assert_eq!(r.repeat().parameters().len(), PARAMETER_LIST_LEN);
        assert_eq!(r.repeat().parameters()[20], 0x05);
    }

    #[test]
    fn release_is_repeated_unchanged() {
        let data = parameters(0x42, 0, 0);
        let cdb = [PERSISTENT_RESERVE_OUT, RELEASE, 0x05, 0, 0, 0, 0, 0, 24, 0];
        let Some(PrOut::Release(r)) = classify(&cdb, &data) else {
            panic!("not a release");
        };
        assert_eq!(r.cdb(), cdb, "scope and type kept");
        assert_eq!(r.parameters(), data);
        assert_eq!(r.key(), 0x42);
        assert_eq!(classify(&cdb, &data[..8]), Some(PrOut::Other));
    }

    #[test]
    fn other_actions_and_commands_are_not_repeated() {
        let data = parameters(1, 0, 0);
        // RESERVE, PREEMPT, PREEMPT AND ABORT, REGISTER AND MOVE.
        for action in [0x01, 0x04, 0x05, 0x07] {
            assert_eq!(classify(&pr_out(action), &data), Some(PrOut::Other));
        }
        assert_eq!(classify(&pr_out(CLEAR), &data), Some(PrOut::Clear));
        // Reserved bits above the service action are ignored.
        assert_eq!(classify(&pr_out(0xe3), &data), Some(PrOut::Clear));
        // A parameter list cut short is the target's to refuse.
        assert_eq!(classify(&pr_out(REGISTER), &data[..16]), Some(PrOut::Other));
        assert_eq!(classify(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &data), None);
        assert_eq!(classify(&[PERSISTENT_RESERVE_OUT], &data), None);
        assert_eq!(classify(&[], &data), None);
    }

    #[test]
    fn a_key_of_zero_is_remembered_as_unregistered() {
        let r = |sa| match classify(&pr_out(REGISTER), &parameters(5, sa, 0)) {
            Some(PrOut::Register(r)) => r,
            other => panic!("{other:?}"),
        };
        assert!(matches!(Remembered::after(r(9)), Remembered::Registered(x) if x.key() == 9));
        assert!(matches!(
            Remembered::after(r(0)),
            Remembered::Unregistered(_)
        ));
        assert_eq!(Remembered::default(), Remembered::Nothing);
    }

    #[test]
    fn read_keys_is_built_and_parsed() {
        assert_eq!(
            read_keys_cdb(READ_KEYS_LEN),
            [0x5e, 0, 0, 0, 0, 0, 0, 0x20, 0x00, 0]
        );
        let mut data = vec![0, 0, 0, 3, 0, 0, 0, 16];
        data.extend_from_slice(&0xabcdu64.to_be_bytes());
        data.extend_from_slice(&7u64.to_be_bytes());
        assert_eq!(parse_read_keys(&data), Some(vec![0xabcd, 7]));
        // Only what the additional length covers, and only whole keys.
        assert_eq!(parse_read_keys(&data[..20]), Some(vec![0xabcd]));
        let mut longer = data.clone();
        longer.extend_from_slice(&[0xff; 8]);
        assert_eq!(parse_read_keys(&longer), Some(vec![0xabcd, 7]));
        assert_eq!(parse_read_keys(&[0, 0, 0, 1, 0, 0, 0, 0]), Some(vec![]));
        assert_eq!(parse_read_keys(&[0, 0, 0]), None);
    }
}
