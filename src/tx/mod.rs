//! Transactions re-run whole, through the retry layer.
//!
//! What users read is on [`Transactor`] (the module is private: the flat list in `lib.rs` is the one public path).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_layers::Classification;
use rampart_layers::classify::Idempotence;
use rampart_layers::deadline::Deadlined;
use rampart_layers::retry::backoff::{Backoff, Exponential, Jitter};
use rampart_layers::retry::{Retry, RetryBudget, RetryPolicy};
use tokio::time::Instant;
use tower::ServiceExt;

pub use tokio_postgres::IsolationLevel;

use crate::classify::PgClassifier;
use crate::config::PoolerMode;
use crate::error::{Error, ErrorKind};
use crate::exec::set_local_timeout;
use crate::outcome::{Link, Stage, failure};
use crate::pool::{InFlight, Pool};
use crate::resolve::{Resolution, Settled, resolve, settled};
use crate::sync::lock;
use crate::xact::{Counts, Mark};

mod transaction;

pub use self::transaction::{Params, Tx, TxFuture};

/// Runs closures in transactions and re-runs them whole on serialization failures and deadlocks.
///
/// Defaults: the server's isolation level, at most 5 runs, exponential backoff from 20 ms doubling to
/// 1 s with full jitter (contending transactions must not retry in lockstep), no retry budget, 30 s a run.
///
/// Under `SERIALIZABLE` (and `REPEATABLE READ`) isolation, Postgres aborts a transaction with a
/// serialization failure (`40001`) or a deadlock (`40P01`) and expects the application to run it again
/// *from the start*: retrying the failed statement alone is wrong, since what the transaction read
/// earlier may have changed. [`Transactor::run`] does that: it runs your closure in a transaction, and on
/// those errors (or a connection lost before `COMMIT` was sent, when the server rolls the transaction back)
/// it rolls back, waits out the retry schedule, and runs the whole closure again on a fresh transaction.
///
/// `COMMIT` is the one point where the outcome can be unknown: if the link fails after `COMMIT` was sent,
/// the transaction may or may not have committed. The transactor learns each transaction's id with its
/// first statement (pipelined with it: no extra round trip), so such a lost reply is looked up on the
/// server ([`resolve_outcomes`](Transactor::resolve_outcomes), on by default): committed, the run's
/// value is returned — it was computed before `COMMIT`; rolled back, the closure runs again; no certain
/// answer, it is reported as [`is_outcome_unknown`](crate::Error::is_outcome_unknown) and never re-run.
///
/// The re-runs are [`rampart_layers::retry`]'s, the loop every stack uses, not a second one: each run is
/// one call to a small service, and the retry layer's policy (attempts, backoff, budget, time limit) and
/// [`PgClassifier`](crate::PgClassifier) decide whether to run again. A run is not idempotent, so a run
/// whose outcome is unknown is never repeated.
///
/// ```no_run
/// use rampart::{IsolationLevel, Transactor};
/// use rampart::{PgConfig, Pool, PoolConfig};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(PgConfig::from_url("postgres://postgres@127.0.0.1/postgres")?, PoolConfig::default())?;
/// let transfers = Transactor::new(pool).isolation(IsolationLevel::Serializable);
/// transfers
///     .run(|tx| {
///         Box::pin(async move {
///             tx.execute("UPDATE accounts SET balance = balance - 10 WHERE id = $1", &[&1i32]).await?;
///             tx.execute("UPDATE accounts SET balance = balance + 10 WHERE id = $1", &[&2i32]).await?;
///             Ok(())
///         })
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Transactor<B = Exponential> {
    pool: Pool,
    isolation: Option<IsolationLevel>,
    read_only: bool,
    max_attempts: u32,
    schedule: B,
    budget: Option<RetryBudget>,
    attempt_timeout: Option<Duration>,
    max_elapsed: Option<Duration>,
    resolve: bool,
    /// Where a stack counts the lost replies it resolves ([`Db::resolved`](crate::Db::resolved)).
    counts: Option<Arc<Counts>>,
    runs: Arc<AtomicU64>,
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
            .unwrap_or_default();
        Self {
            pool,
            isolation: None,
            read_only: false,
            max_attempts: 5,
            schedule,
            budget: None,
            attempt_timeout: Some(Duration::from_secs(30)),
            max_elapsed: None,
            resolve: true,
            counts: None,
            runs: Arc::default(),
        }
    }
}

