//! TEMPORARY compile stub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub info: Option<u64>,
}
impl Sense {
    const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
        }
    }
    pub fn invalid_field_in_cdb() -> Sense {
        Self::new(5, 0x24, 0)
    }
    pub fn lun_not_supported() -> Sense {
        Self::new(5, 0x25, 0)
    }
    pub fn internal_target_failure() -> Sense {
        Self::new(4, 0x44, 0)
    }
    pub fn medium_error_unrecovered_read() -> Sense {
        Self::new(3, 0x11, 0)
    }
    pub fn write_error() -> Sense {
        Self::new(3, 0x0c, 0)
    }
    pub fn write_protected() -> Sense {
        Self::new(7, 0x27, 0)
    }
    pub fn space_allocation_failed() -> Sense {
        Self::new(7, 0x27, 7)
    }
    pub fn miscompare(off: u64) -> Sense {
        Sense {
            info: Some(off),
            ..Self::new(0xe, 0x1d, 0)
        }
    }
    pub fn to_fixed(&self, buf: &mut [u8]) -> usize {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        let n = buf.len().min(18);
        buf[..n].copy_from_slice(&s[..n]);
        n
    }
}
