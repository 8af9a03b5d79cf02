//! What became of a request that failed: the one place that turns a tokio-postgres error into a
//! classified [`Error`] and decides whether the connection it failed on is gone.
//!
//! Every path calls [`failure`]: the pooled service, the transaction-pooler mode, the multiplexer's shared
//! connections and the transactor. What it needs to know is how far the request got ([`Stage`]) and what
//! kind of connection it was on ([`Link`]); from the error itself it reads the SQLSTATE (through
//! [`crate::classify`]), the severity and whether tokio-postgres refused the request before sending it.
//!
//! | error | stage | classification | connection gone |
//! |---|---|---|---|
//! | a server error (SQLSTATE) | any | the SQLSTATE's ([`crate::classify`]); a `08` outcome-unknown code is `Transient` unless the statement was sent | only if `FATAL`/`PANIC` (the server, or a pooler, hangs up after it) |
//! | `25006` (read-only transaction) | any | `Transient`: the write was refused, not applied | yes, and every connection to its server ([`takes_no_writes`]): a failover demoted it, and a new connection finds the writer |
//! | `57014` on a [shared](Link::Shared) connection | sent | `Permanent` [`ErrorKind::Timeout`]: nothing cancels a shared connection's statement but its session `statement_timeout`, and a retry would hit it again | no |
//! | refused by tokio-postgres before sending (a parameter that cannot be encoded, a wrong count) | any | `Permanent` [`ErrorKind::InvalidRequest`] | no |
//! | no SQLSTATE: I/O, closed, reset | connect | `Transient` [`ErrorKind::Connect`] | — |
//! | | not sent | `Transient` [`ErrorKind::ConnectionLost`] | yes |
//! | | inside an uncommitted transaction | `Transient` (the server rolls it back) | yes |
//! | | sent, or during `COMMIT` | `Ambiguous`: it may have been applied | yes |

use std::time::Duration;

use rampart_layers::Classification;
use tokio_postgres::error::{Severity, SqlState};

use crate::classify::classify_db;
use crate::error::{Error, ErrorKind};

/// How far a request got when it failed: decides whether a lost connection leaves the outcome unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Making a connection: nothing was sent.
    Connect,
    /// Before the statement was written (the connection found closed, a `Parse` that failed): nothing
    /// of it ran.
    NotSent,
    /// The statement was (or may have been) written to the server.
    Sent,
    /// Inside a transaction that has not been committed: if the link is lost, the server rolls it back.
    InTransaction,
    /// `COMMIT` was sent: the transaction may or may not have committed.
    Committing,
}

/// What kind of connection the request ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// A connection of the request's own (pooled, behind a pooler, or a transaction's).
    Own,
    /// A shared, pipelined connection of the multiplexer, whose session runs with this statement timeout.
    Shared { statement_timeout: Duration },
}

/// A failed request: the error for its caller, and whether its connection must be discarded.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) gone: bool,
}

/// What an error is, as far as the decision goes: read off a tokio-postgres error by [`Observed::of`],
/// built by hand in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Observed {
    /// The server (or a pooler) answered with this SQLSTATE; `fatal` if it then hangs up.
    Server {
        code: SqlState,
        class: Classification,
        fatal: bool,
    },
    /// tokio-postgres refused the request before sending it.
    Refused,
    /// No answer: the link failed (I/O, closed, reset).
    LinkFailed,
}

impl Observed {
    fn of(err: &tokio_postgres::Error) -> Self {
        match (err.code(), err.as_db_error()) {
            (Some(code), db) => Observed::Server {
                code: code.clone(),
                class: classify_db(code, err),
                fatal: db.is_some_and(|db| {
                    matches!(
                        db.parsed_severity(),
                        Some(Severity::Fatal | Severity::Panic)
                    ) || db.severity() == "FATAL"
                }),
            },
            (None, _) if is_caller_mistake(err) => Observed::Refused,
            (None, _) => Observed::LinkFailed,
        }
    }
}

