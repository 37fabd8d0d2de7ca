//! The LUN table: targets × LUNs, routing of virtio-scsi LUN addresses the way QEMU does,
//! REPORT LUNS from the table, and the answers a target gives for a LUN it lacks.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::scsi::cdb::{self, be16, be32, byte};
use crate::scsi::lun_id::{LunId, MAX_LUN};
use crate::scsi::{Outcome, Sense};

/// Where a LUN address leads.
pub enum Route<'a, L> {
    /// No such target (or a malformed address): virtio response BAD_TARGET.
    BadTarget,
    /// The target exists, the LUN does not.
    MissingLun {
        target: u8,
    },
    Lun {
        target: u8,
        lun: &'a Arc<L>,
    },
}

/// Why a LUN could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LunTableError {
    #[error("LUN {0} is configured twice")]
    Duplicate(u16),
    #[error("LUN {0} is beyond {MAX_LUN}")]
    OutOfRange(u16),
}

/// Targets and their LUNs; `L` is whatever the request path keeps per LUN.
pub struct LunTable<L> {
    targets: BTreeMap<u8, BTreeMap<u16, Arc<L>>>,
}

/// A copy sharing the LUNs: a change to the table is made on a copy, then published.
impl<L> Clone for LunTable<L> {
    fn clone(&self) -> Self {
        LunTable {
            targets: self.targets.clone(),
        }
    }
}

impl<L> Default for LunTable<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L> LunTable<L> {
    pub fn new() -> LunTable<L> {
        LunTable {
            targets: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, target: u8, lun: u16, value: Arc<L>) -> Result<(), LunTableError> {
        if lun > MAX_LUN {
            return Err(LunTableError::OutOfRange(lun));
        }
        let t = self.targets.entry(target).or_default();
        if t.contains_key(&lun) {
            return Err(LunTableError::Duplicate(lun));
        }
        t.insert(lun, value);
        Ok(())
    }

    pub fn get(&self, target: u8, lun: u16) -> Option<&Arc<L>> {
        self.targets.get(&target)?.get(&lun)
    }

    /// Takes a LUN out; a target left without LUNs goes too.
    pub fn remove(&mut self, target: u8, lun: u16) -> Option<Arc<L>> {
        let t = self.targets.get_mut(&target)?;
        let removed = t.remove(&lun);
        if t.is_empty() {
            self.targets.remove(&target);
        }
        removed
    }

    /// The LUNs of one target, in order.
    pub fn luns_of(&self, target: u8) -> impl Iterator<Item = (u16, &Arc<L>)> {
        self.targets
            .get(&target)
            .into_iter()
            .flat_map(|t| t.iter().map(|(&l, v)| (l, v)))
    }

    /// Routes an 8-byte virtio-scsi LUN address: byte 0 is 1, byte 1 the target, bytes 2-3
    /// the LUN in single-level format (peripheral or flat space addressing).
    pub fn route(&self, addr: &[u8; 8]) -> Route<'_, L> {
        let Some(lun) = LunId::from_be16([addr[2], addr[3]]).filter(|_| addr[0] == 1) else {
            return Route::BadTarget;
        };
        let (target, lun) = (addr[1], lun.value());
        match self.targets.get(&target) {
            None => Route::BadTarget,
            Some(t) => match t.get(&lun) {
                Some(l) => Route::Lun { target, lun: l },
                None => Route::MissingLun { target },
            },
        }
    }

    /// Every LUN as `(target, lun, value)`, in order.
    pub fn luns(&self) -> impl Iterator<Item = (u8, u16, &Arc<L>)> {
        self.targets
            .iter()
            .flat_map(|(&t, luns)| luns.iter().map(move |(&l, v)| (t, l, v)))
    }

