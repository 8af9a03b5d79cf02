//! Backoff schedules: how long to wait before each retry.
//!
//! The [retry layer](crate::retry) waits out a schedule between attempts (it is re-exported there as
//! `retry::backoff`), and [recreation](crate::recreate) waits out an un-jittered [`Exponential`] between
//! failed rebuilds. This module needs no Cargo feature, so both can use it without pulling in the other.
//!
//! A schedule is anything that implements [`Backoff`]. Four come with the crate:
//!
//! | schedule | delay before retry *n* (un-jittered) | as in |
//! |---|---|---|
//! | [`Exponential`] | `base × multiplier^(n-1)`, capped at `max_delay` | Polly `Exponential` (×2), R4j `ofExponentialBackoff`, tower `ExponentialBackoff` (×2) |
//! | [`Linear`] | `base × n`, capped at `max_delay` | Polly `Linear` |
//! | [`Fibonacci`] | `base × fib(n)` (1, 1, 2, 3, 5, ...), capped at `max_delay` | |
//! | [`Constant`] | the same delay every time | Polly `Constant`, R4j `ofDefaults` |
//!
//! and [`DelayGenerator`] lets a function of yours override any schedule's delay (Polly's
//! `DelayGenerator`).
//!
//! # Numbering, caps and zero
//!
//! - Retries are numbered from 1: `next_delay(1, ..)` is the wait before the second attempt, which is
//!   how the retry layer calls it. `next_delay(0, ..)` is read as `next_delay(1, ..)` (there is no
//!   retry 0; Polly's 0-based attempt 0 is this retry 1).
//! - `max_delay` caps every delay, after jitter: no schedule ever waits longer. It may be set below
//!   `base_delay`; the cap still wins, so every un-jittered delay is then `max_delay` (a constant
//!   schedule at the cap, as Polly's `MaxDelay` does). A cap is never required: `max_delay(Duration::MAX)`
//!   means none, and every delay saturates at [`MAX_DELAY`] (`u64::MAX` nanoseconds, ~584 years), the
//!   longest wait a schedule can express.
//! - A zero `base_delay` is refused by the growing schedules (every delay would be zero, whatever the
//!   multiplier: a typo, not a schedule); [`Constant`] accepts a zero delay, which means "retry at once"
//!   (what tower's tests and Polly's `Delay = TimeSpan.Zero` do).
//!
//! # Jitter
//!
//! Schedules spread their delays with a [`Jitter`], following the AWS Architecture Blog's "Exponential
//! Backoff And Jitter" (plus Resilience4j's proportional and tower's additive forms): without jitter,
//! clients that failed together retry together. Randomness comes from a [`Rng`] the retry layer passes
//! in, so a seeded generator makes the delays repeatable in tests.
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
//! use rampart_layers::backoff::{Backoff, Exponential, Jitter, Linear};
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
//! // Resilience4j's randomised interval: uniform within ±25 % of the schedule's delay.
//! let mut linear = Linear::builder()
//!     .base_delay(Duration::from_millis(100))
//!     .jitter(Jitter::proportional(0.25))
//!     .build()?;
//! let d = linear.next_delay(2, &mut rng).unwrap();
//! assert!(d >= Duration::from_millis(150) && d <= Duration::from_millis(250));
//!
//! // Bad settings are refused when built, naming the field.
//! let err = Exponential::builder().multiplier(0.0).build().unwrap_err();
//! assert_eq!(err.field(), "multiplier");
//! let err = Linear::builder().jitter(Jitter::proportional(1.5)).build().unwrap_err();
//! assert_eq!(err.field(), "jitter");
//! # Ok::<(), rampart_layers::ConfigError>(())
//! ```

use std::time::Duration;

use crate::ConfigError;
use crate::rng::Rng;

/// The longest delay a schedule can produce: `u64::MAX` nanoseconds (about 584 years). A longer
/// `max_delay` (`Duration::MAX` included) means "no cap" and is read as this.
pub const MAX_DELAY: Duration = Duration::from_nanos(u64::MAX);

/// A backoff schedule: the delay before each retry.
///
/// The retry layer clones the configured schedule for each request and calls
/// [`next_delay`](Backoff::next_delay) once per retry, with `retry` counting from 1 (the delay before the
/// second attempt).
pub trait Backoff {
    /// The delay before retry number `retry` (1-based; 0 is read as 1), or `None` when the schedule says
    /// to stop retrying.
    ///
    /// Jittered schedules draw from `rng`.
    fn next_delay(&mut self, retry: u32, rng: &mut dyn Rng) -> Option<Duration>;

