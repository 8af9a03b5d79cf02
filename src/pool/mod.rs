//! The connection pool: deadpool-postgres, plus validation, lifetime, eviction and statistics.
//!
//! What users read is on [`Pool`] (the module is private: the flat list in `lib.rs` is the one public path).
//!
//! The files: `config` (the settings), `manager` (deadpool's manager: connect, validate, retire), `in_flight`
//! (a connection in use by one request and what becomes of it), `background` (idle eviction, pinger),
//! `stats` (the counters), `suspect` (what one dead connection says about the others).

mod background;
mod config;
mod in_flight;
mod manager;
mod stats;
mod suspect;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::{self, PoolError, TimeoutType};
use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use rampart_layers::Classification;
use rampart_layers::rng::SplitMix64;

pub use self::config::{PoolConfig, PoolConfigBuilder};
pub(crate) use self::in_flight::InFlight;
pub(crate) use self::manager::{host_of, prepare_cached};
pub use self::stats::PoolStats;

use self::manager::Manager;
use self::stats::{Counters, bump};
use self::suspect::Suspicion;
use crate::config::PgConfig;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::exec::ParamTypes;
use crate::outcome::connect_failed;
use crate::tls::Connector;
use crate::xact::LearnedFlavour;

/// A connection checked out of the [`Pool`]; it goes back when dropped.
pub(crate) type PooledConn = managed::Object<Manager>;

/// A pool of Postgres connections with validation, lifetime, idle eviction and statistics.
///
/// Cheap to clone; clones share the connections. Background tasks (idle eviction, the optional
/// pinger) stop when the last clone is dropped.
///
/// The pool itself (queueing, fair hand-off, sizing, timeouts) is deadpool's; this module does not write
/// one. Around deadpool-postgres's manager (which connects and keeps a per-connection statement cache)
/// it adds what a hosted database needs:
///
/// - **Validation before hand-out.** `is_closed()` always (free); a real round trip (an empty query) only
///   when the connection has not been used successfully for longer than the bypass window (500 ms by
///   default, as HikariCP), bounded by its own timeout. A connection a NAT gateway or a suspended
///   serverless compute killed silently looks open to the client; this check is what finds it before a
///   caller does. A connection that fails is dropped and the next one (or a new one) is tried, invisibly
///   to the caller. The policy is [`rampart_layers::validate::ValidationPolicy`].
/// - **What one dead connection says about the others.** A middlebox that forgot one idle flow has
///   usually forgotten every flow idle as long. Once a connection is found dead (closed, reset, a failed
///   check, a link lost under a request), every connection idle about as long is checked before hand-out
///   even inside the bypass window; once a check *times out* (a black hole), those are dropped unchecked
///   ([`PoolStats::evicted_suspect`]) instead of each costing the check timeout in turn. A connection found
///   dead before anything of a request was written costs the request nothing: the next one is taken at
///   once.
/// - **Max lifetime with jitter** (30 min, minus up to 10% at random): connections are replaced as they
///   age, not all at once.
/// - **Idle eviction** in the background (10 min by default).
/// - **A keepalive pinger**, off by default and never on in the serverless preset (a ping would keep a
///   suspended compute awake, and billed).
/// - **A checkout wait timeout, always** (deadpool waits forever by default); its error says the pool was
///   exhausted, with its size and waiters.
/// - **Statistics** readable at any time: [`PoolStats`].
///
/// Why a manager of our own around deadpool-postgres's, rather than its `Manager` as is: deadpool-postgres
/// hands out a `ClientWrapper` with no room for per-connection state, and validation with a bypass window
/// needs the time of the last *successful use* (deadpool records only checkouts), max lifetime with jitter
/// needs a per-connection expiry, and pushing a deadline down as `statement_timeout` needs to know what the
/// session has set. A connection of ours carries those beside deadpool-postgres's `ClientWrapper`.

#[derive(Clone)]
pub struct Pool {
    inner: managed::Pool<Manager>,
    /// Everything else in one allocation, so a clone (one per request) is two reference counts.
    shared: Arc<Shared>,
}