    pub fn targets(&self) -> impl Iterator<Item = u8> + '_ {
        self.targets.keys().copied()
    }

    pub fn max_target(&self) -> Option<u8> {
        self.targets.keys().next_back().copied()
    }

    pub fn max_lun(&self) -> Option<u16> {
        self.targets
            .values()
            .filter_map(|t| t.keys().next_back().copied())
            .max()
    }

    /// REPORT LUNS for `target`: exactly its configured LUNs.
    pub fn report_luns(&self, target: u8, c: &[u8], data_in: &mut [u8]) -> Outcome {
        let alloc = be32(c, 6) as usize;
        if alloc < 16 {
            return Outcome::Check(Sense::invalid_field_in_cdb());
        }
        let all = match byte(c, 2) {
            0x00 | 0x02 => true,
            0x01 => false, // well-known LUNs only: there are none
            _ => return Outcome::Check(Sense::invalid_field_in_cdb()),
        };
        let count = if all {
            self.targets.get(&target).map_or(0, |t| t.len())
        } else {
            0
        };
        let limit = alloc.min(data_in.len());
        let mut put = |at: usize, bytes: &[u8]| {
            for (i, &b) in bytes.iter().enumerate() {
                if let Some(d) = data_in.get_mut(at + i).filter(|_| at + i < limit) {
                    *d = b;
                }
            }
        };
        put(0, &((count * 8) as u32).to_be_bytes());
        put(4, &[0; 4]);
        if all {
            if let Some(t) = self.targets.get(&target) {
                for (i, lun) in t.keys().filter_map(|&l| LunId::new(l)).enumerate() {
                    put(8 + i * 8, &lun.to_bytes());
                }
            }
        }
        Outcome::Good {
            data_in_len: (8 + count * 8).min(limit),
        }
    }

    /// Answers a command the target itself answers rather than a LUN: REPORT LUNS (for any
    /// LUN address of the target) and every command to a LUN the target lacks. None for a
    /// command the LUN must run.
    pub fn target_command(
        &self,
        route: &Route<'_, L>,
        c: &[u8],
        data_in: &mut [u8],
    ) -> Option<Outcome> {
        let target = match route {
            Route::BadTarget => return None,
            Route::MissingLun { target } | Route::Lun { target, .. } => *target,
        };
        if byte(c, 0) == cdb::REPORT_LUNS {
            return Some(self.report_luns(target, c, data_in));
        }
        match route {
            Route::MissingLun { .. } => Some(self.missing_lun_command(c, data_in)),
            _ => None,
        }
    }

    /// A command addressed to a LUN the target does not have (REPORT LUNS is answered by
    /// [`LunTable::report_luns`]): INQUIRY says "no device here", REQUEST SENSE returns
    /// LOGICAL UNIT NOT SUPPORTED as data, everything else fails with it.
    pub fn missing_lun_command(&self, c: &[u8], data_in: &mut [u8]) -> Outcome {
        match byte(c, 0) {
            cdb::INQUIRY => missing_lun_inquiry(c, data_in),
            cdb::REQUEST_SENSE => {
                let mut buf = [0u8; 32];
                let n = if byte(c, 1) & 0x01 != 0 {
                    Sense::lun_not_supported().to_descriptor(&mut buf)
                } else {
                    Sense::lun_not_supported().to_fixed(&mut buf)
                };
                let n = n.min(usize::from(byte(c, 4))).min(data_in.len());
                data_in[..n].copy_from_slice(&buf[..n]);
                Outcome::Good { data_in_len: n }
            }
            _ => Outcome::Check(Sense::lun_not_supported()),
        }
    }
}

