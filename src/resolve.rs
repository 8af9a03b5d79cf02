//! Unknown outcomes, resolved: a write whose reply was lost is looked up on the server.
//!
//! A plain write (not a read, not marked idempotent) sent through a ready-made stack runs inside its own
//! transaction, whose id the stack learns before it lets the transaction commit:
//!
//! ```text
//! BEGIN                                                                                ─┐
//! SELECT pg_current_xact_id(), pg_backend_pid(), pg_postmaster_start_time()             │ pipelined:
//! <the statement>                                                                      ─┘ one write
//! COMMIT                              ← sent as soon as the first reply (the "mark") is in
//! ```
//!
//! On a pooled connection `BEGIN`, the select and `COMMIT` are statements prepared once per connection,
//! and the session's `idle_in_transaction_session_timeout` is set to [`MARKED_IDLE_LIMIT`] with its first
//! marked write. Behind a pooler in transaction mode the opening is one simple query, `BEGIN; SET LOCAL
//! statement_timeout = ...; SET LOCAL idle_in_transaction_session_timeout = <the time left>; SELECT ...`
//! (nothing may outlive the transaction there).
//!
//! **COMMIT is never sent before the mark is in.** That one rule makes every lost reply answerable:
//!
//! - lost before the mark arrived (a link reset, a black hole that swallowed the replies, a cut by the
//!   attempt timeout): COMMIT was never written, so the transaction cannot commit — the write was
//!   **not applied**, for certain, and is retried like any transient failure. The server rolls it back
//!   when it sees the link close, or when its `idle_in_transaction_session_timeout` fires, whichever is
//!   first: a black-holed client never leaves locks held for long.
//! - lost after COMMIT was sent: the stack asks the server, on a connection from the same pool (so
//!   through the same pooler or proxy), `pg_xact_status(xid)` (`txid_status` before PostgreSQL 13):
//!   `committed` — applied, for certain (a statement that returns rows reports that its rows were lost,
//!   [`ErrorKind::ReplyLost`](crate::ErrorKind::ReplyLost)); `aborted` — not applied, retried; `in
//!   progress` — the old backend still runs it: it is terminated (only if it is still that transaction's
//!   backend: a pid can be reused) and the server asked again, until the deadline.
//! - the server restarted in between (its start time differs): an xid that never reached the disk can be
//!   handed out again after a crash, so `committed` may be another transaction's: **still unknown**. Any
//!   other answer means ours did not survive: not applied.
//! - no answer within the deadline, the id too old (`NULL`), a server without the functions (before 10, or
//!   not PostgreSQL): **still unknown**, as without resolution.
//!
//! Why not the whole thing pipelined (`BEGIN; SELECT ...; statement; COMMIT` in one write)? Then a reply
//! lost whole — the black hole after the request was delivered — loses the id with it, and the one case
//! resolution exists for stays unknown. Waiting for the mark costs the time between the first reply and
//! the statement's end, which is nothing on a statement slower than a round trip and a fraction of one on
//! a trivial insert (`BENCHMARKS.md` §7).
//!
//! What is resolved: statements that may run inside a transaction block (`INSERT`, `UPDATE`, `DELETE`,
//! `MERGE`, `WITH`, `SELECT`, `VALUES`, `TRUNCATE`). `CALL` (a procedure may commit), DDL and anything with
//! a session effect keep the plain path and its unknown outcome. On a multiplexed service these writes go
//! to a pooled connection: a transaction cannot share a pipelined connection.

use std::time::Duration;

use futures_util::future::join;
use rampart_layers::Classification;
use tokio::time::Instant;
use tokio_postgres::{Client, Statement};

use crate::error::{Error, ErrorKind};
use crate::outcome::{Stage, connection_gone, lost_in_flight};
use crate::pool::{InFlight, Pool};
use crate::query::{Query, Response};
use crate::session::{Effect, first_word};
use crate::xact::{Flavour, Mark, first_row, mark_of, parse_mark};

