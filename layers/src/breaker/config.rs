//! Breaker settings and their defaults.

use std::sync::Arc;
use std::time::Duration;

use crate::ConfigError;

/// How the closed state remembers recent calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `n` calls (Resilience4j's `COUNT_BASED`). The minimum number of calls is capped at `n`.
    Count(u32),
    /// The calls that finished in the last `size`, kept in `buckets` equal buckets (Resilience4j's
    /// `TIME_BASED` uses one-second buckets). An outcome leaves the window when its bucket is `buckets`
    /// buckets old: with `size` 60 s in 60 buckets, a call that finished at 12.3 s counts until the clock
    /// reaches 72 s.
    Time {
        /// The length of the window.
        size: Duration,
        /// How many buckets the window is divided into.
        buckets: u32,
    },
}

impl SlidingWindow {
    /// A time window with one-second buckets, like Resilience4j's (one bucket if `size` is under a second).
    pub fn time(size: Duration) -> Self {
        let buckets = size.as_secs().clamp(1, u32::MAX as u64) as u32;
        SlidingWindow::Time { size, buckets }
    }
}

/// Settings of a [`CircuitBreaker`](super::CircuitBreaker), validated by [`BreakerConfigBuilder::build`].
///
/// The defaults, chosen for a database and compared with the two libraries most people know:
///
/// | setting | rampart | Resilience4j | Polly v8 | why |
/// |---|---|---|---|---|
/// | failure rate threshold | 50 % | 50 % | 10 % | a database that fails one query in ten is degraded, not down; opening would turn 10 % errors into 100 % |
/// | sliding window | last 100 calls | last 100 calls | 30 s | |
/// | minimum calls | 20 | 100 | 100 | at a few queries per second, 100 calls is half a minute of failures before the breaker acts |
/// | wait in open state | 10 s, doubling per consecutive opening, capped at 60 s (or at `wait_in_open` if that is longer) | 60 s, constant | 5 s, constant | a Postgres restart or failover takes seconds to tens of seconds: probe early, back off if it is still down |
/// | probes in half-open | 5 | 10 | 1 | one probe decides on luck; five decide on a rate |
/// | slow call | slower than 5 s | slower than 60 s | (none) | |
/// | slow-call rate threshold | 100 % | 100 % | (none) | every call in the window slow means the server is in trouble |
///
/// Where the semantics differ, the [module docs](super#boundaries) say which this breaker follows and why.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub(crate) name: Arc<str>,
    pub(crate) failure_rate_ppm: u64,
    pub(crate) slow_call_rate_ppm: u64,
    pub(crate) slow_call_duration: Duration,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) wait_in_open: Duration,
    pub(crate) wait_multiplier: f64,
    /// `None`: the default cap, 60 s or `wait_in_open` if that is longer.
    pub(crate) max_wait_in_open: Option<Duration>,
    pub(crate) half_open_calls: u32,
    pub(crate) max_wait_in_half_open: Option<Duration>,
    pub(crate) automatic_transition: bool,
}

/// The cap on the growing open wait when none is set.
const DEFAULT_MAX_WAIT_IN_OPEN: Duration = Duration::from_secs(60);

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            name: Arc::from("default"),
            failure_rate_ppm: 500_000,
            slow_call_rate_ppm: 1_000_000,
            slow_call_duration: Duration::from_secs(5),
            window: SlidingWindow::Count(100),
            minimum_calls: 20,
            wait_in_open: Duration::from_secs(10),
            wait_multiplier: 2.0,
            max_wait_in_open: None,
            half_open_calls: 5,
            max_wait_in_half_open: None,
            automatic_transition: false,
        }
    }
}

