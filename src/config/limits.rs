//! Per-LUN I/O limits as configured: the keys `iops`, `bw` and their `_read`, `_write` and
//! `_max` (burst) variants, and `burst_length`, shared by the `[[lun]]` table, the
//! `--disk`/`--null` spec options and the control socket's `set`. The limits themselves
//! are enforced by `lun::throttle`; this is only their values and checks.
//!
//! Semantics follow QEMU's `throttling.*` options: `iops`/`bw` are averages per second
//! (total, or `_read`/`_write` separately, not both); `*_max` is the burst rate, allowed
//! for `burst_length` seconds (default 1) after an idle period; without a `_max` the
//! average may be exceeded by a tenth of a second's worth.

/// Directions a limit applies to.
pub const TOTAL: usize = 0;
pub const READ: usize = 1;
pub const WRITE: usize = 2;

/// Longest burst length accepted, in seconds.
pub const MAX_BURST_LENGTH: u64 = 3600;

/// I/O limits of one LUN; 0 is "no limit" everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoLimits {
    /// Commands per second: total, read, write.
    pub iops: [u64; 3],
    /// Burst rate in commands per second.
    pub iops_max: [u64; 3],
    /// Bytes per second: total, read, write.
    pub bw: [u64; 3],
    /// Burst rate in bytes per second.
    pub bw_max: [u64; 3],
    /// How long a burst at the `_max` rate may last, in seconds (0: 1 s).
    pub burst_length: u64,
}

/// Every key, in the order they are shown.
pub const KEYS: [&str; 13] = [
    "iops",
    "iops_read",
    "iops_write",
    "iops_max",
    "iops_read_max",
    "iops_write_max",
    "bw",
    "bw_read",
    "bw_write",
    "bw_max",
    "bw_read_max",
    "bw_write_max",
    "burst_length",
];