/// The flavour of `pool`'s server, asked on `client` the first time (one round trip per pool).
async fn flavour(pool: &Pool, client: &Client) -> Result<Flavour, tokio_postgres::Error> {
    let known = pool.xact_flavour().get();
    if known != Flavour::Unknown {
        return Ok(known);
    }
    let flavour = match client.simple_query("SHOW server_version_num").await {
        Ok(messages) => {
            let version = first_row(&messages).and_then(|r| r.first().map(|v| v.to_string()));
            Flavour::of_version(version.as_deref())
        }
        // The server does not know the setting or the statement: not a PostgreSQL that has it. Any other
        // error (a pooler's wait timeout, a lost link) says nothing of the server: not remembered.
        Err(e)
            if e.code()
                .is_some_and(|c| matches!(c.code(), "42704" | "42601" | "0A000" | "42883")) =>
        {
            Flavour::Unsupported
        }
        Err(e) => return Err(e),
    };
    pool.xact_flavour().set(flavour);
    Ok(flavour)
}

/// The server's flavour of functions if a write is to be marked (`wanted`) and the server has them:
/// `None` runs it as before. Asks on `client` the first time for the pool (see [`flavour`]).
pub(crate) async fn marking(
    pool: &Pool,
    client: &Client,
    wanted: bool,
) -> Result<Option<Flavour>, tokio_postgres::Error> {
    if !wanted {
        return Ok(None);
    }
    let flavour = flavour(pool, client).await?;
    Ok(matches!(flavour, Flavour::Modern | Flavour::Legacy).then_some(flavour))
}

/// Whether `query` is a write to run marked, so that a lost reply can be resolved: a stack asked for
/// it, the query is neither a read nor idempotent (those are replayed anyway), and its statement may run
/// inside a transaction block (see the [module docs](self)).
pub(crate) fn applies(query: &Query, effect: Effect) -> bool {
    const VERBS: &[&str] = &[
        "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "SELECT", "VALUES", "TRUNCATE",
    ];
    effect == Effect::None
        && !query.is_idempotent()
        && query.tracking().is_some_and(|t| t.resolves())
        && first_word(query.sql()).is_some_and(|w| VERBS.iter().any(|v| w.eq_ignore_ascii_case(v)))
}

/// Why a marked transaction's opening failed to give its [`Mark`].
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The opening or `COMMIT` failed.
    Pg(tokio_postgres::Error),
    /// The server answered the opening without a readable mark (COMMIT was not sent).
    NoMark,
}

impl From<tokio_postgres::Error> for HeadError {
    fn from(e: tokio_postgres::Error) -> Self {
        HeadError::Pg(e)
    }
}

/// How a marked write's transaction is opened and its id read.
pub(crate) enum Opening<'a> {
    /// One simple query, [`begin_sql`](crate::xact::begin_sql) (behind a pooler: nothing named may
    /// outlive the transaction).
    Simple(&'a str),
    /// `BEGIN` and the select of the id as statements prepared on the connection (parsed and planned
    /// once per connection, not once per write), and `COMMIT` likewise.
    Prepared {
        begin: &'a Statement,
        mark: &'a Statement,
        commit: &'a Statement,
    },
    /// Opened earlier, the id already read (the pooler mode's first sight of a statement).
    Known(Mark),
}

