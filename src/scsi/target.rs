//! TEMPORARY compile stub.
use super::Outcome;
use std::collections::BTreeMap;
use std::sync::Arc;
pub enum Route<'a, L> {
    BadTarget,
    MissingLun { target: u8 },
    Lun { target: u8, lun: &'a Arc<L> },
}
#[derive(Debug)]
pub struct DuplicateLun;
pub struct LunTable<L> {
    m: BTreeMap<(u8, u16), Arc<L>>,
}
impl<L> Default for LunTable<L> {
    fn default() -> Self {
        Self::new()
    }
}
impl<L> LunTable<L> {
    pub fn new() -> Self {
        LunTable { m: BTreeMap::new() }
    }
    pub fn insert(&mut self, t: u8, l: u16, v: Arc<L>) -> Result<(), DuplicateLun> {
        self.m.insert((t, l), v);
        Ok(())
    }
    pub fn route(&self, a: &[u8; 8]) -> Route<'_, L> {
        if a[0] != 1 {
            return Route::BadTarget;
        }
        let l = (u16::from(a[2]) << 8 | u16::from(a[3])) & 0x3fff;
        match self.m.get(&(a[1], l)) {
            Some(v) => Route::Lun {
                target: a[1],
                lun: v,
            },
            None => Route::MissingLun { target: a[1] },
        }
    }
    pub fn luns(&self) -> impl Iterator<Item = (u8, u16, &Arc<L>)> {
        self.m.iter().map(|(k, v)| (k.0, k.1, v))
    }
    pub fn report_luns(&self, _t: u8, _c: &[u8], _d: &mut [u8]) -> Outcome {
        Outcome::Good { data_in_len: 0 }
    }
    pub fn missing_lun_command(&self, _c: &[u8], _d: &mut [u8]) -> Outcome {
        Outcome::Good { data_in_len: 0 }
    }
}
