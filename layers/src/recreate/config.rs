//! When to rebuild and how fast to retry a failed rebuild.

use std::time::Duration;

use super::error::ConfigError;

/// Settings of [`Recreate`](super::Recreate), validated by [`RecreateConfigBuilder::build`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecreateConfig {
    pub(crate) failure_threshold: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) multiplier: f64,
}

impl Default for RecreateConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl RecreateConfig {
    /// A builder starting from the defaults: rebuild after 10 consecutive failures; retry a failed rebuild
    /// after 500 ms, doubling up to 30 s.
    pub fn builder() -> RecreateConfigBuilder {
        RecreateConfigBuilder {
            config: Self::default(),
        }
    }

    /// The delay before rebuild attempt `attempt + 1`, after `attempt` failed attempts (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max_backoff.as_secs_f64() {
            self.max_backoff
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// Builds a [`RecreateConfig`].
#[derive(Debug, Clone)]
pub struct RecreateConfigBuilder {
    config: RecreateConfig,
}

impl RecreateConfigBuilder {
    /// Rebuild after this many consecutive failures of the current service (default 10). A success
    /// resets the count.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.config.failure_threshold = failures;
        self
    }

    /// Wait this long before retrying a failed rebuild (default 500 ms).
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.config.initial_backoff = delay;
        self
    }

    /// Never wait longer than this between rebuild attempts (default 30 s).
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.config.max_backoff = delay;
        self
    }

    /// Multiply the wait by this after each failed attempt (default 2.0).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.config.multiplier = multiplier;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<RecreateConfig, ConfigError> {
        let c = self.config;
        if c.failure_threshold == 0 {
            return Err(ConfigError::new("failure_threshold", "must be at least 1"));
        }
        if c.initial_backoff.is_zero() {
            return Err(ConfigError::new(
                "initial_backoff",
                "must be greater than zero",
            ));
        }
        if c.max_backoff < c.initial_backoff {
            return Err(ConfigError::new(
                "max_backoff",
                "must not be shorter than initial_backoff",
            ));
        }
        if !(c.multiplier.is_finite() && c.multiplier >= 1.0) {
            return Err(ConfigError::new(
                "multiplier",
                "must be a finite number >= 1.0",
            ));
        }
        Ok(c)
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