/// The decision itself: the kind and classification of the caller's error, and whether the connection
/// is gone (see the table in the [module docs](self)).
pub(crate) fn decide(
    observed: &Observed,
    stage: Stage,
    link: Link,
) -> (ErrorKind, Classification, bool) {
    let sent = matches!(stage, Stage::Sent | Stage::Committing);
    match observed {
        Observed::Server { code, class, fatal } => {
            if matches!(link, Link::Shared { .. }) && *code == SqlState::QUERY_CANCELED {
                return (ErrorKind::Timeout, Classification::Permanent, *fatal);
            }
            let class = match class {
                // Nothing was sent, or it was inside a transaction the server rolls back.
                Classification::Ambiguous if !sent && code.code().starts_with("08") => {
                    Classification::Transient
                }
                class => *class,
            };
            let kind = if stage == Stage::Connect {
                ErrorKind::Connect
            } else {
                ErrorKind::Db
            };
            // A server that refuses writes will refuse the retry's too: this connection is no use.
            let gone = *fatal || *code == SqlState::READ_ONLY_SQL_TRANSACTION;
            (kind, class, gone)
        }
        Observed::Refused => (ErrorKind::InvalidRequest, Classification::Permanent, false),
        Observed::LinkFailed => match stage {
            Stage::Connect => (ErrorKind::Connect, Classification::Transient, true),
            Stage::NotSent | Stage::InTransaction => {
                (ErrorKind::ConnectionLost, Classification::Transient, true)
            }
            Stage::Sent | Stage::Committing => {
                (ErrorKind::ConnectionLost, Classification::Ambiguous, true)
            }
        },
    }
}

/// Classifies `err`, met at `stage` on `link`; `server` is the redacted address (see the table in the
/// [module docs](self)).
pub(crate) fn failure(
    err: tokio_postgres::Error,
    stage: Stage,
    link: Link,
    server: &str,
) -> Failure {
    if stage == Stage::Connect {
        // TLS and certificate failures: permanent, named (see `tls/classify.rs`).
        if let Some(tls) = crate::tls::classify_tls_failure(&err, server) {
            return Failure {
                error: tls.with_source(err),
                gone: true,
            };
        }
    }
    let observed = Observed::of(&err);
    let (kind, class, gone) = decide(&observed, stage, link);
    let message = match (&observed, kind) {
        (_, ErrorKind::Timeout) => match link {
            Link::Shared { statement_timeout } => format!(
                "statement ran longer than the shared connections' statement timeout \
                 ({statement_timeout:?}); mark it Query::exclusive() or grant it a longer Query::timeout"
            ),
            Link::Own => err.to_string(),
        },
        (Observed::Server { .. }, _) => {
            let message = match err.as_db_error() {
                Some(db) => format!("{}: {}", db.severity(), db.message()),
                None => err.to_string(),
            };
            match stage {
                Stage::Connect => format!("{message} (could not connect to {server})"),
                _ => message,
            }
        }
        (Observed::Refused, _) => err.to_string(),
        (Observed::LinkFailed, _) => {
            let cause = describe_io(&err);
            match stage {
                Stage::Connect => format!("{cause} (could not connect to {server})"),
                Stage::NotSent => closed_before_send_message(server),
                // The cause first, then where: the host matters less than what happened.
                Stage::InTransaction => format!(
                    "{cause}: the connection to {server} was lost inside an uncommitted transaction (the server rolls it back)"
                ),
                Stage::Sent => format!(
                    "{cause}: the connection to {server} was lost while the request was in flight"
                ),
                Stage::Committing => {
                    format!("{cause}: the connection to {server} was lost during COMMIT")
                }
            }
        }
    };
    let code = match &observed {
        Observed::Server { code, .. } => Some(code.clone()),
        _ => None,
    };
    let mut error = Error::new(kind, class, message);
    if let Some(code) = code {
        error = error.with_code(code);
    }
    if observed == Observed::LinkFailed
        && stage != Stage::Connect
        && matches!(link, Link::Shared { .. })
    {
        error = error.on_shared_connection();
    }
    Failure {
        error: error.with_source(err),
        gone,
    }
}

