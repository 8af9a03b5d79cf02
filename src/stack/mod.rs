//! Ready-made stacks: the layers, their order and their defaults.
//!
//! What users read is on [`Stack`] (the module is private: the flat list in `lib.rs` is the one public path).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rampart_layers::breaker::{BreakerConfig, CircuitBreakerLayer, SlidingWindow};
use rampart_layers::deadline::{AttemptTimeoutLayer, DeadlineLayer};
use rampart_layers::recreate::{Recreate, RecreateConfig};
use rampart_layers::retry::backoff::{Exponential, Jitter};
use rampart_layers::retry::{RetryBudget, RetryLayer, RetryPolicy};
use tower::util::{BoxCloneSyncService, Either};
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};

use crate::classify::{BreakerClassifier, LostPooledLinks, PgClassifier};
use crate::config::{PgConfig, PoolerMode, Preset};
use crate::error::{ConfigError, Error, ErrorKind};
use crate::health::Outcomes;
use crate::mux::MuxConfig;
use crate::outcome::met_a_standby;
use crate::pool::PoolConfig;

mod db;
mod replica;
mod request;
mod settle;
mod slow;

pub use self::db::{Db, DbFuture};
use self::db::{Services, new_service};
use self::replica::{ReplicaService, Replicated};
use self::request::RequestScope;
use self::settle::{Attempt, Resolver, Settle};
use self::slow::ServerCut;
use crate::xact::Counts;

/// Builds a [`Db`]: the recommended stack over a pool. Start from [`Stack::server`] or
/// [`Stack::serverless`]; every setting can be changed before [`build`](StackBuilder::build).
#[derive(Clone)]
pub struct StackBuilder {
    pg: Result<PgConfig, ConfigError>,
    pool: PoolConfig,
    deadline: Duration,
    attempt_timeout: Duration,
    /// `None`: connect failures retried until the deadline, other failures [`DEFAULT_ATTEMPTS`].
    max_attempts: Option<u32>,
    slow_retries: u32,
    schedule: Exponential,
    budget: Option<RetryBudget>,
    breaker: Option<BreakerConfig>,
    recreate_after: Option<u32>,
    mux: Option<MuxConfig>,
    resolve: bool,
    /// Replica hosts for reads ([`StackBuilder::replicas`]).
    replicas: Option<Result<PgConfig, ConfigError>>,
}

impl fmt::Debug for StackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("pg", &self.pg)
            .field("pool", &self.pool)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("mux", &self.mux)
            .finish_non_exhaustive()
    }
}

