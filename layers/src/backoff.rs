//! Backoff schedules: how long to wait before each retry.
//!
//! The [retry layer](crate::retry) waits out a schedule between attempts (it is re-exported there as
//! `retry::backoff`), and [recreation](crate::recreate) waits out an un-jittered [`Exponential`] between
//! failed rebuilds. This module needs no Cargo feature, so both can use it without pulling in the other.
//!
//! A schedule is anything that implements [`Backoff`]. Three come with the crate:
//!
//! | schedule | delay before retry *n* (un-jittered) |
//! |---|---|
//! | [`Exponential`] | `base × multiplier^(n-1)`, capped at `max_delay` |
//! | [`Fibonacci`] | `base × fib(n)` (1, 1, 2, 3, 5, ...), capped at `max_delay` |
//! | [`Constant`] | the same delay every time |
//!
//! [`Exponential`] and [`Fibonacci`] spread their delays with a [`Jitter`], following the AWS Architecture
//! Blog's "Exponential Backoff And Jitter": without jitter, clients that failed together retry together.
//! Randomness comes from a [`Rng`] the retry layer passes in, so a seeded generator makes the delays
//! repeatable in tests.
//!
//! A schedule is stateful (decorrelated jitter depends on the previous delay): the retry layer clones the
//! configured schedule for every request, so state never leaks from one request to another. Every
//! computation saturates: any retry number up to `u32::MAX` gives a delay no longer than `max_delay`.
//!
//! With the `backoff` feature, [`BackoffCompat`] makes any `backoff::backoff::Backoff` a schedule.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use rampart_layers::backoff::{Backoff, Exponential, Jitter};
//! use rampart_layers::rng::SplitMix64;
//!
//! let mut schedule = Exponential::builder()
//!     .base_delay(Duration::from_millis(100))
//!     .multiplier(2.0)
//!     .max_delay(Duration::from_secs(1))
//!     .jitter(Jitter::None)
//!     .build()?;
//! let mut rng = SplitMix64::seeded(1);
//! let delays: Vec<_> = (1..=5).map(|n| schedule.next_delay(n, &mut rng).unwrap()).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
//!
//! // Bad settings are refused when built, naming the field.
//! let err = Exponential::builder().multiplier(0.0).build().unwrap_err();
//! assert_eq!(err.field(), "multiplier");
//! # Ok::<(), rampart_layers::ConfigError>(())
//! ```

use std::time::Duration;

use crate::ConfigError;
use crate::rng::Rng;

/// The longest delay a schedule can produce: `u64::MAX` nanoseconds (about 584 years).
pub(crate) const LONGEST: Duration = Duration::from_nanos(u64::MAX);

/// A backoff schedule: the delay before each retry.
///
/// The retry layer clones the configured schedule for each request and calls
/// [`next_delay`](Backoff::next_delay) once per retry, with `retry` counting from 1 (the delay before the
/// second attempt).
pub trait Backoff {
    /// The delay before retry number `retry` (1-based), or `None` when the schedule says to stop retrying.
    ///
    /// Jittered schedules draw from `rng`.
    fn next_delay(&mut self, retry: u32, rng: &mut dyn Rng) -> Option<Duration>;

    /// Forgets any state from earlier calls, as if freshly built.
    fn reset(&mut self) {}
}

