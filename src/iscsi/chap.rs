//! CHAP with MD5 (RFC 1994) as iSCSI uses it: hex-encoded challenges and responses.

use md5::{Digest, Md5};

/// CHAP_R = MD5(identifier || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
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
    fn md5_response_matches_a_hand_computed_value() {
        // MD5(0x01 || "secret" || 0x00 0x01 0x02 0x03)
        let r = response(1, b"secret", &[0, 1, 2, 3]);
        let mut h = Md5::new();
        h.update(b"\x01secret\x00\x01\x02\x03");
        let want: [u8; 16] = h.finalize().into();
        assert_eq!(r, want);
        // And MD5 itself against RFC 1321's test suite.
        let d: [u8; 16] = Md5::digest(b"abc").into();
        assert_eq!(to_hex(&d), "0x900150983cd24fb0d6963f7d28e17f72");
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
