//! TEMPORARY compile stub.
use super::{DataOut, Outcome};
#[derive(Debug, Clone)]
pub struct DiskProperties {
    pub block_size: u32,
    pub capacity_blocks: u64,
    pub readonly: bool,
    pub write_cache: bool,
    pub discard: bool,
    pub max_transfer_blocks: u32,
    pub serial: String,
    pub naa: u64,
    pub vendor: String,
    pub product: String,
    pub revision: String,
    pub rotational: bool,
}
pub struct EmulatedDisk {
    p: DiskProperties,
}
impl EmulatedDisk {
    pub fn new(p: DiskProperties) -> Self {
        EmulatedDisk { p }
    }
    pub fn properties(&self) -> &DiskProperties {
        &self.p
    }
    pub fn reset(&self) {}
    pub fn execute(&self, _cdb: &[u8], _d: &dyn DataOut, _i: &mut [u8]) -> Outcome {
        Outcome::Good { data_in_len: 0 }
    }
}
