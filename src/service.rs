//! The database as a tower::Service: a query's path to a shared or a pooled connection.
//!
//! What users read is on [`PgService`] (the module is private: the flat list in `lib.rs` is the one public path).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::join;

use rampart_layers::Classification;
use rampart_layers::deadline::Deadlined;
use tokio::time::Instant;

use crate::config::PoolerMode;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::exec::{self, statement_timeout_for};
use crate::mux::{Mux, MuxConfig, MuxStats, Routed};
use crate::outcome::{Stage, closed_before_send, connection_gone, takes_no_writes};
use crate::pool::{InFlight, Pool};
use crate::query::{Query, Response};
use crate::resolve::{self, MARKED_IDLE_LIMIT, Opening};
use crate::session::{Effect, effect};
use crate::xact::mark_sql;

/// The database as a `tower::Service`: [`Query`] in, [`Response`] out.
///
/// ```no_run
/// use rampart::{PgConfig, PgService, Pool, PoolConfig, Query};
/// use tower::ServiceExt;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(PgConfig::from_url("postgres://postgres@127.0.0.1/postgres")?, PoolConfig::default())?;
/// let db = PgService::new(pool);
/// let answer = db.oneshot(Query::read("SELECT 40 + $1::int").bind(2i32)).await?;
/// let n: i32 = answer.scalar()?;
/// assert_eq!(n, 42);
/// # Ok(()) }
/// ```
///
/// Each call checks a connection out of the [`Pool`] (waiting no longer than the pool's wait timeout or
/// the request's remaining deadline), prepares the statement through the connection's statement cache,
/// pushes the remaining deadline down as `statement_timeout`, runs it and returns the rows and the
/// affected-row count.
///
/// A request that does not finish — its caller dropped the future, or a timeout layer above fired — has
/// its server-side query cancelled (a cancel request on a separate connection) and its connection
/// discarded, never handed out again: a connection with a request of unknown state on it, or on a
/// black-holed link, is not one to reuse.
///
/// The response future is boxed: it is an `async` block whose type cannot be named, and the allocation
/// is noise beside a network round trip (see `BENCHMARKS.md`).
///
/// Behind a pooler in transaction mode ([`PoolerMode::Transaction`]) nothing may live in the session:
/// statements are sent unnamed and the deadline is set with `SET LOCAL` inside the statement's own
/// transaction; see [`PoolerMode::Transaction`](crate::PoolerMode::Transaction). How a statement is sent is `exec.rs`'s; what a failure means, and
/// whether the connection survives it, `outcome.rs`'s.
///
/// [`PgService::multiplexed`] adds shared connections that pipeline many independent statements each,
/// beside the pool; see [`MuxConfig`](crate::MuxConfig) for how requests are routed between the two.
///
/// `poll_ready` is always ready: the pool is the capacity, and how long to wait for it depends on the
/// request's deadline, which only `call` sees. Bound concurrency with the pool size, or stack tower's
/// `ConcurrencyLimit` in front.
#[derive(Clone, Debug)]
pub struct PgService {
    pool: Pool,
    mux: Option<Arc<Mux>>,
}

impl PgService {
    /// A service running queries on connections from `pool`.
    pub fn new(pool: Pool) -> Self {
        Self { pool, mux: None }
    }

    /// A multiplexed service: independent statements pipelined over a few shared connections, the rest
    /// (transactions, session state, slow statements) on connections from `pool`; see [`MuxConfig`](crate::MuxConfig).
    /// Fails if `pool` is behind a pooler in transaction mode. Opens no connection yet.
    ///
    /// ```no_run
    /// use rampart::{MuxConfig, PgConfig, PgService, Pool, PoolConfig, Query};
    /// use tower::ServiceExt;
    ///
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = Pool::new(PgConfig::from_url("postgres://postgres@127.0.0.1/postgres")?, PoolConfig::default())?;
    /// let db = PgService::multiplexed(pool, MuxConfig::default())?;
    /// let answer = db.oneshot(Query::read("SELECT 1")).await?;
    /// # Ok(()) }
    /// ```
    pub fn multiplexed(pool: Pool, config: MuxConfig) -> Result<Self, ConfigError> {
        let mux = Mux::new(
            Arc::new(pool.pg_config().clone()),
            pool.config(),
            pool.server().into(),
            config,
        )?;
        Ok(Self {
            pool,
            mux: Some(mux),
        })
    }

