//! A path of a LUN as the status interface and the logs show it.

use std::time::Duration;

/// A path as the status interface and the logs show it.
#[derive(Debug, Clone)]
pub struct PathStatus {
    pub portal: String,
    /// The number of the path's session (the registry's), and how many LUNs use it.
    pub session: u64,
    pub shared_by: usize,
    /// The ISID the path logs in with (`isid`).
    pub isid: [u8; 6],
    pub up: bool,
    /// Failed by the operator.
    pub admin_failed: bool,
    pub priority: u32,
    pub alua: &'static str,
    /// The path's target port group, when known.
    pub alua_group: Option<u16>,
    /// REPORT TARGET PORT GROUPS answers that set the path's state.
    pub alua_refreshes: u64,
    /// Guest commands the path's port refused for its ALUA state that were sent again.
    pub alua_redirected: u64,
    pub outstanding: usize,
    pub ios: u64,
    pub errors: u64,
    pub failovers: u64,
    pub last_failover: Duration,
}

impl std::fmt::Display for PathStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} session {} shared-by {} isid {} priority {} alua {} alua-group {} \
             outstanding {} ios {} errors {} failovers {} last-failover-ms {} alua-refreshes {} \
             alua-redirected {}",
            self.portal,
            match (self.up, self.admin_failed) {
                (_, true) => "failed-by-operator",
                (true, false) => "up",
                (false, false) => "down",
            },
            self.session,
            self.shared_by,
            crate::iscsi::isid::hex(&self.isid),
            self.priority,
            self.alua,
            self.alua_group
                .map_or_else(|| "-".to_string(), |g| g.to_string()),
            self.outstanding,
            self.ios,
            self.errors,
            self.failovers,
            self.last_failover.as_millis(),
            self.alua_refreshes,
            self.alua_redirected,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::alua;

    #[test]
    fn path_status_line_names_state_and_counters() {
        let p = PathStatus {
            portal: "10.0.2.10:3260".into(),
            session: 7,
            shared_by: 20,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
            up: false,
            admin_failed: false,
            priority: 1,
            alua: alua::name(alua::STANDBY),
            alua_group: Some(2),
            alua_refreshes: 4,
            alua_redirected: 5,
            outstanding: 3,
            ios: 42,
            errors: 1,
            failovers: 2,
            last_failover: Duration::from_millis(610),
        };
        assert_eq!(
            p.to_string(),
            "10.0.2.10:3260: down session 7 shared-by 20 isid 0x80123456789a priority 1 alua \
             standby alua-group 2 outstanding 3 ios 42 errors 1 failovers 2 last-failover-ms 610 \
             alua-refreshes 4 alua-redirected 5"
        );
        let failed = PathStatus {
            up: true,
            admin_failed: true,
            ..p
        };
        assert!(failed
            .to_string()
            .starts_with("10.0.2.10:3260: failed-by-operator "));
    }
}
