//! CHAP (RFC 1994) as iSCSI uses it (RFC 7143 12.1.3): hex-encoded challenges and
//! responses, the digest algorithms (`algorithm`), and the record of the challenges we sent
//! that keeps a target from reflecting one of them back to us.

mod algorithm;

use std::collections::VecDeque;
use std::sync::Mutex;

pub use algorithm::{names, ChapAlgorithm};

/// How many of our recent mutual-CHAP challenges are remembered: enough for every path of
/// many LUNs logging in at once.
const RECENT_CHALLENGES: usize = 256;

/// The challenges this process sent to targets lately (mutual CHAP).
static SENT_CHALLENGES: Mutex<VecDeque<Vec<u8>>> = Mutex::new(VecDeque::new());

/// Remembers a challenge we send to a target.
pub fn record_sent_challenge(challenge: &[u8]) {
    let mut sent = SENT_CHALLENGES.lock().unwrap_or_else(|p| p.into_inner());
    if sent.len() >= RECENT_CHALLENGES {
        sent.pop_front();
    }
    sent.push_back(challenge.to_vec());
}

/// Whether `challenge` (from a target) is one we sent: a target that wants our response to
/// it could be replaying our own challenge to learn the answer it must give (RFC 7143
/// 12.1.3 forbids reusing the other side's challenge).
pub fn is_reflected(challenge: &[u8]) -> bool {
    let sent = SENT_CHALLENGES.lock().unwrap_or_else(|p| p.into_inner());
    sent.iter().any(|c| c.as_slice() == challenge)
}

/// A fresh challenge for the target (mutual CHAP), as long as the algorithm's digest and
/// never equal to the target's own (`theirs`).
pub fn new_challenge(algorithm: ChapAlgorithm, theirs: &[u8]) -> Vec<u8> {
    // Two draws from the kernel's generator matching a given value is not a real case; the
    // bound only keeps the loop finite.
    let mut c = random_bytes(algorithm.digest_len());
    for _ in 0..4 {
        if c != theirs {
            break;
        }
        c = random_bytes(algorithm.digest_len());
    }
    c
}

/// Whether a CHAP response is the expected one, in time that does not depend on where
/// they differ (the length is the digest's, which is public): a target probing our
/// mutual-CHAP check byte by byte learns nothing from how fast it fails.
pub fn responses_match(got: &[u8], want: &[u8]) -> bool {
    if got.len() != want.len() {
        return false;
    }
    let diff = got
        .iter()
        .zip(want)
        .fold(0u8, |acc, (a, b)| acc | std::hint::black_box(a ^ b));
    diff == 0
}

/// Encodes bytes as iSCSI hex (`0x...`).
pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes `0x...` hex (also accepts `0X`, and base64 `0b...` is rejected).
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let h = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    if h.len() % 2 != 0 || h.is_empty() {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Random bytes for a challenge (mutual CHAP) from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    // SAFETY: the buffer is valid for n bytes; getrandom writes at most n.
    let got = unsafe { libc::getrandom(v.as_mut_ptr().cast(), n, 0) };
    if got < 0 || got as usize != n {
        // Fall back to a time-derived value rather than a fixed one.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in v.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_match_only_when_equal_in_length_and_every_byte() {
        assert!(responses_match(&[1, 2, 3], &[1, 2, 3]));
        assert!(!responses_match(&[1, 2, 3], &[1, 2, 4]));
        assert!(!responses_match(&[0, 2, 3], &[1, 2, 3]));
        assert!(!responses_match(&[1, 2], &[1, 2, 3]));
        assert!(responses_match(&[], &[]));
    }

    #[test]
    fn md5_response_matches_a_hand_computed_value() {
        use md5::{Digest, Md5};
        // MD5(0x01 || "secret" || 0x00 0x01 0x02 0x03)
        let r = ChapAlgorithm::Md5.response(1, b"secret", &[0, 1, 2, 3]);
        let want = Md5::digest(b"\x01secret\x00\x01\x02\x03").to_vec();
        assert_eq!(r, want);
        // And MD5 itself against RFC 1321's test suite.
        let d = Md5::digest(b"abc").to_vec();
        assert_eq!(to_hex(&d), "0x900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn our_challenges_are_recognised_when_reflected() {
        let theirs = random_bytes(32);
        let ours = new_challenge(ChapAlgorithm::Sha256, &theirs);
        assert_eq!(ours.len(), 32);
        assert_ne!(ours, theirs);
        assert!(!is_reflected(&ours));
        record_sent_challenge(&ours);
        assert!(is_reflected(&ours));
        assert!(!is_reflected(&theirs));
        assert_eq!(new_challenge(ChapAlgorithm::Md5, &[]).len(), 16);
    }

    #[test]
    fn hex_round_trip_and_errors() {
        assert_eq!(from_hex("0x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(to_hex(&[0, 255, 16]), "0x00ff10");
        assert_eq!(from_hex("00ff"), None);
        assert_eq!(from_hex("0xabc"), None);
        assert_eq!(from_hex("0xzz"), None);
        assert_eq!(random_bytes(16).len(), 16);
    }
}
