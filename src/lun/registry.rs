//! Building the LUN table from the configuration: each configured LUN is opened by the
//! module of its kind. A new kind of LUN registers here, with one line in `open_device`.

use std::sync::Arc;

use super::passthrough::{block, sg};
use super::reservations::ReservationSetup;
use super::{disk, iscsi, null, Lun, LunDevice, LunTable};
use crate::config::{Config, LunConfig, LunKind};
use crate::iscsi::IscsiOptions;

/// Opens every configured LUN and builds the table; errors name the LUN.
pub fn build_lun_table(cfg: &Config) -> Result<LunTable<Lun>, String> {
    let mut table = LunTable::new();
    let opts = open_options(cfg);
    for l in &cfg.luns {
        table
            .insert(l.target, l.lun, open_lun(l, &opts, !cfg.incoming)?)
            .map_err(|e| format!("target {} LUN {}: {e}", l.target, l.lun))?;
    }
    Ok(table)
}

/// The options every iSCSI LUN of the daemon logs in with.
pub fn iscsi_options(cfg: &Config) -> IscsiOptions {
    let mut opts = IscsiOptions::default();
    if let Some(name) = &cfg.initiator_name {
        opts.initiator_name = name.clone();
    }
    // Part of every session's ISID (`iscsi::isid`): the daemon's initiator_id, and its
    // socket path, which two daemons that run at once on one host never share (a
    // migration's source and destination may share a VM name, and so an initiator_id).
    // A restart keeps both.
    opts.isid_scope = match &cfg.socket {
        Some(socket) => format!("{} {}", cfg.initiator_id(), socket.display()),
        None => cfg.initiator_id(),
    };
    opts
}

/// What opening a LUN needs besides its own configuration.
#[derive(Debug, Clone, Default)]
pub struct LunOpenOptions {
    pub iscsi: IscsiOptions,
    pub reservations: ReservationSetup,
}

/// The options every LUN of the daemon is opened with.
pub fn open_options(cfg: &Config) -> LunOpenOptions {
    LunOpenOptions {
        iscsi: iscsi_options(cfg),
        reservations: ReservationSetup {
            nexus: cfg.initiator_id(),
            state_dir: cfg.state_dir.clone(),
        },
    }
}

/// Opens one LUN (at start-up, or added while the daemon runs).
pub(crate) fn open_lun(
    l: &LunConfig,
    opts: &LunOpenOptions,
    lock_now: bool,
) -> Result<Arc<Lun>, String> {
    // Threads a LUN starts (an iSCSI LUN's sessions) log within this span, so their
    // lines carry the LUN's address.
    let span = tracing::info_span!("lun", target_id = l.target, lun = l.lun);
    let device = span.in_scope(|| open_device(l, opts, lock_now))?;
    let lun = Lun::new(l.target, l.lun, device);
    lun.set_limits(l.limits);
    Ok(Arc::new(lun))
}

/// The one place that knows every kind of LUN.
/// `lock_now`: take image locks at once (not for the destination of a migration).
fn open_device(
    l: &LunConfig,
    opts: &LunOpenOptions,
    lock_now: bool,
) -> Result<Box<dyn LunDevice>, String> {
    let iscsi = &opts.iscsi;
    match &l.kind {
        LunKind::Disk { path, cache } => disk::open(l, path, *cache, lock_now, &opts.reservations),
        LunKind::Null { size } => null::open(l, *size),
        LunKind::Sg { path } => sg::open(l, path),
        LunKind::BlockPassthrough { path, cache } => block::open(l, path, *cache, lock_now),
        LunKind::Iscsi {
            url,
            chap_secret,
            login,
            multipath,
            all_luns,
        } => {
            if *all_luns {
                // `expand_all_luns` replaces it before the table is built.
                return Err(format!(
                    "target {} LUN {}: url: every LUN of a target ('*') is only taken at \
                     start-up, on reload and by `ctl add`",
                    l.target, l.lun
                ));
            }
            let secret = chap_secret.as_ref().map(|s| s.0.as_str());
            iscsi::open(l, url, secret, login, multipath, iscsi)
        }
    }
}

/// One line per LUN, and its detail lines (the paths of an iSCSI LUN), then one per iSCSI
/// session: what an operator asks with SIGUSR1.
pub fn status_lines(table: &LunTable<Lun>) -> Vec<String> {
    let mut out = Vec::new();
    for (t, l, lun) in table.luns() {
        out.push(format!(
            "target {t} LUN {l}: {} ({} commands in flight)",
            lun.device().describe(),
            lun.inflight()
        ));
        for line in lun.device().detail_lines() {
            out.push(format!("target {t} LUN {l} {line}"));
        }
    }
    out.extend(
        crate::iscsi::registry::status()
            .iter()
            .map(ToString::to_string),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isid_scope_keeps_apart_daemons_of_one_vm_and_stays_across_restarts() {
        let daemon = |socket: &str| Config {
            socket: Some(socket.into()),
            vm_name: Some("vm1".into()),
            ..Config::default()
        };
        let source = iscsi_options(&daemon("/run/vscsid/src.sock")).isid_scope;
        let destination = iscsi_options(&daemon("/run/vscsid/dst.sock")).isid_scope;
        assert_ne!(source, destination, "a migration's two daemons");
        assert_eq!(
            source,
            iscsi_options(&daemon("/run/vscsid/src.sock")).isid_scope,
            "the same daemon started again"
        );
        let explicit = Config {
            initiator_id: Some("iqn.2024-01.com.example:node-a".into()),
            ..daemon("/run/vscsid/src.sock")
        };
        assert!(iscsi_options(&explicit)
            .isid_scope
            .starts_with("iqn.2024-01.com.example:node-a "));
    }

    #[test]
    fn table_is_built_from_config_with_file_capacity() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("d.img");
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(1 << 20))
            .expect("create");
        let mut cfg = Config {
            state_dir: Some(dir.path().join("state")),
            ..Config::default()
        };
        cfg.luns.push(LunConfig::disk(0, 0, p.clone()));
        let mut ro = LunConfig::disk(0, 1, p);
        ro.readonly = true;
        // The same image twice, on purpose: its lock must let both in.
        cfg.luns[0].shared = true;
        ro.shared = true;
        ro.block_size = 4096;
        cfg.luns.push(ro);
        let table = build_lun_table(&cfg).expect("table");
        let luns: Vec<_> = table
            .luns()
            .map(|(t, l, lun)| {
                (
                    t,
                    l,
                    lun.device().disk_properties().map(|p| p.capacity_blocks),
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