    /// Forgets any state from earlier calls, as if freshly built.
    fn reset(&mut self) {}

    /// This schedule with its delays overridden by `generate` where it returns `Some`: see
    /// [`DelayGenerator`].
    fn with_delay_generator<F>(self, generate: F) -> DelayGenerator<Self, F>
    where
        Self: Sized,
        F: Fn(u32, Duration) -> Option<Duration>,
    {
        DelayGenerator::new(self, generate)
    }
}

impl<B: Backoff + ?Sized> Backoff for Box<B> {
    fn next_delay(&mut self, retry: u32, rng: &mut dyn Rng) -> Option<Duration> {
        (**self).next_delay(retry, rng)
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

/// A factor of a [`Jitter::Proportional`] or [`Jitter::Additive`] jitter, in millionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JitterFactor {
    ppm: u32,
}

/// A factor no schedule accepts: what an out-of-range constructor argument becomes, so that `build()`
/// refuses it naming `jitter`.
const INVALID: JitterFactor = JitterFactor { ppm: u32::MAX };

impl JitterFactor {
    fn new(factor: f64, max: f64) -> Self {
        if factor.is_finite() && (0.0..=max).contains(&factor) {
            JitterFactor {
                ppm: (factor * 1_000_000.0).round() as u32,
            }
        } else {
            INVALID
        }
    }

    /// The factor.
    pub fn get(self) -> f64 {
        self.ppm as f64 / 1_000_000.0
    }

