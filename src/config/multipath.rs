//! Multipath settings of an iSCSI LUN: the portals besides the URL's (one path each),
//! path policy, NOP-based path checking and the queueing time while no path is up. One
//! parser serves the `--iscsi` options (`URL,path=host:port,policy=...`) and the TOML keys
//! of the same names (with `_` for `-`), so both say the same thing.

use std::time::Duration;

use crate::iscsi::{IscsiOptions, MultipathOptions};

/// What an iSCSI LUN's configuration says about its paths (the portals that lead to it);
/// None keeps the default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultipathSettings {
    pub multipath: MultipathOptions,
    pub nop_interval: Option<Duration>,
    pub nop_timeout: Option<Duration>,
    pub no_path_retry: Option<Duration>,
}

impl MultipathSettings {
    /// Applies one `key=value` (keys with `-` or `_`). Errors name the key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let key = key.replace('_', "-");
        let err = |e: String| format!("{key}: {e}");
        match key.as_str() {
            "path" | "paths" => {
                crate::iscsi::multipath::split_portal(value).map_err(err)?;
                self.multipath.extra_portals.push(value.to_string());
            }
            "policy" => self.multipath.policy = value.parse().map_err(err)?,
            "failback" => self.multipath.failback = value.parse().map_err(err)?,
            "rr-ios" => {
                self.multipath.rr_ios = match value.parse::<u32>() {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(err(format!("'{value}' is not a count of 1 or more"))),
                }
            }
            "priority" | "priorities" => {
                self.multipath.priorities = value
                    .split(':')
                    .map(|p| p.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| err(format!("'{value}' is not a list of numbers like 0:1")))?;
            }
            "nop-interval" => self.nop_interval = Some(duration(value, 0.01, 3600.0).map_err(err)?),
            "nop-timeout" => self.nop_timeout = Some(duration(value, 0.01, 3600.0).map_err(err)?),
            "no-path-retry" => {
                self.no_path_retry = Some(duration(value, 0.0, 86400.0).map_err(err)?)
            }
            _ => return Err(format!("{key}: unknown option")),
        }
        Ok(())
    }

    /// Checks what only makes sense as a whole, the URL's portal (`url_portal`) among the
    /// paths: no more paths than a LUN takes, no more priorities than paths, no portal
    /// twice.
    pub fn check(&self, url_portal: (&str, u16)) -> Result<(), String> {
        let paths = self.multipath.extra_portals.len() + 1;
        if paths > crate::iscsi::multipath::MAX_PATHS {
            return Err(format!(
                "path: {paths} paths, at most {} per LUN",
                crate::iscsi::multipath::MAX_PATHS
            ));
        }
        if self.multipath.priorities.len() > paths {
            return Err(format!(
                "priority: {} priorities for {paths} path(s)",
                self.multipath.priorities.len()
            ));
        }
        crate::iscsi::check_distinct_portals(url_portal, &self.multipath.extra_portals)
    }

    /// The session options with these settings applied.
    pub fn apply(&self, opts: &mut IscsiOptions) {
        if let Some(d) = self.nop_interval {
            opts.nop_interval = d;
        }
        if let Some(d) = self.nop_timeout {
            opts.nop_timeout = d;
        }
        if let Some(d) = self.no_path_retry {
            opts.recovery_timeout = d;
        }
    }
}

/// Seconds (`1.5`) or with a unit (`500ms`, `2s`, `1m`), within [min, max] seconds.
pub fn duration(s: &str, min: f64, max: f64) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let secs = num
        .trim()
        .parse::<f64>()
        .ok()
        .map(|v| v * scale)
        .filter(|v| v.is_finite() && *v >= min && *v <= max)
        .ok_or_else(|| {
            format!("'{s}' is not a time between {min} s and {max} s (e.g. 500ms, 2s, 1.5)")
        })?;
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URL's portal the paths of these tests go beside.
    const URL_PORTAL: (&str, u16) = ("127.0.0.1", 3260);
    use crate::iscsi::{Failback, Policy};

    #[test]
    fn options_set_what_they_name() {
        let mut p = MultipathSettings::default();
        p.set("path", "127.0.0.2:3261").unwrap();
        p.set("policy", "failover").unwrap();
        p.set("failback", "manual").unwrap();
        p.set("rr_ios", "8").unwrap();
        p.set("priority", "0:1").unwrap();
        p.set("nop-interval", "100ms").unwrap();
        p.set("nop_timeout", "0.3").unwrap();
        p.set("no-path-retry", "5s").unwrap();
        assert_eq!(p.multipath.extra_portals, ["127.0.0.2:3261"]);
        assert_eq!(p.multipath.policy, Policy::Failover);
        assert_eq!(p.multipath.failback, Failback::Manual);
        assert_eq!(p.multipath.rr_ios, 8);
        assert_eq!(p.multipath.priorities, [0, 1]);
        assert_eq!(p.nop_interval, Some(Duration::from_millis(100)));
        assert_eq!(p.nop_timeout, Some(Duration::from_millis(300)));
        assert_eq!(p.no_path_retry, Some(Duration::from_secs(5)));
        assert!(p.check(URL_PORTAL).is_ok());
        let mut o = IscsiOptions::default();
        p.apply(&mut o);
        assert_eq!(o.recovery_timeout, Duration::from_secs(5));
    }

    #[test]
    fn errors_name_the_option() {
        let mut p = MultipathSettings::default();
        for (k, v) in [
            ("path", ":1"),
            ("policy", "random"),
            ("failback", "later"),
            ("rr-ios", "0"),
            ("priority", "a:b"),
            ("nop-interval", "0"),
            ("no-path-retry", "-1"),
            ("no-path-retry", "NaN"),
        ] {
            let e = p.set(k, v).unwrap_err();
            assert!(e.starts_with(k), "{e}");
        }
        assert!(p
            .set("colour", "red")
            .unwrap_err()
            .contains("unknown option"));
        p.set("priority", "0:1:2").unwrap();
        assert!(p
            .check(URL_PORTAL)
            .unwrap_err()
            .contains("3 priorities for 1 path"));
        let mut many = MultipathSettings::default();
        for i in 0..16 {
            many.set("path", &format!("127.0.0.{}:3260", i + 2))
                .unwrap();
        }
        assert!(many.check(URL_PORTAL).unwrap_err().contains("at most 16"));
    }
}
