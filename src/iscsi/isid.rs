//! The ISID of each session (RFC 7143 10.12.5): derived from who logs in and through which
//! path, so a daemon that restarts, and a path that logs in again, present the same
//! initiator port (initiator name + ISID) to the target, while two sessions that run at
//! once never share one.
//!
//! Format: T = 10b ("Random": A reserved and zero, B and C a 24-bit number, D a 16-bit
//! qualifier). The OUI (00b) and enterprise-number (01b) formats name the vendor that
//! assigns the qualifiers, and vscsid owns neither an OUI nor an IANA enterprise number:
//! borrowing another's would let our ISIDs collide with that vendor's initiators. The
//! random format leaves the number to the initiator; RFC 7143 asks nothing of how it is
//! made, only that the initiator keep its ISIDs apart. A hash of the path's identity is
//! such a number and, unlike a fresh random one, comes out the same after a restart, as
//! the RFC's conservative ISID reuse asks.
//!
//! All 40 bits (B, C and D) come from two crc32c over the initiator name, the daemon's
//! `initiator_id` and socket path, the target name and the portal. vscsid runs one session
//! per target and portal, shared by every LUN of that target (the session registry), so
//! the LUN is not part of it: every LUN of the target is behind the same I_T nexus on a
//! path, as with open-iscsi. Two sessions of this process that would share an ISID (the
//! same target and portal with other credentials or options) must not: the target would
//! end one whenever the other logs in (session reinstatement, RFC 7143 6.3.5). So a
//! session claims its ISID ([`claim`]) and one already held is derived again with the
//! next attempt number. Two
//! daemons that log in at once on one host (a migration's source and destination) differ
//! by their socket paths; daemons on two hosts by their initiator names (an iSCSI name
//! belongs to one node). Collisions between daemons are left to chance: 2^-40 per pair of
//! sessions to the same target.

use std::collections::HashSet;
use std::sync::Mutex;

/// What names one session (a path to a target), from the initiator's side.
#[derive(Debug, Clone, Copy)]
pub struct PathIdentity<'a> {
    pub initiator_name: &'a str,
    /// Tells apart daemons that share an initiator name (`IscsiOptions::isid_scope`: the
    /// daemon's `initiator_id` and socket path).
    pub scope: &'a str,
    pub target: &'a str,
    /// `host:port` of the path's portal.
    pub portal: &'a str,
}

/// The T field's value for the random format, in the top two bits of byte 0.
pub const RANDOM_FORMAT: u8 = 0b10 << 6;

/// The ISID of `path`; `attempt` 0 is the one used unless this process holds it already.
pub fn derive(path: &PathIdentity<'_>, attempt: u32) -> [u8; 6] {
    let mut input = Vec::with_capacity(128);
    for part in [
        path.initiator_name.as_bytes(),
        path.scope.as_bytes(),
        path.target.as_bytes(),
        path.portal.as_bytes(),
    ] {
        // Length-prefixed, so moving bytes from one part to the next changes the input.
        input.extend_from_slice(&(part.len() as u32).to_be_bytes());
        input.extend_from_slice(part);
    }
    input.extend_from_slice(&attempt.to_be_bytes());
    let high = crc32c::crc32c(&input);
    // A second, independent 32 bits: the same input after a different prefix.
    let low = crc32c::crc32c_append(crc32c::crc32c(b"vscsid ISID qualifier"), &input);
    let [_, b0, b1, c] = high.to_be_bytes();
    let [_, _, d0, d1] = low.to_be_bytes();
    [RANDOM_FORMAT, b0, b1, c, d0, d1]
}

/// An ISID held by a session of this process: initiator name, target name, ISID.
type Held = (String, String, [u8; 6]);

/// ISIDs held by this process's sessions.
static HELD: Mutex<Option<HashSet<Held>>> = Mutex::new(None);

/// Most attempts at an ISID no session of this process holds; past them the last one is
/// used (a few sessions per target and portal, and 40 random bits, make that unreachable
/// in practice).
const MAX_ATTEMPTS: u32 = 64;

/// The ISID a new session of `path` logs in with: [`derive`]'s, unless a session of this
/// process holds it for the same initiator name and target; then the next attempt's.
/// Held until [`release`].
pub fn claim(path: &PathIdentity<'_>) -> [u8; 6] {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let set = held.get_or_insert_with(HashSet::new);
    let key = |isid| {
        (
            path.initiator_name.to_string(),
            path.target.to_string(),
            isid,
        )
    };
    let mut isid = derive(path, 0);
    for attempt in 1..MAX_ATTEMPTS {
        if !set.contains(&key(isid)) {
            break;
        }
        isid = derive(path, attempt);
    }
    set.insert(key(isid));
    isid
}

