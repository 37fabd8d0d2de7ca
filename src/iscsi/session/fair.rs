//! The commands a session holds back while its CmdSN window is full (or before it is
//! sent at all), one queue per LUN attached to the session, served round-robin: a LUN
//! with a deep queue cannot keep another LUN's single command waiting for more than one
//! command of each other LUN.
//!
//! A LUN's queue is made the first time it queues a command and kept (with its
//! capacity) until the LUN leaves the session, so queueing does not allocate per command.

use std::collections::VecDeque;

/// ITTs of unsent commands, per owner (a LUN attached to the session).
#[derive(Default)]
pub(super) struct FairQueue {
    queues: Vec<(u64, VecDeque<u32>)>,
    /// The queue served next.
    next: usize,
    len: usize,
}

impl FairQueue {
    /// Queues `itt` behind `owner`'s other unsent commands.
    pub(super) fn push(&mut self, owner: u64, itt: u32) {
        let i = match self.queues.iter().position(|(o, _)| *o == owner) {
            Some(i) => i,
            None => {
                self.queues.push((owner, VecDeque::new()));
                self.queues.len() - 1
            }
        };
        self.queues[i].1.push_back(itt);
        self.len += 1;
    }

    /// The oldest command of the next owner (round-robin) that has one.
    pub(super) fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let n = self.queues.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if let Some(itt) = self.queues[i].1.pop_front() {
                self.next = (i + 1) % n;
                self.len -= 1;
                return Some(itt);
            }
        }
        None
    }

    pub(super) fn clear(&mut self) {
        for (_, q) in &mut self.queues {
            q.clear();
        }
        self.len = 0;
    }

    /// Keeps only the ITTs `keep` accepts.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        for (_, q) in &mut self.queues {
            q.retain(|&itt| keep(itt));
        }
        self.len = self.queues.iter().map(|(_, q)| q.len()).sum();
    }

    /// Drops `owner`'s queue (the LUN left the session).
    pub(super) fn forget(&mut self, owner: u64) {
        self.queues.retain(|(o, _)| *o != owner);
        self.len = self.queues.iter().map(|(_, q)| q.len()).sum();
        if self.next >= self.queues.len() {
            self.next = 0;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_command_is_not_starved_by_a_deep_queue() {
        let mut q = FairQueue::default();
        // LUN 1 has 1000 commands waiting, then LUN 2 queues one.
        for itt in 0..1000 {
            q.push(1, itt);
        }
        q.pop();
        q.pop();
        q.push(2, 5000);
        // Served within one command of LUN 1.
        let first_two = [q.pop(), q.pop()];
        assert!(first_two.contains(&Some(5000)), "{first_two:?}");
        // The rest is LUN 1's, in its order.
        let rest: Vec<u32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest.len(), 997);
        assert!(rest.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn many_luns_take_turns() {
        let mut q = FairQueue::default();
        // Three busy LUNs and one with a single command, queued last.
        for itt in 0..300 {
            q.push(u64::from(itt % 3), itt);
        }
        q.push(9, 9999);
        let order: Vec<u32> = std::iter::from_fn(|| q.pop()).collect();
        let at = order.iter().position(|&i| i == 9999).expect("served");
        assert!(at <= 3, "the single command waited behind {at} others");
        // Each owner's own commands keep their order.
        for owner in 0..3 {
            let mine: Vec<u32> = order
                .iter()
                .copied()
                .filter(|&i| i != 9999 && i % 3 == owner)
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(mine.len(), 100);
        }
    }

    #[test]
    fn retain_clear_and_forget_keep_the_count() {
        let mut q = FairQueue::default();
        for itt in 0..10 {
            q.push(u64::from(itt % 2), itt);
        }
        q.retain(|itt| itt != 3 && itt != 4);
        assert_eq!(q.len(), 8);
        q.forget(1);
        assert_eq!(q.len(), 4);
        let left: Vec<u32> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(left, vec![0, 2, 6, 8]);
        q.push(7, 1);
        q.clear();
        assert_eq!(q.pop(), None);
    }
}
