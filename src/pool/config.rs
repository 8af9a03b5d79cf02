//! Pool settings.

use std::sync::Mutex;
use std::time::Duration;

use rampart_layers::rng::{Rng, SplitMix64};
use rampart_layers::validate::ValidationPolicy;
use tokio::time::Instant;

use crate::error::ConfigError;
use crate::sync::lock;

/// The most connections a pool may open: far above what one Postgres server accepts (its
/// `max_connections` is in the hundreds), and small enough that the pool's own bookkeeping, sized by it,
/// stays small.
const MAX_POOL_SIZE: usize = 10_000;

/// The shortest keepalive ping interval: a near-zero one would spin a core pinging.
const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(10);

/// How long a validation round trip may take by default. An empty query on a live link answers in a
/// round trip (milliseconds); one that has not answered in this long is on a black-holed link, and the
/// first request after a quiet spell pays this once (the connections as old are then dropped unchecked),
/// so it is kept under a second.
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_millis(750);

/// Pool settings; build with [`PoolConfig::builder`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub(super) max_size: usize,
    pub(super) wait_timeout: Duration,
    pub(super) validation: ValidationPolicy,
    pub(super) max_lifetime: Option<Duration>,
    pub(super) lifetime_jitter: f64,
    pub(super) idle_timeout: Option<Duration>,
    pub(super) keepalive_interval: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 10,
            wait_timeout: Duration::from_secs(5),
            validation: ValidationPolicy::builder()
                .check_timeout(DEFAULT_CHECK_TIMEOUT)
                .build()
                .expect("constant validation policy is valid"),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            lifetime_jitter: 0.1,
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            keepalive_interval: None,
        }
    }
}

impl PoolConfig {
    /// A builder starting from the defaults: 10 connections, 5 s checkout wait, validation after 500 ms
    /// idle with a 750 ms check timeout, 30 min max lifetime (minus up to 10% jitter), 10 min idle timeout,
    /// no keepalive pinger.
    pub fn builder() -> PoolConfigBuilder {
        PoolConfigBuilder {
            config: PoolConfig::default(),
        }
    }

    /// The most connections the pool opens.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// How long a checkout waits for a free connection.
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }

    /// When a connection is checked before hand-out.
    pub fn validation(&self) -> ValidationPolicy {
        self.validation
    }

    /// How long a connection lives at most (before jitter).
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// The fraction of the max lifetime taken off at random, per connection.
    pub fn lifetime_jitter(&self) -> f64 {
        self.lifetime_jitter
    }

    /// How long a connection may sit unused before the background task closes it.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// How often idle connections are pinged, if at all.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        self.keepalive_interval
    }
}

/// Builds a [`PoolConfig`]; [`build`](Self::build) checks every value.
#[derive(Debug, Clone)]
pub struct PoolConfigBuilder {
    config: PoolConfig,
}

impl PoolConfigBuilder {
    /// The most connections the pool opens (1 to 10,000).
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// How long a checkout waits for a free connection before failing with [`ErrorKind::PoolExhausted`](crate::ErrorKind::PoolExhausted).
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.config.wait_timeout = wait;
        self
    }

    /// When a connection is checked before it is handed out.
    pub fn validation(mut self, policy: ValidationPolicy) -> Self {
        self.config.validation = policy;
        self
    }

    /// How long a connection lives at most; `None` for ever.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.config.max_lifetime = lifetime;
        self
    }

    /// The fraction (0 to 0.5) of the max lifetime taken off at random per connection, so connections
    /// opened together are not all replaced together.
    pub fn lifetime_jitter(mut self, fraction: f64) -> Self {
        self.config.lifetime_jitter = fraction;
        self
    }

    /// How long a connection may sit unused before it is closed; `None` keeps it.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.config.idle_timeout = idle;
        self
    }

    /// Pings idle connections this often to keep middleboxes from forgetting them; `None` (the default)
    /// never pings. Leave it off for serverless hosts: a ping keeps the compute awake.
    pub fn keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.keepalive_interval = interval;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<PoolConfig, ConfigError> {
        let c = self.config;
        if !(1..=MAX_POOL_SIZE).contains(&c.max_size) {
            return Err(ConfigError::new(
                "max_size",
                format!("must be between 1 and {MAX_POOL_SIZE}"),
            ));
        }
        if c.wait_timeout.is_zero() {
            return Err(ConfigError::new(
                "wait_timeout",
                "must be greater than zero",
            ));
        }
        if c.max_lifetime.is_some_and(|l| l.is_zero()) {
            return Err(ConfigError::new(
                "max_lifetime",
                "must be greater than zero (or None)",
            ));
        }
        if !(0.0..=0.5).contains(&c.lifetime_jitter) {
            return Err(ConfigError::new(
                "lifetime_jitter",
                "must be between 0 and 0.5",
            ));
        }
        if c.idle_timeout.is_some_and(|l| l.is_zero()) {
            return Err(ConfigError::new(
                "idle_timeout",
                "must be greater than zero (or None)",
            ));
        }
        if c.keepalive_interval
            .is_some_and(|l| l < MIN_KEEPALIVE_INTERVAL)
        {
            return Err(ConfigError::new(
                "keepalive_interval",
                "must be at least 10 ms (or None)",
            ));
        }
        Ok(c)
    }
}

impl PoolConfig {
    /// When a connection opened now should be retired: the max lifetime minus up to `lifetime_jitter` of
    /// it at random, so connections opened together are not all replaced together. `None` without a
    /// lifetime. Shared by pooled and shared (multiplexed) connections.
    pub(crate) fn expiry(&self, rng: &Mutex<SplitMix64>) -> Option<Instant> {
        let lifetime = self.max_lifetime?;
        let cut = lock(rng).next_f64() * self.lifetime_jitter;
        Instant::now().checked_add(lifetime.mul_f64(1.0 - cut))
    }
}
