//! Configuration reload (SIGHUP): the configuration is read again and the difference in
//! LUNs applied through the same code as the control commands: a LUN only in the new
//! configuration is added, one only in the running table removed, a disk whose file or
//! device grew is resized. What cannot change while the daemon runs (a LUN's kind, path,
//! cache mode ...; the socket, the queues, the threads ...) is logged and left as it was.

use crate::config::{Config, LunConfig, LunKind};
use crate::lun::live::REMOVE_DRAIN;

use crate::lun::LiveLuns;

/// What a reload did, one line per item.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    pub refused: Vec<String>,
}

impl ReloadReport {
    /// The one-line summary for the logs and the service status.
    pub fn summary(&self) -> String {
        format!(
            "configuration reloaded: {} change(s) applied, {} left as they were",
            self.applied.len(),
            self.refused.len()
        )
    }
}

/// Daemon settings a reload cannot change, by configuration field name.
fn fixed_daemon_fields(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |changed: bool, name: &'static str| {
        if changed {
            out.push(name);
        }
    };
    check(old.socket != new.socket, "daemon.socket");
    check(
        old.socket_access != new.socket_access,
        "daemon.socket_owner/group/mode",
    );
    check(old.vm_name != new.vm_name, "daemon.vm_name");
    check(old.num_queues != new.num_queues, "daemon.num_queues");
    check(old.threads != new.threads, "daemon.threads");
    check(old.queue_size != new.queue_size, "daemon.queue_size");
    check(old.reconnect != new.reconnect, "daemon.reconnect");
    check(old.poll_us != new.poll_us, "daemon.poll_us");
    check(old.submit_batch != new.submit_batch, "daemon.submit_batch");
    check(
        old.stop_timeout_ms != new.stop_timeout_ms,
        "daemon.stop_timeout_ms",
    );
    check(
        old.initiator_name != new.initiator_name,
        "daemon.initiator_name",
    );
    check(old.initiator_id != new.initiator_id, "daemon.initiator_id");
    check(old.control != new.control, "daemon.control");
    out
}

fn address(l: &LunConfig) -> String {
    format!("target {} LUN {}", l.target, l.lun)
}