impl<B: Backoff + Clone + Send + Sync + 'static> Transactor<B> {
    /// The isolation level of every transaction.
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.isolation = Some(level);
        self
    }

    /// Whether a transaction whose `COMMIT` reply is lost is looked up on the server (default on; see
    /// the [type docs](Transactor)). Off, or for a read-only transactor, such a run is outcome unknown.
    pub fn resolve_outcomes(mut self, on: bool) -> Self {
        self.resolve = on;
        self
    }

    /// Counts the lost replies this transactor resolves where a stack counts its own.
    pub(crate) fn counting_resolved(mut self, counts: Arc<Counts>) -> Self {
        self.counts = Some(counts);
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
    pub fn schedule<B2: Backoff + Clone + Send + Sync + 'static>(
        self,
        schedule: B2,
    ) -> Transactor<B2> {
        Transactor {
            pool: self.pool,
            isolation: self.isolation,
            read_only: self.read_only,
            max_attempts: self.max_attempts,
            schedule,
            budget: self.budget,
            attempt_timeout: self.attempt_timeout,
            max_elapsed: self.max_elapsed,
            resolve: self.resolve,
            counts: self.counts,
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

    /// Shares a retry budget with other retrying layers (clones of a [`RetryBudget`] share it), so
    /// re-runs can't multiply load.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
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
        self.runs.load(Ordering::Relaxed)
    }

    /// The retry layer's policy for this transactor's re-runs.
    fn policy(&self) -> Result<RetryPolicy<PgClassifier, B>, Error> {
        let mut policy = RetryPolicy::builder()
            .max_attempts(self.max_attempts)
            .schedule(self.schedule.clone())
            .classifier(PgClassifier)
            .on_retry(|event| {
                tracing::info!(
                    target: "rampart::tx", attempt = event.attempt(),
                    delay_ms = event.delay().as_millis() as u64,
                    error = event.error().map(tracing::field::display),
                    "transaction re-run"
                );
            });
        if let Some(limit) = self.max_elapsed {
            policy = policy.max_elapsed(limit);
        }
        if let Some(budget) = &self.budget {
            policy = policy.budget(budget.clone());
        }
        policy.build().map_err(|e| {
            Error::new(
                ErrorKind::Other,
                Classification::Permanent,
                format!("transactor settings: {e}"),
            )
        })
    }

    /// Runs `f` in a transaction, committing if it returns `Ok`, and re-running the whole closure on a
    /// transient failure (`40001`, `40P01`, a connection lost before `COMMIT`, ...). A `Permanent` error
    /// from the closure rolls back and is returned at once.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
        T: Send,
    {
        let closure = Mutex::new(f);
        let runs = Retry::new(
            RunOnce {
                transactor: self,
                closure: &closure,
            },
            self.policy()?,
        );
        runs.oneshot(TxRun)
            .await
            .map_err(|e| Error::from_layers(Box::new(e), false))
    }

    /// One run, bounded by the attempt timeout.
    async fn run_timed<T, F>(&self, f: &Mutex<F>) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T>,
    {
        self.runs.fetch_add(1, Ordering::SeqCst);
        // Kept outside the run, which a timeout drops: what a lost COMMIT is looked up with.
        let run_state = RunState::default();
        let run = self.run_once(f, &run_state);
        let result = match self.attempt_timeout {
            Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
                Err(self.timed_out(limit, run_state.committing.load(Ordering::SeqCst)))
            }),
            None => run.await,
        };
        match result {
            Err(e) if e.is_outcome_unknown() && run_state.committing.load(Ordering::SeqCst) => {
                self.resolve_lost_commit(e, run_state).await
            }
            other => other,
        }
    }

    /// A run whose `COMMIT` reply was lost (`lost`): what the server says of its transaction.
    async fn resolve_lost_commit<T>(&self, lost: Error, run: RunState<T>) -> Result<T, Error> {
        let Some(marked) = lock(&run.mark).take() else {
            return Err(lost);
        };
        let resolution = match marked {
            Some(mark) => {
                // Bounded by the transactor's time limit (a ready-made stack's deadline), else a run's.
                let per_run = self.attempt_timeout.unwrap_or(Duration::from_secs(30));
                let limit = self.max_elapsed.unwrap_or(per_run).max(per_run);
                let per_try = per_run.min(crate::resolve::LOOKUP_TRY);
                resolve(
                    &self.pool,
                    Some(&mark),
                    Some(Instant::now() + limit),
                    per_try,
                )
                .await
            }
            None => {
                let nothing = Resolution::NotApplied(
                    "it had written nothing (no transaction id was assigned)".to_owned(),
                );
                crate::resolve::count(self.pool.server(), &nothing);
                nothing
            }
        };
        if let Some(counts) = &self.counts {
            counts.record(resolution.label());
        }
        // The run's value was kept before COMMIT: nothing of it was lost with the reply.
        match settled(resolution, lost.kind(), lost.message(), false) {
            Settled::Applied => run.take_value(self.pool.server()),
            Settled::Err(e) => Err(e),
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

    async fn run_once<T, F>(&self, f: &Mutex<F>, run: &RunState<T>) -> Result<T, Error>
    where
        F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T>,
    {
        let remaining = self
            .attempt_timeout
            .map(|limit| limit.saturating_sub(Duration::from_millis(1)));
        let conn = self.pool.get_within(remaining).await?;
        // Dropped before the end (the run timed out, the caller gave up): cancelled and discarded.
        let mut guard = InFlight::new(self.pool.clone(), conn);
        let server = self.pool.server().to_owned();
        let pooled = self.pool.pg_config().pooler_mode() == PoolerMode::Transaction;
        // Behind a transaction pooler the server session may carry anyone's `statement_timeout`; on a
        // direct connection, one a deadline pushed down earlier. Either way, this transaction sets its own.
        let mut prelude = (pooled || guard.conn().statement_timeout_ms() != 0)
            .then(|| set_local_timeout(self.attempt_timeout));
        // The session may end transactions idle past the marked writes' limit: not this one, if its runs
        // may last longer.
        if guard.conn().idle_limit_set()
            && self
                .attempt_timeout
                .is_none_or(|t| t > crate::resolve::MARKED_IDLE_LIMIT)
        {
            let off = "SET LOCAL idle_in_transaction_session_timeout = 0";
            prelude = Some(match prelude {
                Some(set) => format!("{set}; {off}"),
                None => off.to_owned(),
            });
        }
        // Marked: the transaction's id is read with its first statement (see `resolve.rs`).
        let wanted = self.resolve && !self.read_only;
        let marking = match crate::resolve::marking(&self.pool, guard.conn().client(), wanted).await
        {
            Ok(marking) => marking,
            Err(e) => return Err(guard.fail(e, Stage::NotSent)),
        };
        let (outcome, gone) = {
            let (client, statements) = guard.conn().split();
            let mut builder = client.build_transaction().read_only(self.read_only);
            if let Some(level) = self.isolation {
                builder = builder.isolation_level(level);
            }
            match builder.start().await {
                Err(e) => {
                    let failed = failure(e, Stage::NotSent, Link::Own, &server);
                    (Err(failed.error), failed.gone)
                }
                Ok(inner) => {
                    let tx = Tx {
                        inner,
                        server: &server,
                        statements,
                        unnamed: pooled.then(|| self.pool.param_types()),
                        prelude: Mutex::new(prelude),
                        marking: Mutex::new(marking),
                        mark: &run.mark,
                        gone: AtomicBool::new(false),
                    };
                    let body = {
                        let mut f = lock(f);
                        (*f)(&tx)
                    }
                    .await;
                    match body {
                        Err(e) => {
                            let gone = tx.gone.load(Ordering::Relaxed);
                            // Dropping the transaction rolls it back.
                            drop(tx);
                            (Err(e), gone)
                        }
                        Ok(value) => match tx.before_commit().await {
                            Err(e) => (Err(e), tx.gone.load(Ordering::Relaxed)),
                            Ok(()) => {
                                // The value is kept outside the run: a lost COMMIT that committed returns it.
                                *lock(&run.value) = Some(value);
                                run.committing.store(true, Ordering::SeqCst);
                                match tx.inner.commit().await {
                                    Ok(()) => (run.take_value(&server), false),
                                    Err(e) => {
                                        let failed =
                                            failure(e, Stage::Committing, Link::Own, &server);
                                        (Err(failed.error), failed.gone)
                                    }
                                }
                            }
                        },
                    }
                }
            }
        };
        // A write refused as read-only: the server was demoted, and every connection to it must go.
        if outcome
            .as_ref()
            .err()
            .is_some_and(crate::outcome::takes_no_writes)
        {
            let host = guard.conn().host().clone();
            self.pool.server_takes_no_writes(&host);
        }
        guard.release(gone);
        outcome
    }
}

/// What one run leaves outside itself (a timeout drops the run): whether `COMMIT` was sent, the
/// transaction's id, and the closure's value, for a lost `COMMIT` to be looked up and, if it committed,
/// answered with the value.
struct RunState<T> {
    committing: AtomicBool,
    /// `None`: not marked; `Some(None)`: marked, but the transaction was assigned no id (it wrote
    /// nothing); `Some(Some(mark))`: its id.
    mark: Mutex<Option<Option<Mark>>>,
    value: Mutex<Option<T>>,
}

impl<T> Default for RunState<T> {
    fn default() -> Self {
        Self {
            committing: AtomicBool::new(false),
            mark: Mutex::new(None),
            value: Mutex::new(None),
        }
    }
}

impl<T> RunState<T> {
    /// The value kept before `COMMIT`.
    fn take_value(&self, server: &str) -> Result<T, Error> {
        lock(&self.value).take().ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                Classification::Permanent,
                format!("the transaction on {server} committed, but its value was already taken"),
            )
        })
    }
}

