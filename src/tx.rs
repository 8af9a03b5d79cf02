//! Transactions that are re-run whole when Postgres asks for it.
//!
//! Under `SERIALIZABLE` (and `REPEATABLE READ`) isolation, Postgres aborts a transaction with a
//! serialization failure (`40001`) or a deadlock (`40P01`) and expects the application to run it again
//! *from the start*: retrying the failed statement alone is wrong, since what the transaction read
//! earlier may have changed. [`Transactor::run`] does that: it runs your closure in a transaction, and on
//! those errors (or a connection lost before `COMMIT` was sent, when the server rolls the transaction back)
//! it rolls back, waits out the retry schedule, and runs the whole closure again on a fresh transaction.
//!
//! `COMMIT` is the one point where the outcome can be unknown: if the link fails after `COMMIT` was sent,
//! the transaction may or may not have committed. That is reported as
//! [`is_outcome_unknown`](crate::Error::is_outcome_unknown), never re-run.
//!
//! ```no_run
//! use rampart::tx::{IsolationLevel, Transactor};
//! use rampart::{PgConfig, Pool, PoolConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::new(PgConfig::from_url("postgres://postgres@127.0.0.1/postgres")?, PoolConfig::default())?;
//! let transfers = Transactor::new(pool).isolation(IsolationLevel::Serializable);
//! transfers
//!     .run(|tx| {
//!         Box::pin(async move {
//!             tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = $1", &[&1i32]).await?;
//!             tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = $1", &[&2i32]).await?;
//!             Ok(())
//!         })
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rampart_layers::Classification;
use rampart_layers::retry::RetryBudget;
use rampart_layers::retry::backoff::{Backoff, Exponential, Jitter};
use rampart_layers::rng::SplitMix64;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub use tokio_postgres::IsolationLevel;

use crate::classify::{Stage, from_pg};
use crate::config::PoolerMode;
use crate::error::{Error, ErrorKind};
use crate::pool::{InFlight, Pool};
use crate::pooler::{ParamTypes, set_local_timeout, typed};

/// A transaction in progress, handed to the closure of [`Transactor::run`]. Its methods return
/// [`Error`]s classified for a transaction: a lost connection inside it is safe to re-run.
pub struct Tx<'a> {
    inner: deadpool_postgres::Transaction<'a>,
    server: &'a str,
    /// Behind a transaction pooler: the pool's parameter types, for unnamed statements.
    unnamed: Option<&'a ParamTypes>,
    /// `SET LOCAL statement_timeout`, still to be sent (pipelined with the first statement).
    prelude: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Parameters of a statement.
pub type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Tx<'_> {
    fn err(&self, e: tokio_postgres::Error) -> Error {
        from_pg(e, Stage::InTransaction, self.server)
    }

    /// Runs `statement`, with the pending `SET LOCAL` pipelined in front of it the first time.
    async fn send<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Error> {
        let prelude = self
            .prelude
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match prelude {
            None => statement.await.map_err(|e| self.err(e)),
            Some(set) => {
                let (set, result) =
                    futures_util::future::join(self.inner.batch_execute(&set), statement).await;
                set.map_err(|e| self.err(e))?;
                result.map_err(|e| self.err(e))
            }
        }
    }

    /// Runs a statement and returns its rows (statements are prepared once per connection and cached;
    /// behind a transaction pooler they are sent unnamed).
    pub async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.send(async {
            match self.unnamed {
                Some(cache) => {
                    let types = cache.learn(&*self.inner, sql).await?;
                    let params = typed(params.iter().copied(), &types);
                    self.inner.query_typed(sql, &params).await
                }
                None => {
                    let statement = self.inner.prepare_cached(sql).await?;
                    self.inner.query(&statement, params).await
                }
            }
        })
        .await
    }

    /// Runs a statement that returns exactly one row.
    pub async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.send(async {
            match self.unnamed {
                Some(cache) => {
                    let types = cache.learn(&*self.inner, sql).await?;
                    let params = typed(params.iter().copied(), &types);
                    self.inner.query_typed_one(sql, &params).await
                }
                None => {
                    let statement = self.inner.prepare_cached(sql).await?;
                    self.inner.query_one(&statement, params).await
                }
            }
        })
        .await
    }

    /// Runs a statement and returns the number of rows it affected.
    pub async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.send(async {
            match self.unnamed {
                Some(cache) => {
                    let types = cache.learn(&*self.inner, sql).await?;
                    let params = typed(params.iter().copied(), &types);
                    self.inner.execute_typed(sql, &params).await
                }
                None => {
                    let statement = self.inner.prepare_cached(sql).await?;
                    self.inner.execute(&statement, params).await
                }
            }
        })
        .await
    }

    /// The underlying deadpool-postgres transaction, for anything else (errors from it are yours to map;
    /// behind a transaction pooler, don't use its `prepare_cached`: see [`crate::pooler`]).
    pub fn inner(&self) -> &deadpool_postgres::Transaction<'_> {
        &self.inner
    }
}