/// Entry points for the ready-made stacks.
///
/// ```no_run
/// use rampart::{Query, Stack};
/// use tower::ServiceExt;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let db = Stack::serverless(&std::env::var("DATABASE_URL")?).build()?;
/// let row = db.clone().oneshot(Query::read("SELECT now()::text")).await?;
/// # Ok(()) }
/// ```
///
/// A request goes through, outermost first:
///
/// ```text
/// Deadline ─► Retry ─► CircuitBreaker ─► AttemptTimeout ─► Recreate ─► PgService ─► Pool (validation at checkout)
/// ```
///
/// - **Deadline** (overall, carried across retries and pushed down to the server as `statement_timeout`);
/// - **Retry**: exponential backoff with full jitter, a retry budget (20% of recent requests plus 10 a
///   second) so stacked retries can't multiply load, `Ambiguous` failures retried only for idempotent
///   requests;
/// - **CircuitBreaker**: opens when the database keeps failing, so callers fail fast instead of queueing
///   behind a dead server; counts transient failures and timeouts, never bad SQL, and never a lost
///   pooled link (that is the connection failing, not the database; see `BreakerClassifier`). Judged over
///   a 10 s window rather than the last few calls, so a sub-second restart under load does not open it;
/// - **AttemptTimeout**: no single attempt may hang (a black-holed link, a peer that acknowledges and never
///   answers); the connection of a timed-out attempt is cancelled on the server and discarded;
/// - **Recreate**: after consecutive lost pooled links the whole pool is rebuilt in the background, once
///   per burst (failed connects don't count: a new pool would fail the same way);
/// - **the pool** validates a connection idle past the bypass window before handing it out.
///
/// Defaults, on by default because a hung query is the failure a stack must never allow:
///
/// | setting | [`Stack::server`] | [`Stack::serverless`] |
/// |---|---|---|
/// | overall deadline | 10 s | 30 s (a cold start can take seconds) |
/// | per-attempt timeout | 3 s | 15 s (covers a cold connect) |
/// | attempts | a failed connect (refused, `57P03` starting up, too many connections): until the deadline (the retry budget and the breaker bound them); any other failure: 4; a statement the server cut at the attempt timeout: 2 ([`slow_statement_retries`](StackBuilder::slow_statement_retries)) | same |
/// | backoff | 50 ms doubling to 2 s, full jitter; none after a pooled link lost under the first attempt; at most 500 ms after a failed connect, 50 ms after a connect that found only standbys (`target_session_attrs=read-write` during a failover) | 100 ms doubling to 5 s, full jitter; same exceptions |
/// | breaker | opens at 50% failures over the last 10 s (at least 20 calls), 1 s open (constant, so it closes within about a second of the database answering again), 3 probes | same |
/// | recreate | after 8 consecutive lost pooled links | same |
/// | pool idle timeout | 10 min (TCP keepalives every 30 s keep NAT and load-balancer flows alive: AWS NLB forgets after 350 s, Azure LB after 4 min) | 3 min, swept every 30 s: under Azure LB's 4 min, AWS NLB's 350 s and Neon's 5 min suspend, so a suspend finds no connection to leave stale |
/// | validation | after 500 ms idle, 750 ms check timeout; once one connection is found dead, those as old are checked, and once a check times out, those as old are dropped unchecked | same |
///
/// [`Stack::pooler`] is the `server` stack for a pooler in transaction mode (PgBouncer and the hosted
/// poolers built on it): statements unnamed, the deadline pushed down with `SET LOCAL` inside the
/// statement's own transaction; see [`PoolerMode::Transaction`](crate::PoolerMode::Transaction).
///
/// [`StackBuilder::multiplex`] puts independent statements on a shared, pipelined connection instead of
/// a pooled one each (several times a pool's throughput for short statements); everything above the
/// service is the same. See [`MuxConfig`](crate::MuxConfig).
///
/// The deadline and the attempt timeout are defaults: a query given its own time with
/// [`Query::timeout`](crate::Query::timeout) gets exactly that, longer or shorter (one attempt may use all
/// of it), so a report known to take a minute does not need a stack of its own.
///
/// Every error reaching the caller is a [`rampart::Error`](crate::Error), whatever layer produced it.
#[derive(Debug)]
pub struct Stack;

impl Stack {
    /// The stack for an always-on server (see the table in the [`Stack`] docs).
    pub fn server(url: &str) -> StackBuilder {
        StackBuilder::new(PgConfig::server(url))
    }

    /// The stack for a serverless host that suspends when idle (Neon and the like).
    pub fn serverless(url: &str) -> StackBuilder {
        StackBuilder::new(PgConfig::serverless(url))
    }

    /// The stack for a pooler in transaction mode (PgBouncer, Neon's `-pooler` endpoints, Supabase's
    /// pooler): the [`server`](Self::server) stack, keeping no state in the server session between
    /// transactions (see [`PoolerMode::Transaction`](crate::PoolerMode::Transaction)). For a serverless host's pooler endpoint use
    /// `Stack::serverless(url).pooling(PoolerMode::Transaction)`.
    pub fn pooler(url: &str) -> StackBuilder {
        StackBuilder::new(PgConfig::pooler(url))
    }

    /// The stack for connection settings you built yourself; defaults follow the settings' preset.
    pub fn with_config(config: PgConfig) -> StackBuilder {
        StackBuilder::new(Ok(config))
    }
}

/// The serverless preset's pool: idle connections closed after 3 min (swept every 30 s, so none is kept
/// past 3.5 min), under the idle limits of the hosts it names (Neon suspends after 5 min, AWS NLB
/// forgets a flow after 350 s, Azure LB after 4 min).
fn serverless_pool() -> PoolConfig {
    PoolConfig::builder()
        .idle_timeout(Some(SERVERLESS_IDLE_TIMEOUT))
        .build()
        .expect("constant pool settings are valid")
}

const SERVERLESS_IDLE_TIMEOUT: Duration = Duration::from_secs(3 * 60);

fn exponential(base_ms: u64, max_ms: u64) -> Exponential {
    Exponential::builder()
        .base_delay(Duration::from_millis(base_ms))
        .multiplier(2.0)
        .max_delay(Duration::from_millis(max_ms))
        .jitter(Jitter::Full)
        .build()
        .expect("constant schedule is valid")
}

