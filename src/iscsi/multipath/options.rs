//! What the configuration chooses for a LUN's paths: the extra portals (and their
//! `host:port` syntax), the policy that spreads commands over the paths, failback, and the
//! limit on their number.

/// Most paths one LUN may have.
pub const MAX_PATHS: usize = 16;

/// How a LUN spreads commands over its usable paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Active/active: turn to the next path after `rr_ios` commands.
    #[default]
    RoundRobin,
    /// Active/active: the path with the fewest commands outstanding.
    QueueLength,
    /// Active/passive: every path its own priority group (unless priorities say
    /// otherwise); only the best group with a usable path carries I/O.
    Failover,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(Policy::RoundRobin),
            "queue-length" => Ok(Policy::QueueLength),
            "failover" => Ok(Policy::Failover),
            o => Err(format!(
                "unknown policy '{o}' (expected round-robin, queue-length or failover)"
            )),
        }
    }
}

/// When traffic returns to a better priority group that came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Failback {
    /// As soon as a path of the better group is up again.
    #[default]
    Immediate,
    /// Never by itself: traffic stays on the group it failed over to until that group
    /// fails (or the daemon restarts).
    Manual,
}

impl std::str::FromStr for Failback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "immediate" => Ok(Failback::Immediate),
            "manual" => Ok(Failback::Manual),
            o => Err(format!(
                "unknown failback '{o}' (expected immediate or manual)"
            )),
        }
    }
}

/// Paths and path policy of one LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipathOptions {
    /// Portals (`host:port`) besides the URL's own, all leading to the same target and LUN.
    pub extra_portals: Vec<String>,
    pub policy: Policy,
    /// Commands sent down one path before round-robin turns to the next.
    pub rr_ios: u32,
    pub failback: Failback,
    /// Priority group of each path, URL's portal first; lower is preferred. Missing
    /// entries: 0 for active/active policies, the path's index for failover.
    pub priorities: Vec<u32>,
}

impl Default for MultipathOptions {
    fn default() -> Self {
        MultipathOptions {
            extra_portals: Vec::new(),
            policy: Policy::default(),
            rr_ios: 16,
            failback: Failback::default(),
            priorities: Vec::new(),
        }
    }
}

/// `host:port` or `[v6]:port` (port defaults to 3260).
pub fn split_portal(portal: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = portal.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("portal '{portal}': missing ']'"))?;
        (h.to_string(), tail.strip_prefix(':'))
    } else {
        match portal.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (portal.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("portal '{portal}': empty host"));
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("portal '{portal}': bad port '{p}'"))?,
        None => 3260,
    };
    Ok((host, port))
}

/// Checks that no two of a LUN's paths, the URL's portal (`first`) and then `extra`, name
/// the same portal: paths to one portal share its session, so the second would be no
/// path of its own. Hosts compare as addresses when they are addresses (`::1` is
/// `0:0::1`), else as names, ignoring case.
pub fn check_distinct_portals(first: (&str, u16), extra: &[String]) -> Result<(), String> {
    let key = |host: &str, port: u16| match host.parse::<std::net::IpAddr>() {
        Ok(ip) => (ip.to_string(), port),
        Err(_) => (host.to_ascii_lowercase(), port),
    };
    // The portals' keys in order: the URL's, then each of `extra`.
    let mut seen = vec![key(first.0, first.1)];
    for portal in extra {
        let (host, port) = split_portal(portal)?;
        let k = key(&host, port);
        if let Some(i) = seen.iter().position(|s| *s == k) {
            let earlier = match i.checked_sub(1) {
                None => format!("the URL's {}:{}", first.0, first.1),
                Some(j) => format!("path '{}'", extra[j]),
            };
            return Err(format!(
                "path '{portal}' is the same portal as {earlier}: two paths to one portal \
                 share its session"
            ));
        }
        seen.push(k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_paths_to_one_portal_are_refused() {
        let extra = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            check_distinct_portals(("10.0.0.1", 3260), &extra(&["10.0.0.2", "10.0.0.1:3261"]))
                .is_ok()
        );
        for (first, paths) in [
            (("10.0.0.1", 3260), extra(&["10.0.0.1"])),
            (("10.0.0.1", 3260), extra(&["10.0.0.2:3260", "10.0.0.2"])),
            (("::1", 3260), extra(&["[0:0::1]:3260"])),
            (("SAN-A", 3260), extra(&["san-a:3260"])),
        ] {
            let e = check_distinct_portals(first, &paths).unwrap_err();
            assert!(e.contains("same portal"), "{e}");
        }
    }

    #[test]
    fn portals_parse() {
        assert_eq!(
            split_portal("127.0.0.2:3261"),
            Ok(("127.0.0.2".into(), 3261))
        );
        assert_eq!(split_portal("host"), Ok(("host".into(), 3260)));
        assert_eq!(split_portal("[::1]:3262"), Ok(("::1".into(), 3262)));
        assert!(split_portal(":1").is_err());
        assert!(split_portal("h:x").is_err());
        assert!(split_portal("[::1").is_err());
    }

    #[test]
    fn policies_parse_and_name_the_choices() {
        assert_eq!("failover".parse::<Policy>(), Ok(Policy::Failover));
        assert!("x".parse::<Policy>().unwrap_err().contains("round-robin"));
        assert_eq!("manual".parse::<Failback>(), Ok(Failback::Manual));
    }
}