impl<B: Backoff + ?Sized> Backoff for Box<B> {
    fn next_delay(&mut self, retry: u32, rng: &mut dyn Rng) -> Option<Duration> {
        (**self).next_delay(retry, rng)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

/// How a schedule randomises its delays (AWS Architecture Blog, "Exponential Backoff And Jitter").
///
/// In the table, `d` is the un-jittered delay the schedule would use for this retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Exactly `d`. Clients that failed together retry together; use only when there is one client.
    None,
    /// Uniform in `[0, d]`: the widest spread, and the blog's recommendation for most cases.
    #[default]
    Full,
    /// Uniform in `[d/2, d]`: never much shorter than the schedule, still spread.
    Equal,
    /// Uniform in `[base, 3 × previous delay]`, capped at `max_delay`, starting from `previous = base`.
    /// It ignores `d`: each delay grows from the one before rather than from the retry number.
    Decorrelated,
}

impl Jitter {
    /// Applies this jitter to the nominal delay `nominal` (already capped at `max`).
    fn apply(
        self,
        nominal: Duration,
        base: Duration,
        max: Duration,
        prev: &mut Duration,
        rng: &mut dyn Rng,
    ) -> Duration {
        let delay = match self {
            Jitter::None => nominal,
            Jitter::Full => Duration::from_nanos(rng.in_range(0, nanos(nominal))),
            Jitter::Equal => {
                let half = nanos(nominal) / 2;
                Duration::from_nanos(half + rng.in_range(0, nanos(nominal) - half))
            }
            Jitter::Decorrelated => {
                let high = nanos(*prev).saturating_mul(3).max(nanos(base));
                Duration::from_nanos(rng.in_range(nanos(base), high)).min(max)
            }
        };
        *prev = delay;
        delay
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn check_bounds(base: Duration, max: Duration) -> Result<(), ConfigError> {
    if base.is_zero() {
        return Err(ConfigError::new("base_delay", "must be greater than zero"));
    }
    if max > LONGEST {
        return Err(ConfigError::new(
            "max_delay",
            "must be at most u64::MAX nanoseconds (about 584 years)",
        ));
    }
    if max < base {
        return Err(ConfigError::new(
            "max_delay",
            "must not be less than base_delay",
        ));
    }
    Ok(())
}

/// Exponential backoff: `base × multiplier^(n-1)` before retry `n`, capped at `max_delay`, with [`Jitter`].
///
/// Build one with [`Exponential::builder`]. The default is 100 ms doubling up to 10 s with full jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct Exponential {
    base: Duration,
    multiplier: f64,
    max: Duration,
    jitter: Jitter,
    prev: Duration,
}

impl Exponential {
    /// A builder starting from the defaults (100 ms, ×2, at most 10 s, full jitter).
    pub fn builder() -> ExponentialBuilder {
        ExponentialBuilder::default()
    }

    /// The delay before the first retry.
    pub fn base_delay(&self) -> Duration {
        self.base
    }

    /// The factor between consecutive un-jittered delays.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The longest delay.
    pub fn max_delay(&self) -> Duration {
        self.max
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay before retry `retry`, capped at the maximum.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1);
        if exponent == 0 {
            return self.base;
        }
        let nanos = self.base.as_nanos() as f64 * self.multiplier.powf(f64::from(exponent));
        if !nanos.is_finite() || nanos >= self.max.as_nanos() as f64 {
            self.max
        } else {
            // `nanos` is below `max`, which fits in u64 nanoseconds; `as` truncates towards zero.
            Duration::from_nanos(nanos as u64).clamp(self.base, self.max)
        }
    }
}

impl Default for Exponential {
    fn default() -> Self {
        ExponentialBuilder::default().build_unchecked()
    }
}

impl Backoff for Exponential {
    fn next_delay(&mut self, retry: u32, rng: &mut dyn Rng) -> Option<Duration> {
        let nominal = self.nominal_delay(retry);
        Some(
            self.jitter
                .apply(nominal, self.base, self.max, &mut self.prev, rng),
        )
    }

    fn reset(&mut self) {
        self.prev = self.base;
    }
}

/// Settings for [`Exponential`]; [`build`](ExponentialBuilder::build) checks them.
#[derive(Debug, Clone)]
pub struct ExponentialBuilder {
    base: Duration,
    multiplier: f64,
    max: Duration,
    jitter: Jitter,
}

impl Default for ExponentialBuilder {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            multiplier: 2.0,
            max: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl ExponentialBuilder {
    /// The delay before the first retry. Must be greater than zero and at most `max_delay`.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The factor between consecutive delays. Must be finite and at least 1.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The longest delay. Must be at least `base_delay`.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks the settings and builds the schedule.
    pub fn build(self) -> Result<Exponential, ConfigError> {
        check_bounds(self.base, self.max)?;
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(ConfigError::new(
                "multiplier",
                "must be a finite number of at least 1",
            ));
        }
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> Exponential {
        Exponential {
            base: self.base,
            multiplier: self.multiplier,
            max: self.max,
            jitter: self.jitter,
            prev: self.base,
        }
    }
}

/// Fibonacci backoff: `base × fib(n)` before retry `n` (1, 1, 2, 3, 5, 8, ... times `base`), capped at
/// `max_delay`, with [`Jitter`]. It grows more gently than doubling.
///
/// Build one with [`Fibonacci::builder`]. The default is 100 ms steps up to 10 s with full jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fibonacci {
    base: Duration,
    max: Duration,
    jitter: Jitter,
    prev: Duration,
}

impl Fibonacci {
    /// A builder starting from the defaults (100 ms steps, at most 10 s, full jitter).
    pub fn builder() -> FibonacciBuilder {
        FibonacciBuilder::default()
    }