/// Runs `work` (the statement) pipelined after `opening`, and commits once the [`Mark`] is in (recorded
/// on the query's tracking just before `COMMIT` is written).
pub(crate) async fn commit_after_mark<T>(
    client: &Client,
    query: &Query,
    opening: Opening<'_>,
    flavour: Flavour,
    returns_rows: bool,
    work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> (Result<(), HeadError>, Result<T, tokio_postgres::Error>) {
    if let Some(tracking) = query.tracking() {
        tracking.opening(returns_rows);
    }
    let head = async {
        let (mark, commit) = match opening {
            Opening::Known(mark) => (mark, None),
            Opening::Simple(begin) => {
                let replies = client.simple_query(begin).await?;
                (
                    parse_mark(&replies, flavour).ok_or(HeadError::NoMark)?,
                    None,
                )
            }
            Opening::Prepared {
                begin,
                mark,
                commit,
            } => {
                let (began, row) =
                    join(client.execute(begin, &[]), client.query_one(mark, &[])).await;
                began?;
                let row = row?;
                let text = |i| row.try_get::<_, Option<&str>>(i).ok().flatten();
                let mark = mark_of(text(0), text(1), text(2), flavour).ok_or(HeadError::NoMark)?;
                (mark, Some(commit))
            }
        };
        if let Some(tracking) = query.tracking() {
            tracking.committing(mark);
        }
        match commit {
            Some(commit) => client.execute(commit, &[]).await.map(drop)?,
            None => client.batch_execute("COMMIT").await?,
        }
        Ok(())
    };
    join(head, work).await
}

/// How long a marked write's transaction may sit idle before the server ends it (a client gone before
/// its COMMIT): the session's `idle_in_transaction_session_timeout` on a pooled connection, set with its
/// first marked write. A transactor whose runs may be idle longer turns it off for its transactions.
pub(crate) const MARKED_IDLE_LIMIT: Duration = Duration::from_secs(30);

/// The longest one lookup of the transactor may take: a lookup connection that does not answer within
/// this is replaced.
pub(crate) const LOOKUP_TRY: Duration = Duration::from_secs(1);

/// Ends a marked write run on `in_flight`'s connection: `head` is the opening and `COMMIT`
/// ([`commit_after_mark`]), `result` the statement's, `also_gone` whether something else sent with them
/// lost the link. A link lost before `COMMIT` was sent is answered here: not applied. One lost after it
/// is left to the stack's attempt layer to look up (see below).
pub(crate) async fn finish_marked(
    pool: &Pool,
    in_flight: InFlight,
    query: &Query,
    head: Result<(), HeadError>,
    result: Result<Response, tokio_postgres::Error>,
    also_gone: bool,
) -> Result<Response, Error> {
    let head_gone = matches!(&head, Err(HeadError::Pg(e)) if connection_gone(e));
    let lost = match (&head, &result) {
        (_, Err(e)) if connection_gone(e) => Some(lost_in_flight(e, pool.server())),
        (Err(HeadError::Pg(e)), _) if head_gone => Some(lost_in_flight(e, pool.server())),
        _ if also_gone => Some(format!(
            "the connection to {} was lost while the request was in flight",
            pool.server()
        )),
        _ => None,
    };
    let Some(lost) = lost else {
        return match (head, result) {
            (Ok(()), Ok(response)) => {
                in_flight.release(false);
                Ok(response)
            }
            // The opening itself failed (the statement then only met the aborted transaction): its
            // error is the one that explains, and nothing ran.
            (Err(HeadError::Pg(e)), _) if opening_failed(query) => {
                Err(in_flight.fail_keeping(e, Stage::NotSent, true))
            }
            // The statement failed: its transaction was rolled back (COMMIT answered `ROLLBACK`); a
            // connection whose opening failed may still be inside it, and is not reused.
            (head, Err(e)) => Err(in_flight.fail_keeping(e, Stage::Sent, head.is_err())),
            (Err(HeadError::Pg(e)), Ok(_)) => Err(in_flight.fail_keeping(e, Stage::NotSent, true)),
            (Err(HeadError::NoMark), Ok(_)) => {
                in_flight.release(true);
                Err(no_mark(pool.server()))
            }
        };
    };
    in_flight.release(true);
    let marked = query.tracking().map(|t| t.marked()).unwrap_or_default();
    if marked.mark().is_some() {
        // COMMIT was sent: the server must be asked. That is left to the stack's attempt layer, above
        // the attempt timeout, which has the request's whole deadline for it (this future runs under
        // the attempt timeout, and the query's deadline here may be the attempt's).
        return Err(Error::new(
            ErrorKind::ConnectionLost,
            Classification::Ambiguous,
            lost,
        ));
    }
    // COMMIT never sent: not applied, without asking (nothing to look up, so no deadline or try limit).
    let resolution = resolve(pool, None, None, LOOKUP_TRY).await;
    if let Some(tracking) = query.tracking() {
        tracking.resolved(resolution.label());
    }
    match settled(
        resolution,
        ErrorKind::ConnectionLost,
        &lost,
        marked.returns_rows(),
    ) {
        Settled::Applied => Ok(Response::applied_reply_lost()),
        Settled::Err(e) => Err(e),
    }
}

/// Whether the marked write's opening failed before its COMMIT could be sent.
fn opening_failed(query: &Query) -> bool {
    query
        .tracking()
        .is_some_and(|t| matches!(t.marked(), crate::query::Marked::Opening { .. }))
}

/// The error for a server that answered a marked write's opening without its id: nothing committed.
pub(crate) fn no_mark(server: &str) -> Error {
    Error::new(
        ErrorKind::Other,
        Classification::Permanent,
        format!(
            "{server} answered a write's opening without its transaction id; nothing was committed"
        ),
    )
}

/// What the server says of a marked write whose reply was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// It committed: applied, for certain.
    Committed,
    /// It did not commit, and never will: safe to send again.
    NotApplied(String),
    /// No certain answer.
    Unknown(String),
}