    /// What the shared connections are doing, if the service is multiplexed.
    pub fn mux_stats(&self) -> Option<MuxStats> {
        self.mux.as_ref().map(|m| m.stats())
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

async fn run(pool: Pool, mux: Option<Arc<Mux>>, query: Query) -> Result<Response, Error> {
    let effect = effect(query.sql());
    if let Some(refused) = refused(effect) {
        return Err(refused);
    }
    let Some(mux) = mux else {
        return run_pooled(pool, query, effect).await;
    };
    let query = match mux.run(query, effect).await {
        Routed::Done(result) => return result,
        Routed::ToPool(query) => query,
    };
    let result = run_pooled(pool.clone(), query, effect).await;
    // A write the pool's server refused as read-only (plain writes run on the pool): the shared
    // connections to that server go too, though their reads still pass.
    if result.as_ref().err().is_some_and(takes_no_writes)
        && let Some(host) = pool.last_read_only_host()
    {
        mux.server_takes_no_writes(&host);
    }
    result
}

/// The error for a statement `run` does not take: nothing is sent.
fn refused(effect: Effect) -> Option<Error> {
    let why = match effect {
        Effect::Transaction => {
            "transaction control (BEGIN, COMMIT, SAVEPOINT, ...) cannot go through run: the pooled \
             connection would go back inside a transaction and swallow the next caller's writes; run \
             transactions with Db::transactor() or Transactor::new(pool)"
        }
        Effect::Copy => {
            "COPY cannot go through run: its data does not travel as a statement's rows; use INSERT ... \
             SELECT, or a connection of your own"
        }
        _ => return None,
    };
    Some(Error::new(
        ErrorKind::InvalidRequest,
        Classification::Permanent,
        why,
    ))
}

async fn run_pooled(pool: Pool, query: Query, effect: Effect) -> Result<Response, Error> {
    let mut remaining = query
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()));
    if remaining.is_some_and(|r| r.is_zero()) {
        return Err(Error::new(
            ErrorKind::DeadlineExceeded,
            Classification::Transient,
            "deadline passed before the query was sent",
        ));
    }
    // A connection found dead before anything of the request was written costs the request nothing: it
    // is discarded (the pool then checks the connections as old, see `pool/suspect.rs`) and the next one
    // taken at once, with no attempt spent and no backoff. Each turn uses up a connection, so the turns
    // are bounded by the pool's size (the last ones are new connections).
    let mut dead_before_send = 0;
    let (mut in_flight, statement) = loop {
        let conn = pool.get_within(remaining).await?;
        let mut in_flight = InFlight::new(pool.clone(), conn);
        if effect == Effect::Session {
            in_flight.close_after_use();
        }
        let retake = dead_before_send <= pool.config().max_size();
        if in_flight.conn().client().is_closed() {
            in_flight.release(true);
            if !retake {
                return Err(closed_before_send(pool.server()));
            }
        } else {
            if pool.pg_config().pooler_mode() == PoolerMode::Transaction {
                return crate::pooler::run(&pool, in_flight, &query, effect).await;
            }
            // Preparing sends only a Parse: if the link fails here the statement never ran.
            match in_flight.conn().prepare(query.sql()).await {
                Ok(s) => break (in_flight, s),
                Err(e) if retake && connection_gone(&e) => in_flight.release(true),
                Err(e) => return in_flight.finish(Err(e), Stage::NotSent),
            }
        }
        dead_before_send += 1;
        let left = query
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|r| r.is_zero()) {
            return Err(closed_before_send(pool.server()));
        }
        tracing::debug!(target: "rampart::pool", "connection found dead before sending: taking the next");
        remaining = left;
    };

    // A plain write in a stack that resolves lost replies runs in a transaction of its own, marked with
    // its id (see `resolve.rs`); the first such write on a pool asks which functions the server has.
    let wanted = resolve::applies(&query, effect);
    let flavour = match resolve::marking(&pool, in_flight.conn().client(), wanted).await {
        Ok(flavour) => flavour,
        Err(e) => return in_flight.finish(Err(e), Stage::NotSent),
    };
    // A marked write's opening, mark and COMMIT are prepared once per connection (three round trips on
    // its first marked write, none after).
    let opening = if let Some(flavour) = flavour {
        let conn = in_flight.conn();
        let prepared = async {
            Ok::<_, tokio_postgres::Error>((
                flavour,
                conn.prepare("BEGIN").await?,
                conn.prepare(mark_sql(flavour)).await?,
                conn.prepare("COMMIT").await?,
            ))
        };
        match prepared.await {
            Ok(statements) => Some(statements),
            Err(e) => return in_flight.finish(Err(e), Stage::NotSent),
        }
    } else {
        None
    };

    let remaining = query
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()));
    let set_timeout = statement_timeout_for(remaining, in_flight.conn().statement_timeout_ms());
    // The server ends a transaction left idle past this on its own (a client gone before COMMIT): set
    // once per connection, with its first marked write.
    let set_idle_limit = flavour.is_some() && !in_flight.conn().idle_limit_set();

    let (set_result, head, result) = {
        let client = in_flight.conn().client();
        // The SETs are pipelined with the statement: one round trip for all.
        let set = async {
            let mut sql = String::new();
            if let Some(ms) = set_timeout {
                sql.push_str(&format!("SET statement_timeout = {ms}; "));
            }
            if set_idle_limit {
                sql.push_str(&format!(
                    "SET idle_in_transaction_session_timeout = {}",
                    MARKED_IDLE_LIMIT.as_millis()
                ));
            }
            if sql.is_empty() {
                Ok(None)
            } else {
                client.simple_query(&sql).await.map(|_| set_timeout)
            }
        };
        query.mark_sent();
        let rows = exec::prepared(client, &statement, query.params());
        match &opening {
            Some((flavour, begin, mark, commit)) => {
                let returns_rows = !statement.columns().is_empty();
                let marked = resolve::commit_after_mark(
                    client,
                    &query,
                    Opening::Prepared {
                        begin,
                        mark,
                        commit,
                    },
                    *flavour,
                    returns_rows,
                    rows,
                );
                let (set, (head, rows)) = join(set, marked).await;
                (set, Some(head), rows)
            }
            None => {
                let (set, rows) = join(set, rows).await;
                (set, None, rows)
            }
        }
    };
    if set_idle_limit && set_result.is_ok() {
        in_flight.conn().idle_limit_was_set();
    }
    match set_result {
        Ok(Some(ms)) => in_flight.conn().set_statement_timeout_ms(ms),
        Ok(None) => {}
        // Unknown: make the next request set it again.
        Err(_) => in_flight.conn().set_statement_timeout_ms(u64::MAX),
    }
    match head {
        // A failed SET outside the transaction does not decide the write's outcome; a lost link does.
        Some(head) => {
            let also_gone = set_result.as_ref().err().is_some_and(connection_gone);
            resolve::finish_marked(&pool, in_flight, &query, head, result, also_gone).await
        }
        None => in_flight.finish(set_result.and(result), Stage::Sent),
    }
}

impl tower::Service<Query> for PgService {
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, query: Query) -> Self::Future {
        Box::pin(run(self.pool.clone(), self.mux.clone(), query))
    }
}
