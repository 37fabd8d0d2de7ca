//! LUN numbers and their SAM-5 encoding: the one place that turns a LUN number into the
//! 8-byte single-level LUN structure (peripheral device addressing below 256, flat space
//! addressing up to 16383) and back. REPORT LUNS, iSCSI PDUs and virtio-scsi LUN
//! addresses all carry this structure.

/// Highest LUN number flat space addressing can express.
pub const MAX_LUN: u16 = 16383;

/// A LUN number of one target, 0..=16383.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LunId(u16);

impl LunId {
    /// The LUN, if it is within flat space addressing's range.
    pub fn new(lun: u16) -> Option<LunId> {
        (lun <= MAX_LUN).then_some(LunId(lun))
    }

    pub fn value(self) -> u16 {
        self.0
    }

    /// The first two bytes of the single-level LUN structure (SAM-5 4.7): peripheral
    /// device addressing (00b, bus 0) below 256, flat space addressing (01b) above.
    pub fn to_be16(self) -> [u8; 2] {
        if self.0 < 256 {
            [0, self.0 as u8]
        } else {
            [0x40 | (self.0 >> 8) as u8, self.0 as u8]
        }
    }

    /// The whole 8-byte LUN structure (the second to fourth levels empty).
    pub fn to_bytes(self) -> [u8; 8] {
        let [hi, lo] = self.to_be16();
        [hi, lo, 0, 0, 0, 0, 0, 0]
    }

    /// The structure as a big-endian u64 (iSCSI's LUN field).
    pub fn to_u64(self) -> u64 {
        u64::from_be_bytes(self.to_bytes())
    }

    /// Decodes the first level of a LUN structure: peripheral device addressing with bus
    /// 0, or flat space addressing. None for any other method.
    pub fn from_be16(b: [u8; 2]) -> Option<LunId> {
        match b[0] >> 6 {
            0b00 if b[0] == 0 => Some(LunId(u16::from(b[1]))),
            0b01 => Some(LunId((u16::from(b[0] & 0x3f) << 8) | u16::from(b[1]))),
            _ => None,
        }
    }
}

impl std::fmt::Display for LunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_peripheral_below_256_and_flat_above() {
        let l = LunId::new(1).expect("lun");
        assert_eq!(l.to_u64(), 0x0001_0000_0000_0000);
        let l = LunId::new(300).expect("lun");
        assert_eq!(l.to_u64(), 0x412c_0000_0000_0000);
        assert_eq!(l.to_bytes(), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        assert!(LunId::new(MAX_LUN + 1).is_none());
    }

    #[test]
    fn decodes_both_methods_and_refuses_others() {
        for n in [0u16, 7, 255, 256, 300, MAX_LUN] {
            let l = LunId::new(n).expect("lun");
            assert_eq!(LunId::from_be16(l.to_be16()), Some(l));
        }
        // Flat space may also express small LUNs.
        assert_eq!(LunId::from_be16([0x40, 5]), LunId::new(5));
        // Peripheral with a bus number, logical unit and extended addressing: refused.
        assert_eq!(LunId::from_be16([0x01, 0]), None);
        assert_eq!(LunId::from_be16([0x80, 0]), None);
        assert_eq!(LunId::from_be16([0xc0, 0]), None);
    }
}
