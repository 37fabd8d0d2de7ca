//! How long a worker thread busy-polls its queues and completions after work before it
//! sleeps in epoll (`--poll-us`): never, a fixed window, or a window that adapts to how
//! soon work follows work.
//!
//! Adaptive: the thread records when it last found work. When it wakes from epoll, the
//! gap since then (the polling window it spent plus the time it slept) says whether a
//! longer window would have caught this work without the wake-up: a gap within the hard
//! bound grows the window (doubling from a small start), a gap beyond it halves the window
//! and a small window drops to nothing. So a busy fast device is polled continuously, a
//! device slower than the bound (a disk at tens of µs per I/O) is not polled at all, and an
//! idle daemon sleeps in epoll: it never polls before work and stops one window after it.
//! That much is QEMU's adaptive AioContext polling. One more rule, for a device whose
//! answers come within the bound but late in it (a virtual disk at ~40 µs): polling then
//! spins most of the window for each piece of work it catches, doubling the CPU per I/O
//! for no gain in latency. So the mean spin per piece of work caught (a catch of a whole
//! batch of requests shares its spin among them) is followed; when it exceeds
//! [`COSTLY_SPIN`] polling stops, and stays off for [`HOLD_OFF_WAKES`] wake-ups before it
//! may grow again (so a device that became fast is polled again soon). Kept as a pure
//! value so the rules are tested without threads or clocks.

use std::time::Duration;

use crate::config::PollSetting;

/// The hard bound of the adaptive window: the longest a thread polls after its last work.
/// A device answering within it is polled (its completions are picked up without a
/// wake-up); a slower one costs nothing.
pub const ADAPTIVE_MAX: Duration = Duration::from_micros(50);

/// The first window once polling pays off, and the smallest kept when it shrinks.
pub const ADAPTIVE_START: Duration = Duration::from_micros(2);

/// Mean spin before each piece of work polling catches beyond which it costs more CPU
/// than the wake-ups it saves.
pub const COSTLY_SPIN: Duration = Duration::from_micros(15);

/// Wake-ups without polling after polling was found costly.
pub const HOLD_OFF_WAKES: u32 = 64;

/// One worker thread's polling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollBudget {
    /// The bound the window may grow to (fixed mode: the window itself).
    max: Duration,
    window: Duration,
    adaptive: bool,
    /// Mean spin before each catch (exponentially weighted, 1/8 per catch), nanoseconds.
    spin_ns: u64,
    /// Wake-ups left before the window may grow again (after polling was found costly).
    hold: u32,
}

impl PollBudget {
    pub fn new(setting: PollSetting) -> PollBudget {
        match setting {
            PollSetting::Off => PollBudget {
                max: Duration::ZERO,
                window: Duration::ZERO,
                adaptive: false,
                spin_ns: 0,
                hold: 0,
            },
            PollSetting::Fixed(us) => {
                let w = Duration::from_micros(u64::from(us));
                PollBudget {
                    max: w,
                    window: w,
                    adaptive: false,
                    spin_ns: 0,
                    hold: 0,
                }
            }
            PollSetting::Adaptive => PollBudget {
                max: ADAPTIVE_MAX,
                window: Duration::ZERO,
                adaptive: true,
                spin_ns: 0,
                hold: 0,
            },
        }
    }

    /// How long to keep polling after the last work found; zero: sleep at once.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The thread woke from epoll for an event `gap` after the last work it found.
    pub fn woke_after(&mut self, gap: Duration) {
        if !self.adaptive || gap <= self.window {
            // Fixed, or the event came within the window (polling would have seen it).
            return;
        }
        if self.hold > 0 {
            self.hold -= 1;
            return;
        }
        if gap <= self.max {
            // A longer window would have caught it without the wake-up.
            self.window = (self.window * 2).max(ADAPTIVE_START).min(self.max);
        } else {
            // Polling the whole window found nothing: it costs, it does not pay.
            self.window /= 2;
            if self.window < ADAPTIVE_START {
                self.window = Duration::ZERO;
            }
        }
    }

