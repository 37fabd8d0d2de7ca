//! TEMPORARY compile stub.
pub const REPORT_LUNS: u8 = 0xa0;
