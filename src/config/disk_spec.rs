//! The `--disk <path>[,readonly][,cache=<mode>][,block-size=<512|4096>]...` shorthand, and
//! its `passthrough` form (`--disk /dev/sdX,passthrough`: a block-passthrough LUN).

use std::path::PathBuf;

use super::{
    check_block_size, check_passthrough_cache, check_physical_block_size, ConfigError, LunConfig,
    LunKind,
};

/// Options of an emulated disk that a passthrough disk takes from the device instead.
const EMULATION_ONLY: &[&str] = &[
    "block-size",
    "physical-block-size",
    "discard",
    "serial",
    "wwn",
    "shared",
];

/// Parses one `--disk` value into a LUN of target 0 numbered `lun`.
pub fn parse_disk_spec(spec: &str, lun: u16) -> Result<LunConfig, ConfigError> {
    let err = |msg: String| ConfigError(format!("--disk '{spec}': {msg}"));
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(err("path: missing backing file path".into()));
    }
    let mut cfg = LunConfig::disk(0, lun, PathBuf::from(path));
    // Checked against the logical block size once every option is read.
    let mut physical = None;
    let mut passthrough = false;
    // The first option that only an emulated disk takes, to refuse with passthrough.
    let mut emulation_only = None;
    for opt in parts {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        if EMULATION_ONLY.contains(&key) {
            emulation_only.get_or_insert(key);
        }
        match (key, value) {
            ("passthrough", None) => passthrough = true,
            ("passthrough", Some(v)) => {
                passthrough =
                    parse_bool(v).map_err(|e| err(e.replace("readonly", "passthrough")))?
            }
            ("readonly" | "ro", None) => cfg.readonly = true,
            ("readonly" | "ro", Some(v)) => cfg.readonly = parse_bool(v).map_err(err)?,
            ("shared", None) => cfg.shared = true,
            ("shared", Some(v)) => {
                cfg.shared = parse_bool(v).map_err(|e| err(e.replace("readonly", "shared")))?
            }
            ("cache", Some(v)) => {
                let mode = v.parse().map_err(|e: String| err(format!("cache: {e}")))?;
                if let LunKind::Disk { cache, .. } = &mut cfg.kind {
                    *cache = mode;
                }
            }
            ("block-size", Some(v)) => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| err(format!("block-size: '{v}' is not a number")))?;
                cfg.block_size = check_block_size(n, "block-size").map_err(|e| err(e.0))?;
            }
            ("physical-block-size", Some(v)) => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| err(format!("physical-block-size: '{v}' is not a number")))?;
                physical = Some(n);
            }
            ("discard", Some(v)) => {
                cfg.discard = match v {
                    "unmap" | "on" => true,
                    "ignore" | "off" => false,
                    other => {
                        return Err(err(format!(
                            "discard: '{other}' is not one of unmap, ignore"
                        )))
                    }
                }
            }
            ("serial", Some(v)) => cfg.serial = Some(super::file::check_serial(v, "serial")?),
            ("wwn", Some(v)) => {
                cfg.wwn = Some(super::file::parse_wwn(v, "wwn").map_err(|e| err(e.0))?)
            }
            (k, Some(v)) if super::IoLimits::is_key(k) => cfg.limits.set_text(k, v).map_err(err)?,
            ("", _) => return Err(err("empty option".into())),
            (k, None) => return Err(err(format!("{k}: unknown option or missing '=value'"))),
            (k, Some(_)) => return Err(err(format!("{k}: unknown option"))),
        }
    }
    if let Some(n) = physical {
        cfg.physical_block_size = Some(
            check_physical_block_size(n, cfg.block_size, "physical-block-size")
                .map_err(|e| err(e.0))?,
        );
    }
    cfg.limits.check().map_err(err)?;
    if passthrough {
        if let Some(key) = emulation_only {
            return Err(err(format!(
                "{key}: does not apply to a passthrough disk (the device reports its own)"
            )));
        }
        let LunKind::Disk { path, cache } = cfg.kind else {
            return Err(err("passthrough: not a disk".into()));
        };
        let cache = check_passthrough_cache(cache, "cache").map_err(|e| err(e.0))?;
        cfg.kind = LunKind::BlockPassthrough { path, cache };
        cfg.discard = false;
    }
    Ok(cfg)
}