/// Attempts for a failure other than a failed connect, by default (see [`StackBuilder::max_attempts`]).
const DEFAULT_ATTEMPTS: u32 = 4;

/// The stack's retry classifier: [`PgClassifier`], except that once a request has had `other_attempts`
/// attempts counting only those that did not fail to connect, no failure but a failed connect is retried.
/// (The retry layer's own count is the user's [`StackBuilder::max_attempts`], or none.)
#[derive(Debug, Clone, Copy)]
struct RetryClassifier {
    other_attempts: u32,
}

impl<Res> rampart_layers::classify::Classify<Res, BoxError> for RetryClassifier {
    fn classify_error(&self, error: &BoxError) -> rampart_layers::Classification {
        let class = rampart_layers::classify::Classify::<Res, BoxError>::classify_error(
            &PgClassifier,
            error,
        );
        let connect = error
            .downcast_ref::<Error>()
            .is_some_and(|e| e.kind() == ErrorKind::Connect);
        if !connect && request::attempts_not_connecting() >= self.other_attempts {
            return rampart_layers::Classification::Permanent;
        }
        class
    }
}

/// The longest wait before retrying a refused or failed connect (a restart): the database is back within
/// this long of its listening again, whatever the schedule's cap.
const CONNECT_RETRY_CAP: Duration = Duration::from_millis(500);

/// The longest wait before retrying a connect that found only servers of the wrong kind for
/// `target_session_attrs` (a standby where a writer is wanted): a failover is under way, and the writer
/// takes connections the moment it is promoted, so the first write lands within this of it. The
/// breaker bounds what a long failover costs (it opens on the failed connects, then probes).
const FAILOVER_RETRY_CAP: Duration = Duration::from_millis(50);

/// The wait before a retry, where the error says better than the schedule (the retry layer's
/// `delay_generator`): none after a pooled connection lost under the first attempt (that connection
/// failed, not the database: the next attempt takes one the pool has checked, or a new one), and at most
/// [`CONNECT_RETRY_CAP`] after a failed connect (so a restart is ridden out with a stall no longer than
/// the outage plus that).
fn retry_delay(event: &rampart_layers::retry::RetryEvent<'_>) -> Option<Duration> {
    let error = event.error()?.downcast_ref::<Error>()?;
    match error.kind() {
        ErrorKind::ConnectionLost if !error.is_on_shared_connection() && event.attempt() == 1 => {
            Some(Duration::ZERO)
        }
        ErrorKind::Connect if met_a_standby(error) => Some(event.delay().min(FAILOVER_RETRY_CAP)),
        ErrorKind::Connect => Some(event.delay().min(CONNECT_RETRY_CAP)),
        _ => None,
    }
}

impl StackBuilder {
    fn new(pg: Result<PgConfig, ConfigError>) -> Self {
        let serverless = pg.as_ref().is_ok_and(|c| c.preset() == Preset::Serverless);
        let (deadline, attempt, schedule) = if serverless {
            (
                Duration::from_secs(30),
                Duration::from_secs(15),
                exponential(100, 5_000),
            )
        } else {
            (
                Duration::from_secs(10),
                Duration::from_secs(3),
                exponential(50, 2_000),
            )
        };
        let breaker = default_breaker(pg.as_ref().map(|c| c.redacted_url()).unwrap_or_default());
        let pool = if serverless {
            serverless_pool()
        } else {
            PoolConfig::default()
        };
        StackBuilder {
            pg,
            pool,
            deadline,
            attempt_timeout: attempt,
            // Refused connects until the deadline: a restart is ridden out, not given up on after a few.
            max_attempts: None,
            slow_retries: 1,
            schedule,
            // tower's defaults: retries at most 20% of the last 10 s of requests, plus 10 a second.
            budget: RetryBudget::builder()
                .window(Duration::from_secs(10))
                .min_retries_per_second(10)
                .retry_ratio(0.2)
                .build()
                .ok(),
            breaker: Some(breaker),
            recreate_after: Some(8),
            mux: None,
            resolve: true,
            replicas: None,
        }
    }
}

/// The stacks' breaker, named `name` (see the table in the [`Stack`] docs).
fn default_breaker(name: String) -> BreakerConfig {
    BreakerConfig::builder()
        .name(name)
        .failure_rate(0.5)
        .sliding_window(SlidingWindow::time(Duration::from_secs(10)))
        .minimum_calls(20)
        // Constant and short: a database that is restarting is back within seconds, and a doubling
        // wait (2 → 4 → 8 → 16 s) kept callers refused long after it answered. A long outage costs
        // three probes a second.
        .wait_in_open(Duration::from_secs(1))
        .wait_multiplier(1.0)
        .max_wait_in_open(Duration::from_secs(1))
        .half_open_calls(3)
        .build()
        .expect("constant breaker settings are valid")
}