impl IoLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.iops.iter().chain(&self.bw).all(|&v| v == 0)
    }

    fn slot(&mut self, key: &str) -> Option<&mut u64> {
        let (base, rest) = if let Some(r) = key.strip_prefix("iops") {
            (0, r)
        } else if let Some(r) = key.strip_prefix("bw") {
            (1, r)
        } else if key == "burst_length" {
            return Some(&mut self.burst_length);
        } else {
            return None;
        };
        let (rest, max) = match rest.strip_suffix("_max") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let dir = match rest {
            "" => TOTAL,
            "_read" => READ,
            "_write" => WRITE,
            _ => return None,
        };
        Some(match (base, max) {
            (0, false) => &mut self.iops[dir],
            (0, true) => &mut self.iops_max[dir],
            (_, false) => &mut self.bw[dir],
            (_, true) => &mut self.bw_max[dir],
        })
    }

    /// The value of `key`, None for an unknown key.
    pub fn get(&self, key: &str) -> Option<u64> {
        let mut copy = *self;
        copy.slot(key).map(|v| *v)
    }

    /// Whether `key` names a limit.
    pub fn is_key(key: &str) -> bool {
        IoLimits::default().slot(key).is_some()
    }

    /// Sets `key` to `value` (0 removes it). The error names the key.
    pub fn set(&mut self, key: &str, value: u64) -> Result<(), String> {
        match self.slot(key) {
            Some(v) => {
                *v = value;
                Ok(())
            }
            None => Err(format!("{key}: unknown limit (one of {})", KEYS.join(", "))),
        }
    }

    /// Sets `key` from text: a count for `iops*` and `burst_length`, a size with an
    /// optional K, M, G or T suffix for `bw*`; "0" removes the limit.
    pub fn set_text(&mut self, key: &str, text: &str) -> Result<(), String> {
        let value = parse_value(key, text)?;
        self.set(key, value)
    }

    /// Checks the combination; the error names the offending key.
    pub fn check(&self) -> Result<(), String> {
        for (name, avg, max) in [
            ("iops", &self.iops, &self.iops_max),
            ("bw", &self.bw, &self.bw_max),
        ] {
            let suffix = ["", "_read", "_write"];
            if avg[TOTAL] != 0 && (avg[READ] != 0 || avg[WRITE] != 0) {
                let which = if avg[READ] != 0 { "_read" } else { "_write" };
                return Err(format!(
                    "{name}{which}: cannot be combined with {name} (a total limit)"
                ));
            }
            for d in [TOTAL, READ, WRITE] {
                if max[d] != 0 && avg[d] == 0 {
                    return Err(format!(
                        "{name}{}_max: a burst needs {name}{} as well",
                        suffix[d], suffix[d]
                    ));
                }
                if max[d] != 0 && max[d] < avg[d] {
                    return Err(format!(
                        "{name}{}_max: {} is below {name}{} ({})",
                        suffix[d], max[d], suffix[d], avg[d]
                    ));
                }
            }
        }
        if self.burst_length > MAX_BURST_LENGTH {
            return Err(format!(
                "burst_length: {} s is over {MAX_BURST_LENGTH} s",
                self.burst_length
            ));
        }
        if self.burst_length != 0 && self.iops_max.iter().chain(&self.bw_max).all(|&v| v == 0) {
            return Err("burst_length: needs a burst rate (iops_max, bw_max, ...)".into());
        }
        Ok(())
    }

    /// The limits that are set, as `(key, value)`, in the order of [`KEYS`].
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        KEYS.iter()
            .filter_map(|&k| self.get(k).filter(|&v| v != 0).map(|v| (k, v)))
            .collect()
    }

    /// `key=value ...`, sizes of `bw*` in the largest exact unit; empty without limits.
    pub fn describe(&self) -> String {
        self.pairs()
            .iter()
            .map(|&(k, v)| {
                if k.starts_with("bw") {
                    format!("{k}={}", size_text(v))
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Parses the value of limit `key` from text; the error names the key.
pub fn parse_value(key: &str, text: &str) -> Result<u64, String> {
    if !IoLimits::is_key(key) {
        return Err(format!("{key}: unknown limit (one of {})", KEYS.join(", ")));
    }
    let t = text.trim();
    if t == "0" {
        return Ok(0);
    }
    if key.starts_with("bw") {
        super::parse_size(t).map_err(|e| format!("{key}: {e}"))
    } else {
        t.parse::<u64>()
            .map_err(|_| format!("{key}: '{text}' is not a whole number"))
    }
}

fn size_text(v: u64) -> String {
    for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if v >= 1 << shift && v.is_multiple_of(1 << shift) {
            return format!("{}{unit}", v >> shift);
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_set_and_read_back() {
        let mut l = IoLimits::default();
        assert!(l.is_empty());
        for (i, k) in KEYS.iter().enumerate() {
            assert!(IoLimits::is_key(k), "{k}");
            l.set(k, i as u64 + 1).expect(k);
            assert_eq!(l.get(k), Some(i as u64 + 1), "{k}");
        }
        assert!(!l.is_empty());
        assert!(l
            .set("iops_total", 1)
            .unwrap_err()
            .starts_with("iops_total:"));
        assert!(!IoLimits::is_key("bw_maximum"));
    }

    #[test]
    fn values_parse_with_units_and_errors_name_the_key() {
        let mut l = IoLimits::default();
        l.set_text("bw", "10M").expect("bw");
        l.set_text("iops_write", "200").expect("iops");
        assert_eq!(l.bw[TOTAL], 10 << 20);
        assert_eq!(l.iops[WRITE], 200);
        assert_eq!(l.describe(), "iops_write=200 bw=10M");
        l.set_text("bw", "0").expect("0 removes");
        assert_eq!(l.bw[TOTAL], 0);
        let e = l.set_text("iops", "10K").unwrap_err();
        assert!(e.starts_with("iops:") && !e.contains('\n'), "{e}");
        let e = l.set_text("bw_read", "fast").unwrap_err();
        assert!(e.starts_with("bw_read:"), "{e}");
    }

    #[test]
    fn bad_combinations_name_the_key() {
        let check = |pairs: &[(&str, u64)]| {
            let mut l = IoLimits::default();
            for (k, v) in pairs {
                l.set(k, *v).expect(k);
            }
            l.check()
        };
        assert!(check(&[("iops", 100), ("iops_max", 500), ("burst_length", 4)]).is_ok());
        assert!(check(&[("iops_read", 100), ("iops_write", 50), ("bw", 1 << 20)]).is_ok());
        for (pairs, key) in [
            (&[("iops", 100), ("iops_read", 50)][..], "iops_read:"),
            (&[("bw", 100), ("bw_write", 50)][..], "bw_write:"),
            (&[("iops_max", 100)][..], "iops_max:"),
            (&[("bw_read", 100), ("bw_read_max", 50)][..], "bw_read_max:"),
            (&[("iops", 100), ("burst_length", 5)][..], "burst_length:"),
            (
                &[("iops", 1), ("iops_max", 2), ("burst_length", 1 << 20)][..],
                "burst_length:",
            ),
        ] {
            let e = check(pairs).unwrap_err();
            assert!(e.starts_with(key), "{pairs:?}: {e}");
        }
    }
}
