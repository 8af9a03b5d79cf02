//! Running behind a pooler in transaction mode (PgBouncer, Neon's `-pooler` endpoints, Supabase's pooler).
//!
//! When one server's connections are not enough for a fleet of application instances, a pooler in
//! transaction mode shares a few server sessions among many client connections: a client holds a server
//! session only for the length of a transaction (or of one statement outside a transaction), and its next
//! transaction may run on another. What lives in a *session* then stops working, silently:
//!
//! | session state | what goes wrong in transaction mode | what rampart does with [`PoolerMode::Transaction`] |
//! |---|---|---|
//! | `SET statement_timeout` outside a transaction | set on one server session, the statement runs on another, and the setting leaks to whichever client gets that session next | `BEGIN; SET LOCAL statement_timeout = ...; <statement>; COMMIT`, pipelined: the setting lives and dies with the statement's own transaction |
//! | named prepared statements (`prepare_cached`, tokio-postgres's `prepare`) | prepared on one server session, executed on another: `26000 prepared statement "s3" does not exist`, or `42P05 ... already exists` when another process's names collide | statements are sent **unnamed** (tokio-postgres's `query_typed`): parse, bind and execute in one message, nothing left behind |
//! | SQL `PREPARE`, advisory locks, `LISTEN`, temporary tables, `SET` | the same | not used by rampart; don't use them through a transaction pooler (use transaction-scoped forms: `SET LOCAL`, `pg_advisory_xact_lock`) |
//!
//! Named protocol-level prepared statements are unsafe through **PgBouncer before 1.21** (Debian 12 ships
//! 1.18) and through 1.21 or later unless `max_prepared_statements` is set above 0; the session `SET` is
//! unsafe through every version. [`PoolerMode::Transaction`] is safe with all of them.
//!
//! Unnamed statements need the parameters' types up front. rampart learns them once per SQL text and pool
//! (a `Parse`/`Describe` of a named statement *inside* a transaction, closed before the transaction ends,
//! so the statement never outlives the server session it was made on) and sends every later request as a
//! single `Parse`/`Bind`/`Execute`.
//!
//! # What the pool's checks mean behind a pooler
//!
//! The socket is to the pooler, not to Postgres, so:
//!
//! - **Validation** at checkout (an empty query) proves the pooler answers and could give the client a
//!   server session *now*; it does not prove the next transaction gets the same one, and it need not: no
//!   state is kept in it. A Postgres restart behind the pooler does not close the client's connections to
//!   the pooler, so validation does not fail and rampart's connections stay; the pooler replaces its
//!   server connections (tested in `tests/pgbouncer`).
//! - The **keepalive pinger** keeps the link to the pooler alive through NATs and load balancers; each
//!   ping borrows a server session for one empty query (and so wakes a suspended serverless compute:
//!   leave it off there, as the serverless preset does).
//! - **Max lifetime** and **idle eviction** age rampart's connections to the pooler, which is useful to
//!   spread clients over several pooler instances behind a load balancer; server sessions are aged by the
//!   pooler (PgBouncer's `server_lifetime`, `server_idle_timeout`). Keep rampart's idle timeout below the
//!   pooler's `client_idle_timeout` if that is set.
//! - A cancel request (a deadline passed, the caller gave up) goes to the pooler, which forwards it to the
//!   server session the client is using.
//! - `DISCARD ALL` is never needed: rampart leaves no session state behind.
//!
//! # The cost
//!
//! A request with a deadline (every request through the ready-made stack) runs as `BEGIN; SET LOCAL` +
//! statement + `COMMIT`, pipelined: still one round trip, but three more commands for the server, and
//! an unnamed statement is parsed and planned every time. Measured sequentially on loopback (one caller,
//! `SELECT $1::int`, a loaded 2-core machine, so rough): about 80-110 µs a request straight to Postgres
//! in session mode, 150-250 µs in transaction mode; without a deadline the two are within noise of each
//! other (one unnamed statement against one cached one). Over a real network the round trip dominates
//! and the difference shrinks to the server's work.
//!
//! # Limits
//!
//! - A statement that cannot run inside a transaction block (`VACUUM`, `CREATE INDEX CONCURRENTLY`,
//!   `CREATE DATABASE`) fails with `25001` when it has a deadline; run it on a direct connection.
//! - tokio-postgres looks up *custom* types (enums, composites, extension types such as `citext`) in
//!   results through a named statement it caches per connection, which fails through a pooler that does
//!   not track prepared statements: cast such columns to a built-in type (`mood::text`), or use PgBouncer
//!   1.21+ with `max_prepared_statements`.
//! - rampart leaves no session state behind, but cannot stop other clients of the same pooler from doing
//!   so; a pushed-down deadline overrides a leaked `statement_timeout` for its own transaction.
//!
//! # The pooler's own errors
//!
//! PgBouncer reports its own failures as SQLSTATE `08P01` with a message; [`crate::classify`] tells them
//! apart (`server conn crashed?` is an unknown outcome, `no such database` is permanent, the rest are
//! transient).
//!
//! ```no_run
//! use rampart::{Query, Stack};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // PgBouncer in transaction mode on port 6432, or Neon's `-pooler` host, or Supabase's port 6543.
//! let db = Stack::pooler("postgres://app@pgbouncer.internal:6432/app").build()?;
//! let n = db.run(Query::read("SELECT $1::int + 1").bind(41i32)).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use tokio::time::Instant;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row};

