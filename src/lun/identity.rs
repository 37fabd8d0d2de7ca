//! What an emulated disk says about itself: its SCSI properties from the configuration, and
//! identifiers (serial number, NAA) derived from what it stores, stable across restarts.

use super::MAX_TRANSFER_BYTES;
use crate::config::LunConfig;
use crate::scsi::disk::DiskProperties;

/// What an emulated disk reports; identifiers derive from `identity` (the backing path)
/// so they are stable across restarts and unique per LUN.
pub fn disk_properties(
    l: &LunConfig,
    capacity_blocks: u64,
    identity: &[u8],
    write_cache: bool,
    product: &str,
    unmap_zeroes: bool,
) -> DiskProperties {
    let bs = u64::from(l.block_size);
    let hash = fnv1a(identity, l.target, l.lun);
    // NAA 3 ("locally assigned"): stable for the same backing, target and LUN.
    let naa = l
        .wwn
        .unwrap_or((3u64 << 60) | (hash & 0x0fff_ffff_ffff_ffff));
    let serial = l.serial.clone().unwrap_or_else(|| format!("{hash:016x}"));
    DiskProperties {
        block_size: l.block_size,
        capacity_blocks,
        readonly: l.readonly,
        write_cache,
        discard: l.discard && !l.readonly,
        unmap_zeroes,
        max_transfer_blocks: (MAX_TRANSFER_BYTES / bs) as u32,
        serial,
        naa,
        vendor: "VSCSID".into(),
        product: product.into(),
        revision: env!("CARGO_PKG_VERSION")
            .chars()
            .take(4)
            .collect::<String>()
            .trim_end_matches('.')
            .to_string(),
        rotational: false,
    }
}

/// FNV-1a: a fixed, dependency-free hash, so identifiers survive restarts and upgrades.
fn fnv1a(bytes: &[u8], target: u8, lun: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes.iter().chain(&[target]).chain(&lun.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_stable_and_distinct() {
        let a = fnv1a(b"/var/lib/a.img", 0, 0);
        assert_eq!(a, fnv1a(b"/var/lib/a.img", 0, 0));
        assert_ne!(a, fnv1a(b"/var/lib/a.img", 0, 1));
        assert_ne!(a, fnv1a(b"/var/lib/b.img", 0, 0));
    }
}
