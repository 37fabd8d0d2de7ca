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
//! (a device slower than the window).
//!
//! The gap a sleeping thread sees includes its own wake-up, which is what polling saves:
//! where waking a thread costs tens of µs (a VM whose idle vCPUs halt), a guest that comes
//! back well within the bound still looks slower than it from epoll, and the window would
//! never start growing. So while the window is zero the thread tries a whole window now
//! and then ([`PROBE_EVERY`] wake-ups after it dropped to zero): if polling catches work
//! in it the window stays and the rules above take over; if not, the next try waits twice
//! as long (up to [`HOLD_OFF_MAX`] wake-ups). Tries happen only on wake-ups for work, so an
//! idle daemon still never polls. Kept as a pure value so the rules are tested without
//! threads or clocks.

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

/// Wake-ups with a zero window before a whole window is tried (doubling after each try
/// that caught nothing, up to [`HOLD_OFF_MAX`]). 16 against 64, three interleaved rounds
/// on the Intel machine: the null LUN at qd32 0.97–1.30 M against 0.86–0.93 M IOPS, at
/// qd1 39–44 K against 34–37 K; a file LUN unchanged within its rounds.
pub const PROBE_EVERY: u32 = 16;

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
    /// Whether the current window is a try from zero that has not caught work yet.
    probing: bool,
    /// Wake-ups with a zero window left before the next try.
    probe_in: u32,
    /// The wait the next try that catches nothing sets (doubled each time).
    probe_len: u32,
}