    /// The step: the delay before the first and second retries.
    pub fn base_delay(&self) -> Duration {
        self.base
    }

    /// The longest delay.
    pub fn max_delay(&self) -> Duration {
        self.max
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay before retry `retry`, capped at the maximum.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        let base = self.base.as_nanos();
        let max = self.max.as_nanos();
        let (mut current, mut next) = (1u128, 1u128);
        // fib grows exponentially, so this loop ends within a few dozen steps of reaching `max`.
        for _ in 1..retry.max(1) {
            if current.saturating_mul(base) >= max {
                return self.max;
            }
            (current, next) = (next, current.saturating_add(next));
        }
        let delay = current.saturating_mul(base).min(max);
        Duration::from_nanos(u64::try_from(delay).unwrap_or(u64::MAX))
    }
}

impl Default for Fibonacci {
    fn default() -> Self {
        FibonacciBuilder::default().build_unchecked()
    }
}

impl Backoff for Fibonacci {
    fn next_delay(&mut self, retry: u32, rng: &mut dyn Rng) -> Option<Duration> {
        let nominal = self.nominal_delay(retry);
        Some(
            self.jitter
                .apply(nominal, self.base, self.max, &mut self.prev, rng),
        )
    }

    fn reset(&mut self) {
        self.prev = self.base;
    }
}

/// Settings for [`Fibonacci`]; [`build`](FibonacciBuilder::build) checks them.
#[derive(Debug, Clone)]
pub struct FibonacciBuilder {
    base: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Default for FibonacciBuilder {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

impl FibonacciBuilder {
    /// The step: the delay before the first and second retries. Must be greater than zero.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The longest delay. Must be at least `base_delay`.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks the settings and builds the schedule.
    pub fn build(self) -> Result<Fibonacci, ConfigError> {
        check_bounds(self.base, self.max)?;
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> Fibonacci {
        Fibonacci {
            base: self.base,
            max: self.max,
            jitter: self.jitter,
            prev: self.base,
        }
    }
}

/// The same delay before every retry, without jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constant {
    delay: Duration,
}

impl Constant {
    /// Waits `delay` before every retry (zero retries at once).
    pub const fn new(delay: Duration) -> Self {
        Self { delay }
    }

    /// The delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

impl Backoff for Constant {
    fn next_delay(&mut self, _retry: u32, _rng: &mut dyn Rng) -> Option<Duration> {
        Some(self.delay)
    }
}

/// Any `backoff::backoff::Backoff` (from the unmaintained `backoff` crate) as a [`Backoff`] schedule.
///
/// The retry layer needs a fresh schedule for every request, so the adapter holds a way to make one: a
/// schedule it clones ([`new`](BackoffCompat::new)) or a function ([`from_fn`](BackoffCompat::from_fn), for
/// schedules that are not `Clone`). The wrapped schedule draws its own randomness and ignores the retry
/// number; when it returns `None` (its `max_elapsed_time` passed) the retry layer stops.
///
/// ```
/// use rampart_layers::backoff::{Backoff, BackoffCompat};
/// use rampart_layers::rng::SplitMix64;
/// use std::time::Duration;
///
/// let mut schedule = BackoffCompat::from_fn(|| backoff::backoff::Constant::new(Duration::from_millis(5)));
/// assert_eq!(schedule.next_delay(1, &mut SplitMix64::seeded(0)), Some(Duration::from_millis(5)));
///
/// let exponential = BackoffCompat::new(backoff::ExponentialBackoff::default());
/// # let _ = exponential;
/// ```
#[cfg(feature = "backoff")]
#[cfg_attr(docsrs, doc(cfg(feature = "backoff")))]
pub struct BackoffCompat<B> {
    make: std::sync::Arc<dyn Fn() -> B + Send + Sync>,
    current: Option<B>,
}

#[cfg(feature = "backoff")]
impl<B> BackoffCompat<B> {
    /// Adapts `schedule`; each request starts from a clone of it.
    pub fn new(schedule: B) -> Self
    where
        B: Clone + Send + Sync + 'static,
    {
        Self::from_fn(move || schedule.clone())
    }

    /// Adapts the schedules `make` builds; it is called once for each request that retries.
    pub fn from_fn<F>(make: F) -> Self
    where
        F: Fn() -> B + Send + Sync + 'static,
    {
        Self {
            make: std::sync::Arc::new(make),
            current: None,
        }
    }
}

#[cfg(feature = "backoff")]
impl<B> Clone for BackoffCompat<B> {
    /// A fresh schedule: the current state is not copied.
    fn clone(&self) -> Self {
        Self {
            make: std::sync::Arc::clone(&self.make),
            current: None,
        }
    }
}

#[cfg(feature = "backoff")]
impl<B> std::fmt::Debug for BackoffCompat<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackoffCompat")
            .field("started", &self.current.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "backoff")]
impl<B: ::backoff::backoff::Backoff> Backoff for BackoffCompat<B> {
    fn next_delay(&mut self, _retry: u32, _rng: &mut dyn Rng) -> Option<Duration> {
        let make = &self.make;
        self.current.get_or_insert_with(|| make()).next_backoff()
    }

    fn reset(&mut self) {
        self.current = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use proptest::prelude::*;

    fn exponential(base_ms: u64, multiplier: f64, max_ms: u64, jitter: Jitter) -> Exponential {
        Exponential::builder()
            .base_delay(Duration::from_millis(base_ms))
            .multiplier(multiplier)
            .max_delay(Duration::from_millis(max_ms))
            .jitter(jitter)
            .build()
            .unwrap()
    }

    #[test]
    fn exponential_without_jitter_doubles_then_caps() {
        let mut s = exponential(500, 2.0, 4_000, Jitter::None);
        let mut rng = SplitMix64::seeded(0);
        let delays: Vec<u128> = (1..=6)
            .map(|n| s.next_delay(n, &mut rng).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [500, 1_000, 2_000, 4_000, 4_000, 4_000]);
    }

    #[test]
    fn fibonacci_without_jitter_follows_the_sequence() {
        let mut s = Fibonacci::builder()
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(100))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let mut rng = SplitMix64::seeded(0);
        let delays: Vec<u128> = (1..=9)
            .map(|n| s.next_delay(n, &mut rng).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [10, 10, 20, 30, 50, 80, 100, 100, 100]);
    }

    #[test]
    fn constant_is_constant() {
        let mut s = Constant::new(Duration::from_millis(7));
        let mut rng = SplitMix64::seeded(0);
        assert_eq!(s.next_delay(1, &mut rng), Some(Duration::from_millis(7)));
        assert_eq!(
            s.next_delay(u32::MAX, &mut rng),
            Some(Duration::from_millis(7))
        );
    }

    #[test]
    fn bad_settings_name_the_field() {
        let field = |b: ExponentialBuilder| b.build().unwrap_err().field();
        assert_eq!(field(Exponential::builder().multiplier(0.0)), "multiplier");
        assert_eq!(field(Exponential::builder().multiplier(-2.0)), "multiplier");
        assert_eq!(
            field(Exponential::builder().multiplier(f64::NAN)),
            "multiplier"
        );
        assert_eq!(
            field(Exponential::builder().multiplier(f64::INFINITY)),
            "multiplier"
        );
        assert_eq!(
            field(Exponential::builder().base_delay(Duration::ZERO)),
            "base_delay"
        );
        assert_eq!(
            field(
                Exponential::builder()
                    .base_delay(Duration::from_secs(2))
                    .max_delay(Duration::from_secs(1))
            ),
            "max_delay"
        );
        assert_eq!(
            field(Exponential::builder().max_delay(Duration::MAX)),
            "max_delay"
        );
        let err = Fibonacci::builder()
            .base_delay(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "base_delay");
        assert!(err.to_string().contains("base_delay"), "{err}");
    }

    #[test]
    fn seeded_jitter_is_repeatable_and_spreads() {
        let run = |seed| {
            let mut s = exponential(100, 2.0, 10_000, Jitter::Full);
            let mut rng = SplitMix64::seeded(seed);
            (1..=8)
                .map(|n| s.next_delay(n, &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn decorrelated_resets_to_base() {
        let mut s = exponential(100, 2.0, 10_000, Jitter::Decorrelated);
        let mut rng = SplitMix64::seeded(9);
        for n in 1..20 {
            s.next_delay(n, &mut rng);
        }
        s.reset();
        let first = s.next_delay(1, &mut rng).unwrap();
        assert!(
            first >= Duration::from_millis(100) && first <= Duration::from_millis(300),
            "{first:?}"
        );
    }

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated)
        ]
    }

    fn retry_number() -> impl Strategy<Value = u32> {
        prop_oneof![1u32..64, any::<u32>(), Just(u32::MAX), Just(0u32)]
    }

    proptest! {
        #[test]
        fn exponential_delays_stay_within_jitter_bounds(
            base in 1u64..=u64::MAX / 4,
            extra in 0u64..=u64::MAX / 2,
            multiplier in 1.0f64..100.0,
            jitter in jitter(),
            seed in any::<u64>(),
            retries in proptest::collection::vec(retry_number(), 1..20),
        ) {
            let base = Duration::from_nanos(base);
            let max = Duration::from_nanos(base.as_nanos() as u64 + extra);
            let mut s = Exponential::builder().base_delay(base).multiplier(multiplier).max_delay(max)
                .jitter(jitter).build().unwrap();
            let mut rng = SplitMix64::seeded(seed);
            let mut prev = base;
            for n in retries {
                let nominal = s.nominal_delay(n);
                prop_assert!(nominal >= base && nominal <= max);
                let d = s.next_delay(n, &mut rng).unwrap();
                prop_assert!(d <= max, "{d:?} > {max:?}");
                match jitter {
                    Jitter::None => prop_assert_eq!(d, nominal),
                    Jitter::Full => prop_assert!(d <= nominal),
                    Jitter::Equal => prop_assert!(d >= nominal / 2 && d <= nominal),
                    Jitter::Decorrelated => {
                        let high = Duration::from_nanos(nanos(prev).saturating_mul(3)).min(max);
                        prop_assert!(d >= base && d <= high, "{d:?} outside [{base:?}, {high:?}]");
                    }
                }
                prev = d;
            }
        }

        #[test]
        fn fibonacci_delays_stay_within_jitter_bounds(
            base in 1u64..=u64::MAX / 4,
            extra in 0u64..=u64::MAX / 2,
            jitter in jitter(),
            seed in any::<u64>(),
            retries in proptest::collection::vec(retry_number(), 1..20),
        ) {
            let base = Duration::from_nanos(base);
            let max = Duration::from_nanos(base.as_nanos() as u64 + extra);
            let mut s = Fibonacci::builder().base_delay(base).max_delay(max).jitter(jitter).build().unwrap();
            let mut rng = SplitMix64::seeded(seed);
            let mut prev = base;
            for n in retries {
                let nominal = s.nominal_delay(n);
                prop_assert!(nominal >= base && nominal <= max);
                let d = s.next_delay(n, &mut rng).unwrap();
                prop_assert!(d <= max);
                match jitter {
                    Jitter::None => prop_assert_eq!(d, nominal),
                    Jitter::Full => prop_assert!(d <= nominal),
                    Jitter::Equal => prop_assert!(d >= nominal / 2 && d <= nominal),
                    Jitter::Decorrelated => {
                        let high = Duration::from_nanos(nanos(prev).saturating_mul(3)).min(max);
                        prop_assert!(d >= base && d <= high);
                    }
                }
                prev = d;
            }
        }

        #[test]
        fn unjittered_exponential_is_monotone(
            base in 1u64..=10_000_000_000,
            extra in 0u64..=u64::MAX / 2,
            multiplier in 1.0f64..16.0,
            n in any::<u32>(),
        ) {
            let base = Duration::from_nanos(base);
            let max = Duration::from_nanos(base.as_nanos() as u64 + extra);
            let s = Exponential::builder().base_delay(base).multiplier(multiplier).max_delay(max)
                .jitter(Jitter::None).build().unwrap();
            let n = n.min(u32::MAX - 1);
            prop_assert!(s.nominal_delay(n) <= s.nominal_delay(n + 1));
            for k in 1..40u32 {
                prop_assert!(s.nominal_delay(k) <= s.nominal_delay(k + 1));
            }
        }

        #[test]
        fn unjittered_fibonacci_is_monotone(
            base in 1u64..=10_000_000_000,
            extra in 0u64..=u64::MAX / 2,
            n in any::<u32>(),
        ) {
            let base = Duration::from_nanos(base);
            let max = Duration::from_nanos(base.as_nanos() as u64 + extra);
            let s = Fibonacci::builder().base_delay(base).max_delay(max).jitter(Jitter::None).build().unwrap();
            let n = n.min(u32::MAX - 1);
            prop_assert!(s.nominal_delay(n) <= s.nominal_delay(n + 1));
            for k in 1..100u32 {
                prop_assert!(s.nominal_delay(k) <= s.nominal_delay(k + 1));
            }
        }
    }
}