impl StackBuilder {
    /// Sends [`Query::read`](crate::Query::read)s to replicas: `url` names the replica hosts (one, or
    /// several tried in turn; add `load_balance_hosts=random` to spread connections over them, or
    /// `target_session_attrs=read-only` to take only standbys), with the primary's preset. Writes,
    /// reads marked [`Query::primary`](crate::Query::primary) (to see the caller's own writes: a replica
    /// lags), transactions and streams go to the primary. A read the replica fails (down, refusing, too
    /// slow) is sent to the primary in the same attempt; the replicas have a circuit breaker of their
    /// own, with the stack's default settings, so once a dead replica has opened it reads go straight
    /// to the primary until it answers again. The replica pool has the primary's pool settings and is
    /// not multiplexed. A bad URL fails [`build`](Self::build) naming `replicas`.
    ///
    /// ```no_run
    /// use rampart::Stack;
    /// # fn demo() -> Result<(), rampart::ConfigError> {
    /// let db = Stack::server("postgres://app@db-a:5432,db-b:5432/app?target_session_attrs=read-write")
    ///     .replicas("postgres://app@db-b:5432,db-c:5432/app?load_balance_hosts=random")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn replicas(mut self, url: &str) -> Self {
        let preset = self
            .pg
            .as_ref()
            .map(|c| c.preset())
            .unwrap_or(Preset::Server);
        let config = match preset {
            Preset::Serverless => PgConfig::serverless(url),
            _ => PgConfig::server(url),
        };
        self.replicas =
            Some(config.map_err(|e| {
                ConfigError::new("replicas", format!("{}: {}", e.field(), e.reason()))
            }));
        self
    }

    /// Multiplexes independent statements over a few shared connections instead of giving each its own
    /// pooled connection; transactions and session work still use the pool. Several times the throughput
    /// of a pool for short statements under concurrency (see [`MuxConfig`](crate::MuxConfig) for the routing and the
    /// failure semantics, `BENCHMARKS.md` for the figures). Unless set in `config`, the shared
    /// connections' statement timeout is the stack's attempt timeout. Not available behind a pooler in
    /// transaction mode ([`build`](Self::build) fails).
    ///
    /// ```no_run
    /// use rampart::{MuxConfig, Stack};
    /// # fn demo() -> Result<(), rampart::ConfigError> {
    /// let db = Stack::server("postgres://app@db.internal/app").multiplex(MuxConfig::default()).build()?;
    /// # Ok(()) }
    /// ```
    pub fn multiplex(mut self, config: MuxConfig) -> Self {
        self.mux = Some(config);
        self
    }

    /// Whether a pooler in transaction mode sits in front of the server ([`PoolerMode`]).
    pub fn pooling(mut self, mode: PoolerMode) -> Self {
        self.pg = self.pg.map(|c| c.pooling(mode));
        self
    }

    /// Pool settings.
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// The overall deadline of a request, across all its attempts. A request may carry an earlier one
    /// ([`Query::timeout`](crate::Query::timeout)).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long one attempt may take.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How many attempts a request gets in all, whatever failed (1 turns retry off). By default a
    /// failed connect (refused, `57P03` starting up, too many connections) is retried until the
    /// deadline, bounded by the retry budget and stopped by the breaker, so a restart is ridden out;
    /// any other failure gets 4 attempts.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// How many times a request's statement is retried after the server cut it for running longer than
    /// the attempt timeout (default 1; 0 never retries a slow statement). A statement slower than its
    /// attempt is cut by the server (its `statement_timeout` is set under the attempt timeout), which
    /// answers, so the breaker does not count it as the database failing; only an attempt the server
    /// did not answer in time counts. A request granted its own time with
    /// [`Query::timeout`](crate::Query::timeout) is not cut this way.
    pub fn slow_statement_retries(mut self, retries: u32) -> Self {
        self.slow_retries = retries;
        self
    }

    /// The wait between attempts.
    pub fn backoff(mut self, schedule: Exponential) -> Self {
        self.schedule = schedule;
        self
    }

    /// The retry budget (by default tower's: retries at most 20% of the requests of the last 10 s, plus
    /// 10 a second). Share one [`RetryBudget`] between stacks to bound their retries together; `None`
    /// removes it (not recommended: stacked retries then multiply).
    pub fn retry_budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The circuit breaker's settings; `None` leaves it out.
    pub fn breaker(mut self, config: Option<BreakerConfig>) -> Self {
        self.breaker = config;
        self
    }

    /// Rebuild the pool after this many consecutive lost pooled links; `None` never rebuilds.
    pub fn recreate_after(mut self, failures: Option<u32>) -> Self {
        self.recreate_after = failures;
        self
    }

    /// Whether a plain write whose reply is lost is looked up on the server (default on): run in a
    /// transaction of its own whose id the stack learns before it commits, so that a lost reply is
    /// answered "applied" or "not applied" (and retried) instead of "outcome unknown". Costs a
    /// `BEGIN`/`COMMIT` around each plain write and the wait for the first reply before `COMMIT`
    /// (`BENCHMARKS.md` §7); reads and idempotent writes are untouched. See [`Db::resolved`] and the
    /// README's "Lost replies" section for what still ends unknown.
    pub fn resolve_outcomes(mut self, on: bool) -> Self {
        self.resolve = on;
        self
    }

    /// Builds the stack. Nothing connects yet: the first request opens the first connection. Must be
    /// called within a Tokio runtime. Every bad setting is a [`ConfigError`] naming it.
    pub fn build(self) -> Result<Db, ConfigError> {
        let pg = self.pg?;
        let server: Arc<str> = pg.redacted_url().into();
        if self.deadline.is_zero() {
            return Err(ConfigError::new("deadline", "must be greater than zero"));
        }
        if self.attempt_timeout.is_zero() {
            return Err(ConfigError::new(
                "attempt_timeout",
                "must be greater than zero",
            ));
        }
        if self.attempt_timeout > self.deadline {
            return Err(ConfigError::new(
                "attempt_timeout",
                "must not exceed the deadline",
            ));
        }
        if self.max_attempts == Some(0) {
            return Err(ConfigError::new("max_attempts", "must be at least 1"));
        }
        let retries = Arc::new(AtomicU64::new(0));
        let counted = retries.clone();
        let mut policy = RetryPolicy::builder()
            .max_attempts(self.max_attempts.unwrap_or(u32::MAX))
            .schedule(self.schedule)
            .classifier(RetryClassifier {
                other_attempts: self.max_attempts.map_or(DEFAULT_ATTEMPTS, |_| u32::MAX),
            })
            .on_retry(move |event| {
                counted.fetch_add(1, Ordering::Relaxed);
                request::retried(
                    event
                        .error()
                        .and_then(|e| e.downcast_ref::<Error>())
                        .map(|e| e.kind()),
                );
            });
        if let Some(budget) = self.budget {
            policy = policy.budget(budget);
        }
        let policy = policy
            .delay_generator(retry_delay)
            .build()
            .map_err(|e| ConfigError::new("retry", e.to_string()))?;
        let stream_policy = Arc::new(policy.clone().with_classifier(PgClassifier));

        let mux = self
            .mux
            .map(|m| m.or_statement_timeout(self.attempt_timeout));
        let service = new_service(&pg, &self.pool, mux.as_ref())?;
        let (bottom, services) = match self.recreate_after {
            Some(threshold) => {
                let config = RecreateConfig::builder()
                    .failure_threshold(threshold)
                    .build()
                    .map_err(|e| ConfigError::new("recreate_after", e.to_string()))?;
                let (pool, mux) = (self.pool.clone(), mux.clone());
                let factory = BoxCloneSyncService::new(tower::service_fn(move |()| {
                    std::future::ready(new_service(&pg, &pool, mux.as_ref()))
                }));
                let recreate = Recreate::with_classifier(service, factory, config, LostPooledLinks);
                let handle = recreate.handle();
                (Either::Left(recreate), Services::Rebuilt(handle))
            }
            // Both arms must fail alike: the layers' `BoxError`, which `Recreate` returns.
            None => (
                Either::Right(
                    service
                        .clone()
                        .map_err(BoxError::from as fn(Error) -> BoxError),
                ),
                Services::Fixed(service),
            ),
        };

        // Reads to the replicas, under their own breaker; everything else to the primary.
        let replica_pool = match self.replicas {
            Some(replicas) => Some(crate::Pool::new(replicas?, self.pool.clone())?),
            None => None,
        };
        let mut replica_breaker = None;
        let bottom = match &replica_pool {
            Some(pool) => {
                let service = crate::PgService::new(pool.clone())
                    .map_err(BoxError::from as fn(Error) -> BoxError);
                let replica: ReplicaService = if self.breaker.is_some() {
                    let layer = CircuitBreakerLayer::new(default_breaker(pool.server().to_owned()))
                        .with_classifier(BreakerClassifier);
                    replica_breaker = Some(layer.handle());
                    BoxCloneSyncService::new(layer.layer(service))
                } else {
                    BoxCloneSyncService::new(service)
                };
                Either::Left(Replicated::new(bottom, replica))
            }
            None => Either::Right(bottom),
        };

        let breaker_layer = self
            .breaker
            .map(|c| CircuitBreakerLayer::new(c).with_classifier(BreakerClassifier));
        let breaker = breaker_layer.as_ref().map(|l| l.handle());
        // One record of outcomes for the whole stack, at its top: errors made by the layers (a deadline,
        // an open breaker) count for health as much as those of the service, and it survives a rebuilt
        // pool.
        let outcomes = Arc::new(Outcomes::default());
        let resolved = Arc::new(Counts::default());
        let context = Arc::new(settle::Known {
            outcomes: outcomes.clone(),
            resolved: self.resolve.then(|| resolved.clone()),
            breaker: breaker.clone(),
            server,
            deadline: self.deadline,
        });
        let resolver = self.resolve.then(|| {
            Arc::new(Resolver {
                services: services.clone(),
                per_try: self.attempt_timeout,
            })
        });
        let inner = ServiceBuilder::new()
            .layer_fn(RequestScope::new)
            .layer_fn(|inner| Settle::new(inner, context.clone()))
            .layer(DeadlineLayer::new(self.deadline))
            .layer(RetryLayer::new(policy))
            .layer_fn(|inner| Attempt::new(inner, resolver.clone()))
            .option_layer(breaker_layer)
            .layer(AttemptTimeoutLayer::new(self.attempt_timeout).honouring_grants())
            .layer_fn(|inner| ServerCut::new(inner, self.attempt_timeout, self.slow_retries))
            .service(bottom);
        Ok(Db {
            inner: BoxCloneSyncService::new(inner),
            services,
            outcomes,
            resolve: self.resolve.then(|| resolved.clone()),
            resolved,
            breaker,
            retries,
            attempt_timeout: self.attempt_timeout,
            deadline: self.deadline,
            record_statements: false,
            stream_policy,
            replica_pool,
            replica_breaker,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The idle limits the presets are set under (Neon's suspend, AWS NLB, Azure LB).
    const NEON_SUSPEND: Duration = Duration::from_secs(5 * 60);
    const AWS_NLB_IDLE: Duration = Duration::from_secs(350);
    const AZURE_LB_IDLE: Duration = Duration::from_secs(4 * 60);

    #[test]
    fn serverless_keeps_no_connection_idle_past_the_hosts_limits() {
        let b = Stack::serverless("postgres://u@ep-1.neon.tech/db");
        let idle = b.pool.idle_timeout().expect("an idle timeout");
        // The sweep runs every quarter of it, at most every 30 s: a connection may live that much longer.
        let longest = idle + (idle / 4).min(Duration::from_secs(30));
        for limit in [NEON_SUSPEND, AWS_NLB_IDLE, AZURE_LB_IDLE] {
            assert!(longest < limit, "{longest:?} idle is not under {limit:?}");
        }
    }

    #[test]
    fn tcp_user_timeout_is_within_the_attempt_timeout() {
        for b in [
            Stack::server("postgres://u@db/app"),
            Stack::serverless("postgres://u@ep-1.neon.tech/db"),
            Stack::pooler("postgres://u@db:6432/app"),
        ] {
            let pg = b.pg.as_ref().unwrap().pg_config();
            let user_timeout = *pg.get_tcp_user_timeout().unwrap();
            assert!(user_timeout < b.attempt_timeout, "{user_timeout:?}");
            // Keepalives keep a middlebox's flow alive well under the shortest idle limit named.
            assert!(pg.get_keepalives_idle() < AZURE_LB_IDLE);
        }
    }

    #[test]
    fn the_open_wait_does_not_grow() {
        let b = Stack::server("postgres://u@db/app");
        let breaker = b.breaker.unwrap();
        assert_eq!(breaker.wait_in_open(), Duration::from_secs(1));
        assert_eq!(breaker.max_wait_in_open(), Duration::from_secs(1));
    }
}