    /// `d × factor`, saturating.
    fn of(self, d: u64) -> u64 {
        u64::try_from(d as u128 * self.ppm as u128 / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// How a schedule randomises its delays (AWS Architecture Blog, "Exponential Backoff And Jitter").
///
/// In the table, `d` is the un-jittered delay the schedule would use for this retry. Every result is
/// then capped at the schedule's `max_delay`.
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
    /// Uniform in `[d(1 − f), d(1 + f)]`, `f` in `[0, 1]`: Resilience4j's randomised interval
    /// (`randomizationFactor`). Make one with [`Jitter::proportional`].
    Proportional(JitterFactor),
    /// Uniform in `[d, d(1 + f)]`, `f` in `[0, 100]`: tower's `ExponentialBackoff`, which adds up to
    /// `jitter × d` to each delay. Make one with [`Jitter::additive`].
    Additive(JitterFactor),
}

impl Jitter {
    /// Resilience4j's proportional jitter: uniform within `factor × d` either side of `d`. `factor` must
    /// be in `[0, 1]`; another value makes the schedule's `build()` fail on `jitter`.
    pub fn proportional(factor: f64) -> Self {
        Jitter::Proportional(JitterFactor::new(factor, 1.0))
    }

    /// tower's additive jitter: `d` plus up to `factor × d`. `factor` must be in `[0, 100]`, as tower
    /// requires; another value makes the schedule's `build()` fail on `jitter`.
    pub fn additive(factor: f64) -> Self {
        Jitter::Additive(JitterFactor::new(factor, 100.0))
    }

    fn check(self) -> Result<(), ConfigError> {
        match self {
            Jitter::Proportional(INVALID) => Err(ConfigError::new(
                "jitter",
                "a proportional factor must be in [0, 1]",
            )),
            Jitter::Additive(INVALID) => Err(ConfigError::new(
                "jitter",
                "an additive factor must be in [0, 100]",
            )),
            _ => Ok(()),
        }
    }

    /// Applies this jitter to the nominal delay `nominal` (already capped at `max`).
    fn apply(
        self,
        nominal: Duration,
        base: Duration,
        max: Duration,
        prev: &mut Duration,
        rng: &mut dyn Rng,
    ) -> Duration {
        let d = nanos(nominal);
        let delay = match self {
            Jitter::None => nominal,
            Jitter::Full => Duration::from_nanos(rng.in_range(0, d)),
            Jitter::Equal => {
                let half = d / 2;
                Duration::from_nanos(half + rng.in_range(0, d - half))
            }
            Jitter::Decorrelated => {
                let high = nanos(*prev).saturating_mul(3).max(nanos(base));
                Duration::from_nanos(rng.in_range(nanos(base), high))
            }
            Jitter::Proportional(f) => {
                let delta = f.of(d);
                Duration::from_nanos(rng.in_range(d.saturating_sub(delta), d.saturating_add(delta)))
            }
            Jitter::Additive(f) => Duration::from_nanos(rng.in_range(d, d.saturating_add(f.of(d)))),
        }
        .min(max);
        *prev = delay;
        delay
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX`.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Checks what every growing schedule shares. A cap below the base is allowed (it wins), and any cap
/// above [`MAX_DELAY`] is read as it.
fn check_growing(base: Duration, jitter: Jitter) -> Result<(), ConfigError> {
    if base.is_zero() {
        return Err(ConfigError::new("base_delay", "must be greater than zero"));
    }
    jitter.check()
}

/// Exponential backoff: `base × multiplier^(n-1)` before retry `n`, capped at `max_delay`, with [`Jitter`].
///
/// Build one with [`Exponential::builder`]. The default is 100 ms doubling up to 10 s with full jitter;
/// `max_delay(Duration::MAX)` removes the cap.
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

    /// The longest delay ([`MAX_DELAY`] when uncapped).
    pub fn max_delay(&self) -> Duration {
        self.max
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay before retry `retry` (0 is read as 1), capped at the maximum.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1);
        if exponent == 0 {
            return self.base.min(self.max);
        }
        let nanos = self.base.as_nanos() as f64 * self.multiplier.powf(f64::from(exponent));
        if !nanos.is_finite() || nanos >= self.max.as_nanos() as f64 {
            self.max
        } else {
            // `nanos` is below `max`, which fits in u64 nanoseconds; `as` truncates towards zero.
            Duration::from_nanos(nanos as u64)
                .max(self.base)
                .min(self.max)
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
    /// The delay before the first retry. Must be greater than zero.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The factor between consecutive delays. Must be finite and at least 1.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// The longest delay (default 10 s). Any value is accepted: below `base_delay` it makes every
    /// un-jittered delay the cap, and `Duration::MAX` (anything above [`MAX_DELAY`]) means no cap.
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
        check_growing(self.base, self.jitter)?;
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
            base: self.base.min(MAX_DELAY),
            multiplier: self.multiplier,
            max: self.max.min(MAX_DELAY),
            jitter: self.jitter,
            prev: self.base.min(MAX_DELAY),
        }
    }
}

/// Linear backoff: `base × n` before retry `n` (Polly's `Linear`), capped at `max_delay`, with [`Jitter`].
///
/// Build one with [`Linear::builder`]. The default is 100 ms steps, uncapped, with full jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linear {
    base: Duration,
    max: Duration,
    jitter: Jitter,
    prev: Duration,
}

impl Linear {
    /// A builder starting from the defaults (100 ms steps, no cap, full jitter).
    pub fn builder() -> LinearBuilder {
        LinearBuilder::default()
    }

    /// The step: the delay before the first retry, added again before each later one.
    pub fn base_delay(&self) -> Duration {
        self.base
    }

    /// The longest delay ([`MAX_DELAY`] when uncapped).
    pub fn max_delay(&self) -> Duration {
        self.max
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay before retry `retry` (0 is read as 1), capped at the maximum.
    pub fn nominal_delay(&self, retry: u32) -> Duration {
        let delay = self.base.as_nanos() * u128::from(retry.max(1));
        Duration::from_nanos(u64::try_from(delay).unwrap_or(u64::MAX)).min(self.max)
    }
}

impl Default for Linear {
    fn default() -> Self {
        LinearBuilder::default().build_unchecked()
    }
}

impl Backoff for Linear {
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

/// Settings for [`Linear`]; [`build`](LinearBuilder::build) checks them.
#[derive(Debug, Clone)]
pub struct LinearBuilder {
    base: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Default for LinearBuilder {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: MAX_DELAY,
            jitter: Jitter::Full,
        }
    }
}

impl LinearBuilder {
    /// The step. Must be greater than zero.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The longest delay (default: none). Below `base_delay` it makes every un-jittered delay the cap.
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
    pub fn build(self) -> Result<Linear, ConfigError> {
        check_growing(self.base, self.jitter)?;
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> Linear {
        Linear {
            base: self.base.min(MAX_DELAY),
            max: self.max.min(MAX_DELAY),
            jitter: self.jitter,
            prev: self.base.min(MAX_DELAY),
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

    /// The un-jittered delay before retry `retry` (0 is read as 1), capped at the maximum.
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

    /// The longest delay (default 10 s). Below `base_delay` it makes every un-jittered delay the cap;
    /// `Duration::MAX` means no cap.
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
        check_growing(self.base, self.jitter)?;
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> Fibonacci {
        Fibonacci {
            base: self.base.min(MAX_DELAY),
            max: self.max.min(MAX_DELAY),
            jitter: self.jitter,
            prev: self.base.min(MAX_DELAY),
        }
    }
}

/// The same delay before every retry, with an optional [`Jitter`] (none by default).
///
/// [`Constant::new`] takes any delay, zero included ("retry at once"); there is nothing in it to
/// refuse. [`Constant::builder`] adds a jitter, and its `build()` checks the jitter's factor. With
/// jitter, the base of [`Jitter::Decorrelated`] is the delay, and nothing caps it but [`MAX_DELAY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Constant {
    delay: Duration,
    jitter: Jitter,
    prev: Duration,
}

impl Constant {
    /// Waits `delay` before every retry (zero retries at once; above [`MAX_DELAY`] it is read as it).
    pub const fn new(delay: Duration) -> Self {
        let delay = if delay.as_secs() > MAX_DELAY.as_secs()
            || (delay.as_secs() == MAX_DELAY.as_secs()
                && delay.subsec_nanos() > MAX_DELAY.subsec_nanos())
        {
            MAX_DELAY
        } else {
            delay
        };
        Self {
            delay,
            jitter: Jitter::None,
            prev: delay,
        }
    }

    /// A builder: a delay (default zero) and a jitter (default none).
    pub fn builder() -> ConstantBuilder {
        ConstantBuilder {
            delay: Duration::ZERO,
            jitter: Jitter::None,
        }
    }

    /// The delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The jitter.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }
}

impl Backoff for Constant {
    fn next_delay(&mut self, _retry: u32, rng: &mut dyn Rng) -> Option<Duration> {
        if self.jitter == Jitter::None {
            return Some(self.delay);
        }
        Some(
            self.jitter
                .apply(self.delay, self.delay, MAX_DELAY, &mut self.prev, rng),
        )
    }

    fn reset(&mut self) {
        self.prev = self.delay;
    }
}

/// Settings for [`Constant`]; [`build`](ConstantBuilder::build) checks them.
#[derive(Debug, Clone)]
pub struct ConstantBuilder {
    delay: Duration,
    jitter: Jitter,
}

impl ConstantBuilder {
    /// The delay before every retry (zero: at once).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// How delays are randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks the jitter and builds the schedule.
    pub fn build(self) -> Result<Constant, ConfigError> {
        self.jitter.check()?;
        Ok(Constant {
            jitter: self.jitter,
            ..Constant::new(self.delay)
        })
    }
}

/// A schedule whose delays a function may override: Polly's `DelayGenerator`, over any [`Backoff`].
///
/// Before each retry the schedule computes its delay as usual (jitter and its state included), then
/// `generate(retry, scheduled)` is asked: `Some(d)` waits `d` instead (not capped by the schedule's
/// `max_delay`: the function decides; at most [`MAX_DELAY`]), `None` keeps the scheduled delay (Polly's
/// `null`). When the schedule itself says stop, the function is not asked. It sees the retry number and
/// the schedule's choice, not the error: a schedule does not see outcomes.
///
/// ```
/// use std::time::Duration;
/// use rampart_layers::backoff::{Backoff, Constant};
/// use rampart_layers::rng::SplitMix64;
///
/// // Wait a fixed 5 s before the third attempt, the schedule's delay otherwise.
/// let mut schedule = Constant::new(Duration::from_millis(100))
///     .with_delay_generator(|retry, _scheduled| (retry == 2).then(|| Duration::from_secs(5)));
/// let mut rng = SplitMix64::seeded(0);
/// assert_eq!(schedule.next_delay(1, &mut rng), Some(Duration::from_millis(100)));
/// assert_eq!(schedule.next_delay(2, &mut rng), Some(Duration::from_secs(5)));
/// ```
#[derive(Clone)]
pub struct DelayGenerator<B, F> {
    schedule: B,
    generate: F,
}

impl<B, F> DelayGenerator<B, F> {
    /// `schedule`, with its delays overridden by `generate` where it returns `Some`.
    pub fn new(schedule: B, generate: F) -> Self {
        Self { schedule, generate }
    }

    /// The schedule underneath.
    pub fn schedule(&self) -> &B {
        &self.schedule
    }
}

impl<B: std::fmt::Debug, F> std::fmt::Debug for DelayGenerator<B, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayGenerator")
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

impl<B, F> Backoff for DelayGenerator<B, F>
where
    B: Backoff,
    F: Fn(u32, Duration) -> Option<Duration>,
{
    fn next_delay(&mut self, retry: u32, rng: &mut dyn Rng) -> Option<Duration> {
        let scheduled = self.schedule.next_delay(retry, rng)?;
        Some(
            (self.generate)(retry.max(1), scheduled)
                .unwrap_or(scheduled)
                .min(MAX_DELAY),
        )
    }

    fn reset(&mut self) {
        self.schedule.reset();
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
            field(Exponential::builder().jitter(Jitter::proportional(-0.1))),
            "jitter"
        );
        assert_eq!(
            field(Exponential::builder().jitter(Jitter::additive(101.0))),
            "jitter"
        );
        assert_eq!(
            Constant::builder()
                .jitter(Jitter::proportional(f64::NAN))
                .build()
                .unwrap_err()
                .field(),
            "jitter"
        );
        assert_eq!(
            Linear::builder()
                .base_delay(Duration::ZERO)
                .build()
                .unwrap_err()
                .field(),
            "base_delay"
        );
        let err = Fibonacci::builder()
            .base_delay(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "base_delay");
        assert!(err.to_string().contains("base_delay"), "{err}");
    }

    #[test]
    fn no_cap_is_needed_and_duration_max_is_none() {
        let mut s = Exponential::builder()
            .base_delay(Duration::from_secs(1))
            .max_delay(Duration::MAX)
            .jitter(Jitter::None)
            .build()
            .expect("Duration::MAX means no cap");
        assert_eq!(s.max_delay(), MAX_DELAY);
        let mut rng = SplitMix64::seeded(0);
        assert_eq!(
            s.next_delay(20, &mut rng),
            Some(Duration::from_secs(1 << 19))
        );
        assert_eq!(s.next_delay(u32::MAX, &mut rng), Some(MAX_DELAY));
        assert_eq!(Linear::default().max_delay(), MAX_DELAY);
    }

    #[test]
    fn a_cap_below_the_base_wins() {
        let mut rng = SplitMix64::seeded(0);
        let mut e =
            exponential_capped(Duration::from_secs(2), Duration::from_secs(1), Jitter::None);
        let mut f = Fibonacci::builder()
            .base_delay(Duration::from_secs(2))
            .max_delay(Duration::from_secs(1))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        for n in [1, 2, 7, u32::MAX] {
            assert_eq!(e.next_delay(n, &mut rng), Some(Duration::from_secs(1)));
            assert_eq!(f.next_delay(n, &mut rng), Some(Duration::from_secs(1)));
        }
        let mut d = exponential_capped(
            Duration::from_secs(2),
            Duration::from_secs(1),
            Jitter::Decorrelated,
        );
        assert!((1..50).all(|n| d.next_delay(n, &mut rng) == Some(Duration::from_secs(1))));
    }

    fn exponential_capped(base: Duration, max: Duration, jitter: Jitter) -> Exponential {
        Exponential::builder()
            .base_delay(base)
            .max_delay(max)
            .jitter(jitter)
            .build()
            .unwrap()
    }

    #[test]
    fn retry_zero_is_retry_one() {
        let mut rng = SplitMix64::seeded(0);
        let e = Exponential::default();
        assert_eq!(e.nominal_delay(0), e.nominal_delay(1));
        let l = Linear::default();
        assert_eq!(l.nominal_delay(0), l.nominal_delay(1));
        let f = Fibonacci::default();
        assert_eq!(f.nominal_delay(0), f.nominal_delay(1));
        let mut g = Constant::new(Duration::from_millis(1)).with_delay_generator(|retry, _| {
            assert_eq!(retry, 1, "the generator sees retry 0 as 1");
            None
        });
        assert_eq!(g.next_delay(0, &mut rng), Some(Duration::from_millis(1)));
    }

    #[test]
    fn linear_adds_the_base_each_retry() {
        let mut s = Linear::builder()
            .base_delay(Duration::from_millis(200))
            .max_delay(Duration::from_millis(700))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let mut rng = SplitMix64::seeded(0);
        let delays: Vec<u128> = (1..=5)
            .map(|n| s.next_delay(n, &mut rng).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [200, 400, 600, 700, 700]);
    }

    #[test]
    fn constant_may_be_jittered_and_zero() {
        let mut rng = SplitMix64::seeded(4);
        let mut zero = Constant::builder().build().unwrap();
        assert_eq!(zero.next_delay(3, &mut rng), Some(Duration::ZERO));
        let mut spread = Constant::builder()
            .delay(Duration::from_millis(100))
            .jitter(Jitter::proportional(0.5))
            .build()
            .unwrap();
        let delays: Vec<_> = (1..200)
            .map(|n| spread.next_delay(n, &mut rng).unwrap())
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(50) && *d <= Duration::from_millis(150))
        );
        assert!(
            delays.iter().any(|d| *d < Duration::from_millis(100)),
            "spreads below"
        );
        assert!(
            delays.iter().any(|d| *d > Duration::from_millis(100)),
            "and above"
        );
        assert_eq!(Constant::new(Duration::MAX).delay(), MAX_DELAY);
    }

    #[test]
    fn a_delay_generator_overrides_where_it_answers() {
        let mut rng = SplitMix64::seeded(0);
        let schedule = exponential(100, 2.0, 1_000, Jitter::None);
        let mut g = schedule.with_delay_generator(|retry, scheduled| match retry {
            2 => Some(Duration::from_secs(30)), // past the schedule's cap: the generator decides
            3 => Some(scheduled * 3),
            _ => None,
        });
        let delays: Vec<u128> = (1..=4)
            .map(|n| g.next_delay(n, &mut rng).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [100, 30_000, 1_200, 800]);
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
            Just(Jitter::Decorrelated),
            (0.0f64..=1.0).prop_map(Jitter::proportional),
            (0.0f64..=100.0).prop_map(Jitter::additive),
        ]
    }