pub use crate::config::PoolerMode;

use crate::classify::{Stage, from_pg};
use crate::error::Error;
use crate::pool::{InFlight, Pool};
use crate::query::{Param, Query, Response};
use crate::service::statement_timeout_for;
use rampart_layers::deadline::Deadlined;

/// How many distinct SQL texts a pool remembers the parameter types of; past it, the cache starts over.
const MAX_CACHED: usize = 1024;

/// The parameter types of each SQL text, learned once per pool, so later requests are sent unnamed in
/// one message. Shared by every connection of the pool: types depend on the SQL and the schema, not on
/// the server session.
#[derive(Debug, Default)]
pub(crate) struct ParamTypes {
    map: Mutex<HashMap<Arc<str>, Arc<[Type]>>>,
}

impl ParamTypes {
    pub(crate) fn get(&self, sql: &str) -> Option<Arc<[Type]>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sql)
            .cloned()
    }

    fn insert(&self, sql: &str, types: Arc<[Type]>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(sql.into(), types);
    }

    /// The parameter types of `sql`, from the cache or by preparing it on `client`, which must be inside
    /// a transaction: the named statement is closed (its `Close` is queued when it is dropped here)
    /// before the transaction ends, so it never outlives the server session it was made on.
    pub(crate) async fn learn<C: GenericClient>(
        &self,
        client: &C,
        sql: &str,
    ) -> Result<Arc<[Type]>, tokio_postgres::Error> {
        if let Some(types) = self.get(sql) {
            return Ok(types);
        }
        let statement = client.prepare(sql).await?;
        let types: Arc<[Type]> = statement.params().into();
        self.insert(sql, types.clone());
        Ok(types)
    }
}

/// `params` paired with `types`, as `query_typed` takes them. A count mismatch is left for tokio-postgres
/// to report.
pub(crate) fn typed<'a>(
    params: impl IntoIterator<Item = &'a (dyn ToSql + Sync)>,
    types: &[Type],
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    let mut types = types.iter();
    params
        .into_iter()
        .map(|p| (p, types.next().cloned().unwrap_or(Type::UNKNOWN)))
        .collect()
}

/// `SET LOCAL statement_timeout` for a transaction with `remaining` time (0: none).
pub(crate) fn set_local_timeout(remaining: Option<std::time::Duration>) -> String {
    let ms = remaining
        .and_then(|r| statement_timeout_for(Some(r), 0))
        .unwrap_or(0);
    format!("SET LOCAL statement_timeout = {ms}")
}

type Outcome = Result<(Vec<Row>, u64), tokio_postgres::Error>;

/// Whether the connection is gone after `err`: an I/O failure, or a `FATAL` error, after which the
/// server, or the pooler (it closes the client after its own errors), hangs up. Discarding the
/// connection at once keeps it from being handed out before its closing is noticed.
fn connection_gone(err: &tokio_postgres::Error) -> bool {
    crate::classify::link_failed(err)
        || err.as_db_error().is_some_and(|db| {
            db.parsed_severity() == Some(tokio_postgres::error::Severity::Fatal)
                || db.severity() == "FATAL"
        })
}