impl PollBudget {
    pub fn new(setting: PollSetting) -> PollBudget {
        // (bound, starting window, adaptive)
        let (max, window, adaptive) = match setting {
            PollSetting::Off => (Duration::ZERO, Duration::ZERO, false),
            PollSetting::Fixed(us) => {
                let w = Duration::from_micros(u64::from(us));
                (w, w, false)
            }
            PollSetting::Adaptive => (ADAPTIVE_MAX, Duration::ZERO, true),
        };
        PollBudget {
            max,
            window,
            adaptive,
            spin_ns: 0,
            hold: 0,
            hold_len: HOLD_OFF_WAKES,
            answers_since_hold: HOLD_OFF_WAKES,
            probing: false,
            probe_in: PROBE_EVERY,
            probe_len: PROBE_EVERY,
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
        if self.probing {
            // The try's whole window passed and caught nothing: try again later, less often.
            self.probing = false;
            self.window = Duration::ZERO;
            self.probe_len = self.probe_len.saturating_mul(2).min(HOLD_OFF_MAX);
            self.probe_in = self.probe_len;
            return;
        }
        if gap <= self.max {
            // A longer window would have caught it without the wake-up.
            self.window = (self.window * 2).max(ADAPTIVE_START).min(self.max);
        } else if self.window.is_zero() {
            // The gap includes this wake-up, which polling would have saved: now and then
            // see whether a whole window catches what comes next.
            if self.probe_in > 0 {
                self.probe_in -= 1;
            } else {
                self.probing = true;
                self.window = self.max;
            }
        } else {
            // Polling the whole window found nothing: it costs, it does not pay.
            self.window /= 2;
            if self.window < ADAPTIVE_START {
                self.window = Duration::ZERO;
                self.probe_in = self.probe_len;
            }
        }
    }

    /// A whole window passed without work while the device held commands: the device is
    /// slower than the window, and the spin was all cost.
    pub fn device_outlasted(&mut self, spin: Duration) {
        self.count_spin(
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
        if self.probing && !catch.is_empty() {
            // The try caught work: polling goes on under the rules above, and the next try
            // (after the window drops to zero again) comes at the first interval.
            self.probing = false;
            self.probe_len = PROBE_EVERY;
        }
        self.count_spin(spin, catch);
    }

    /// Follows the mean spin before each of the device's answers; stops polling and holds
    /// it off when that spin costs more than the wake-ups it saves.
    fn count_spin(&mut self, spin: Duration, catch: Catch) {
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
            self.probing = false;
            self.probe_in = self.probe_len;
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

    fn requests(requests: u32) -> Catch {
        Catch {
            requests,
            answers: 0,
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
            b.found_after(35 * US, requests(1));
            b.found_after(Duration::ZERO, answers(1));
        }
        assert_eq!(b.window(), ADAPTIVE_MAX);
        // A disk slower than the window: each window passes while it holds the command.
        let mut slow = grown();
        let mut windows = 0;
        while slow.window() > Duration::ZERO {
            slow.found_after(35 * US, requests(1));
            slow.device_outlasted(slow.window());
            windows += 1;
            assert!(windows < 10);
        }
        // The same round trip with a disk answering 40 µs after each request: stopped.
        let mut catches = 0;
        while b.window() > Duration::ZERO {
            b.found_after(35 * US, requests(1));
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
        // A device slower than the bound does not poll, but for one whole window after
        // PROBE_EVERY wake-ups, which caught nothing and so sets the next try further off.
        for _ in 0..PROBE_EVERY {
            b.woke_after(60 * US);
            assert_eq!(b.window(), Duration::ZERO);
        }
        b.woke_after(60 * US);
        assert_eq!(b.window(), ADAPTIVE_MAX, "a try");
        b.woke_after(60 * US);
        assert_eq!(b.window(), Duration::ZERO);
    }

    /// Wake-ups `gap` apart, nothing caught, until the window opens; returns how many
    /// wake-ups that took (bounded).
    fn wakes_until_a_try(b: &mut PollBudget, gap: Duration) -> u32 {
        let mut wakes = 0;
        while b.window().is_zero() {
            b.woke_after(gap);
            wakes += 1;
            assert!(wakes <= HOLD_OFF_MAX + 1);
        }
        wakes
    }

    #[test]
    fn a_guest_that_comes_back_beyond_the_bound_from_sleep_is_tried_with_a_window() {
        // The null LUN on a VM whose wake-ups are slow: seen from epoll, each request comes
        // 60 µs after the last answer (the guest's round trip and this thread's wake-up).
        let mut b = PollBudget::new(PollSetting::Adaptive);
        assert_eq!(wakes_until_a_try(&mut b, 60 * US), PROBE_EVERY + 1);
        assert_eq!(b.window(), ADAPTIVE_MAX);
        // Polling, the guest's next request is caught 20 µs after the answer: the window
        // stays, and so it does while the guest keeps coming back within it.
        for _ in 0..1000 {
            b.found_after(20 * US, requests(1));
            b.found_after(Duration::ZERO, answers(1));
        }
        assert_eq!(b.window(), ADAPTIVE_MAX);
        // The guest stops: the window decays to zero, and the next try is again
        // PROBE_EVERY wake-ups off.
        while !b.window().is_zero() {
            b.woke_after(Duration::from_millis(10));
        }
        assert_eq!(
            wakes_until_a_try(&mut b, Duration::from_millis(10)),
            PROBE_EVERY + 1
        );
    }

    #[test]
    fn tries_that_catch_nothing_come_ever_more_rarely() {
        let mut b = PollBudget::new(PollSetting::Adaptive);
        let mut waits = vec![];
        for _ in 0..10 {
            waits.push(wakes_until_a_try(&mut b, Duration::from_millis(1)));
            // The try's window passes; the next wake-up ends it.
            b.woke_after(Duration::from_millis(1));
            assert!(b.window().is_zero());
        }
        // The first wait counts the try's own wake-up; later ones the one that ended the
        // last try as well.
        let expected: Vec<u32> = (0..10)
            .map(|k| PROBE_EVERY.saturating_mul(1 << k).min(HOLD_OFF_MAX) + 1)
            .collect();
        assert_eq!(waits, expected);
        assert_eq!(waits.last(), Some(&(HOLD_OFF_MAX + 1)), "capped");
        // A try that catches work sets the interval back.
        wakes_until_a_try(&mut b, Duration::from_millis(1));
        b.found_after(10 * US, requests(1));
        while !b.window().is_zero() {
            b.woke_after(Duration::from_millis(1));
        }
        assert_eq!(
            wakes_until_a_try(&mut b, Duration::from_millis(1)),
            PROBE_EVERY + 1
        );
        // Off and fixed settings never try.
        let mut off = PollBudget::new(PollSetting::Off);
        for _ in 0..(2 * PROBE_EVERY) {
            off.woke_after(Duration::from_millis(1));
            assert!(off.window().is_zero());
        }
    }

    #[test]
    fn a_try_that_the_device_outlasts_is_no_catch() {
        // A disk slower than the window: the try spins while it holds the command.
        let mut b = PollBudget::new(PollSetting::Adaptive);
        wakes_until_a_try(&mut b, Duration::from_millis(1));
        b.device_outlasted(ADAPTIVE_MAX);
        b.woke_after(Duration::from_millis(1));
        assert!(b.window().is_zero());
        assert_eq!(
            wakes_until_a_try(&mut b, Duration::from_millis(1)),
            2 * PROBE_EVERY + 1
        );
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
