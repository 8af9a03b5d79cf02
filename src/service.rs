//! [`PgService`]: the database as a `tower::Service<Query>`.
//!
//! Each call checks a connection out of the [`Pool`] (waiting no longer than the pool's wait timeout or
//! the request's remaining deadline), prepares the statement through the connection's statement cache,
//! pushes the remaining deadline down as `statement_timeout`, runs it and returns the rows and the
//! affected-row count.
//!
//! A request that does not finish — its caller dropped the future, or a timeout layer above fired — has
//! its server-side query cancelled (a cancel request on a separate connection) and its connection
//! discarded, never handed out again: a connection with a request of unknown state on it, or on a
//! black-holed link, is not one to reuse.
//!
//! The response future is boxed: it is an `async` block whose type cannot be named, and the allocation
//! is noise beside a network round trip (see `BENCHMARKS.md`).
//!
//! Behind a pooler in transaction mode ([`PoolerMode::Transaction`]) nothing may live in the session:
//! statements are sent unnamed and the deadline is set with `SET LOCAL` inside the statement's own
//! transaction; see [`crate::pooler`].
//!
//! [`PgService::multiplexed`] adds shared connections that pipeline many independent statements each,
//! beside the pool; see [`crate::mux`] for how requests are routed between the two.
//!
//! `poll_ready` is always ready: the pool is the capacity, and how long to wait for it depends on the
//! request's deadline, which only `call` sees. Bound concurrency with the pool size, or stack tower's
//! `ConcurrencyLimit` in front.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::TryStreamExt;
use rampart_layers::Classification;
use rampart_layers::deadline::Deadlined;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;

use crate::classify::{Stage, closed_before_send, from_pg, link_failed};
use crate::config::PoolerMode;
use crate::error::{ConfigError, Error, ErrorKind};
use crate::health::Tracker;
use crate::mux::{Mux, MuxConfig, MuxStats};
use crate::pool::{InFlight, Pool};
use crate::query::{Query, Response};

/// Slack added above a pushed-down `statement_timeout`, so the session setting is reused across
/// requests with similar deadlines instead of being set for every one.
fn slack(remaining_ms: u64) -> u64 {
    (remaining_ms / 5).max(100)
}

/// The statement timeout to set for a request with `remaining` time, or `None` if the session's current
/// setting `current_ms` already fits (at least the remaining time, at most remaining plus slack).
pub(crate) fn statement_timeout_for(remaining: Option<Duration>, current_ms: u64) -> Option<u64> {
    match remaining {
        None => (current_ms != 0).then_some(0),
        Some(remaining) => {
            let want = (remaining.as_millis() as u64).max(1);
            let fits = current_ms >= want && current_ms <= want + slack(want);
            (!fits).then_some(want + slack(want) / 2)
        }
    }
}

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
/// let n: i32 = answer.rows()[0].get(0);
/// assert_eq!(n, 42);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgService {
    pool: Pool,
    mux: Option<Arc<Mux>>,
    tracker: Arc<Tracker>,
    /// Whether this service reports its outcomes to the tracker. A ready-made stack reports at its top
    /// (where layer errors such as an open breaker are seen too), so its service does not do it again.
    reports: bool,
}

impl PgService {
    /// A service running queries on connections from `pool`.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            mux: None,
            tracker: Arc::default(),
            reports: true,
        }
    }

    /// A multiplexed service: independent statements pipelined over a few shared connections, the rest
    /// (transactions, session state, slow statements) on connections from `pool`; see [`crate::mux`].
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
        let mut service = Self::new(pool);
        service.mux = Some(service.new_mux(config)?);
        Ok(service)
    }

    fn new_mux(&self, config: MuxConfig) -> Result<Arc<Mux>, ConfigError> {
        Mux::new(
            Arc::new(self.pool.pg_config().clone()),
            self.pool.config(),
            self.pool.server().into(),
            config,
        )
    }

    /// A service under a stack that reports outcomes to `tracker` itself; this one only reads it.
    pub(crate) fn with_tracker(
        pool: Pool,
        mux: Option<MuxConfig>,
        tracker: Arc<Tracker>,
    ) -> Result<Self, ConfigError> {
        let mut service = Self {
            pool,
            mux: None,
            tracker,
            reports: false,
        };
        if let Some(config) = mux {
            service.mux = Some(service.new_mux(config)?);
        }
        Ok(service)
    }

    /// What the shared connections are doing, if the service is multiplexed.
    pub fn mux_stats(&self) -> Option<MuxStats> {
        self.mux.as_ref().map(|m| m.stats())
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }
}

