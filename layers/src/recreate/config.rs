//! When to rebuild and how fast to retry a failed rebuild.

use std::time::Duration;

use crate::ConfigError;
use crate::backoff::{Exponential, Jitter, MAX_DELAY};

/// Settings of [`Recreate`](super::Recreate), validated by [`RecreateConfigBuilder::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecreateConfig {
    pub(crate) failure_threshold: u32,
    // Un-jittered (the builder offers no jitter), so `backoff` reads its nominal delays.
    pub(crate) schedule: Exponential,
}

impl Default for RecreateConfig {
    fn default() -> Self {
        RecreateConfigBuilder::default()
            .build()
            .expect("the default settings are valid")
    }
}

impl RecreateConfig {
    /// A builder starting from the defaults: rebuild after 10 consecutive failures; retry a failed rebuild
    /// after 500 ms, doubling up to 30 s.
    pub fn builder() -> RecreateConfigBuilder {
        RecreateConfigBuilder::default()
    }

    /// The delay before rebuild attempt `attempt + 1`, after `attempt` failed attempts (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.schedule.nominal_delay(attempt)
    }
}

/// Builds a [`RecreateConfig`].
#[derive(Debug, Clone)]
pub struct RecreateConfigBuilder {
    failure_threshold: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
}

impl Default for RecreateConfigBuilder {
    fn default() -> Self {
        Self {
            failure_threshold: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl RecreateConfigBuilder {
    /// Rebuild after this many consecutive failures of the current service (default 10). A success
    /// resets the count.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures;
        self
    }

    /// Wait this long before retrying a failed rebuild (default 500 ms).
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.initial_backoff = delay;
        self
    }

    /// Never wait longer than this between rebuild attempts (default 30 s).
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Multiply the wait by this after each failed attempt (default 2.0).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<RecreateConfig, ConfigError> {
        if self.failure_threshold == 0 {
            return Err(ConfigError::new("failure_threshold", "must be at least 1"));
        }
        if self.initial_backoff.is_zero() {
            return Err(ConfigError::new(
                "initial_backoff",
                "must be greater than zero",
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(ConfigError::new(
                "max_backoff",
                "must not be shorter than initial_backoff",
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(ConfigError::new(
                "multiplier",
                "must be a finite number >= 1.0",
            ));
        }
        // Checked above under this builder's names; the schedule cannot wait longer than `MAX_DELAY`
        // (584 years, "never" either way), so longer settings are clamped rather than refused.
        let schedule = Exponential::builder()
            .base_delay(self.initial_backoff.min(MAX_DELAY))
            .max_delay(self.max_backoff.min(MAX_DELAY))
            .multiplier(self.multiplier)
            .jitter(Jitter::None)
            .build()?;
        Ok(RecreateConfig {
            failure_threshold: self.failure_threshold,
            schedule,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = RecreateConfig::default();
        assert_eq!(c.backoff(1), Duration::from_millis(500));
        assert_eq!(c.backoff(2), Duration::from_secs(1));
        assert_eq!(c.backoff(10), Duration::from_secs(30));
    }

    #[test]
    fn bad_values_name_their_field() {
        let b = RecreateConfig::builder;
        assert_eq!(
            b().failure_threshold(0).build().unwrap_err().field(),
            "failure_threshold"
        );
        assert_eq!(
            b().initial_backoff(Duration::ZERO)
                .build()
                .unwrap_err()
                .field(),
            "initial_backoff"
        );
        assert_eq!(
            b().max_backoff(Duration::from_millis(1))
                .build()
                .unwrap_err()
                .field(),
            "max_backoff"
        );
        assert_eq!(
            b().multiplier(f64::INFINITY).build().unwrap_err().field(),
            "multiplier"
        );
    }
}
