//! Seedable randomness for jitter and fault injection.
//!
//! Jittered backoff and chaos need random numbers, tests need them repeatable, and neither needs
//! cryptographic quality. [`Rng`] is the small trait the layers draw from; [`SplitMix64`] is the default
//! generator (Steele, Lea and Flood's SplitMix, as used to seed xoshiro): tiny, fast and good enough for
//! spreading delays. Seed it for deterministic tests; [`SplitMix64::from_entropy`] seeds it from the clock
//! and a per-process counter otherwise.
//!
//! ```
//! use rampart_layers::rng::{Rng, SplitMix64};
//!
//! let mut a = SplitMix64::seeded(7);
//! let mut b = SplitMix64::seeded(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! let x = a.next_f64();
//! assert!((0.0..1.0).contains(&x));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of random numbers for jitter and fault injection.
pub trait Rng {
    /// The next 64 uniformly distributed bits.
    fn next_u64(&mut self) -> u64;

    /// A uniformly distributed float in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniformly distributed integer in `[low, high]` (inclusive). Returns `low` if `high <= low`.
    fn in_range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        let span = high - low;
        if span == u64::MAX {
            return self.next_u64();
        }
        // Multiply-shift (Lemire) without the rejection step: bias below 2^-64 * span, irrelevant for jitter.
        let r = ((self.next_u64() as u128 * (span as u128 + 1)) >> 64) as u64;
        low + r
    }
}

/// The SplitMix64 generator: a 64-bit state, one add and a few multiplies per number.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator that always produces the same sequence for the same seed.
    pub fn seeded(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator seeded from the system clock and a process-wide counter, so two generators made at the
    /// same instant still differ.
    pub fn from_entropy() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let bump = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let mut mixer = Self::seeded(nanos ^ bump);
        Self::seeded(mixer.next_u64())
    }
}

impl Default for SplitMix64 {
    fn default() -> Self {
        Self::from_entropy()
    }
}

impl Rng for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_first_value_for_seed_zero() {
        // Reference value of SplitMix64 seeded with 0.
        assert_eq!(SplitMix64::seeded(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn range_is_inclusive_and_bounded() {
        let mut rng = SplitMix64::seeded(1);
        let mut seen_low = false;
        let mut seen_high = false;
        for _ in 0..10_000 {
            let x = rng.in_range(3, 6);
            assert!((3..=6).contains(&x));
            seen_low |= x == 3;
            seen_high |= x == 6;
        }
        assert!(seen_low && seen_high);
        assert_eq!(rng.in_range(5, 5), 5);
        assert_eq!(rng.in_range(9, 2), 9);
    }

    #[test]
    fn entropy_generators_differ() {
        assert_ne!(
            SplitMix64::from_entropy().next_u64(),
            SplitMix64::from_entropy().next_u64()
        );
    }
}