impl Resolution {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Resolution::Committed => "committed",
            Resolution::NotApplied(_) => "aborted",
            Resolution::Unknown(_) => "unknown",
        }
    }
}

/// The answer for a write whose COMMIT was never sent: it cannot have committed.
fn never_committed() -> Resolution {
    Resolution::NotApplied(
        "its COMMIT was never sent (the transaction id had not come back), so its transaction cannot commit"
            .to_owned(),
    )
}

/// How long the lookup waits between tries: while the server is unreachable, or the old backend is
/// still running the transaction.
fn pause(turn: u32) -> Duration {
    Duration::from_millis((10u64 << turn.min(4)).min(200))
}

/// What became of a marked write whose reply was lost: not applied if its `COMMIT` was never sent
/// (`mark` is `None`); otherwise what the server says of the transaction `mark`, asked on connections
/// from `pool` until it answers or `deadline` passes, each try bounded by `per_try`. Logs the answer
/// (`info`, with the time it took) and counts it in the metric `rampart_outcomes_resolved_total{result}`.
pub(crate) async fn resolve(
    pool: &Pool,
    mark: Option<&Mark>,
    deadline: Option<Instant>,
    per_try: Duration,
) -> Resolution {
    let started = Instant::now();
    let resolution = match mark {
        Some(mark) => ask_until_answered(pool, mark, deadline, per_try).await,
        None => never_committed(),
    };
    let took_ms = started.elapsed().as_millis() as u64;
    match &resolution {
        Resolution::Unknown(why) => tracing::warn!(
            target: "rampart::resolve", server = %pool.server(), resolved = "unknown", took_ms,
            why = %why, "lost reply of a write: outcome still unknown"
        ),
        Resolution::NotApplied(why) => tracing::info!(
            target: "rampart::resolve", server = %pool.server(), resolved = "aborted", took_ms,
            why = %why, "lost reply of a write resolved: not applied"
        ),
        Resolution::Committed => tracing::info!(
            target: "rampart::resolve", server = %pool.server(), resolved = "committed", took_ms,
            "lost reply of a write resolved: applied"
        ),
    }
    count(pool.server(), &resolution);
    resolution
}

/// Counts a resolution in the metric `rampart_outcomes_resolved_total{server, result}` (a no-op
/// without a metrics recorder).
pub(crate) fn count(server: &str, resolution: &Resolution) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "rampart_outcomes_resolved_total",
        "server" => server.to_owned(),
        "result" => resolution.label()
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (server, resolution);
}

async fn ask_until_answered(
    pool: &Pool,
    mark: &Mark,
    deadline: Option<Instant>,
    per_try: Duration,
) -> Resolution {
    let mut turn = 0;
    let mut last = String::from("the server could not be asked");
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Resolution::Unknown(format!(
                "the deadline passed before the server said whether it committed ({last})"
            ));
        }
        let limit = left.map_or(per_try, |l| l.min(per_try));
        match tokio::time::timeout(limit, ask(pool, mark)).await {
            Ok(Ok(Answer::Final(resolution))) => return resolution,
            Ok(Ok(Answer::InProgress)) => last = "its backend was still running it".to_owned(),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("the lookup did not answer within {limit:?}"),
        }
        tokio::time::sleep(pause(turn)).await;
        turn += 1;
    }
}

