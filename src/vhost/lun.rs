//! A LUN as the request path sees it: its SCSI personality and its medium, built from the
//! configuration once at start-up and shared by every worker thread.

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::backend::Backing;
use crate::config::{Config, LunConfig, LunKind};
use crate::iscsi::{Chap, IscsiLun, IscsiOptions};
use crate::scsi::disk::{DiskProperties, EmulatedDisk};
use crate::scsi::target::LunTable;

/// Largest transfer one READ/WRITE may ask for (VPD 0xB0), in bytes.
pub const MAX_TRANSFER_BYTES: u64 = 8 << 20;

/// An emulated disk and the file or device under it.
pub struct DiskLun {
    pub disk: EmulatedDisk,
    pub backing: Backing,
}

/// What serves a LUN's commands.
pub enum Medium {
    Disk(DiskLun),
    /// A null disk: reads return zeroes, writes are dropped; no medium at all.
    Null(EmulatedDisk),
    /// Passthrough to a LUN of an iSCSI target.
    Iscsi(IscsiLun),
}

/// One configured LUN.
pub struct Lun {
    pub target: u8,
    pub lun: u16,
    pub medium: Medium,
    /// Commands of this LUN in flight on any queue (task management waits for zero).
    pub inflight: AtomicU32,
    /// Keeps COMPARE AND WRITE atomic against writes from every queue.
    pub gate: super::gate::WriteGate,
}

impl Lun {
    /// The emulated disk, if this LUN is one.
    pub fn as_disk(&self) -> Option<&DiskLun> {
        match &self.medium {
            Medium::Disk(d) => Some(d),
            Medium::Null(_) | Medium::Iscsi(_) => None,
        }
    }

    /// A one-line description for the logs.
    pub fn describe(&self) -> String {
        match &self.medium {
            Medium::Disk(d) => format!(
                "disk {} cache={} {} blocks of {} bytes{}",
                d.backing.path.display(),
                d.backing.cache,
                d.disk.properties().capacity_blocks,
                d.disk.properties().block_size,
                if d.disk.properties().readonly {
                    ", read-only"
                } else {
                    ""
                }
            ),
            Medium::Null(d) => format!(
                "null disk, {} blocks of {} bytes",
                d.properties().capacity_blocks,
                d.properties().block_size
            ),
            Medium::Iscsi(i) => format!("iSCSI passthrough {}", i.url),
        }
    }
}

/// One line per LUN, and one per path of an iSCSI LUN: what an operator asks with SIGUSR1.
pub fn status_lines(table: &LunTable<Lun>) -> Vec<String> {
    let mut out = Vec::new();
    for (t, l, lun) in table.luns() {
        out.push(format!(
            "target {t} LUN {l}: {} ({} commands in flight)",
            lun.describe(),
            lun.inflight.load(std::sync::atomic::Ordering::Relaxed)
        ));
        if let Medium::Iscsi(i) = &lun.medium {
            for (n, p) in i.paths().iter().enumerate() {
                out.push(format!("target {t} LUN {l} path {n} {p}"));
            }
        }
    }
    out
}

/// Opens every configured LUN and builds the table; errors name the LUN.
pub fn build_lun_table(cfg: &Config) -> Result<LunTable<Lun>, String> {
    let mut table = LunTable::new();
    let mut opts = IscsiOptions::default();
    if let Some(name) = &cfg.initiator_name {
        opts.initiator_name = name.clone();
    }
    for l in &cfg.luns {
        let lun = open_lun(l, &opts)?;
        table
            .insert(l.target, l.lun, Arc::new(lun))
            .map_err(|e| format!("target {} LUN {}: {e}", l.target, l.lun))?;
    }
    Ok(table)
}

