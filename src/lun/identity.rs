//! What an emulated disk says about itself: its SCSI properties from the configuration, and
//! identifiers (serial number, NAA) derived from what it stores, stable across restarts.

use std::path::{Path, PathBuf};

use super::MAX_TRANSFER_BYTES;
use crate::config::LunConfig;
use crate::scsi::disk::DiskProperties;
use crate::scsi::naa::Naa;

/// What an emulated disk reports; identifiers derive from `identity` (the backing path as
/// configured) so they are stable across restarts and unique per LUN.
pub fn disk_properties(
    l: &LunConfig,
    capacity_blocks: u64,
    identity: &[u8],
    write_cache: bool,
    product: &str,
    unmap_zeroes: bool,
    rotational: Option<bool>,
) -> DiskProperties {
    let bs = u64::from(l.block_size);
    let hash = fnv1a(identity, l.target, l.lun);
    // NAA 3 ("locally assigned"): stable for the same backing, target and LUN. The serial
    // number comes from the same hash, so the two change together or not at all.
    let naa = l.wwn.unwrap_or(Naa::locally_assigned(hash));
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
        rotational,
        physical_block_size: l.physical_block_size.unwrap_or(l.block_size),
    }
}

/// The identity of a disk LUN's backing for its default NAA and serial number: its path as
/// configured, made absolute against the working directory but with symbolic links left
/// alone. A `/dev/disk/by-id/...` link keeps the guest's disk identity when it points at
/// another `sdX` after a reboot; resolving it would not.
pub fn backing_identity(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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

    #[test]
    fn the_identity_is_the_path_as_written_not_where_it_leads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("sdb");
        std::fs::write(&real, b"x").expect("write");
        let link = dir.path().join("by-id-disk");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        assert_eq!(backing_identity(&link), link);
        assert_ne!(backing_identity(&link), backing_identity(&real));
        // Relative paths are anchored at the working directory.
        let rel = backing_identity(Path::new("images/a.img"));
        assert!(
            rel.is_absolute() && rel.ends_with("images/a.img"),
            "{rel:?}"
        );
    }

    #[test]
    fn the_default_naa_and_serial_follow_the_identity() {
        let l = LunConfig::disk(0, 0, "/dev/disk/by-id/wwn-x".into());
        let p = |id: &[u8]| disk_properties(&l, 8, id, true, "P", true, None);
        let (a, b) = (p(b"/dev/disk/by-id/wwn-x"), p(b"/dev/sdb"));
        assert_eq!(a.naa, p(b"/dev/disk/by-id/wwn-x").naa);
        assert_ne!(a.naa, b.naa);
        assert_ne!(a.serial, b.serial);
        assert!(matches!(a.naa, Naa::Short(v) if v >> 60 == 3));
        // Configured identifiers win, and a physical block size defaults to the logical.
        let mut l = l.clone();
        l.wwn = Some(Naa::Extended(0x6001_405a_abbc_cdd0_0011_2233_4455_6677));
        l.serial = Some("S1".into());
        l.physical_block_size = Some(4096);
        let c = disk_properties(&l, 8, b"x", true, "P", true, Some(true));
        assert_eq!((c.naa, c.serial.as_str()), (l.wwn.expect("set"), "S1"));
        assert_eq!((c.physical_block_size, c.rotational), (4096, Some(true)));
        assert_eq!(a.physical_block_size, 512);
    }
}
