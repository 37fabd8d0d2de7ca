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
//! for no gain in latency. So the mean spin before each catch of the device's answers (a
//! batch of completions shares its spin among them) is followed; when it exceeds
//! [`COSTLY_SPIN`] polling stops, and stays off for [`HOLD_OFF_WAKES`] wake-ups before it
//! may grow again (so a device that became fast is polled again soon); a device found
//! costly again within [`HOLD_OFF_WAKES`] answers of trying doubles the hold, up to
//! [`HOLD_OFF_MAX`] wake-ups, so a disk that stays slow is tried rarely. Spinning that ends
//! with new requests from the guest is not counted: that wait is the guest's round trip
//! (its wake-up by our notification and its next submission), which every device's users
//! share and which polling exists to shorten; counting it stopped polling on the fastest
//! device, whose guest is the only thing polling ever waits for. A window that passes
//! while the device holds commands counts as a spin of the whole window for one answer
//! (a device slower than the window). Kept as a pure value so
//! the rules are tested without threads or clocks.

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

/// The longest hold, for a device found costly every time it is tried (at queue depth 1
/// on a 40 µs disk about 0.2 s of wake-ups).
pub const HOLD_OFF_MAX: u32 = 8192;

/// What one polling pass found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Catch {
    /// New requests waiting in the guest's rings.
    pub requests: u32,
    /// The device's answers: a batch of completions, a held-back command come due.
    pub answers: u32,
}