    /// The bounds each jitter promises around the nominal delay `d`, before the cap.
    fn bounds(jitter: Jitter, d: Duration) -> (Duration, Duration) {
        let d = nanos(d);
        let (low, high) = match jitter {
            Jitter::None => (d, d),
            Jitter::Full => (0, d),
            Jitter::Equal => (d / 2, d),
            Jitter::Proportional(f) => (d.saturating_sub(f.of(d)), d.saturating_add(f.of(d))),
            Jitter::Additive(f) => (d, d.saturating_add(f.of(d))),
            _ => unreachable!("decorrelated is checked on its own"),
        };
        (Duration::from_nanos(low), Duration::from_nanos(high))
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
                if jitter == Jitter::Decorrelated {
                    let high = Duration::from_nanos(nanos(prev).saturating_mul(3)).min(max);
                    prop_assert!(d >= base && d <= high, "{d:?} outside [{base:?}, {high:?}]");
                } else {
                    let (low, high) = bounds(jitter, nominal);
                    prop_assert!(d >= low.min(max) && d <= high.min(max), "{d:?} outside [{low:?}, {high:?}]");
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
                if jitter == Jitter::Decorrelated {
                    let high = Duration::from_nanos(nanos(prev).saturating_mul(3)).min(max);
                    prop_assert!(d >= base && d <= high);
                } else {
                    let (low, high) = bounds(jitter, nominal);
                    prop_assert!(d >= low.min(max) && d <= high.min(max));
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
        fn linear_delays_stay_within_jitter_bounds_and_the_cap(
            base in 1u64..=u64::MAX / 4,
            max in any::<u64>(),
            jitter in jitter(),
            seed in any::<u64>(),
            retries in proptest::collection::vec(retry_number(), 1..20),
        ) {
            let (base, max) = (Duration::from_nanos(base), Duration::from_nanos(max));
            let mut s = Linear::builder().base_delay(base).max_delay(max).jitter(jitter).build().unwrap();
            let mut rng = SplitMix64::seeded(seed);
            let mut prev = base;
            for n in retries {
                let nominal = s.nominal_delay(n);
                prop_assert!(nominal >= base.min(max) && nominal <= max);
                prop_assert!(s.nominal_delay(n.saturating_add(1)) >= nominal);
                let d = s.next_delay(n, &mut rng).unwrap();
                prop_assert!(d <= max);
                if jitter == Jitter::Decorrelated {
                    let high = Duration::from_nanos(nanos(prev).saturating_mul(3)).min(max);
                    prop_assert!(d >= base.min(max) && d <= high.max(base.min(max)));
                } else {
                    let (low, high) = bounds(jitter, nominal);
                    prop_assert!(d >= low.min(max) && d <= high.min(max));
                }
                prev = d;
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