async fn unnamed(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[Param],
    types: &[Type],
) -> Outcome {
    let params = typed(
        params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)),
        types,
    );
    let stream = client.query_typed_raw(sql, params).await?;
    futures_util::pin_mut!(stream);
    let rows: Vec<Row> = stream.as_mut().try_collect().await?;
    Ok((rows, stream.rows_affected().unwrap_or(0)))
}

/// Runs `query` on `in_flight`'s connection without leaving anything in the server session: see the
/// [module docs](self). Returns the connection to the pool (or discards it) as [`PgService`] does.
///
/// [`PgService`]: crate::PgService
pub(crate) async fn run(
    pool: &Pool,
    mut in_flight: InFlight,
    query: &Query,
) -> Result<Response, Error> {
    let sql = query.sql();
    let params = query.params();
    let remaining = query
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()));
    let cache = pool.param_types();
    let known = cache.get(sql);

    let (outcome, stage, link_failed) = {
        let client: &tokio_postgres::Client = in_flight.conn().client();
        match (known, remaining) {
            // No deadline and the types known: one unnamed statement, nothing else.
            (Some(types), None) => {
                let outcome = unnamed(client, sql, params, &types).await;
                let link_failed = outcome.as_ref().is_err_and(connection_gone);
                (outcome, Stage::InFlight, link_failed)
            }
            (known, remaining) => {
                let begin = match remaining {
                    Some(_) => format!("BEGIN; {}", set_local_timeout(remaining)),
                    None => "BEGIN".to_owned(),
                };
                // `begin` is `None` once sent (while the types were learned).
                let (types, begin) = match known {
                    Some(types) => (types, Some(begin)),
                    None => {
                        // First time this SQL is seen: learn its types inside the transaction.
                        let (began, types) = futures_util::future::join(
                            client.batch_execute(&begin),
                            cache.learn(client, sql),
                        )
                        .await;
                        match began.and(types) {
                            Ok(types) => (types, None),
                            Err(e) => {
                                // Nothing of the statement ran; end the (aborted) transaction.
                                let rolled_back = client.batch_execute("ROLLBACK").await.is_ok();
                                let link_failed = connection_gone(&e) || !rolled_back;
                                return finish(
                                    pool,
                                    in_flight,
                                    Err(e),
                                    Stage::BeforeSend,
                                    link_failed,
                                );
                            }
                        }
                    }
                };
                let begin = async {
                    match &begin {
                        Some(sql) => client.batch_execute(sql).await,
                        None => Ok(()),
                    }
                };
                // One round trip: BEGIN (if not sent yet), the statement and COMMIT, pipelined.
                let (began, outcome, committed) = futures_util::future::join3(
                    begin,
                    unnamed(client, sql, params, &types),
                    client.batch_execute("COMMIT"),
                )
                .await;
                let link_failed = [
                    began.as_ref().err(),
                    outcome.as_ref().err(),
                    committed.as_ref().err(),
                ]
                .into_iter()
                .flatten()
                .any(connection_gone);
                // The first failure is the one to report: after a failed BEGIN or statement, COMMIT
                // only rolls back.
                let outcome = match (began, outcome) {
                    (Err(e), _) | (Ok(()), Err(e)) => Err(e),
                    (Ok(()), Ok(rows)) => committed.map(|()| rows),
                };
                (outcome, Stage::InFlight, link_failed)
            }
        }
    };
    finish(pool, in_flight, outcome, stage, link_failed)
}

fn finish(
    pool: &Pool,
    mut in_flight: InFlight,
    outcome: Outcome,
    stage: Stage,
    link_failed: bool,
) -> Result<Response, Error> {
    match outcome {
        Ok((rows, affected)) => {
            in_flight.conn().mark_ok();
            in_flight.finish(false);
            Ok(Response::new(rows, affected))
        }
        Err(e) => {
            if !link_failed {
                in_flight.conn().mark_ok();
            }
            in_flight.finish(link_failed);
            Err(from_pg(e, stage, pool.server()))
        }
    }
}