/// One run of a transaction, as the retry layer sees it: not idempotent (a run whose outcome is unknown
/// is never repeated), with no deadline of its own (the transactor's time limit is the policy's).
#[derive(Debug, Clone, Copy)]
struct TxRun;

impl Idempotence for TxRun {
    fn is_idempotent(&self) -> bool {
        false
    }
}

impl Deadlined for TxRun {
    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn set_deadline(&mut self, _: Instant) {}
}

/// The service the retry layer calls once a run.
struct RunOnce<'a, F, B> {
    transactor: &'a Transactor<B>,
    closure: &'a Mutex<F>,
}

impl<F, B> Clone for RunOnce<'_, F, B> {
    fn clone(&self) -> Self {
        Self {
            transactor: self.transactor,
            closure: self.closure,
        }
    }
}

impl<'a, T, F, B> tower::Service<TxRun> for RunOnce<'a, F, B>
where
    F: for<'t> FnMut(&'t Tx<'t>) -> TxFuture<'t, T> + Send,
    T: Send + 'a,
    B: Backoff + Clone + Send + Sync + 'static,
{
    type Response = T;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: TxRun) -> Self::Future {
        let (transactor, closure) = (self.transactor, self.closure);
        Box::pin(transactor.run_timed(closure))
    }
}