/// INQUIRY for a missing LUN: peripheral qualifier 011b, device type 1Fh.
fn missing_lun_inquiry(c: &[u8], data_in: &mut [u8]) -> Outcome {
    let alloc = usize::from(be16(c, 3));
    let mut b = [0u8; 36];
    let n = if byte(c, 1) & 0x02 != 0 {
        return Outcome::Check(Sense::invalid_field_in_cdb());
    } else if byte(c, 1) & 0x01 != 0 {
        if byte(c, 2) != 0x00 {
            return Outcome::Check(Sense::invalid_field_in_cdb());
        }
        b[..5].copy_from_slice(&[0x7f, 0x00, 0x00, 0x01, 0x00]);
        5
    } else {
        if byte(c, 2) != 0 {
            return Outcome::Check(Sense::invalid_field_in_cdb());
        }
        b[0] = 0x7f;
        b[2] = 0x06;
        b[3] = 0x12;
        b[4] = 31;
        b[7] = 0x02;
        b[8..16].copy_from_slice(b"VSCSID  ");
        b[16..32].copy_from_slice(b"NO LUN          ");
        b[32..36].copy_from_slice(b"0001");
        36
    };
    let n = n.min(alloc).min(data_in.len());
    data_in[..n].copy_from_slice(&b[..n]);
    Outcome::Good { data_in_len: n }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> LunTable<u32> {
        let mut t = LunTable::new();
        t.insert(0, 0, Arc::new(10)).unwrap();
        t.insert(0, 1, Arc::new(11)).unwrap();
        t.insert(0, 300, Arc::new(12)).unwrap();
        t.insert(2, 5, Arc::new(25)).unwrap();
        t
    }

    fn addr(target: u8, lun: u16) -> [u8; 8] {
        let hi = if lun < 256 {
            0
        } else {
            0x40 | (lun >> 8) as u8
        };
        [1, target, hi, lun as u8, 0, 0, 0, 0]
    }

    #[test]
    fn routes_like_qemu() {
        let t = table();
        assert!(matches!(t.route(&addr(0, 1)), Route::Lun { target: 0, lun } if **lun == 11));
        assert!(matches!(t.route(&addr(0, 300)), Route::Lun { lun, .. } if **lun == 12));
        assert!(matches!(
            t.route(&addr(0, 7)),
            Route::MissingLun { target: 0 }
        ));
        assert!(matches!(t.route(&addr(1, 0)), Route::BadTarget));
        let mut bad = addr(0, 0);
        bad[0] = 2;
        assert!(matches!(t.route(&bad), Route::BadTarget));
        let mut bad = addr(0, 0);
        bad[2] = 0x80;
        assert!(matches!(t.route(&bad), Route::BadTarget));
    }

    #[test]
    fn insert_refuses_duplicates_and_range() {
        let mut t = table();
        assert_eq!(
            t.insert(0, 1, Arc::new(0)),
            Err(LunTableError::Duplicate(1))
        );
        assert_eq!(
            t.insert(0, 16384, Arc::new(0)),
            Err(LunTableError::OutOfRange(16384))
        );
        assert_eq!(t.max_target(), Some(2));
        assert_eq!(t.max_lun(), Some(300));
        assert_eq!(t.luns().count(), 4);
    }

    #[test]
    fn report_luns_lists_exactly_the_target_luns() {
        let t = table();
        let mut c = [0u8; 12];
        c[0] = cdb::REPORT_LUNS;
        c[6..10].copy_from_slice(&4096u32.to_be_bytes());
        let mut d = [0u8; 4096];
        assert_eq!(
            t.report_luns(0, &c, &mut d),
            Outcome::Good { data_in_len: 32 }
        );
        assert_eq!(&d[0..4], &24u32.to_be_bytes());
        assert_eq!(&d[8..10], &[0, 0]);
        assert_eq!(&d[16..18], &[0, 1]);
        assert_eq!(&d[24..26], &[0x41, 0x2c]);
        c[2] = 0x01;
        assert_eq!(
            t.report_luns(0, &c, &mut d),
            Outcome::Good { data_in_len: 8 }
        );
        assert_eq!(&d[0..4], &[0; 4]);
        c[2] = 0x07;
        assert_eq!(
            t.report_luns(0, &c, &mut d),
            Outcome::Check(Sense::invalid_field_in_cdb())
        );
    }

    #[test]
    fn report_luns_truncates_but_reports_full_length() {
        let t = table();
        let mut c = [0u8; 12];
        c[0] = cdb::REPORT_LUNS;
        c[6..10].copy_from_slice(&16u32.to_be_bytes());
        let mut d = [0u8; 64];
        assert_eq!(
            t.report_luns(0, &c, &mut d),
            Outcome::Good { data_in_len: 16 }
        );
        assert_eq!(&d[0..4], &24u32.to_be_bytes());
        c[6..10].copy_from_slice(&15u32.to_be_bytes());
        assert!(matches!(t.report_luns(0, &c, &mut d), Outcome::Check(_)));
        let mut small = [0u8; 10];
        c[6..10].copy_from_slice(&64u32.to_be_bytes());
        assert_eq!(
            t.report_luns(0, &c, &mut small),
            Outcome::Good { data_in_len: 10 }
        );
    }

    #[test]
    fn missing_lun_answers() {
        let t = table();
        let mut d = [0u8; 64];
        let inq = [cdb::INQUIRY, 0, 0, 0, 36, 0];
        assert_eq!(
            t.missing_lun_command(&inq, &mut d),
            Outcome::Good { data_in_len: 36 }
        );
        assert_eq!(d[0], 0x7f);
        let tur = [0u8; 6];
        assert_eq!(
            t.missing_lun_command(&tur, &mut d),
            Outcome::Check(Sense::lun_not_supported())
        );
        let rs = [cdb::REQUEST_SENSE, 0, 0, 0, 18, 0];
        assert_eq!(
            t.missing_lun_command(&rs, &mut d),
            Outcome::Good { data_in_len: 18 }
        );
        assert_eq!((d[2], d[12]), (5, 0x25));
    }
}