    /// Polling found `pieces` of work (requests, a batch of completions) at once after
    /// spinning `spin` since the last work: the spin is shared among them, so a catch of
    /// a whole batch counts as cheap as a quick catch of one.
    pub fn found_after(&mut self, spin: Duration, pieces: u32) {
        if !self.adaptive {
            return;
        }
        let spin = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX) / u64::from(pieces.max(1));
        self.spin_ns = self.spin_ns - self.spin_ns / 8 + spin / 8;
        if self.spin_ns > COSTLY_SPIN.as_nanos() as u64 {
            self.window = Duration::ZERO;
            self.spin_ns = 0;
            self.hold = HOLD_OFF_WAKES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn off_and_fixed_never_change() {
        let mut off = PollBudget::new(PollSetting::Off);
        let mut fixed = PollBudget::new(PollSetting::Fixed(50));
        for gap in [US, 10 * US, 1000 * US, Duration::from_secs(5)] {
            off.woke_after(gap);
            fixed.woke_after(gap);
            assert_eq!(off.window(), Duration::ZERO);
            assert_eq!(fixed.window(), 50 * US);
        }
    }

    #[test]
    fn adaptive_starts_asleep_and_grows_while_work_follows_work() {
        let mut b = PollBudget::new(PollSetting::Adaptive);
        assert_eq!(b.window(), Duration::ZERO, "an idle daemon does not poll");
        // Work came 5 µs after the window ended: it doubles while that is within the bound.
        let mut seen = vec![];
        for _ in 0..6 {
            b.woke_after(b.window() + 5 * US);
            seen.push(b.window().as_micros());
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 50]);
        // Caught within the window: it stays.
        b.woke_after(30 * US);
        assert_eq!(b.window(), ADAPTIVE_MAX);
        // Never beyond the bound, whatever the gaps.
        for gap in [1, 7, 49, 50, 51, 20, 3].repeat(20) {
            b.woke_after(gap * US);
            assert!(b.window() <= ADAPTIVE_MAX);
        }
    }

    #[test]
    fn adaptive_decays_to_zero_when_polling_finds_nothing() {
        let mut b = PollBudget::new(PollSetting::Adaptive);
        for _ in 0..10 {
            b.woke_after(b.window() + 5 * US);
        }
        assert_eq!(b.window(), ADAPTIVE_MAX);
        let mut steps = 0;
        while b.window() > Duration::ZERO {
            b.woke_after(Duration::from_millis(10));
            steps += 1;
            assert!(steps < 10, "decays in a few steps");
        }
        // A device slower than the bound never starts polling.
        for _ in 0..100 {
            b.woke_after(60 * US);
            assert_eq!(b.window(), Duration::ZERO);
        }
    }

    #[test]
    fn polling_that_spins_long_for_each_catch_stops_and_holds_off() {
        let mut b = PollBudget::new(PollSetting::Adaptive);
        for _ in 0..10 {
            b.woke_after(b.window() + 5 * US);
        }
        assert_eq!(b.window(), ADAPTIVE_MAX);
        // Quick catches (a busy fast device): polling goes on.
        for _ in 0..1000 {
            b.found_after(US, 1);
        }
        assert_eq!(b.window(), ADAPTIVE_MAX);
        // Each answer caught only after 40 µs of spinning: stopped within a few catches.
        let mut catches = 0;
        while b.window() > Duration::ZERO {
            b.found_after(40 * US, 1);
            catches += 1;
            assert!(catches < 10);
        }
        // A batch of 32 requests caught after 40 µs costs little per request.
        let mut batch = PollBudget::new(PollSetting::Adaptive);
        for _ in 0..10 {
            batch.woke_after(batch.window() + 5 * US);
        }
        for _ in 0..100 {
            batch.found_after(40 * US, 32);
        }
        assert_eq!(batch.window(), ADAPTIVE_MAX);
        // Held off for a while, whatever the gaps; then it may grow again.
        for _ in 0..HOLD_OFF_WAKES {
            b.woke_after(5 * US);
            assert_eq!(b.window(), Duration::ZERO);
        }
        b.woke_after(5 * US);
        assert_eq!(b.window(), ADAPTIVE_START);
        // Fixed windows do not follow the cost.
        let mut f = PollBudget::new(PollSetting::Fixed(50));
        for _ in 0..100 {
            f.found_after(40 * US, 1);
        }
        assert_eq!(f.window(), 50 * US);
    }

    #[test]
    fn a_stray_slow_answer_halves_the_window_instead_of_ending_polling() {
        let mut b = PollBudget::new(PollSetting::Adaptive);
        for _ in 0..10 {
            b.woke_after(b.window() + 5 * US);
        }
        b.woke_after(Duration::from_millis(1));
        assert_eq!(b.window(), ADAPTIVE_MAX / 2);
        b.woke_after(b.window() + 5 * US);
        assert_eq!(b.window(), ADAPTIVE_MAX);
    }
}
