//! Sense data (SPC-4 4.5): placeholder until the SCSI layer lands.

/// Sense key, additional sense code and qualifier of a CHECK CONDITION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}
