//! A small deterministic pseudo-random generator (xorshift64*) for the frontend's users:
//! the load generator's random offsets, the fuzz and property tests' inputs and the
//! integration tests' data patterns. The same seed gives the same sequence on every run
//! and machine, so a failing input can be replayed; it needs no dependency. Not for
//! anything that must be unpredictable.

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators,
/// scrambled"): 64 bits of state, one 64-bit value per step.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Takes the place of a zero seed, on which xorshift would only ever return zero.
    const ZERO_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator starting from `seed`; any seed but zero is used as it is (a zero seed
    /// is replaced by a fixed non-zero one).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { Self::ZERO_SEED } else { seed })
    }

    /// The next value of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with one value per byte, in order: each byte is the low byte of the
    /// next value.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (Rng::new(42), Rng::new(42));
        let first: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert!((0..8).all(|i| b.next_u64() == first[i]));
        assert_ne!(first[0], first[1]);
    }

    #[test]
    fn zero_seed_does_not_stick_at_zero() {
        let mut r = Rng::new(0);
        assert!((0..4).any(|_| r.next_u64() != 0));
    }

    #[test]
    fn fill_takes_one_value_per_byte() {
        let mut a = Rng::new(7);
        let mut buf = [0u8; 5];
        a.fill(&mut buf);
        let mut b = Rng::new(7);
        assert!(buf.iter().all(|&x| x == b.next_u64() as u8));
    }
}