/// Gives back an ISID [`claim`] returned (the session closed for good).
pub fn release(initiator_name: &str, target: &str, isid: [u8; 6]) {
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(set) = held.as_mut() {
        set.remove(&(initiator_name.to_string(), target.to_string(), isid));
    }
}

/// The ISID as targets print it (`0x80a1b2c3d4e5`).
pub fn hex(isid: &[u8; 6]) -> String {
    let mut s = String::from("0x");
    for b in isid {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path<'a>(portal: &'a str, id: &'a str) -> PathIdentity<'a> {
        PathIdentity {
            initiator_name: "iqn.2024-01.io.vscsid:host1",
            scope: id,
            target: "iqn.2003-01.com.example:array",
            portal,
        }
    }

    #[test]
    fn the_same_path_gets_the_same_isid_every_time() {
        let a = derive(&path("10.0.1.10:3260", "/run/vscsid/vm1.sock"), 0);
        let b = derive(&path("10.0.1.10:3260", "/run/vscsid/vm1.sock"), 0);
        assert_eq!(a, b);
        // A fixed value: a change of the derivation would make every restart after an
        // upgrade a new I_T nexus, and must be deliberate (the last one: the LUN left the
        // input when sessions became one per target and portal).
        assert_eq!(hex(&a), "0x809537a7e207");
    }

    #[test]
    fn portals_targets_names_and_ids_each_change_it() {
        let base = path("10.0.1.10:3260", "vm1");
        let isid = derive(&base, 0);
        let others = [
            PathIdentity {
                portal: "10.0.2.10:3260",
                ..base
            },
            PathIdentity {
                portal: "10.0.1.10:3261",
                ..base
            },
            PathIdentity {
                target: "iqn.2003-01.com.example:other",
                ..base
            },
            PathIdentity {
                initiator_name: "iqn.2024-01.io.vscsid:host2",
                ..base
            },
            PathIdentity {
                scope: "vm2",
                ..base
            },
        ];
        for o in &others {
            assert_ne!(derive(o, 0), isid, "{o:?}");
        }
        assert_ne!(derive(&base, 1), isid, "another attempt");
        // Parts are delimited: bytes moved from one to the next make another input.
        let shifted = PathIdentity {
            initiator_name: "iqn.2024-01.io.vscsid:host1v",
            scope: "m1",
            ..base
        };
        assert_ne!(derive(&shifted, 0), isid);
    }

    #[test]
    fn the_format_is_random_with_a_reserved_zero_a_field() {
        for (i, portal) in ["10.0.1.10:3260", "10.0.2.10:3260", "[::1]:3260"]
            .iter()
            .enumerate()
        {
            for attempt in 0..8 {
                let isid = derive(&path(portal, &i.to_string()), attempt);
                // T = 10b, A (the low six bits of byte 0) reserved: zero.
                assert_eq!(isid[0], 0x80, "{}", hex(&isid));
            }
        }
        // The 40 bits after byte 0 spread: many paths, no two alike.
        let mut seen = HashSet::new();
        for n in 0..2000 {
            let portal = format!("10.0.{}.{}:3260", n / 250, n % 250);
            assert!(seen.insert(derive(&path(&portal, "vm"), 0)));
        }
    }

    #[test]
    fn a_held_isid_is_not_given_twice_until_released() {
        let p = PathIdentity {
            initiator_name: "iqn.2024-01.io.vscsid:claim-test",
            ..path("192.0.2.1:3260", "claims")
        };
        let first = claim(&p);
        assert_eq!(first, derive(&p, 0));
        let second = claim(&p);
        assert_eq!(second, derive(&p, 1), "a second session of the same path");
        release(p.initiator_name, p.target, first);
        // Released: the next session gets attempt 0's again, as after a restart.
        assert_eq!(claim(&p), first);
        release(p.initiator_name, p.target, first);
        release(p.initiator_name, p.target, second);
    }

    #[test]
    fn hex_is_what_targets_print() {
        assert_eq!(hex(&[0x80, 0, 0x12, 0xab, 0, 1]), "0x800012ab0001");
    }
}