impl BreakerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder {
            config: Self::default(),
        }
    }

    /// The name used in events and metric labels.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Open when at least this share of the calls in the window failed.
    pub fn failure_rate(&self) -> f64 {
        self.failure_rate_ppm as f64 / 1_000_000.0
    }

    /// Open when at least this share of the calls in the window were slow.
    pub fn slow_call_rate(&self) -> f64 {
        self.slow_call_rate_ppm as f64 / 1_000_000.0
    }

    /// A call that takes strictly longer than this is slow.
    pub fn slow_call_duration(&self) -> Duration {
        self.slow_call_duration
    }

    /// The sliding window of the closed state.
    pub fn sliding_window(&self) -> SlidingWindow {
        self.window
    }

    /// The minimum number of calls as set (see [`effective_minimum_calls`](Self::effective_minimum_calls)).
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// The wait after the first opening.
    pub fn wait_in_open(&self) -> Duration {
        self.wait_in_open
    }

    /// The factor the wait grows by on each consecutive opening.
    pub fn wait_multiplier(&self) -> f64 {
        self.wait_multiplier
    }

    /// The cap on the growing wait: as set, or by default 60 s, or `wait_in_open` if that is longer.
    pub fn max_wait_in_open(&self) -> Duration {
        self.max_wait_in_open
            .unwrap_or(DEFAULT_MAX_WAIT_IN_OPEN.max(self.wait_in_open))
    }

    /// How many probes the half-open state lets through and decides from.
    pub fn half_open_calls(&self) -> u32 {
        self.half_open_calls
    }

    /// How long the half-open state waits for its probes to decide before opening again (`None`: as
    /// long as they take).
    pub fn max_wait_in_half_open(&self) -> Option<Duration> {
        self.max_wait_in_half_open
    }

    /// Whether a timer moves the breaker out of open (and out of half-open, with
    /// [`max_wait_in_half_open`](Self::max_wait_in_half_open)) when the wait is over, instead of the
    /// next call.
    pub fn automatic_transition(&self) -> bool {
        self.automatic_transition
    }

    /// The minimum number of calls in the window before the rates are compared with the thresholds,
    /// after capping at a count window's size as Resilience4j does.
    pub fn effective_minimum_calls(&self) -> u32 {
        match self.window {
            SlidingWindow::Count(n) => self.minimum_calls.min(n),
            SlidingWindow::Time { .. } => self.minimum_calls,
        }
    }

    /// How long the breaker stays open after its `openings`-th consecutive opening (1-based).
    pub(crate) fn wait_after(&self, openings: u32) -> Duration {
        let exp = openings.saturating_sub(1).min(64) as i32;
        let secs = self.wait_in_open.as_secs_f64() * self.wait_multiplier.powi(exp);
        let max = self.max_wait_in_open();
        if !secs.is_finite() || secs >= max.as_secs_f64() {
            max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// Builds a [`BreakerConfig`]; every setting starts at its default.
#[derive(Debug, Clone)]
pub struct BreakerConfigBuilder {
    config: BreakerConfig,
}

fn ratio_to_ppm(ratio: f64) -> u64 {
    if ratio.is_finite() && ratio > 0.0 && ratio <= 1.0 {
        (ratio * 1_000_000.0).round() as u64
    } else {
        0
    }
}

impl BreakerConfigBuilder {
    /// The name used in events and metric labels (default `"default"`); name one breaker per backend.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Open when at least this share of the calls in the window failed, in `(0, 1]` (default 0.5).
    pub fn failure_rate(mut self, ratio: f64) -> Self {
        self.config.failure_rate_ppm = ratio_to_ppm(ratio);
        self
    }

    /// Open when at least this share of the calls in the window were slow, in `(0, 1]` (default 1.0).
    pub fn slow_call_rate(mut self, ratio: f64) -> Self {
        self.config.slow_call_rate_ppm = ratio_to_ppm(ratio);
        self
    }

    /// A call that takes longer than this (strictly) is slow, whether it succeeded or failed (default 5 s).
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.config.slow_call_duration = duration;
        self
    }

    /// The sliding window of the closed state (default: the last 100 calls).
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.window = window;
        self
    }

    /// The number of calls the window must hold before the breaker may open (default 20).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// How long the breaker stays open before letting probes through (default 10 s). Alone, any wait
    /// builds: the default cap on the growing wait is 60 s or this, whichever is longer.
    pub fn wait_in_open(mut self, wait: Duration) -> Self {
        self.config.wait_in_open = wait;
        self
    }

    /// Multiply the wait by this on each consecutive opening (one that follows a failed half-open
    /// trial), up to [`max_wait_in_open`](Self::max_wait_in_open). `1.0` keeps it constant (default 2.0).
    pub fn wait_multiplier(mut self, multiplier: f64) -> Self {
        self.config.wait_multiplier = multiplier;
        self
    }

    /// The cap on the growing wait (default 60 s, or `wait_in_open` if that is longer). Set, it must
    /// not be shorter than `wait_in_open`.
    pub fn max_wait_in_open(mut self, max: Duration) -> Self {
        self.config.max_wait_in_open = Some(max);
        self
    }

    /// Open again if the half-open probes have not decided within this long (Resilience4j's
    /// `maxWaitDurationInHalfOpenState`; default: no limit). Without it, a probe that never finishes keeps
    /// the breaker half-open, rejecting every other call. Greater than zero.
    pub fn max_wait_in_half_open(mut self, max: Duration) -> Self {
        self.config.max_wait_in_half_open = Some(max);
        self
    }

    /// Move from open to half-open on a timer when the wait is over (and from half-open to open when
    /// [`max_wait_in_half_open`](Self::max_wait_in_half_open) passes), as Resilience4j's
    /// `automaticTransitionFromOpenToHalfOpenEnabled` does, instead of on the next call (default
    /// `false`). The timer is a task spawned on the tokio runtime current when the breaker opens, holding
    /// only a weak reference to the breaker; outside a runtime the transition stays on the next call.
    /// Either way a call is admitted or rejected by the same rule: the timer only makes the state (as
    /// the handle and the metrics read it) follow the clock without traffic.
    pub fn automatic_transition(mut self, enabled: bool) -> Self {
        self.config.automatic_transition = enabled;
        self
    }

    /// How many probe calls the half-open state lets through and decides from (default 5).
    pub fn half_open_calls(mut self, calls: u32) -> Self {
        self.config.half_open_calls = calls;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<BreakerConfig, ConfigError> {
        let c = self.config;
        if c.failure_rate_ppm == 0 {
            return Err(ConfigError::new("failure_rate", "must be in (0, 1]"));
        }
        if c.slow_call_rate_ppm == 0 {
            return Err(ConfigError::new("slow_call_rate", "must be in (0, 1]"));
        }
        if c.slow_call_duration.is_zero() {
            return Err(ConfigError::new(
                "slow_call_duration",
                "must be greater than zero",
            ));
        }
        match c.window {
            SlidingWindow::Count(0) => {
                return Err(ConfigError::new(
                    "sliding_window",
                    "a count window needs at least one call",
                ));
            }
            SlidingWindow::Count(n) if n > 1_000_000 => {
                return Err(ConfigError::new(
                    "sliding_window",
                    "a count window holds at most 1,000,000 calls",
                ));
            }
            SlidingWindow::Time { size, buckets } => {
                if buckets == 0 || buckets > 10_000 {
                    return Err(ConfigError::new(
                        "sliding_window",
                        "a time window needs 1 to 10,000 buckets",
                    ));
                }
                if size.as_nanos() < buckets as u128 {
                    return Err(ConfigError::new(
                        "sliding_window",
                        "a time window's buckets must be at least 1 ns",
                    ));
                }
            }
            SlidingWindow::Count(_) => {}
        }
        if c.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        if c.wait_in_open.is_zero() {
            return Err(ConfigError::new(
                "wait_in_open",
                "must be greater than zero",
            ));
        }
        if !(c.wait_multiplier.is_finite() && c.wait_multiplier >= 1.0) {
            return Err(ConfigError::new(
                "wait_multiplier",
                "must be a finite number >= 1.0",
            ));
        }
        if c.max_wait_in_open.is_some_and(|max| max < c.wait_in_open) {
            return Err(ConfigError::new(
                "max_wait_in_open",
                "must not be shorter than wait_in_open",
            ));
        }
        if c.half_open_calls == 0 {
            return Err(ConfigError::new("half_open_calls", "must be at least 1"));
        }
        if c.max_wait_in_half_open.is_some_and(|max| max.is_zero()) {
            return Err(ConfigError::new(
                "max_wait_in_half_open",
                "must be greater than zero",
            ));
        }
        Ok(c)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_field() {
        let cases: Vec<(BreakerConfigBuilder, &str)> = vec![
            (BreakerConfig::builder().failure_rate(0.0), "failure_rate"),
            (BreakerConfig::builder().failure_rate(1.5), "failure_rate"),
            (
                BreakerConfig::builder().slow_call_rate(f64::NAN),
                "slow_call_rate",
            ),
            (
                BreakerConfig::builder().slow_call_duration(Duration::ZERO),
                "slow_call_duration",
            ),
            (
                BreakerConfig::builder().sliding_window(SlidingWindow::Count(0)),
                "sliding_window",
            ),
            (BreakerConfig::builder().minimum_calls(0), "minimum_calls"),
            (
                BreakerConfig::builder().wait_in_open(Duration::ZERO),
                "wait_in_open",
            ),
            (
                BreakerConfig::builder().wait_multiplier(0.5),
                "wait_multiplier",
            ),
            (
                BreakerConfig::builder().max_wait_in_open(Duration::from_secs(1)),
                "max_wait_in_open",
            ),
            (
                BreakerConfig::builder().half_open_calls(0),
                "half_open_calls",
            ),
            (
                BreakerConfig::builder().max_wait_in_half_open(Duration::ZERO),
                "max_wait_in_half_open",
            ),
            (
                BreakerConfig::builder()
                    .wait_in_open(Duration::from_secs(90))
                    .max_wait_in_open(Duration::from_secs(60)),
                "max_wait_in_open",
            ),
        ];
        for (builder, field) in cases {
            assert_eq!(builder.build().unwrap_err().field(), field);
        }
        assert!(BreakerConfig::builder().build().is_ok());
    }

    #[test]
    fn wait_grows_and_is_capped() {
        let c = BreakerConfig::default();
        assert_eq!(c.wait_after(1), Duration::from_secs(10));
        assert_eq!(c.wait_after(2), Duration::from_secs(20));
        assert_eq!(c.wait_after(3), Duration::from_secs(40));
        assert_eq!(c.wait_after(4), Duration::from_secs(60));
        assert_eq!(c.wait_after(400), Duration::from_secs(60));
    }

    #[test]
    fn a_lone_long_wait_builds_and_caps_itself() {
        let c = BreakerConfig::builder()
            .wait_in_open(Duration::from_secs(90))
            .build()
            .expect("a lone wait_in_open above the default cap builds");
        assert_eq!(c.max_wait_in_open(), Duration::from_secs(90));
        assert_eq!(c.wait_after(1), Duration::from_secs(90));
        assert_eq!(c.wait_after(2), Duration::from_secs(90));
        let short = BreakerConfig::builder()
            .wait_in_open(Duration::from_secs(5))
            .build()
            .unwrap();
        assert_eq!(short.max_wait_in_open(), Duration::from_secs(60));
    }

    #[test]
    fn getters_read_back_what_was_set() {
        let c = BreakerConfig::builder()
            .failure_rate(0.25)
            .slow_call_rate(0.75)
            .slow_call_duration(Duration::from_millis(300))
            .sliding_window(SlidingWindow::Count(8))
            .minimum_calls(12)
            .wait_in_open(Duration::from_secs(3))
            .wait_multiplier(1.5)
            .max_wait_in_open(Duration::from_secs(30))
            .half_open_calls(2)
            .max_wait_in_half_open(Duration::from_secs(7))
            .automatic_transition(true)
            .build()
            .unwrap();
        assert_eq!(c.failure_rate(), 0.25);
        assert_eq!(c.slow_call_rate(), 0.75);
        assert_eq!(c.slow_call_duration(), Duration::from_millis(300));
        assert_eq!(c.sliding_window(), SlidingWindow::Count(8));
        assert_eq!((c.minimum_calls(), c.effective_minimum_calls()), (12, 8));
        assert_eq!(c.wait_in_open(), Duration::from_secs(3));
        assert_eq!(c.wait_multiplier(), 1.5);
        assert_eq!(c.max_wait_in_open(), Duration::from_secs(30));
        assert_eq!(c.half_open_calls(), 2);
        assert_eq!(c.max_wait_in_half_open(), Some(Duration::from_secs(7)));
        assert!(c.automatic_transition());
    }

    #[test]
    fn minimum_calls_is_capped_by_a_count_window() {
        let c = BreakerConfig::builder()
            .sliding_window(SlidingWindow::Count(5))
            .minimum_calls(50)
            .build()
            .unwrap();
        assert_eq!(c.effective_minimum_calls(), 5);
    }
}
