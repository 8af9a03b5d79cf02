//! The connection pool: deadpool-postgres, plus what it lacks.
//!
//! The pool itself (queueing, fair hand-off, sizing, timeouts) is deadpool's; this module does not write
//! one. Around deadpool-postgres's manager (which connects and keeps a per-connection statement cache)
//! it adds what a hosted database needs:
//!
//! - **Validation before hand-out.** `is_closed()` always (free); a real round trip (an empty query) only
//!   when the connection has not been used successfully for longer than the bypass window (500 ms by
//!   default, as HikariCP), bounded by its own timeout. A connection a NAT gateway or a suspended
//!   serverless compute killed silently looks open to the client; this check is what finds it before a
//!   caller does. A connection that fails is dropped and the next one (or a new one) is tried, invisibly
//!   to the caller. The policy is [`rampart_layers::validate::ValidationPolicy`].
//! - **Max lifetime with jitter** (30 min, minus up to 10% at random): connections are replaced as they
//!   age, not all at once.
//! - **Idle eviction** in the background (10 min by default).
//! - **A keepalive pinger**, off by default and never on in the serverless preset (a ping would keep a
//!   suspended compute awake, and billed).
//! - **A checkout wait timeout, always** (deadpool waits forever by default); its error says the pool was
//!   exhausted, with its size and waiters.
//! - **Statistics** readable at any time: [`PoolStats`].
//!
//! Why a manager of our own around deadpool-postgres's, rather than its `Manager` as is: deadpool-postgres
//! hands out a `ClientWrapper` with no room for per-connection state, and validation with a bypass window
//! needs the time of the last *successful use* (deadpool records only checkouts), max lifetime with jitter
//! needs a per-connection expiry, and pushing a deadline down as `statement_timeout` needs to know what the
//! session has set. [`PgConn`] carries those beside deadpool-postgres's `ClientWrapper`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{
    self, Metrics, PoolError, RecycleError, RecycleResult, TimeoutType, Timeouts,
};
use deadpool_postgres::{ClientWrapper, ManagerConfig, RecyclingMethod};
use rampart_layers::Classification;
use rampart_layers::rng::{Rng, SplitMix64};
use rampart_layers::validate::{Checked, ValidationPolicy};
use serde::Serialize;
use tokio::time::Instant;

use crate::classify::{Stage, from_pg};
use crate::config::PgConfig;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::pooler::ParamTypes;
use crate::tls::Connector;

/// Pool settings; build with [`PoolConfig::builder`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    max_size: usize,
    wait_timeout: Duration,
    validation: ValidationPolicy,
    max_lifetime: Option<Duration>,
    lifetime_jitter: f64,
    idle_timeout: Option<Duration>,
    keepalive_interval: Option<Duration>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_size: 10,
            wait_timeout: Duration::from_secs(5),
            validation: ValidationPolicy::builder()
                .check_timeout(Duration::from_secs(2))
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
    /// idle with a 2 s check timeout, 30 min max lifetime (minus up to 10% jitter), 10 min idle timeout,
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
    /// The most connections the pool opens (at least 1).
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// How long a checkout waits for a free connection before failing with [`ErrorKind::PoolExhausted`].
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
        if c.max_size == 0 {
            return Err(ConfigError::new("max_size", "must be at least 1"));
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
        if c.keepalive_interval.is_some_and(|l| l.is_zero()) {
            return Err(ConfigError::new(
                "keepalive_interval",
                "must be greater than zero (or None)",
            ));
        }
        Ok(c)
    }
}

/// One pooled connection: deadpool-postgres's client (with its statement cache) and what rampart tracks.
pub struct PgConn {
    client: ClientWrapper,
    last_ok: Option<Instant>,
    expires_at: Option<Instant>,
    statement_timeout_ms: u64,
}

impl fmt::Debug for PgConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConn")
            .field("closed", &self.client.is_closed())
            .field("last_ok", &self.last_ok)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl PgConn {
    /// The tokio-postgres client (through deadpool-postgres's wrapper, with `prepare_cached`).
    pub fn client(&self) -> &ClientWrapper {
        &self.client
    }

    /// The client, mutably (to start a transaction).
    pub fn client_mut(&mut self) -> &mut ClientWrapper {
        &mut self.client
    }

    /// Records a successful use: the validation bypass window starts again.
    pub fn mark_ok(&mut self) {
        self.last_ok = Some(Instant::now());
    }

    /// The `statement_timeout` this session has set, in milliseconds (0: none).
    pub(crate) fn statement_timeout_ms(&self) -> u64 {
        self.statement_timeout_ms
    }

    pub(crate) fn set_statement_timeout_ms(&mut self, ms: u64) {
        self.statement_timeout_ms = ms;
    }
}

