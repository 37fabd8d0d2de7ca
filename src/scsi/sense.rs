//! Sense data (SPC-4 4.5): the key, additional sense code and qualifier of a CHECK
//! CONDITION, with the constructors the target uses, in fixed or descriptor format.

/// Sense keys (SPC-4 table 48).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// One CHECK CONDITION's sense data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (e.g. the offset of a miscompare), when valid.
    pub info: Option<u64>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
        }
    }

    pub const fn no_sense() -> Sense {
        Sense::new(key::NO_SENSE, 0, 0)
    }
    /// 05/20/00 INVALID COMMAND OPERATION CODE.
    pub const fn invalid_opcode() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00)
    }
    /// 05/24/00 INVALID FIELD IN CDB.
    pub const fn invalid_field_in_cdb() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00)
    }
    /// 05/26/00 INVALID FIELD IN PARAMETER LIST.
    pub const fn invalid_field_in_parameter_list() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00)
    }
    /// 05/1A/00 PARAMETER LIST LENGTH ERROR.
    pub const fn parameter_list_length_error() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00)
    }
    /// 05/21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00)
    }
    /// 05/25/00 LOGICAL UNIT NOT SUPPORTED.
    pub const fn lun_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00)
    }
    /// 05/39/00 SAVING PARAMETERS NOT SUPPORTED.
    pub const fn saving_parameters_not_supported() -> Sense {
        Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00)
    }
    /// 07/27/00 WRITE PROTECTED.
    pub const fn write_protected() -> Sense {
        Sense::new(key::DATA_PROTECT, 0x27, 0x00)
    }
    /// 07/27/07 SPACE ALLOCATION FAILED WRITE PROTECT (the host ran out of space).
    pub const fn space_allocation_failed() -> Sense {
        Sense::new(key::DATA_PROTECT, 0x27, 0x07)
    }
    /// 03/11/00 UNRECOVERED READ ERROR.
    pub const fn medium_error_unrecovered_read() -> Sense {
        Sense::new(key::MEDIUM_ERROR, 0x11, 0x00)
    }
    /// 03/0C/00 WRITE ERROR.
    pub const fn write_error() -> Sense {
        Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00)
    }
    /// 04/44/00 INTERNAL TARGET FAILURE.
    pub const fn internal_target_failure() -> Sense {
        Sense::new(key::HARDWARE_ERROR, 0x44, 0x00)
    }
    /// 04/08/00 LOGICAL UNIT COMMUNICATION FAILURE: a passthrough LUN's target could not
    /// be reached in time (no path within no_path_retry). Not retried by Linux guests.
    pub const fn lu_communication_failure() -> Sense {
        Sense::new(key::HARDWARE_ERROR, 0x08, 0x00)
    }
    /// 06/29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    /// UNIT ATTENTION, CAPACITY DATA HAS CHANGED (after a resize).
    pub const fn capacity_data_changed() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x2a, 0x09)
    }

    /// UNIT ATTENTION, REPORTED LUNS DATA HAS CHANGED (a LUN was added or removed).
    pub const fn reported_luns_data_changed() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x3f, 0x0e)
    }

    pub const fn reset_occurred() -> Sense {
        Sense::new(key::UNIT_ATTENTION, 0x29, 0x00)
    }
    /// 0E/1D/00 MISCOMPARE DURING VERIFY OPERATION, INFORMATION = offset of the first
    /// differing byte.
    pub const fn miscompare(offset: u64) -> Sense {
        Sense {
            key: key::MISCOMPARE,
            asc: 0x1d,
            ascq: 0x00,
            info: Some(offset),
        }
    }

    /// Writes fixed-format sense (response code 70h, 18 bytes); returns bytes written,
    /// fewer if `buf` is shorter.
    pub fn to_fixed(&self, buf: &mut [u8]) -> usize {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        if let Some(info) = self.info {
            s[0] |= 0x80; // VALID: INFORMATION holds a value
            s[3..7].copy_from_slice(&(info.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        }
        s[7] = 10; // additional sense length
        s[12] = self.asc;
        s[13] = self.ascq;
        let n = buf.len().min(s.len());
        buf[..n].copy_from_slice(&s[..n]);
        n
    }

    /// Writes descriptor-format sense (response code 72h, with an information descriptor
    /// when INFORMATION is valid); returns bytes written.
    pub fn to_descriptor(&self, buf: &mut [u8]) -> usize {
        let mut s = [0u8; 20];
        s[0] = 0x72;
        s[1] = self.key & 0x0f;
        s[2] = self.asc;
        s[3] = self.ascq;
        let mut len = 8;
        if let Some(info) = self.info {
            s[8] = 0x00; // information descriptor
            s[9] = 0x0a;
            s[10] = 0x80; // VALID
            s[12..20].copy_from_slice(&info.to_be_bytes());
            len = 20;
        }
        s[7] = (len - 8) as u8;
        let n = buf.len().min(len);
        buf[..n].copy_from_slice(&s[..n]);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let mut b = [0u8; 32];
        assert_eq!(Sense::lba_out_of_range().to_fixed(&mut b), 18);
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x21, 0x00));
    }

    #[test]
    fn information_field_is_set_for_miscompare() {
        let mut b = [0u8; 18];
        Sense::miscompare(0x1234).to_fixed(&mut b);
        assert_eq!(b[0], 0xf0);
        assert_eq!(b[2], 0x0e);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        assert_eq!((b[12], b[13]), (0x1d, 0));
        let mut d = [0u8; 32];
        assert_eq!(Sense::miscompare(7).to_descriptor(&mut d), 20);
        assert_eq!((d[0], d[1], d[2], d[7]), (0x72, 0x0e, 0x1d, 12));
        assert_eq!(d[19], 7);
    }

    #[test]
    fn short_buffers_are_never_overrun() {
        let mut b = [0u8; 5];
        assert_eq!(Sense::write_protected().to_fixed(&mut b), 5);
        assert_eq!(b[2], 0x07);
        assert_eq!(Sense::write_protected().to_descriptor(&mut b), 5);
        assert_eq!(Sense::write_protected().to_fixed(&mut []), 0);
    }

    #[test]
    fn constructors_have_the_spc_codes() {
        let c = |s: Sense| (s.key, s.asc, s.ascq);
        assert_eq!(c(Sense::invalid_opcode()), (5, 0x20, 0));
        assert_eq!(c(Sense::invalid_field_in_cdb()), (5, 0x24, 0));
        assert_eq!(c(Sense::invalid_field_in_parameter_list()), (5, 0x26, 0));
        assert_eq!(c(Sense::parameter_list_length_error()), (5, 0x1a, 0));
        assert_eq!(c(Sense::lun_not_supported()), (5, 0x25, 0));
        assert_eq!(c(Sense::write_protected()), (7, 0x27, 0));
        assert_eq!(c(Sense::space_allocation_failed()), (7, 0x27, 7));
        assert_eq!(c(Sense::medium_error_unrecovered_read()), (3, 0x11, 0));
        assert_eq!(c(Sense::write_error()), (3, 0x0c, 0));
        assert_eq!(c(Sense::saving_parameters_not_supported()), (5, 0x39, 0));
    }
}
