//! What to inject, how often and when.

use std::time::Duration;

use crate::ConfigError;

/// Settings of [`Chaos`](super::Chaos), validated by [`ChaosConfigBuilder::build`]. Nothing is injected
/// by default: each fault has to be asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosConfig {
    pub(crate) error_rate: f64,
    pub(crate) timeout_rate: f64,
    pub(crate) latency_rate: f64,
    pub(crate) latency: (Duration, Duration),
    pub(crate) hang_for: Duration,
    pub(crate) seed: Option<u64>,
    pub(crate) schedule: Vec<(Duration, Duration)>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            timeout_rate: 0.0,
            latency_rate: 0.0,
            latency: (Duration::ZERO, Duration::ZERO),
            hang_for: Duration::from_secs(30),
            seed: None,
            schedule: Vec::new(),
        }
    }
}

impl ChaosConfig {
    /// A builder that injects nothing until told to.
    pub fn builder() -> ChaosConfigBuilder {
        ChaosConfigBuilder {
            config: Self::default(),
        }
    }
}

/// Builds a [`ChaosConfig`].
#[derive(Debug, Clone)]
pub struct ChaosConfigBuilder {
    config: ChaosConfig,
}

impl ChaosConfigBuilder {
    /// Fail this share of calls at once with [`InjectedFault`](super::InjectedFault), in `[0, 1]`.
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.config.error_rate = rate;
        self
    }

    /// Hang this share of calls for [`hang_for`](Self::hang_for), then fail them, in `[0, 1]`.
    pub fn timeout_rate(mut self, rate: f64) -> Self {
        self.config.timeout_rate = rate;
        self
    }

    /// How long an injected timeout hangs before failing (default 30 s).
    pub fn hang_for(mut self, duration: Duration) -> Self {
        self.config.hang_for = duration;
        self
    }

    /// Delay this share of calls by a duration drawn uniformly from `min..=max` before sending them on.
    pub fn latency(mut self, rate: f64, min: Duration, max: Duration) -> Self {
        self.config.latency_rate = rate;
        self.config.latency = (min, max);
        self
    }

    /// Draw from a generator seeded with `seed`, so the same calls get the same faults on every run.
    /// Without it, the generator is seeded from the clock.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Inject only between `from` and `until` after the layer was built (may be called several times;
    /// without it, faults are injected all the time). For drills: "fail 30 % of queries from minute 2 to
    /// minute 5".
    pub fn active_during(mut self, from: Duration, until: Duration) -> Self {
        self.config.schedule.push((from, until));
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<ChaosConfig, ConfigError> {
        let c = self.config;
        let ok = |r: f64| (0.0..=1.0).contains(&r);
        if !ok(c.error_rate) {
            return Err(ConfigError::new("error_rate", "must be in [0, 1]"));
        }
        if !ok(c.timeout_rate) {
            return Err(ConfigError::new("timeout_rate", "must be in [0, 1]"));
        }
        if !ok(c.latency_rate) {
            return Err(ConfigError::new("latency", "the rate must be in [0, 1]"));
        }
        if c.latency.0 > c.latency.1 {
            return Err(ConfigError::new("latency", "min must not exceed max"));
        }
        if c.error_rate + c.timeout_rate + c.latency_rate > 1.0 + 1e-9 {
            return Err(ConfigError::new(
                "error_rate",
                "error, timeout and latency rates must add up to at most 1",
            ));
        }
        if c.schedule.iter().any(|(from, until)| from >= until) {
            return Err(ConfigError::new(
                "active_during",
                "`from` must come before `until`",
            ));
        }
        Ok(c)
    }
}