fn open_lun(l: &LunConfig, iscsi: &IscsiOptions) -> Result<Lun, String> {
    let where_ = format!("target {} LUN {}", l.target, l.lun);
    let (path, cache) = match &l.kind {
        LunKind::Disk { path, cache } => (path, cache),
        LunKind::Null { size } => {
            let bs = u64::from(l.block_size);
            if *size < bs {
                return Err(format!(
                    "{where_}: size {size} is smaller than one {bs}-byte block"
                ));
            }
            let id = format!("null:{}:{}", l.target, l.lun);
            let props = disk_properties(l, size / bs, id.as_bytes(), true, "NULL-DISK", true);
            return Ok(Lun {
                target: l.target,
                lun: l.lun,
                medium: Medium::Null(EmulatedDisk::new(props)),
                inflight: AtomicU32::new(0),
                gate: Default::default(),
            });
        }
        LunKind::Iscsi {
            url,
            chap_secret,
            header_digest,
            data_digest,
            paths,
        } => {
            let mut opts = IscsiOptions {
                header_digest: *header_digest,
                data_digest: *data_digest,
                ..iscsi.clone()
            };
            paths.apply(&mut opts);
            if let (Some(user), Some(secret)) = (&url.user, chap_secret) {
                opts.chap = Some(Chap {
                    user: user.clone(),
                    secret: secret.0.clone(),
                    mutual: None,
                });
            }
            let session = IscsiLun::connect_multipath(url, &opts, &paths.multipath)
                .map_err(|e| format!("{where_}: {url}: {e}"))?;
            if paths.multipath.extra_portals.is_empty() {
                tracing::info!("{where_}: iSCSI {url}: one path");
            } else {
                for p in session.paths() {
                    tracing::info!("{where_}: iSCSI path {p}");
                }
            }
            return Ok(Lun {
                target: l.target,
                lun: l.lun,
                medium: Medium::Iscsi(session),
                inflight: AtomicU32::new(0),
                gate: Default::default(),
            });
        }
    };
    let backing = Backing::open(path, *cache, l.readonly).map_err(|e| format!("{where_}: {e}"))?;
    let bs = u64::from(l.block_size);
    if backing.size < bs {
        return Err(format!(
            "{where_}: {} is smaller than one {bs}-byte block",
            path.display()
        ));
    }
    if backing.dio_align > bs {
        return Err(format!(
            "{where_}: block-size {bs} is smaller than the {}-byte alignment O_DIRECT needs on {}; use block-size=4096 or another cache mode",
            backing.dio_align,
            path.display()
        ));
    }
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
    let props = disk_properties(
        l,
        backing.size / bs,
        canonical.as_os_str().as_encoded_bytes(),
        cache.write_cache_enabled(),
        "VIRTUAL-DISK",
        backing.unmapped_blocks_read_zeroes(),
    );
    Ok(Lun {
        target: l.target,
        lun: l.lun,
        medium: Medium::Disk(DiskLun {
            disk: EmulatedDisk::new(props),
            backing,
        }),
        inflight: AtomicU32::new(0),
        gate: Default::default(),
    })
}

/// What an emulated disk reports; identifiers derive from `identity` (the backing path)
/// so they are stable across restarts and unique per LUN.
fn disk_properties(
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

    #[test]
    fn table_is_built_from_config_with_file_capacity() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("d.img");
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(1 << 20))
            .expect("create");
        let mut cfg = Config::default();
        cfg.luns.push(LunConfig::disk(0, 0, p.clone()));
        let mut ro = LunConfig::disk(0, 1, p);
        ro.readonly = true;
        ro.block_size = 4096;
        cfg.luns.push(ro);
        let table = build_lun_table(&cfg).expect("table");
        let luns: Vec<_> = table
            .luns()
            .map(|(t, l, lun)| {
                (
                    t,
                    l,
                    lun.as_disk().map(|d| d.disk.properties().capacity_blocks),
                )
            })
            .collect();
        assert_eq!(luns, vec![(0, 0, Some(2048)), (0, 1, Some(256))]);
    }

    #[test]
    fn missing_backing_file_names_the_lun() {
        let mut cfg = Config::default();
        cfg.luns
            .push(LunConfig::disk(0, 3, "/nonexistent/z.img".into()));
        let err = build_lun_table(&cfg).err().expect("error");
        assert!(
            err.contains("LUN 3") && err.contains("/nonexistent/z.img"),
            "{err}"
        );
    }
}
