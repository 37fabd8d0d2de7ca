//! Path selection: which usable path the next command takes, by policy (round-robin
//! turning every `rr_ios` commands, least queue depth, or the best priority group for
//! failover), ALUA preference within a group, and manual failback's stickiness.

use super::options::{Failback, Policy};

/// What the selector knows about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathView {
    pub usable: bool,
    /// Priority group, then ALUA preference: lower is better.
    pub rank: (u32, u8),
    pub outstanding: usize,
}

/// Selector state: round-robin position and the group manual failback sticks to.
#[derive(Debug, Default)]
pub(crate) struct Selector {
    current: usize,
    left: u32,
    group: Option<u32>,
}

impl Selector {
    /// The path for the next command, or None when no path is usable.
    pub(crate) fn choose(
        &mut self,
        policy: Policy,
        failback: Failback,
        rr_ios: u32,
        paths: &[PathView],
    ) -> Option<usize> {
        let best = paths.iter().filter(|p| p.usable).map(|p| p.rank).min()?;
        let mut tier = best;
        if failback == Failback::Manual {
            // Stay in the group in use while it has a usable path.
            if let Some(g) = self.group {
                if let Some(r) = paths
                    .iter()
                    .filter(|p| p.usable && p.rank.0 == g)
                    .map(|p| p.rank)
                    .min()
                {
                    tier = r;
                }
            }
        }
        self.group = Some(tier.0);
        let eligible = |i: usize| paths[i].usable && paths[i].rank == tier;
        if policy == Policy::QueueLength {
            let n = paths.len();
            // Start after the last choice so ties rotate.
            return (1..=n)
                .map(|k| (self.current + k) % n)
                .filter(|&i| eligible(i))
                .min_by_key(|&i| paths[i].outstanding)
                .inspect(|&i| self.current = i);
        }
        if self.left > 0 && self.current < paths.len() && eligible(self.current) {
            self.left -= 1;
            return Some(self.current);
        }
        let n = paths.len();
        let next = (1..=n)
            .map(|k| (self.current + k) % n)
            .find(|&i| eligible(i))?;
        self.current = next;
        self.left = rr_ios.max(1) - 1;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(usable: bool, prio: u32, outstanding: usize) -> PathView {
        PathView {
            usable,
            rank: (prio, 0),
            outstanding,
        }
    }

    #[test]
    fn round_robin_turns_after_rr_ios() {
        let paths = [view(true, 0, 0), view(true, 0, 0)];
        let mut s = Selector::default();
        let picks: Vec<usize> = (0..6)
            .filter_map(|_| s.choose(Policy::RoundRobin, Failback::Immediate, 2, &paths))
            .collect();
        assert_eq!(picks, [1, 1, 0, 0, 1, 1]);
    }

    #[test]
    fn round_robin_skips_failed_paths_and_none_is_none() {
        let mut paths = [view(true, 0, 0), view(false, 0, 0), view(true, 0, 0)];
        let mut s = Selector::default();
        let picks: Vec<usize> = (0..4)
            .filter_map(|_| s.choose(Policy::RoundRobin, Failback::Immediate, 1, &paths))
            .collect();
        assert_eq!(picks, [2, 0, 2, 0]);
        for p in &mut paths {
            p.usable = false;
        }
        assert_eq!(
            s.choose(Policy::RoundRobin, Failback::Immediate, 1, &paths),
            None
        );
    }

    #[test]
    fn queue_length_takes_the_least_busy_path() {
        let paths = [view(true, 0, 5), view(true, 0, 2), view(false, 0, 0)];
        let mut s = Selector::default();
        assert_eq!(
            s.choose(Policy::QueueLength, Failback::Immediate, 1, &paths),
            Some(1)
        );
    }

    #[test]
    fn failover_uses_the_best_group_and_fails_back_immediately() {
        let mut paths = [view(true, 0, 0), view(true, 1, 0)];
        let mut s = Selector::default();
        let c = |s: &mut Selector, p: &[PathView]| {
            s.choose(Policy::Failover, Failback::Immediate, 1, p)
        };
        assert_eq!(c(&mut s, &paths), Some(0));
        assert_eq!(c(&mut s, &paths), Some(0));
        paths[0].usable = false;
        assert_eq!(c(&mut s, &paths), Some(1));
        paths[0].usable = true;
        assert_eq!(c(&mut s, &paths), Some(0));
    }

    #[test]
    fn manual_failback_stays_on_the_surviving_group() {
        let mut paths = [view(true, 0, 0), view(true, 1, 0)];
        let mut s = Selector::default();
        let c =
            |s: &mut Selector, p: &[PathView]| s.choose(Policy::Failover, Failback::Manual, 1, p);
        assert_eq!(c(&mut s, &paths), Some(0));
        paths[0].usable = false;
        assert_eq!(c(&mut s, &paths), Some(1));
        paths[0].usable = true;
        assert_eq!(c(&mut s, &paths), Some(1));
        paths[1].usable = false;
        assert_eq!(c(&mut s, &paths), Some(0));
    }

    #[test]
    fn alua_state_changes_replan_path_use() {
        use crate::iscsi::alua;
        let view = |state: u8| PathView {
            usable: alua::usable(state),
            rank: (0, alua::preference(state)),
            outstanding: 0,
        };
        let mut s = Selector::default();
        let mut pick = |a: u8, b: u8| {
            s.choose(
                Policy::RoundRobin,
                Failback::Immediate,
                1,
                &[view(a), view(b)],
            )
        };
        use alua::{ACTIVE_NON_OPTIMIZED as AN, ACTIVE_OPTIMIZED as AO};
        assert_eq!(pick(AO, AN), Some(0));
        assert_eq!(pick(alua::STANDBY, AO), Some(1));
        assert_eq!(pick(alua::STANDBY, AN), Some(1), "non-optimized is next");
        assert_eq!(pick(alua::TRANSITIONING, alua::UNAVAILABLE), None);
        assert_eq!(pick(alua::OFFLINE, alua::STANDBY), None);
        assert_eq!(pick(AO, alua::TRANSITIONING), Some(0));
    }

    #[test]
    fn alua_preference_orders_paths_within_a_group() {
        let paths = [
            PathView {
                usable: true,
                rank: (0, 1),
                outstanding: 0,
            },
            PathView {
                usable: true,
                rank: (0, 0),
                outstanding: 0,
            },
        ];
        let mut s = Selector::default();
        for _ in 0..3 {
            assert_eq!(
                s.choose(Policy::RoundRobin, Failback::Immediate, 1, &paths),
                Some(1)
            );
        }
    }
}