/// A connection checked out of the [`Pool`]; it goes back when dropped.
pub type PooledConn = managed::Object<Manager>;

#[derive(Debug, Default)]
struct Counters {
    created: AtomicU64,
    connect_failures: AtomicU64,
    recycled: AtomicU64,
    validated: AtomicU64,
    evicted_closed: AtomicU64,
    evicted_validation: AtomicU64,
    evicted_lifetime: AtomicU64,
    evicted_idle: AtomicU64,
    discarded: AtomicU64,
    checkout_timeouts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The deadpool manager: deadpool-postgres's, plus validation, lifetime and counters.
pub struct Manager {
    inner: deadpool_postgres::Manager,
    config: PoolConfig,
    server: String,
    counters: Arc<Counters>,
    rng: std::sync::Mutex<SplitMix64>,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Manager {
    fn expiry(&self) -> Option<Instant> {
        expiry(&self.config, &self.rng)
    }
}

/// When a connection opened now should be retired: the max lifetime minus up to `lifetime_jitter` of it
/// at random, so connections opened together are not all replaced together. `None` without a lifetime.
pub(crate) fn expiry(config: &PoolConfig, rng: &std::sync::Mutex<SplitMix64>) -> Option<Instant> {
    let lifetime = config.max_lifetime?;
    let cut = rng.lock().unwrap_or_else(|p| p.into_inner()).next_f64() * config.lifetime_jitter;
    Some(Instant::now() + lifetime.mul_f64(1.0 - cut))
}

impl managed::Manager for Manager {
    type Type = PgConn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<PgConn, tokio_postgres::Error> {
        match managed::Manager::create(&self.inner).await {
            Ok(client) => {
                bump(&self.counters.created);
                tracing::info!(target: "rampart::pool", server = %self.server, "connection created");
                Ok(PgConn {
                    client,
                    last_ok: Some(Instant::now()),
                    expires_at: self.expiry(),
                    statement_timeout_ms: 0,
                })
            }
            Err(e) => {
                bump(&self.counters.connect_failures);
                tracing::warn!(target: "rampart::pool", server = %self.server, error = %e, "connect failed");
                Err(e)
            }
        }
    }

    async fn recycle(
        &self,
        conn: &mut PgConn,
        _: &Metrics,
    ) -> RecycleResult<tokio_postgres::Error> {
        if conn.client.is_closed() {
            bump(&self.counters.evicted_closed);
            tracing::info!(target: "rampart::pool", server = %self.server, "closed connection dropped");
            return Err(RecycleError::message("connection closed"));
        }
        if conn.expires_at.is_some_and(|at| Instant::now() >= at) {
            bump(&self.counters.evicted_lifetime);
            tracing::debug!(target: "rampart::pool", server = %self.server, "connection reached its max lifetime");
            return Err(RecycleError::message("connection reached its max lifetime"));
        }
        let client = &conn.client;
        match self
            .config
            .validation
            .validate(conn.last_ok, || async {
                client.simple_query("").await.map(drop)
            })
            .await
        {
            Ok(Checked::Bypassed) => {}
            Ok(_) => {
                bump(&self.counters.validated);
                conn.mark_ok();
            }
            Err(e) => {
                bump(&self.counters.evicted_validation);
                tracing::warn!(
                    target: "rampart::pool", server = %self.server, outcome = e.outcome(),
                    "validation failed, connection replaced"
                );
                return Err(RecycleError::message("validation failed"));
            }
        }
        bump(&self.counters.recycled);
        Ok(())
    }

    fn detach(&self, conn: &mut PgConn) {
        managed::Manager::detach(&self.inner, &mut conn.client);
    }
}

/// A connection in use by one request. If dropped before [`finish`](InFlight::finish) — the caller gave
/// up, or a timeout above fired — it asks the server to cancel whatever it is running for the request and
/// discards the connection: one with a request of unknown state on it, or on a dead link, is never reused.
pub(crate) struct InFlight {
    pool: Pool,
    conn: Option<PooledConn>,
}

impl InFlight {
    pub(crate) fn new(pool: Pool, conn: PooledConn) -> Self {
        Self {
            pool,
            conn: Some(conn),
        }
    }

    pub(crate) fn conn(&mut self) -> &mut PooledConn {
        self.conn.as_mut().expect("present until finish or drop")
    }