struct Shared {
    counters: Arc<Counters>,
    suspicion: Arc<Suspicion>,
    config: PoolConfig,
    server: Arc<str>,
    pg: PgConfig,
    /// How connections are made: also for cancel requests (with the same TLS settings) and dedicated
    /// clients.
    connector: Connector,
    param_types: ParamTypes,
    /// The server's transaction-id functions, learned with the first marked write.
    xact: LearnedFlavour,
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
        let server: Arc<str> = pg.redacted_url().into();
        let counters = Arc::new(Counters::default());
        let suspicion = Arc::new(Suspicion::new(config.validation.bypass_window()));
        let inner_manager = deadpool_postgres::Manager::from_connect(
            pg.pg_config().clone(),
            connector.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let manager = Manager {
            inner: inner_manager,
            connector: connector.clone(),
            pg: pg.pg_config().clone(),
            config: config.clone(),
            server: server.to_string(),
            counters: counters.clone(),
            rng: Mutex::new(SplitMix64::from_entropy()),
            suspicion: suspicion.clone(),
        };
        let connect_timeout = pg.pg_config().get_connect_timeout().copied();
        let inner = managed::Pool::builder(manager)
            .max_size(config.max_size)
            .wait_timeout(Some(config.wait_timeout))
            // tokio-postgres's connect timeout covers each host; this is the backstop for the whole create.
            .create_timeout(connect_timeout.map(|t| t.saturating_add(Duration::from_secs(1))))
            .recycle_timeout(Some(
                config
                    .validation
                    .check_timeout()
                    .saturating_add(Duration::from_millis(100)),
            ))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| ConfigError::new("pool", e.to_string()))?;
        let pool = Pool {
            inner,
            shared: Arc::new(Shared {
                counters,
                suspicion,
                config,
                server,
                pg,
                connector,
                param_types: ParamTypes::default(),
                xact: LearnedFlavour::default(),
            }),
        };
        background::spawn(&pool, &runtime);
        Ok(pool)
    }

    /// Checks out a connection and gives back a guard that returns it when dropped: for the pool's own
    /// benchmarks (checkout against other pools') and tests (an exhausted pool). Not part of the API:
    /// queries go through [`PgService`](crate::PgService).
    #[doc(hidden)]
    pub async fn checkout(&self) -> Result<impl Send + fmt::Debug + 'static, Error> {
        self.get_within(None).await
    }

    /// A new connection of its own, outside the pool, made with the pool's settings (TLS, timeouts,
    /// keepalives): for what does not belong on a pooled connection (`COPY`, `LISTEN`, a session you
    /// keep). Nothing rampart does applies to it; its type is [`crate::postgres::Client`].
    pub async fn dedicated_client(&self) -> Result<tokio_postgres::Client, Error> {
        match self
            .shared
            .connector
            .connect_to(self.shared.pg.pg_config())
            .await
        {
            Ok(connected) => Ok(connected.client),
            Err(refused) => Err(connect_failed(
                refused.error,
                &host_of(&refused.host, &self.shared.server),
            )),
        }
    }

    /// Checks out a connection, waiting at most the pool's wait timeout or `limit`, whichever is shorter
    /// (a request's remaining deadline).
    pub(crate) async fn get_within(&self, limit: Option<Duration>) -> Result<PooledConn, Error> {
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

    fn checkout_error(&self, err: PoolError<Error>, waited: Duration) -> Error {
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
                format!("timed out (could not connect to {})", self.shared.server),
            ),
            PoolError::Backend(e) => e,
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
    pub(crate) fn discard(&self, conn: PooledConn) {
        bump(&self.shared.counters.discarded);
        drop(managed::Object::take(conn));
    }

    /// Discards a connection found dead (closed, reset, hung up after a `FATAL`): as [`discard`](Self::discard),
    /// and every idle connection as old becomes suspect, checked before hand-out whatever the bypass
    /// window says (see `suspect.rs`).
    pub(crate) fn discard_dead(&self, conn: PooledConn) {
        self.shared.suspicion.found_dead(conn.last_ok());
        self.discard(conn);
    }

    /// A request on a connection of this pool to `host` met `25006`: that server no longer takes writes
    /// (a failover demoted it). Every connection to it made until now goes: the idle ones are closed now,
    /// those in use when next checked out (see `suspect.rs`), and new ones are made through
    /// `target_session_attrs` (or a writer endpoint's DNS name) to the server that takes writes now.
    pub(crate) fn server_takes_no_writes(&self, host: &Arc<str>) {
        let suspicion = &self.shared.suspicion;
        suspicion.found_read_only(host);
        let counters = &self.shared.counters;
        self.inner.retain(|conn, _| {
            let keep = !suspicion.retired(conn.host(), conn.created_at);
            if !keep {
                bump(&counters.evicted_read_only);
            }
            keep
        });
        tracing::warn!(
            target: "rampart::pool", server = %self.shared.server, host = %host,
            "a write was refused as read-only (25006): the host no longer takes writes; \
             dropping every connection to it and reconnecting"
        );
    }

    /// The host whose refused write retired connections last ([`server_takes_no_writes`](Self::server_takes_no_writes)).
    pub(crate) fn last_read_only_host(&self) -> Option<Arc<str>> {
        self.shared.suspicion.last_read_only()
    }

    /// Asks the server to cancel whatever `token`'s connection is running, in the background: for a
    /// request whose caller gave up or whose deadline passed, so no backend is left running it.
    pub(crate) fn cancel_in_background(&self, token: tokio_postgres::CancelToken) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tls = self.shared.connector.tls().cloned();
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
        self.shared.counters.snapshot(self.inner.status())
    }

    /// The server, with the password redacted.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// The host (`host:port`) the latest connection was made to, if one was: for a URL naming a primary
    /// and its standbys with `target_session_attrs=read-write`, the server that takes writes.
    pub fn latest_host(&self) -> Option<String> {
        crate::sync::lock(&self.shared.counters.latest_host)
            .as_deref()
            .map(str::to_owned)
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

    /// Which transaction-id functions the server has (see [`crate::resolve`]).
    pub(crate) fn xact_flavour(&self) -> &LearnedFlavour {
        &self.shared.xact
    }

    /// Closes the pool: checked-out connections close when returned, waiting callers fail.
    pub fn close(&self) {
        self.inner.close();
    }
}