/// Whether a server error met by a lookup says "not now" rather than "cannot answer": the lookup is made
/// again, within the deadline.
fn asks_again(err: &tokio_postgres::Error) -> bool {
    err.code().is_some_and(|code| {
        matches!(
            crate::classify::classify_db(code, err),
            Classification::Transient | Classification::Ambiguous
        )
    }) || connection_gone(err)
}

enum Answer {
    Final(Resolution),
    /// The old backend still runs the transaction; it has been told to terminate.
    InProgress,
}

/// Seen at lookup: the transaction's status, and whether the server is the one that gave the mark.
async fn ask(pool: &Pool, mark: &Mark) -> Result<Answer, Error> {
    let conn = pool.get_within(None).await?;
    let mut in_flight = InFlight::new(pool.clone(), conn);
    let status = match mark.flavour {
        Flavour::Legacy => format!("txid_status({})", mark.xid),
        _ => format!("pg_xact_status('{}'::xid8)", mark.xid),
    };
    let sql = format!("SELECT {status}, pg_postmaster_start_time()::text");
    let replies = in_flight.conn().client().simple_query(&sql).await;
    let replies = match replies {
        Ok(replies) => replies,
        // A server error: an id "in the future" is one the server lost in a crash, and gave out again
        // to no one yet. One that says the server or a pooler cannot serve now (starting up, too many
        // connections, PgBouncer's login retry) is asked again.
        Err(e) if e.code().is_some() && !asks_again(&e) => {
            let message = e.as_db_error().map(|d| d.message().to_owned());
            in_flight.release(false);
            return Ok(Answer::Final(match message {
                Some(m) if m.contains("in the future") => Resolution::NotApplied(format!(
                    "the server no longer knows its transaction ({m}): it was lost in a crash"
                )),
                Some(m) => Resolution::Unknown(format!("the status lookup failed: {m}")),
                None => Resolution::Unknown(format!("the status lookup failed: {e}")),
            }));
        }
        Err(e) => return Err(in_flight.fail(e, crate::outcome::Stage::Sent)),
    };
    let row = first_row(&replies).unwrap_or_default();
    let (status, boot) = match row.as_slice() {
        [status, boot] => (*status, *boot),
        _ => ("", ""),
    };
    let restarted = boot != &*mark.boot;
    let answer = match status {
        "committed" if restarted => Answer::Final(Resolution::Unknown(
            "the server restarted since: the transaction id it says committed may be another's"
                .into(),
        )),
        "committed" => Answer::Final(Resolution::Committed),
        "aborted" if restarted => Answer::Final(Resolution::NotApplied(
            "its transaction did not survive the server's restart".into(),
        )),
        "aborted" => Answer::Final(Resolution::NotApplied(
            "the server says its transaction was rolled back".into(),
        )),
        "in progress" if restarted => Answer::Final(Resolution::NotApplied(
            "its transaction did not survive the server's restart".into(),
        )),
        "in progress" => {
            // Still running on the old backend (the cancel has not landed, or it has not noticed its
            // client is gone): end it, but only if that backend still runs this transaction.
            let xid32 = mark.xid & 0xFFFF_FFFF;
            let terminate = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid = {} AND backend_xid = '{xid32}'::xid",
                mark.pid
            );
            let ended = in_flight.conn().client().simple_query(&terminate).await;
            return match ended {
                Ok(_) => {
                    in_flight.release(false);
                    Ok(Answer::InProgress)
                }
                Err(e) if e.code().is_some() => {
                    in_flight.release(false);
                    Ok(Answer::InProgress)
                }
                Err(e) => Err(in_flight.fail(e, crate::outcome::Stage::Sent)),
            };
        }
        _ => Answer::Final(Resolution::Unknown(
            "the server no longer knows the transaction id (too old)".into(),
        )),
    };
    in_flight.release(false);
    Ok(answer)
}

