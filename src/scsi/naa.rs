//! NAA identifiers (SPC-4 7.8.6.6): the logical unit's worldwide name in VPD 0x83, checked
//! so its length always matches its type.

/// An NAA designator. Types 2 (IEEE Extended), 3 (Locally Assigned) and 5 (IEEE
/// Registered) are 8 bytes; type 6 (IEEE Registered Extended) is 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naa {
    /// An 8-byte designator of type 2, 3 or 5.
    Short(u64),
    /// A 16-byte designator of type 6.
    Extended(u128),
}

impl Naa {
    /// A type 3 ("locally assigned") identifier from 60 bits of `hash`.
    pub fn locally_assigned(hash: u64) -> Naa {
        Naa::Short((3u64 << 60) | (hash & 0x0fff_ffff_ffff_ffff))
    }

    /// Parses hex digits (an optional `0x`): 16 for types 2, 3 and 5, 32 for type 6.
    pub fn parse(text: &str) -> Result<Naa, String> {
        let hex = text.strip_prefix("0x").unwrap_or(text);
        let bad = || {
            format!(
                "'{text}' is not an NAA identifier: 16 hex digits of type 2, 3 or 5, or 32 hex digits of type 6"
            )
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let naa_type = hex.bytes().next().map(|b| b.to_ascii_lowercase());
        match (hex.len(), naa_type) {
            (16, Some(b'2' | b'3' | b'5')) => u64::from_str_radix(hex, 16)
                .map(Naa::Short)
                .map_err(|_| bad()),
            (32, Some(b'6')) => u128::from_str_radix(hex, 16)
                .map(Naa::Extended)
                .map_err(|_| bad()),
            (16, Some(b'6')) => Err(format!(
                "'{text}': NAA type 6 (IEEE Registered Extended) is 16 bytes: give 32 hex digits"
            )),
            (32, Some(b'2' | b'3' | b'5')) => Err(format!(
                "'{text}': NAA types 2, 3 and 5 are 8 bytes: give 16 hex digits"
            )),
            _ => Err(bad()),
        }
    }

    /// The designator's bytes as VPD 0x83 carries them.
    pub fn bytes(&self) -> ([u8; 16], usize) {
        let mut b = [0u8; 16];
        match self {
            Naa::Short(v) => {
                b[..8].copy_from_slice(&v.to_be_bytes());
                (b, 8)
            }
            Naa::Extended(v) => {
                b.copy_from_slice(&v.to_be_bytes());
                (b, 16)
            }
        }
    }
}

impl std::fmt::Display for Naa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Naa::Short(v) => write!(f, "0x{v:016x}"),
            Naa::Extended(v) => write!(f, "0x{v:032x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_has_its_length() {
        let cases: &[(&str, Result<usize, &str>)] = &[
            ("0x5000c500a1b2c3d4", Ok(8)),
            ("3000000000000001", Ok(8)),
            ("2000001b32a1b2c3", Ok(8)),
            ("0x6001405aabbccdd00011223344556677", Ok(16)),
            ("0x6001405aabbccdd0", Err("32 hex digits")),
            ("0x50014050011223344556677889900aab", Err("16 hex digits")),
            ("0x1000000000000001", Err("type 2, 3 or 5")),
            ("0x4000000000000001", Err("type 2, 3 or 5")),
            ("0x7001405aabbccdd00011223344556677", Err("type 6")),
            ("12", Err("type 2, 3 or 5")),
            ("0x5000c500a1b2c3dz", Err("type 2, 3 or 5")),
            ("+5000c500a1b2c3d", Err("type 2, 3 or 5")),
            ("", Err("type 2, 3 or 5")),
        ];
        for &(text, want) in cases {
            match (Naa::parse(text), want) {
                (Ok(naa), Ok(len)) => assert_eq!(naa.bytes().1, len, "{text}"),
                (Err(e), Err(part)) => {
                    assert!(e.contains(part), "{text}: {e}");
                    assert!(!e.contains('\n'));
                }
                (got, _) => panic!("{text}: {got:?}"),
            }
        }
    }

    #[test]
    fn bytes_are_big_endian_and_text_round_trips() {
        let naa = Naa::parse("0x6001405aabbccdd00011223344556677").expect("type 6");
        let (b, n) = naa.bytes();
        assert_eq!(
            &b[..n],
            &[
                0x60, 0x01, 0x40, 0x5a, 0xab, 0xbc, 0xcd, 0xd0, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
                0x66, 0x77
            ]
        );
        assert_eq!(Naa::parse(&naa.to_string()), Ok(naa));
        let local = Naa::locally_assigned(u64::MAX);
        assert_eq!(local, Naa::Short(0x3fff_ffff_ffff_ffff));
        assert_eq!(Naa::parse(&local.to_string()), Ok(local));
    }
}
