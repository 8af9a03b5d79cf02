//! What the `http_health` and `grpc` examples share: the sign-up table, one idempotent insert, a count,
//! and what a failed request means for the caller ([`Failure`]), which each example turns into its own
//! protocol's status codes. Included with `#[path]` by the examples and by their tests.

use std::time::Duration;

use rampart::layers::Classification;
use rampart::{Db, Error, ErrorKind, Query};

/// The table. Its name is the example's own, so a `DATABASE_URL` pointing at a real database cannot
/// collide with an application table.
pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS rampart_example_signups (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    request_id text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// Creates the table if it is missing.
pub(crate) async fn prepare(db: &Db) -> Result<(), Error> {
    // `IF NOT EXISTS` makes a replay harmless.
    db.run(Query::write(SCHEMA).idempotent()).await.map(drop)
}

/// What a sign-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signup {
    /// A new row, with its id.
    Created(i64),
    /// This `request_id` was signed up before with the same email: the id of that first row. A client
    /// that lost the first answer (a timeout, a dropped connection) gets the same answer again.
    Replayed(i64),
    /// This `request_id` was already used for another email.
    KeyReused,
}

/// Checks the input before anything is sent to the database.
pub(crate) fn check(email: &str, request_id: &str) -> Result<(), &'static str> {
    if email.len() > 254 || !email.contains('@') {
        return Err("email must be an address of at most 254 bytes");
    }
    if request_id.is_empty() || request_id.len() > 200 {
        return Err("request_id must be 1 to 200 bytes");
    }
    Ok(())
}

/// Signs `email` up, at most once per `request_id`.
///
/// The insert carries the request id as its idempotency key: the stack may replay it after a lost
/// connection, because `ON CONFLICT (request_id) DO NOTHING` makes a second run a no-op, and the caller
/// may send the same request again for the same reason.
pub(crate) async fn signup(db: &Db, email: &str, request_id: &str) -> Result<Signup, Error> {
    let inserted = db
        .run(
            Query::write(
                "INSERT INTO rampart_example_signups (email, request_id) VALUES ($1, $2) \
                 ON CONFLICT (request_id) DO NOTHING RETURNING id",
            )
            .bind(email.to_owned())
            .bind(request_id.to_owned())
            .idempotency_key(request_id.to_owned()),
        )
        .await?;
    if let Some(id) = inserted.opt::<(i64,)>()? {
        return Ok(Signup::Created(id.0));
    }
    // The key was used before: answer as the first request was answered, if it was for the same email.
    let existing = db
        .run(
            Query::read("SELECT id, email = $2 FROM rampart_example_signups WHERE request_id = $1")
                .bind(request_id.to_owned())
                .bind(email.to_owned()),
        )
        .await?;
    Ok(match existing.opt::<(i64, bool)>()? {
        Some((id, true)) => Signup::Replayed(id),
        _ => Signup::KeyReused,
    })
}

/// How many sign-ups there are.
pub(crate) async fn count(db: &Db) -> Result<i64, Error> {
    let answer = db
        .run(Query::read("SELECT count(*) FROM rampart_example_signups"))
        .await?;
    answer.scalar()
}

/// What a failed request means for the caller, whatever the protocol. The examples map it to HTTP and
/// gRPC status codes; the mapping lives here once so both say the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The breaker is open: nothing was sent. Try again after the wait, if known.
    CircuitOpen(Option<Duration>),
    /// The connection was lost while a write was in flight: it may or may not have been applied.
    /// Sending the same request (same `request_id`) again is harmless and tells which.
    OutcomeUnknown,
    /// An attempt or the whole request ran out of time.
    TimedOut,
    /// The row already exists (unique violation, SQLSTATE 23505).
    Conflict,
    /// The database refused the input (data exceptions and other integrity violations, classes 22 and 23).
    Invalid,
    /// A transaction was aborted by a serialization failure or deadlock (40001, 40P01): retry it whole.
    Aborted,
    /// The database is unreachable or overloaded for now (connect failures, lost connections before
    /// the statement was sent, an exhausted pool, a server shutting down).
    Unavailable,
    /// Anything else: a bug, bad SQL.
    Internal,
}

impl Failure {
    /// Classifies a rampart error.
    pub(crate) fn of(err: &Error) -> Failure {
        let sqlstate = err.code().map(|c| c.code());
        match err.kind() {
            ErrorKind::CircuitOpen => Failure::CircuitOpen(err.retry_in()),
            // Before the timeouts: a write whose outcome is unknown must say so, whatever ended it. One
            // applied whose rows were lost with its reply (`ReplyLost`) asks the same of the caller:
            // resending the same `request_id` answers with the row.
            _ if err.is_outcome_unknown() || err.was_applied() => Failure::OutcomeUnknown,
            ErrorKind::Timeout | ErrorKind::DeadlineExceeded => Failure::TimedOut,
            _ if sqlstate == Some("23505") => Failure::Conflict,
            _ if sqlstate.is_some_and(|c| c.starts_with("22") || c.starts_with("23")) => {
                Failure::Invalid
            }
            _ if matches!(sqlstate, Some("40001" | "40P01")) => Failure::Aborted,
            ErrorKind::PoolClosed => Failure::Unavailable,
            _ if err.classification() == Classification::Transient => Failure::Unavailable,
            _ => Failure::Internal,
        }
    }

    /// A stable name for response bodies and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Failure::CircuitOpen(_) => "circuit_open",
            Failure::OutcomeUnknown => "outcome_unknown",
            Failure::TimedOut => "timeout",
            Failure::Conflict => "conflict",
            Failure::Invalid => "invalid",
            Failure::Aborted => "aborted",
            Failure::Unavailable => "unavailable",
            Failure::Internal => "internal",
        }
    }

    /// What to tell the caller. Fixed text, never the database's message (which may quote data).
    pub(crate) fn message(self) -> &'static str {
        match self {
            Failure::CircuitOpen(_) => {
                "the database is failing; requests are refused without trying until the retry time"
            }
            Failure::OutcomeUnknown => {
                "the connection to the database was lost while the write was in flight: it may or may \
                 not have been applied. Send the same request (same request_id) again: the replay is \
                 harmless and answers with the result"
            }
            Failure::TimedOut => "the database did not answer in time",
            Failure::Conflict => "already exists",
            Failure::Invalid => "the database refused the input",
            Failure::Aborted => "the transaction was aborted by a concurrent one; try again",
            Failure::Unavailable => "the database is unavailable; try again shortly",
            Failure::Internal => "internal error",
        }
    }
}