/// The boxed future a transaction closure returns: `|tx| Box::pin(async move { ... })`.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 't>>;

/// Runs closures in transactions and re-runs them whole on serialization failures and deadlocks.
///
/// Defaults: the server's isolation level, at most 5 runs, exponential backoff from 20 ms doubling to
/// 1 s with full jitter (contending transactions must not retry in lockstep), no retry budget.
#[derive(Clone, Debug)]
pub struct Transactor<B = Exponential> {
    pool: Pool,
    isolation: Option<IsolationLevel>,
    read_only: bool,
    max_attempts: u32,
    schedule: B,
    budget: Option<Arc<RetryBudget>>,
    attempt_timeout: Option<Duration>,
    max_elapsed: Option<Duration>,
    runs: Arc<std::sync::atomic::AtomicU64>,
}

impl Transactor<Exponential> {
    /// A transactor over `pool` with the defaults above.
    pub fn new(pool: Pool) -> Self {
        let schedule = Exponential::builder()
            .base_delay(Duration::from_millis(20))
            .multiplier(2.0)
            .max_delay(Duration::from_secs(1))
            .jitter(Jitter::Full)
            .build()
            .expect("constant schedule is valid");
        Self {
            pool,
            isolation: None,
            read_only: false,
            max_attempts: 5,
            schedule,
            budget: None,
            attempt_timeout: Some(Duration::from_secs(30)),
            max_elapsed: None,
            runs: Arc::default(),
        }
    }
}

