//! Settings of the multiplexed mode.

use std::time::Duration;

use crate::error::ConfigError;

/// The statement timeout of shared connections when neither the configuration nor a stack sets one.
pub(super) const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of the multiplexed mode; build with [`MuxConfig::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct MuxConfig {
    pub(super) connections: usize,
    pub(super) max_in_flight: usize,
    pub(super) statement_timeout: Option<Duration>,
    pub(super) stall_after: Duration,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            connections: 1,
            max_in_flight: 128,
            statement_timeout: None,
            stall_after: Duration::from_millis(100),
        }
    }
}

impl MuxConfig {
    /// A builder starting from the defaults: 1 shared connection, at most 128 requests in flight on it,
    /// the statement timeout of the stack's attempt timeout (3 s for a service built alone), a connection
    /// with requests in flight and none finished for 100 ms counted as stalled.
    pub fn builder() -> MuxConfigBuilder {
        MuxConfigBuilder {
            config: MuxConfig::default(),
        }
    }

    /// How many shared connections.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// The most requests in flight on one shared connection.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The shared connections' statement timeout, if set explicitly.
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    /// How long a connection with requests in flight may go without finishing one before new requests
    /// avoid it.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    /// The settings with the statement timeout filled in where not set explicitly.
    pub(crate) fn or_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout.get_or_insert(timeout);
        self
    }
}

/// Builds a [`MuxConfig`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct MuxConfigBuilder {
    config: MuxConfig,
}

impl MuxConfigBuilder {
    /// How many shared connections (1 to 64). One by default. One pipelined connection carries about as
    /// many short statements as one server process can run (tens of thousands a second); while it is
    /// being replaced, requests spill to the pool, so a second is not needed for availability. A second
    /// adds server-side parallelism: on loopback it lowered the median latency at 32 callers by 45% but
    /// doubled the p99 (4.5 ms against 2.1 ms), because the server shared the client's two cores and a
    /// descheduled server process holds up everything queued on its connection (`BENCHMARKS.md`). Use
    /// more than one when the server has cores to spare and the shared statements keep one busy.
    pub fn connections(mut self, connections: usize) -> Self {
        self.config.connections = connections;
        self
    }

    /// The most requests in flight on one shared connection (at least 1); beyond it requests go to the
    /// next connection, or spill to the pool.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = max;
        self
    }

    /// The session `statement_timeout` of shared connections: no statement runs longer on them. Requests
    /// that may need longer go to exclusive connections ([`Query::exclusive`](crate::Query::exclusive), or a longer
    /// [`Query::timeout`](crate::Query::timeout)). Unset, a ready-made stack uses its attempt timeout.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.config.statement_timeout = Some(timeout);
        self
    }

    /// How long a shared connection with requests in flight may go without finishing one before new
    /// requests avoid it (at least 1 ms).
    pub fn stall_after(mut self, stall: Duration) -> Self {
        self.config.stall_after = stall;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<MuxConfig, ConfigError> {
        let c = &self.config;
        if !(1..=64).contains(&c.connections) {
            return Err(ConfigError::new("connections", "must be between 1 and 64"));
        }
        if c.max_in_flight == 0 {
            return Err(ConfigError::new("max_in_flight", "must be at least 1"));
        }
        if c.statement_timeout
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            return Err(ConfigError::new(
                "statement_timeout",
                "must be at least 1 ms",
            ));
        }
        if c.stall_after < Duration::from_millis(1) {
            return Err(ConfigError::new("stall_after", "must be at least 1 ms"));
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_typed_errors() {
        let err = MuxConfig::builder().connections(0).build().unwrap_err();
        assert_eq!(err.field(), "connections");
        let err = MuxConfig::builder().connections(65).build().unwrap_err();
        assert_eq!(err.field(), "connections");
        let err = MuxConfig::builder().max_in_flight(0).build().unwrap_err();
        assert_eq!(err.field(), "max_in_flight");
        let err = MuxConfig::builder()
            .statement_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "statement_timeout");
        let err = MuxConfig::builder()
            .stall_after(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "stall_after");
        assert_eq!(MuxConfig::builder().build().unwrap(), MuxConfig::default());
    }
}