    /// The request completed (well or badly): return the connection, or discard it if its link failed.
    pub(crate) fn finish(mut self, link_failed: bool) {
        if let Some(conn) = self.conn.take() {
            if link_failed || conn.client().is_closed() {
                self.pool.discard(conn);
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::debug!(
                target: "rampart::pool",
                "request abandoned in flight: cancelling it and discarding its connection"
            );
            self.pool.cancel_in_background(conn.client().cancel_token());
            self.pool.discard(conn);
        }
    }
}

/// Pool statistics at one moment; see [`Pool::stats`]. Serializable for health documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections sitting idle in the pool.
    pub idle: usize,
    /// Open connections checked out.
    pub in_use: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// Connections created since the pool was built.
    pub created: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    /// Checkouts of an existing connection.
    pub recycled: u64,
    /// Checkouts that ran a validation round trip (and passed).
    pub validated: u64,
    /// Connections dropped at checkout because they were closed.
    pub evicted_closed: u64,
    /// Connections dropped at checkout because validation failed.
    pub evicted_validation: u64,
    /// Connections replaced because they reached their max lifetime.
    pub evicted_lifetime: u64,
    /// Connections closed by the background task after sitting idle.
    pub evicted_idle: u64,
    /// Connections discarded after a request on them was abandoned or failed with the link.
    pub discarded: u64,
    /// Checkouts that gave up waiting for a free connection.
    pub checkout_timeouts: u64,
}

/// A pool of Postgres connections with validation, lifetime, idle eviction and statistics.
///
/// Cheap to clone; clones share the connections. Background tasks (idle eviction, the optional
/// pinger) stop when the last clone is dropped.
#[derive(Clone)]
pub struct Pool {
    inner: managed::Pool<Manager>,
    /// Everything else in one allocation, so a clone (one per request) is two reference counts.
    shared: Arc<Shared>,
}

struct Shared {
    counters: Arc<Counters>,
    config: PoolConfig,
    server: Arc<str>,
    pg: PgConfig,
    cancel_tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    param_types: ParamTypes,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("server", &self.shared.server)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Pool {
    /// Builds a pool. No connection is opened until the first checkout. Must be called within a Tokio
    /// runtime (the background tasks run on it).
    pub fn new(pg: PgConfig, config: PoolConfig) -> Result<Pool, ConfigError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new("runtime", "a pool must be built within a Tokio runtime")
        })?;
        let connector = Connector::new(&pg)?;
        let cancel_tls = connector.tls().cloned();
        let server: Arc<str> = pg.redacted_url().into();
        let counters = Arc::new(Counters::default());
        let inner_manager = deadpool_postgres::Manager::from_connect(
            pg.pg_config().clone(),
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let manager = Manager {
            inner: inner_manager,
            config: config.clone(),
            server: server.to_string(),
            counters: counters.clone(),
            rng: std::sync::Mutex::new(SplitMix64::from_entropy()),
        };
        let connect_timeout = pg.pg_config().get_connect_timeout().copied();
        let inner = managed::Pool::builder(manager)
            .max_size(config.max_size)
            .wait_timeout(Some(config.wait_timeout))
            // tokio-postgres's connect timeout covers each host; this is the backstop for the whole create.
            .create_timeout(connect_timeout.map(|t| t + Duration::from_secs(1)))
            .recycle_timeout(Some(
                config.validation.check_timeout() + Duration::from_millis(100),
            ))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| ConfigError::new("pool", e.to_string()))?;
        let pool = Pool {
            inner,
            shared: Arc::new(Shared {
                counters,
                config,
                server,
                pg,
                cancel_tls,
                param_types: ParamTypes::default(),
            }),
        };
        pool.spawn_background(&runtime);
        Ok(pool)
    }