/// Whether `error` says its server no longer takes writes (`25006`, read-only transaction): a failover
/// demoted it, or left the connection on a standby. Every connection to that server is then of no use
/// for writes, and a write is not applied, so a retry on a new connection (through
/// `target_session_attrs=read-write`, or a writer endpoint whose DNS name has moved) is safe. Every path
/// that keeps connections asks this after a failure: the pool and the multiplexer drop them all.
pub(crate) fn takes_no_writes(error: &Error) -> bool {
    error.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
}

/// Whether a failed connect met a server of the wrong kind for `target_session_attrs` (a standby, or a
/// demoted writer, for `read-write`) rather than a server that is down: a failover is under way, and
/// the writer takes connections the moment it is promoted, so a retry should not wait long.
pub(crate) fn met_a_standby(error: &Error) -> bool {
    error.kind() == ErrorKind::Connect
        && std::error::Error::source(error)
            .and_then(|s| s.downcast_ref::<tokio_postgres::Error>())
            .is_some_and(crate::tls::wrong_kind_of_session)
}

/// The error of a connect that failed: nothing was sent.
pub(crate) fn connect_failed(err: tokio_postgres::Error, server: &str) -> Error {
    failure(err, Stage::Connect, Link::Own, server).error
}

/// What a link lost under a request in flight is, said for its caller as [`failure`] says it, the cause
/// first: "<cause>: the connection to ... was lost while the request was in flight" (the cause an I/O
/// error, or the server's `FATAL` message).
pub(crate) fn lost_in_flight(err: &tokio_postgres::Error, server: &str) -> String {
    let cause = match err.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => describe_io(err),
    };
    format!("{cause}: the connection to {server} was lost while the request was in flight")
}

/// The error for a connection found closed before the request was written: nothing was sent.
pub(crate) fn closed_before_send(server: &str) -> Error {
    Error::new(
        ErrorKind::ConnectionLost,
        Classification::Transient,
        closed_before_send_message(server),
    )
}

fn closed_before_send_message(server: &str) -> String {
    format!("connection to {server} was closed before the request was sent")
}

/// Whether a request cut by a timeout or a deadline leaves its outcome unknown: it changes data (it is
/// not a [`Query::read`](crate::Query::read)) and its statement may be on the server. The one rule for
/// every cut: an attempt timeout, the stack's deadline, a shared connection's client-side deadline.
pub(crate) fn cut_leaves_outcome_unknown(read: bool, sent: bool) -> bool {
    !read && sent
}

/// Whether the connection is unusable after `err`: any failure without a SQLSTATE except a request
/// tokio-postgres refused before sending it, and a `FATAL` (or `PANIC`) error, after which the server,
/// or a pooler (it closes the client after its own errors), hangs up. Discarding such a connection at
/// once keeps it from being handed out again before its closing is noticed.
pub(crate) fn connection_gone(err: &tokio_postgres::Error) -> bool {
    match Observed::of(err) {
        Observed::Server { fatal, .. } => fatal,
        Observed::Refused => false,
        Observed::LinkFailed => true,
    }
}

/// Whether tokio-postgres refused the request before sending anything because the request is wrong: a
/// parameter that cannot be encoded as the statement's type (`error serializing parameter N`), a message
/// that cannot be encoded (a NUL byte in the SQL text: `error encoding message to server`), or the wrong
/// number of parameters (`expected N parameters but got M`). tokio-postgres exposes no kind for these but
/// its message; they have no SQLSTATE, and without this check they would pass for a lost connection:
/// retried, counted toward a pool rebuild, and their healthy connection thrown away.
fn is_caller_mistake(err: &tokio_postgres::Error) -> bool {
    if err.code().is_some() || err.is_closed() {
        return false;
    }
    let message = err.to_string();
    message.starts_with("error serializing parameter")
        || message.starts_with("error encoding message to server")
        || (message.starts_with("expected ") && message.contains(" parameters but got "))
}