/// Applies `new` to the running daemon, whose configuration was `old`.
pub fn apply(luns: &LiveLuns, old: &Config, new: &Config) -> ReloadReport {
    let mut report = ReloadReport::default();
    for field in fixed_daemon_fields(old, new) {
        report
            .refused
            .push(format!("{field} changed: it applies at the next start"));
    }
    let running = luns.configs();
    for ((target, lun), was) in &running {
        if !new
            .luns
            .iter()
            .any(|l| l.target == *target && l.lun == *lun)
        {
            match luns.remove(*target, *lun, REMOVE_DRAIN) {
                Ok(_) => report.applied.push(format!("{} removed", address(was))),
                Err(e) => report.refused.push(format!("{}: {e}", address(was))),
            }
        }
    }
    for l in &new.luns {
        match running.get(&(l.target, l.lun)) {
            None => match luns.add(l) {
                Ok(()) => report.applied.push(format!("{} added", address(l))),
                Err(e) => report.refused.push(format!("{}: {e}", address(l))),
            },
            Some(was) if was != l && LunConfig { limits: l.limits, ..was.clone() } == *l => {
                // Only the I/O limits changed: they change in place.
                match luns.replace_limits(l.target, l.lun, l.limits) {
                    Ok(()) => report.applied.push(format!(
                        "{} I/O limits set: {}",
                        address(l),
                        if l.limits.is_empty() {
                            "none".to_string()
                        } else {
                            l.limits.describe()
                        }
                    )),
                    Err(e) => report.refused.push(format!("{}: {e}", address(l))),
                }
            }
            Some(was) if was != l => report.refused.push(format!(
                "{} changed: a LUN's settings apply when it is added again (remove it, reload, add it back) or at the next start",
                address(l)
            )),
            Some(_) => {
                // Same settings: a disk whose backing grew is resized.
                if matches!(l.kind, LunKind::Disk { .. }) {
                    match luns.resize(l.target, l.lun, None, false) {
                        Ok((a, b)) if a != b => report
                            .applied
                            .push(format!("{} resized: {a} -> {b} blocks", address(l))),
                        Ok(_) => {}
                        Err(e) => report.refused.push(format!("{}: {e}", address(l))),
                    }
                }
            }
        }
    }
    for line in &report.applied {
        tracing::info!("reload: {line}");
    }
    for line in &report.refused {
        tracing::warn!("reload: {line}; left as it was");
    }
    tracing::info!("{}", report.summary());
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lun::{build_lun_table, open_options};
    use std::path::PathBuf;

    fn config(dir: &std::path::Path, files: &[(&str, u16)]) -> Config {
        let mut cfg = Config {
            socket: Some(PathBuf::from("/x.sock")),
            state_dir: Some(dir.join("state")),
            ..Config::default()
        };
        for (name, lun) in files {
            let mut l = LunConfig::disk(0, *lun, dir.join(name));
            l.shared = true;
            cfg.luns.push(l);
        }
        cfg
    }

    #[test]
    fn luns_are_added_removed_and_resized_and_the_rest_left_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        for n in ["a.img", "b.img", "c.img"] {
            std::fs::File::create(dir.path().join(n))
                .and_then(|f| f.set_len(1 << 20))
                .expect("img");
        }
        let old = config(dir.path(), &[("a.img", 0), ("b.img", 1)]);
        let luns = LiveLuns::new(
            build_lun_table(&old).expect("table"),
            open_options(&old),
            true,
        );
        luns.remember(&old.luns);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("a.img"))
            .and_then(|f| f.set_len(2 << 20))
            .expect("grow");
        let mut new = config(dir.path(), &[("a.img", 0), ("c.img", 2)]);
        new.num_queues = 2;
        let r = apply(&luns, &old, &new);
        assert_eq!(
            r.applied,
            vec![
                "target 0 LUN 1 removed".to_string(),
                "target 0 LUN 0 resized: 2048 -> 4096 blocks".to_string(),
                "target 0 LUN 2 added".to_string(),
            ]
        );
        assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
        assert!(r.refused[0].starts_with("daemon.num_queues"));
        let now: Vec<_> = luns.snapshot().luns().map(|(t, l, _)| (t, l)).collect();
        assert_eq!(now, vec![(0, 0), (0, 2)]);

        // A LUN whose settings changed is left as it was; the same file again is a no-op.
        let mut changed = new.clone();
        changed.luns[1].readonly = true;
        let r = apply(&luns, &new, &changed);
        assert!(r.applied.is_empty(), "{:?}", r.applied);
        assert_eq!(r.refused.len(), 1);
        assert!(r.refused[0].starts_with("target 0 LUN 2 changed"));
        assert_eq!(apply(&luns, &new, &new), ReloadReport::default());
    }

    #[test]
    fn changed_io_limits_apply_in_place() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::File::create(dir.path().join("a.img"))
            .and_then(|f| f.set_len(1 << 20))
            .expect("img");
        let old = config(dir.path(), &[("a.img", 0)]);
        let luns = LiveLuns::new(
            build_lun_table(&old).expect("table"),
            open_options(&old),
            true,
        );
        luns.remember(&old.luns);
        let mut new = old.clone();
        new.luns[0].limits.set("iops", 300).expect("key");
        let r = apply(&luns, &old, &new);
        assert_eq!(
            r.applied,
            vec!["target 0 LUN 0 I/O limits set: iops=300".to_string()]
        );
        assert!(r.refused.is_empty(), "{:?}", r.refused);
        let lun = luns.snapshot().get(0, 0).cloned().expect("lun");
        assert_eq!(lun.limits().iops[0], 300);
        // A run-time `set` is recorded; the next reload brings the file's value back.
        luns.set_limits(0, 0, &[("iops".into(), 50)]).expect("set");
        assert_eq!(luns.configs()[&(0, 0)].limits.iops[0], 50);
        let r = apply(&luns, &new, &new);
        assert_eq!(
            r.applied,
            vec!["target 0 LUN 0 I/O limits set: iops=300".to_string()]
        );
        assert_eq!(lun.limits().iops[0], 300);
        // Limits with another change: the LUN is left as it was.
        let mut both = new.clone();
        both.luns[0].limits = Default::default();
        both.luns[0].readonly = true;
        let r = apply(&luns, &new, &both);
        assert!(r.applied.is_empty(), "{:?}", r.applied);
        assert_eq!(lun.limits().iops[0], 300);
    }
}