impl<B: Backoff + Clone + Send + Sync> Transactor<B> {
    /// The isolation level of every transaction.
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = Some(level);
        self
    }

    /// Runs transactions `READ ONLY`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// How many times a closure runs at most (at least 1; 0 is treated as 1).
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// The wait between runs.
    pub fn schedule<B2: Backoff + Clone + Send + Sync>(self, schedule: B2) -> Transactor<B2> {
        Transactor {
            pool: self.pool,
            isolation: self.isolation,
            read_only: self.read_only,
            max_attempts: self.max_attempts,
            schedule,
            budget: self.budget,
            attempt_timeout: self.attempt_timeout,
            max_elapsed: self.max_elapsed,
            runs: self.runs,
        }
    }

    /// No run starts (and no wait begins) that would end past this much time after the first run
    /// started: re-runs are bounded by time as well as by count. `None` (the default) bounds them by
    /// count only.
    pub fn max_elapsed(mut self, limit: Option<Duration>) -> Self {
        self.max_elapsed = limit;
        self
    }

    /// Shares a retry budget with other retrying layers, so re-runs can't multiply load.
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// How long one run may take, from checkout to the end of `COMMIT` (30 s by default; `None` for no
    /// limit, which lets a dead network path hang a transaction for as long as TCP takes to notice). A run
    /// that times out is cancelled on the server and its connection discarded; it is re-run unless
    /// `COMMIT` had been sent, in which case the outcome is unknown and reported.
    pub fn attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How many times closures have run in total (first runs and re-runs).
    pub fn runs(&self) -> u64 {
        self.runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` in a transaction, committing if it returns `Ok`, and re-running the whole closure on a
    /// transient failure (`40001`, `40P01`, a connection lost before `COMMIT`, ...). A `Permanent` error
    /// from the closure rolls back and is returned at once.
    pub async fn run<T, F>(&self, mut f: F) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T>,
    {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let mut schedule = self.schedule.clone();
        let mut rng = SplitMix64::from_entropy();
        let mut attempt = 0u32;
        let started = tokio::time::Instant::now();
        loop {
            attempt += 1;
            self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let committing = std::sync::atomic::AtomicBool::new(false);
            let run = self.run_once(&mut f, &committing);
            let outcome = match self.attempt_timeout {
                Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                    Err(self.timed_out(limit, committing.load(std::sync::atomic::Ordering::SeqCst)))
                }),
                None => run.await,
            };
            let err = match outcome {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let retryable = err.classification() == Classification::Transient;
            let budget_ok = || self.budget.as_ref().is_none_or(|b| b.try_withdraw());
            if !retryable || attempt >= self.max_attempts || !budget_ok() {
                return Err(if retryable {
                    err.with_attempts(attempt)
                } else {
                    err
                });
            }
            let delay = schedule.next_delay(attempt, &mut rng).unwrap_or_default();
            if self
                .max_elapsed
                .is_some_and(|limit| started.elapsed() + delay >= limit)
            {
                return Err(err.with_attempts(attempt));
            }
            tracing::info!(
                target: "rampart::tx", attempt, delay_ms = delay.as_millis() as u64, error = %err,
                "transaction re-run"
            );
            tokio::time::sleep(delay).await;
        }
    }

    fn timed_out(&self, limit: Duration, committing: bool) -> Error {
        if committing {
            Error::new(
                ErrorKind::Timeout,
                Classification::Ambiguous,
                format!(
                    "COMMIT to {} did not answer within {limit:?}",
                    self.pool.server()
                ),
            )
        } else {
            Error::new(
                ErrorKind::Timeout,
                Classification::Transient,
                format!(
                    "transaction on {} did not finish within {limit:?}; rolled back",
                    self.pool.server()
                ),
            )
        }
    }

    async fn run_once<T, F>(
        &self,
        f: &mut F,
        committing: &std::sync::atomic::AtomicBool,
    ) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T>,
    {
        let conn = self.pool.get().await?;
        // Dropped before the end (the run timed out, the caller gave up): cancelled and discarded.
        let mut guard = InFlight::new(self.pool.clone(), conn);
        let server = self.pool.server().to_owned();
        let pooled = self.pool.pg_config().pooler_mode() == PoolerMode::Transaction;
        // Behind a transaction pooler the server session may carry anyone's `statement_timeout`; on a
        // direct connection, one a deadline pushed down earlier. Either way, this transaction sets its own.
        let prelude = (pooled || guard.conn().statement_timeout_ms() != 0)
            .then(|| set_local_timeout(self.attempt_timeout));
        let outcome = {
            let mut builder = guard
                .conn()
                .client_mut()
                .build_transaction()
                .read_only(self.read_only);
            if let Some(level) = self.isolation {
                builder = builder.isolation_level(level);
            }
            match builder.start().await {
                Err(e) => Err(from_pg(e, Stage::BeforeSend, &server)),
                Ok(inner) => {
                    let tx = Tx {
                        inner,
                        server: &server,
                        unnamed: pooled.then(|| self.pool.param_types()),
                        prelude: std::sync::Mutex::new(prelude),
                    };
                    let body = f(&tx).await;
                    match body {
                        Err(e) => {
                            // Dropping the transaction rolls it back.
                            drop(tx);
                            Err(e)
                        }
                        Ok(value) => {
                            committing.store(true, std::sync::atomic::Ordering::SeqCst);
                            match tx.inner.commit().await {
                                Ok(()) => Ok(value),
                                Err(e) if e.code().is_some() => {
                                    Err(from_pg(e, Stage::InFlight, &server))
                                }
                                Err(e) => Err(Error::new(
                                    ErrorKind::ConnectionLost,
                                    Classification::Ambiguous,
                                    format!("connection to {server} was lost during COMMIT"),
                                )
                                .with_source(e)),
                            }
                        }
                    }
                }
            }
        };
        let link_failed = matches!(&outcome, Err(e) if e.kind() == ErrorKind::ConnectionLost);
        if !link_failed {
            guard.conn().mark_ok();
        }
        guard.finish(link_failed);
        outcome
    }
}