/// The error (or response) a caller gets for a marked write whose reply was lost, once resolved.
/// `kind` and `lost`: what failed, said as the plain path would ("connection to ... was lost ...").
pub(crate) fn settled(
    resolution: Resolution,
    kind: ErrorKind,
    lost: &str,
    returns_rows: bool,
) -> Settled {
    match resolution {
        Resolution::Committed if returns_rows => Settled::Err(Error::new(
            ErrorKind::ReplyLost,
            Classification::Permanent,
            format!(
                "{lost}; the write was applied (the server says its transaction committed), but the \
                 rows it returned were lost with the reply: read them again"
            ),
        )),
        Resolution::Committed => Settled::Applied,
        Resolution::NotApplied(why) => Settled::Err(Error::new(
            kind,
            Classification::Transient,
            format!("{lost}; not applied: {why}"),
        )),
        Resolution::Unknown(why) => Settled::Err(Error::new(
            kind,
            Classification::Ambiguous,
            format!("{lost}; {why}"),
        )),
    }
}

/// A resolved lost reply, for the caller.
#[derive(Debug)]
pub(crate) enum Settled {
    /// Applied, nothing to return: [`Response::reply_lost`](crate::Response::reply_lost).
    Applied,
    Err(Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lookup against a real server, in both flavours of functions (PostgreSQL 13+'s and 10–12's,
    /// which newer servers still have): committed, rolled back, still running (ended, then rolled back),
    /// and a committed id asked after a restart (no longer certain).
    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn the_server_answers_what_became_of_a_transaction_in_both_flavours() {
        use crate::config::PgConfig;
        use crate::pool::PoolConfig;
        use crate::testing::Cluster;
        use crate::xact::begin_sql;

        let cluster = Cluster::new().await.unwrap();
        let pool = Pool::new(
            PgConfig::from_url(&cluster.url()).unwrap(),
            PoolConfig::default(),
        )
        .unwrap();
        let (client, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let deadline = || Some(Instant::now() + Duration::from_secs(20));
        let try_limit = Duration::from_secs(2);
        for flavour in [Flavour::Modern, Flavour::Legacy] {
            async fn open(client: &Client, flavour: Flavour) -> Mark {
                let replies = client
                    .simple_query(&begin_sql(flavour, None, ""))
                    .await
                    .unwrap();
                parse_mark(&replies, flavour).expect("a mark")
            }
            let committed = open(&client, flavour).await;
            client.batch_execute("COMMIT").await.unwrap();
            let rolled_back = open(&client, flavour).await;
            client.batch_execute("ROLLBACK").await.unwrap();
            assert_eq!(
                resolve(&pool, Some(&committed), deadline(), try_limit).await,
                Resolution::Committed,
                "{flavour:?}"
            );
            assert!(
                matches!(
                    resolve(&pool, Some(&rolled_back), deadline(), try_limit).await,
                    Resolution::NotApplied(_)
                ),
                "{flavour:?}"
            );
            // Still open on another backend: the lookup ends that backend, and then it is rolled back.
            let (other, connection) =
                tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
                    .await
                    .unwrap();
            let ended = tokio::spawn(connection);
            let running = open(&other, flavour).await;
            assert!(
                matches!(
                    resolve(&pool, Some(&running), deadline(), try_limit).await,
                    Resolution::NotApplied(_)
                ),
                "{flavour:?}"
            );
            let _ = ended.await;
            assert!(other.is_closed(), "its backend was terminated");
        }
        // A server that restarted since may have given a lost id to another transaction.
        let committed = {
            let replies = client
                .simple_query(&begin_sql(Flavour::Modern, None, ""))
                .await
                .unwrap();
            client.batch_execute("COMMIT").await.unwrap();
            parse_mark(&replies, Flavour::Modern).unwrap()
        };
        cluster.restart().await.unwrap();
        assert!(
            matches!(
                resolve(&pool, Some(&committed), deadline(), try_limit).await,
                Resolution::Unknown(_)
            ),
            "committed before a restart is no longer certain"
        );
        // No COMMIT was sent: not applied, without asking.
        assert!(matches!(
            resolve(&pool, None, deadline(), try_limit).await,
            Resolution::NotApplied(_)
        ));
    }

    #[test]
    fn waits_between_lookups_grow_and_stay_short() {
        assert_eq!(pause(0), Duration::from_millis(10));
        assert_eq!(pause(2), Duration::from_millis(40));
        assert_eq!(pause(30), Duration::from_millis(160));
    }
}