impl Catch {
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.answers == 0
    }
}

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
    /// The hold the next costly finding sets.
    hold_len: u32,
    /// The device's answers polled for since polling was last found costly (starts as if
    /// long ago).
    answers_since_hold: u32,
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
                hold_len: HOLD_OFF_WAKES,
                answers_since_hold: HOLD_OFF_WAKES,
            },
            PollSetting::Fixed(us) => {
                let w = Duration::from_micros(u64::from(us));
                PollBudget {
                    max: w,
                    window: w,
                    adaptive: false,
                    spin_ns: 0,
                    hold: 0,
                    hold_len: HOLD_OFF_WAKES,
                    answers_since_hold: HOLD_OFF_WAKES,
                }
            }
            PollSetting::Adaptive => PollBudget {
                max: ADAPTIVE_MAX,
                window: Duration::ZERO,
                adaptive: true,
                spin_ns: 0,
                hold: 0,
                hold_len: HOLD_OFF_WAKES,
                answers_since_hold: HOLD_OFF_WAKES,
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

    /// A whole window passed without work while the device held commands: the device is
    /// slower than the window, and the spin was all cost.
    pub fn device_outlasted(&mut self, spin: Duration) {
        self.found_after(
            spin,
            Catch {
                requests: 0,
                answers: 1,
            },
        );
    }

    /// Polling found work after spinning `spin` since the last work. A catch with new
    /// guest requests waited for the guest and costs nothing here; a catch of only the
    /// device's answers (`answers`: completions, due timers) waited for the device, and its
    /// spin is shared among them, so a whole batch counts as cheap as a quick catch of one.
    pub fn found_after(&mut self, spin: Duration, catch: Catch) {
        if !self.adaptive || catch.requests > 0 || catch.answers == 0 {
            return;
        }
        // Not zero: returned above.
        let spin = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX) / u64::from(catch.answers);
        self.spin_ns = self.spin_ns - self.spin_ns / 8 + spin / 8;
        self.answers_since_hold = self.answers_since_hold.saturating_add(catch.answers);
        if self.spin_ns > COSTLY_SPIN.as_nanos() as u64 {
            self.window = Duration::ZERO;
            self.spin_ns = 0;
            self.hold_len = if self.answers_since_hold < HOLD_OFF_WAKES {
                // Costly again as soon as it was tried.
                self.hold_len.saturating_mul(2).min(HOLD_OFF_MAX)
            } else {
                HOLD_OFF_WAKES
            };
            self.hold = self.hold_len;
            self.answers_since_hold = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    fn answers(answers: u32) -> Catch {
        Catch {
            requests: 0,
            answers,
        }
    }

    /// Work keeps coming just after the window ends until the window is the bound.
    fn grow(b: &mut PollBudget) {
        for _ in 0..10 {
            if b.window() == ADAPTIVE_MAX {
                return;
            }
            b.woke_after(b.window() + US);
        }
        assert_eq!(b.window(), ADAPTIVE_MAX);
    }

    fn grown() -> PollBudget {
        let mut b = PollBudget::new(PollSetting::Adaptive);
        grow(&mut b);
        b
    }

    #[test]
    fn waiting_for_the_guest_is_not_a_cost() {
        // A null device at queue depth 1: each answer is immediate, each new request comes
        // a guest round trip (30-40 µs here) later. Polling must go on.
        let mut b = grown();
        for _ in 0..1000 {
            b.found_after(
                35 * US,
                Catch {
                    requests: 1,
                    answers: 0,
                },
            );
            b.found_after(Duration::ZERO, answers(1));
        }
        assert_eq!(b.window(), ADAPTIVE_MAX);
        // A disk slower than the window: each window passes while it holds the command.
        let mut slow = grown();
        let mut windows = 0;
        while slow.window() > Duration::ZERO {
            slow.found_after(
                35 * US,
                Catch {
                    requests: 1,
                    answers: 0,
                },
            );
            slow.device_outlasted(slow.window());
            windows += 1;
            assert!(windows < 10);
        }
        // The same round trip with a disk answering 40 µs after each request: stopped.
        let mut catches = 0;
        while b.window() > Duration::ZERO {
            b.found_after(
                35 * US,
                Catch {
                    requests: 1,
                    answers: 0,
                },
            );
            b.found_after(40 * US, answers(1));
            catches += 1;
            assert!(catches < 10);
        }
    }

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
        let mut b = grown();
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
        let mut b = grown();
        // Quick catches (a busy fast device): polling goes on.
        for _ in 0..1000 {
            b.found_after(US, answers(1));
        }
        assert_eq!(b.window(), ADAPTIVE_MAX);
        // Each answer caught only after 40 µs of spinning: stopped within a few catches.
        let mut catches = 0;
        while b.window() > Duration::ZERO {
            b.found_after(40 * US, answers(1));
            catches += 1;
            assert!(catches < 10);
        }
        // A batch of 32 requests caught after 40 µs costs little per request.
        let mut batch = grown();
        for _ in 0..100 {
            batch.found_after(40 * US, answers(32));
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
            f.found_after(40 * US, answers(1));
        }
        assert_eq!(f.window(), 50 * US);
    }

    /// Spins 40 µs for each answer until polling stops; returns the hold that follows
    /// (wake-ups without polling).
    fn slow_answers_until_held(b: &mut PollBudget) -> u32 {
        while b.window() > Duration::ZERO {
            b.found_after(40 * US, answers(1));
        }
        let mut held = 0;
        while b.window().is_zero() {
            b.woke_after(5 * US);
            held += 1;
            assert!(held <= HOLD_OFF_MAX + 1);
        }
        held - 1
    }

    /// Grows the window after a hold, then [`slow_answers_until_held`].
    fn try_slow_device(b: &mut PollBudget) -> u32 {
        grow(b);
        slow_answers_until_held(b)
    }

    #[test]
    fn a_device_costly_each_time_it_is_tried_is_tried_ever_more_rarely() {
        let mut b = PollBudget::new(PollSetting::Adaptive);
        let holds: Vec<u32> = (0..10).map(|_| try_slow_device(&mut b)).collect();
        assert_eq!(
            holds,
            [64, 128, 256, 512, 1024, 2048, 4096, 8192, 8192, 8192]
        );
        // It became fast: a long run of cheap answers, and the next slow spell holds briefly.
        grow(&mut b);
        for _ in 0..1000 {
            b.found_after(US, answers(1));
        }
        assert_eq!(slow_answers_until_held(&mut b), HOLD_OFF_WAKES);
    }

    #[test]
    fn a_stray_slow_answer_halves_the_window_instead_of_ending_polling() {
        let mut b = grown();
        b.woke_after(Duration::from_millis(1));
        assert_eq!(b.window(), ADAPTIVE_MAX / 2);
        b.woke_after(b.window() + 5 * US);
        assert_eq!(b.window(), ADAPTIVE_MAX);
    }
}