    fn spawn_background(&self, runtime: &tokio::runtime::Handle) {
        let counters = self.shared.counters.clone();
        let config = self.shared.config.clone();
        let sweep_every = [config.idle_timeout, config.max_lifetime]
            .into_iter()
            .flatten()
            .min()
            .map(|d| (d / 4).clamp(Duration::from_millis(50), Duration::from_secs(30)));
        if let Some(every) = sweep_every {
            let weak = self.inner.weak();
            let counters = counters.clone();
            let idle_timeout = config.idle_timeout;
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { return };
                    let now = Instant::now();
                    pool.retain(|conn, metrics| {
                        if conn.client.is_closed() {
                            bump(&counters.evicted_closed);
                            false
                        } else if conn.expires_at.is_some_and(|at| now >= at) {
                            bump(&counters.evicted_lifetime);
                            false
                        } else if idle_timeout.is_some_and(|idle| metrics.last_used() >= idle) {
                            bump(&counters.evicted_idle);
                            false
                        } else {
                            true
                        }
                    });
                }
            });
        }
        if let Some(every) = config.keepalive_interval {
            let weak = self.inner.weak();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let no_wait = Timeouts {
                    wait: Some(Duration::ZERO),
                    create: None,
                    recycle: None,
                };
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { return };
                    // Check out every idle connection at once, so each is visited once; checkout validates
                    // those idle past the bypass window, which is the ping.
                    let mut held = Vec::new();
                    for _ in 0..pool.status().available {
                        match pool.timeout_get(&no_wait).await {
                            Ok(conn) => held.push(conn),
                            Err(_) => break,
                        }
                    }
                    drop(held);
                }
            });
        }
    }

    /// Checks out a connection, waiting at most the pool's wait timeout.
    pub async fn get(&self) -> Result<PooledConn, Error> {
        self.get_within(None).await
    }

    /// Checks out a connection, waiting at most the pool's wait timeout or `limit`, whichever is shorter
    /// (a request's remaining deadline).
    pub async fn get_within(&self, limit: Option<Duration>) -> Result<PooledConn, Error> {
        let wait = match limit {
            Some(limit) => limit.min(self.shared.config.wait_timeout),
            None => self.shared.config.wait_timeout,
        };
        let mut timeouts = self.inner.timeouts();
        timeouts.wait = Some(wait);
        self.inner
            .timeout_get(&timeouts)
            .await
            .map_err(|e| self.checkout_error(e, wait))
    }

    fn checkout_error(&self, err: PoolError<tokio_postgres::Error>, waited: Duration) -> Error {
        match err {
            PoolError::Timeout(TimeoutType::Wait) => {
                bump(&self.shared.counters.checkout_timeouts);
                let status = self.inner.status();
                Error::new(
                    ErrorKind::PoolExhausted,
                    Classification::Transient,
                    format!(
                        "pool exhausted: no connection to {} became free within {waited:?} \
                         ({} of {} connections in use, {} callers waiting)",
                        self.shared.server,
                        status.size - status.available.min(status.size),
                        status.max_size,
                        status.waiting
                    ),
                )
            }
            PoolError::Timeout(_) => Error::new(
                ErrorKind::Connect,
                Classification::Transient,
                format!("could not connect to {}: timed out", self.shared.server),
            ),
            PoolError::Backend(e) => from_pg(e, Stage::Connect, &self.shared.server),
            PoolError::Closed => Error::new(
                ErrorKind::PoolClosed,
                Classification::Permanent,
                "the connection pool is closed",
            ),
            other => Error::new(
                ErrorKind::Other,
                Classification::Permanent,
                format!("connection pool: {other}"),
            ),
        }
    }

    /// Removes a connection from the pool and closes it: for one whose request was abandoned mid-flight
    /// or whose link failed, which must never be handed out again.
    pub fn discard(&self, conn: PooledConn) {
        bump(&self.shared.counters.discarded);
        drop(managed::Object::take(conn));
    }

    /// Asks the server to cancel whatever `token`'s connection is running, in the background: for a
    /// request whose caller gave up or whose deadline passed, so no backend is left running it.
    pub(crate) fn cancel_in_background(&self, token: tokio_postgres::CancelToken) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tls = self.shared.cancel_tls.clone();
        let server = self.shared.server.clone();
        runtime.spawn(async move {
            let result = match tls {
                Some(tls) => token.cancel_query(tls).await,
                None => token.cancel_query(tokio_postgres::NoTls).await,
            };
            match result {
                Ok(()) => tracing::debug!(target: "rampart::pool", server = %server, "cancel request sent"),
                Err(e) => tracing::debug!(target: "rampart::pool", server = %server, error = %e, "cancel request failed"),
            }
        });
    }

    /// Statistics now.
    pub fn stats(&self) -> PoolStats {
        let status = self.inner.status();
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PoolStats {
            max_size: status.max_size,
            size: status.size,
            idle: status.available,
            in_use: status.size.saturating_sub(status.available),
            waiting: status.waiting,
            created: load(&c.created),
            connect_failures: load(&c.connect_failures),
            recycled: load(&c.recycled),
            validated: load(&c.validated),
            evicted_closed: load(&c.evicted_closed),
            evicted_validation: load(&c.evicted_validation),
            evicted_lifetime: load(&c.evicted_lifetime),
            evicted_idle: load(&c.evicted_idle),
            discarded: load(&c.discarded),
            checkout_timeouts: load(&c.checkout_timeouts),
        }
    }

    /// The server, with the password redacted.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// The connection settings.
    pub fn pg_config(&self) -> &PgConfig {
        &self.shared.pg
    }

    /// The pool settings.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// Parameter types learned per SQL text, for unnamed statements behind a transaction pooler.
    pub(crate) fn param_types(&self) -> &ParamTypes {
        &self.shared.param_types
    }

    /// Closes the pool: checked-out connections close when returned, waiting callers fail.
    pub fn close(&self) {
        self.inner.close();
    }
}