/// Runs a statement on `client` and collects its rows and affected-row count.
pub(crate) async fn execute(
    client: &tokio_postgres::Client,
    statement: &tokio_postgres::Statement,
    params: &[crate::query::Param],
) -> Result<Response, tokio_postgres::Error> {
    let params = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync));
    let stream = client.query_raw(statement, params).await?;
    futures_util::pin_mut!(stream);
    let rows: Vec<tokio_postgres::Row> = stream.as_mut().try_collect().await?;
    Ok(Response::new(rows, stream.rows_affected().unwrap_or(0)))
}

async fn run(pool: Pool, mux: Option<Arc<Mux>>, query: Query) -> Result<Response, Error> {
    let query = match mux {
        Some(mux) if mux.shares(&query) => match mux.run(query).await {
            Ok(result) => return result,
            Err(spilled) => spilled,
        },
        _ => query,
    };
    run_pooled(pool, query).await
}

async fn run_pooled(pool: Pool, query: Query) -> Result<Response, Error> {
    let remaining = query
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()));
    if remaining.is_some_and(|r| r.is_zero()) {
        return Err(Error::new(
            ErrorKind::DeadlineExceeded,
            Classification::Transient,
            "deadline passed before the query was sent",
        ));
    }
    let conn = pool.get_within(remaining).await?;
    let mut in_flight = InFlight::new(pool.clone(), conn);
    let server = pool.server();

    if in_flight.conn().client().is_closed() {
        in_flight.finish(true);
        return Err(closed_before_send(server));
    }
    if pool.pg_config().pooler_mode() == PoolerMode::Transaction {
        return crate::pooler::run(&pool, in_flight, &query).await;
    }
    // Preparing sends only a Parse: if the link fails here the statement never ran.
    let statement = match in_flight.conn().client().prepare_cached(query.sql()).await {
        Ok(s) => s,
        Err(e) => {
            let link_failed = link_failed(&e);
            in_flight.finish(link_failed);
            return Err(from_pg(e, Stage::BeforeSend, server));
        }
    };

    let remaining = query
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()));
    let set_timeout = statement_timeout_for(remaining, in_flight.conn().statement_timeout_ms());

    let (set_result, result) = {
        let client = in_flight.conn().client();
        // The SET is pipelined with the statement: one round trip for both.
        let set = async {
            match set_timeout {
                Some(ms) => client
                    .simple_query(&format!("SET statement_timeout = {ms}"))
                    .await
                    .map(|_| Some(ms)),
                None => Ok(None),
            }
        };
        let rows = execute(client, &statement, query.params());
        futures_util::future::join(set, rows).await
    };
    match set_result {
        Ok(Some(ms)) => in_flight.conn().set_statement_timeout_ms(ms),
        Ok(None) => {}
        // Unknown: make the next request set it again.
        Err(_) => in_flight.conn().set_statement_timeout_ms(u64::MAX),
    }
    let result = set_result.and(result);
    match result {
        Ok(response) => {
            in_flight.conn().mark_ok();
            in_flight.finish(false);
            Ok(response)
        }
        Err(e) => {
            // A server error means the link works; anything else means it does not.
            let link_failed = link_failed(&e);
            if !link_failed {
                in_flight.conn().mark_ok();
            }
            in_flight.finish(link_failed);
            Err(from_pg(e, Stage::InFlight, server))
        }
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
        let pool = self.pool.clone();
        let mux = self.mux.clone();
        if !self.reports {
            return Box::pin(run(pool, mux, query));
        }
        let tracker = self.tracker.clone();
        Box::pin(async move {
            let result = run(pool, mux, query).await;
            match &result {
                Ok(_) => tracker.success(),
                Err(e) => tracker.error(e),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_timeout_is_set_only_when_the_session_setting_does_not_fit() {
        // No deadline: clear a leftover setting, leave a clear one alone.
        assert_eq!(statement_timeout_for(None, 0), None);
        assert_eq!(statement_timeout_for(None, 900), Some(0));
        // A deadline: set remaining plus half the slack...
        assert_eq!(
            statement_timeout_for(Some(Duration::from_millis(1000)), 0),
            Some(1100)
        );
        // ...and keep it while it still fits the next requests' remaining time.
        assert_eq!(
            statement_timeout_for(Some(Duration::from_millis(990)), 1100),
            None
        );
        assert_eq!(
            statement_timeout_for(Some(Duration::from_millis(2000)), 1100),
            Some(2200)
        );
        assert_eq!(
            statement_timeout_for(Some(Duration::from_millis(300)), 1100),
            Some(350)
        );
    }
}
