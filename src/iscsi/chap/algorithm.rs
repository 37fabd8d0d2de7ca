//! The CHAP digest algorithms iSCSI negotiates with `CHAP_A` (RFC 7143 12.1.3 for MD5; the
//! values IANA registered for SHA-1, SHA-256 and SHA3-256, which Linux's LIO target and
//! open-iscsi use), and the response each computes: H(identifier || secret || challenge).

use std::fmt;
use std::str::FromStr;

use md5::Md5;
use sha1::Sha1;
use sha2::Sha256;
use sha3::Sha3_256;

/// A CHAP digest algorithm, by its `CHAP_A` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChapAlgorithm {
    Md5,
    Sha1,
    Sha256,
    Sha3_256,
}

impl ChapAlgorithm {
    /// What vscsid offers unless configured otherwise: strongest first.
    pub const DEFAULT_ORDER: [ChapAlgorithm; 4] = [
        ChapAlgorithm::Sha3_256,
        ChapAlgorithm::Sha256,
        ChapAlgorithm::Sha1,
        ChapAlgorithm::Md5,
    ];

    /// The `CHAP_A` value.
    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha1 => 6,
            ChapAlgorithm::Sha256 => 7,
            ChapAlgorithm::Sha3_256 => 8,
        }
    }

    pub fn from_code(code: &str) -> Option<ChapAlgorithm> {
        Self::DEFAULT_ORDER
            .into_iter()
            .find(|a| a.code().to_string() == code)
    }

    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            ChapAlgorithm::Md5 => "md5",
            ChapAlgorithm::Sha1 => "sha1",
            ChapAlgorithm::Sha256 => "sha256",
            ChapAlgorithm::Sha3_256 => "sha3-256",
        }
    }

    /// Length of a response, and of the challenges vscsid sends with this algorithm.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha1 => 20,
            ChapAlgorithm::Sha256 | ChapAlgorithm::Sha3_256 => 32,
        }
    }

    /// CHAP_R = H(identifier || secret || challenge) (RFC 1994 4.1).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn hash<D: sha2::Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut h = D::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        match self {
            ChapAlgorithm::Md5 => hash::<Md5>(id, secret, challenge),
            ChapAlgorithm::Sha1 => hash::<Sha1>(id, secret, challenge),
            ChapAlgorithm::Sha256 => hash::<Sha256>(id, secret, challenge),
            ChapAlgorithm::Sha3_256 => hash::<Sha3_256>(id, secret, challenge),
        }
    }
}

impl fmt::Display for ChapAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChapAlgorithm {
    type Err = String;

    /// The configuration's names; `sha-1`, `sha-256` and `sha3_256` are taken too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "md5" => Ok(ChapAlgorithm::Md5),
            "sha1" | "sha-1" => Ok(ChapAlgorithm::Sha1),
            "sha256" | "sha-256" => Ok(ChapAlgorithm::Sha256),
            "sha3-256" => Ok(ChapAlgorithm::Sha3_256),
            other => Err(format!(
                "'{other}' is not a CHAP algorithm (sha3-256, sha256, sha1, md5)"
            )),
        }
    }
}

/// Names, comma-separated, for messages.
pub fn names(algorithms: &[ChapAlgorithm]) -> String {
    let v: Vec<&str> = algorithms.iter().map(|a| a.name()).collect();
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::chap::to_hex;

    /// Known answers computed apart from this crate's hashes, with Python's hashlib:
    /// `hashlib.<alg>(bytes([0x2a]) + b"vscsid-secret" + bytes(range(16))).hexdigest()`.
    #[test]
    fn responses_match_independently_computed_values() {
        let challenge: Vec<u8> = (0u8..16).collect();
        let cases = [
            (ChapAlgorithm::Md5, "0x4bab222af5b9a21bf1e33fb7e8f814d8"),
            (
                ChapAlgorithm::Sha1,
                "0xfd6e54f37b3200e486be8b483dccd726460bd29d",
            ),
            (
                ChapAlgorithm::Sha256,
                "0xed66c7e4a03e0f62affe34a13fd40e22bc0eeccb4157ad46e4ef365b5a972343",
            ),
            (
                ChapAlgorithm::Sha3_256,
                "0xf8126bd282c5a01da65760b6cc8d6814bfbf0f673fb99471f0efe635b56582ce",
            ),
        ];
        for (alg, want) in cases {
            let got = alg.response(0x2a, b"vscsid-secret", &challenge);
            assert_eq!(got.len(), alg.digest_len(), "{alg}");
            assert_eq!(to_hex(&got), want, "{alg}");
        }
    }

    #[test]
    fn codes_and_names_round_trip() {
        for a in ChapAlgorithm::DEFAULT_ORDER {
            assert_eq!(ChapAlgorithm::from_code(&a.code().to_string()), Some(a));
            assert_eq!(a.name().parse::<ChapAlgorithm>(), Ok(a));
        }
        assert_eq!(
            ChapAlgorithm::DEFAULT_ORDER.map(ChapAlgorithm::code),
            [8, 7, 6, 5]
        );
        assert_eq!("SHA-256".parse(), Ok(ChapAlgorithm::Sha256));
        assert_eq!("sha3_256".parse(), Ok(ChapAlgorithm::Sha3_256));
        assert!("sha512".parse::<ChapAlgorithm>().is_err());
        assert_eq!(ChapAlgorithm::from_code("9"), None);
        assert_eq!(ChapAlgorithm::from_code("Reject"), None);
    }
}