pub(super) fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(format!("readonly: '{other}' is not on/off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CacheMode;

    #[test]
    fn plain_path_gets_defaults() {
        let c = parse_disk_spec("/tmp/a.img", 3).expect("ok");
        assert_eq!(c.lun, 3);
        assert_eq!(c.target, 0);
        assert!(!c.readonly);
        assert_eq!(c.block_size, 512);
        assert_eq!(
            c.kind,
            LunKind::Disk {
                path: "/tmp/a.img".into(),
                cache: CacheMode::None
            }
        );
    }

    #[test]
    fn all_options_parse() {
        let c = parse_disk_spec("/d.img,readonly,cache=writeback,block-size=4096", 0).expect("ok");
        assert!(c.readonly);
        assert_eq!(c.block_size, 4096);
        assert!(matches!(
            c.kind,
            LunKind::Disk {
                cache: CacheMode::Writeback,
                ..
            }
        ));
    }

    #[test]
    fn limits_parse_and_errors_name_the_key() {
        let c = parse_disk_spec("/d.img,iops=200,bw_write=10M,iops_max=400", 0).expect("ok");
        assert_eq!(c.limits.iops[0], 200);
        assert_eq!(c.limits.iops_max[0], 400);
        assert_eq!(c.limits.bw[2], 10 << 20);
        let e = parse_disk_spec("/d.img,iops=lots", 0).unwrap_err().0;
        assert!(e.contains("iops:") && e.contains("lots"), "{e}");
        let e = parse_disk_spec("/d.img,bw=1M,bw_read=1M", 0).unwrap_err().0;
        assert!(e.contains("bw_read:"), "{e}");
    }

    #[test]
    fn physical_block_size_is_checked_against_the_logical_one() {
        let c = parse_disk_spec("/d.img,physical-block-size=4096", 0).expect("ok");
        assert_eq!((c.block_size, c.physical_block_size), (512, Some(4096)));
        // The order of the options does not matter.
        let c = parse_disk_spec("/d.img,physical-block-size=16384,block-size=4096", 0).expect("ok");
        assert_eq!((c.block_size, c.physical_block_size), (4096, Some(16384)));
        for bad in [
            "physical-block-size=1000",
            "physical-block-size=x",
            "block-size=4096,physical-block-size=512",
        ] {
            let e = parse_disk_spec(&format!("/d.img,{bad}"), 0).unwrap_err().0;
            assert!(e.contains("physical-block-size"), "{e}");
        }
    }

    #[test]
    fn a_type_6_wwn_needs_16_bytes() {
        use crate::scsi::naa::Naa;
        let c = parse_disk_spec("/d.img,wwn=0x6001405aabbccdd00011223344556677", 0).expect("ok");
        assert_eq!(
            c.wwn,
            Some(Naa::Extended(0x6001_405a_abbc_cdd0_0011_2233_4455_6677))
        );
        let e = parse_disk_spec("/d.img,wwn=0x6001405aabbccdd0", 0)
            .unwrap_err()
            .0;
        assert!(e.contains("wwn:") && e.contains("32 hex digits"), "{e}");
    }

    #[test]
    fn passthrough_makes_a_block_passthrough_lun() {
        let c = parse_disk_spec("/dev/sdb,passthrough", 2).expect("ok");
        assert_eq!(
            c.kind,
            LunKind::BlockPassthrough {
                path: "/dev/sdb".into(),
                cache: CacheMode::None
            }
        );
        assert_eq!(c.lun, 2);
        let c = parse_disk_spec(
            "/dev/sdb,readonly,passthrough=on,cache=directsync,iops=100",
            0,
        )
        .expect("ok");
        assert!(c.readonly);
        assert_eq!(c.limits.iops[0], 100);
        assert!(matches!(
            c.kind,
            LunKind::BlockPassthrough {
                cache: CacheMode::Directsync,
                ..
            }
        ));
        let c = parse_disk_spec("/dev/sdb,passthrough=off", 0).expect("ok");
        assert!(matches!(c.kind, LunKind::Disk { .. }));
    }

    #[test]
    fn passthrough_refuses_what_the_device_decides() {
        for (opt, key) in [
            ("block-size=4096", "block-size"),
            ("physical-block-size=4096", "physical-block-size"),
            ("serial=X", "serial"),
            ("wwn=0x5000c500a1b2c3d4", "wwn"),
            ("discard=unmap", "discard"),
            ("shared", "shared"),
        ] {
            let e = parse_disk_spec(&format!("/dev/sdb,passthrough,{opt}"), 0)
                .unwrap_err()
                .0;
            assert_eq!(
                e,
                format!("--disk '/dev/sdb,passthrough,{opt}': {key}: does not apply to a passthrough disk (the device reports its own)")
            );
        }
        for mode in ["writeback", "unsafe", "writethrough"] {
            let e = parse_disk_spec(&format!("/dev/sdb,passthrough,cache={mode}"), 0)
                .unwrap_err()
                .0;
            assert!(e.contains("cache:") && e.contains(mode), "{e}");
        }
        let e = parse_disk_spec("/dev/sdb,passthrough=maybe", 0)
            .unwrap_err()
            .0;
        assert!(e.contains("passthrough: 'maybe'"), "{e}");
    }

    #[test]
    fn errors_name_the_option() {
        let e = parse_disk_spec("/d.img,cache=fast", 0).unwrap_err().0;
        assert!(e.contains("cache:") && e.contains("fast"), "{e}");
        let e = parse_disk_spec("/d.img,block-size=1000", 0).unwrap_err().0;
        assert!(e.contains("block-size"), "{e}");
        let e = parse_disk_spec("/d.img,bogus", 0).unwrap_err().0;
        assert!(e.contains("bogus"), "{e}");
        let e = parse_disk_spec(",readonly", 0).unwrap_err().0;
        assert!(e.contains("path"), "{e}");
        assert!(!e.contains('\n'));
    }
}