/// The most telling part of a tokio-postgres error: its I/O cause where there is one.
fn describe_io(err: &tokio_postgres::Error) -> String {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.to_string();
        }
        source = s.source();
    }
    err.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: Link = Link::Shared {
        statement_timeout: Duration::from_secs(3),
    };
    const STAGES: [Stage; 5] = [
        Stage::Connect,
        Stage::NotSent,
        Stage::Sent,
        Stage::InTransaction,
        Stage::Committing,
    ];

    fn server(code: &str, fatal: bool) -> Observed {
        let code = SqlState::from_code(code);
        Observed::Server {
            class: crate::classify::classify_sqlstate(&code),
            code,
            fatal,
        }
    }

    #[test]
    fn a_lost_link_is_unknown_only_once_the_statement_may_have_run() {
        for link in [Link::Own, SHARED] {
            for stage in STAGES {
                let (kind, class, gone) = decide(&Observed::LinkFailed, stage, link);
                assert!(gone, "{stage:?}: a failed link is gone");
                let want = match stage {
                    Stage::Sent | Stage::Committing => Classification::Ambiguous,
                    _ => Classification::Transient,
                };
                assert_eq!(class, want, "{stage:?} on {link:?}");
                let want = if stage == Stage::Connect {
                    ErrorKind::Connect
                } else {
                    ErrorKind::ConnectionLost
                };
                assert_eq!(kind, want, "{stage:?}");
            }
        }
    }

    #[test]
    fn a_server_error_keeps_the_connection_unless_fatal() {
        for stage in STAGES {
            let (_, class, gone) = decide(&server("23505", false), stage, Link::Own);
            assert_eq!(
                (class, gone),
                (Classification::Permanent, false),
                "{stage:?}"
            );
            let (_, class, gone) = decide(&server("57P01", true), stage, Link::Own);
            assert_eq!(
                (class, gone),
                (Classification::Transient, true),
                "{stage:?}"
            );
        }
    }

    #[test]
    fn a_refused_write_is_retried_on_a_new_connection() {
        for link in [Link::Own, SHARED] {
            for stage in STAGES {
                let (_, class, gone) = decide(&server("25006", false), stage, link);
                assert_eq!(
                    (class, gone),
                    (Classification::Transient, true),
                    "{stage:?} on {link:?}"
                );
            }
        }
        let refused = Error::new(ErrorKind::Db, Classification::Transient, "read-only")
            .with_code(SqlState::READ_ONLY_SQL_TRANSACTION);
        assert!(takes_no_writes(&refused));
        let other = Error::new(ErrorKind::Db, Classification::Permanent, "dup")
            .with_code(SqlState::UNIQUE_VIOLATION);
        assert!(!takes_no_writes(&other));
    }

    #[test]
    fn an_outcome_unknown_code_is_unknown_only_once_sent() {
        for stage in STAGES {
            let (_, class, _) = decide(&server("08007", false), stage, Link::Own);
            let want = if matches!(stage, Stage::Sent | Stage::Committing) {
                Classification::Ambiguous
            } else {
                Classification::Transient
            };
            assert_eq!(class, want, "{stage:?}");
        }
        // 40003 (statement completion unknown) is not a connection exception: unknown wherever it comes.
        let (_, class, _) = decide(&server("40003", false), Stage::NotSent, Link::Own);
        assert_eq!(class, Classification::Ambiguous);
    }

    #[test]
    fn a_cancel_on_a_shared_connection_is_its_statement_timeout() {
        let (kind, class, gone) = decide(&server("57014", false), Stage::Sent, SHARED);
        assert_eq!(
            (kind, class, gone),
            (ErrorKind::Timeout, Classification::Permanent, false)
        );
        // On a connection of its own a cancel is the request's deadline: transient.
        let (kind, class, _) = decide(&server("57014", false), Stage::Sent, Link::Own);
        assert_eq!((kind, class), (ErrorKind::Db, Classification::Transient));
    }

    #[test]
    fn a_refused_request_is_permanent_and_keeps_its_connection() {
        for link in [Link::Own, SHARED] {
            for stage in STAGES {
                assert_eq!(
                    decide(&Observed::Refused, stage, link),
                    (ErrorKind::InvalidRequest, Classification::Permanent, false)
                );
            }
        }
    }
}
