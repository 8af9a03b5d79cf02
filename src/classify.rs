//! What a Postgres failure means: SQLSTATE and connection state to [`Classification`].
//!
//! Every layer of a rampart stack asks [`PgClassifier`], so retry, the circuit breaker and pool recreation
//! agree. The mapping:
//!
//! | SQLSTATE / condition | meaning | classification |
//! |---|---|---|
//! | class `08` (`08000`, `08001`, `08003`, `08004`, `08006`, `08P01`) | connection exception | `Transient` |
//! | `08007` | transaction resolution unknown | `Ambiguous` |
//! | `40001`, `40P01` | serialization failure, deadlock detected (the transaction was rolled back) | `Transient` |
//! | `40003` | statement completion unknown | `Ambiguous` |
//! | `53300`, `53200` | too many connections, out of memory | `Transient` |
//! | `55P03` | lock not available (`NOWAIT`, `lock_timeout`) | `Transient` |
//! | `57014` | query canceled (statement timeout, cancel request): rolled back | `Transient` |
//! | `57P01`, `57P02`, `57P03`, `57P05` | admin shutdown, crash shutdown, cannot connect now (starting up), idle session timeout | `Transient` |
//! | `25006` | read-only transaction (a failover left us on a standby) | `Transient` |
//! | a refused, reset or timed-out **connect** | nothing was sent | `Transient` |
//! | the connection found closed **before** the request was sent | nothing was sent | `Transient` |
//! | the connection lost (closed, reset, I/O error) **while** the request was in flight | it may have been applied | `Ambiguous` |
//! | an attempt timeout or deadline | the statement is cancelled on the server | `Transient` |
//! | classes `22` (data), `23` (constraint), `42` (syntax, access), `28` (authentication), `3D` (no such database) and every other code | the caller's mistake or a hard failure | `Permanent` |
//!
//!
//! # A pooler's own errors
//!
//! PgBouncer (through 1.18 at least; later versions keep the messages) reports its own failures as
//! `08P01` with a message, and closes the client connection after most of them. `08P01` alone would make
//! them all transient; [`classify_pooler_message`] tells them apart:
//!
//! | PgBouncer message | meaning | classification |
//! |---|---|---|
//! | `no more connections allowed (max_client_conn)` | the pooler's client limit is reached (at connect) | `Transient` |
//! | `pgbouncer cannot connect to server`, `server login has been failing, try again later (server_login_retry)` | Postgres is down or refusing the pooler; it waits `server_login_retry` before trying again | `Transient` |
//! | `query_wait_timeout` | no server connection became free in time: the request never reached Postgres | `Transient` |
//! | `client_idle_timeout`, `idle transaction timeout`, `database configuration changed`, `database removed`, `pooler is shutting down`, `RECONNECT` | the pooler closed this client connection; a new one works | `Transient` |
//! | `server conn crashed?`, `query timeout` | the server connection was lost (or dropped by the pooler's `query_timeout`) while the request used it: it may have been applied | `Ambiguous` (`Transient` inside an uncommitted transaction or before anything was sent) |
//! | `no such database`, `no such user`, `password authentication failed`, `unsupported startup parameter`, `... not allowed` | configuration: retrying will not help | `Permanent` |
//!
//! `Permanent` errors are never retried and never count against the breaker: a burst of bad SQL does not
//! take the database "down". `Ambiguous` errors are retried only for requests marked idempotent.

use rampart_layers::Classification;
use rampart_layers::classify::{Classify, TimeoutsAreTransient};
use tokio_postgres::error::SqlState;

use crate::error::{Error, ErrorKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The classification of a SQLSTATE (see the table in the [module docs](self)).
pub fn classify_sqlstate(code: &SqlState) -> Classification {
    let code = code.code();
    match code {
        "08007" | "40003" => Classification::Ambiguous,
        "40001" | "40P01" | "53300" | "53200" | "55P03" | "57014" | "57P01" | "57P02" | "57P03"
        | "57P05" | "25006" => Classification::Transient,
        _ if code.starts_with("08") => Classification::Transient,
        _ => Classification::Permanent,
    }
}

/// The classification of an error a pooler (PgBouncer) reports about itself, as SQLSTATE `08P01` with
/// this message; `None` for a message it does not know, which the SQLSTATE then decides (see the table
/// in the [module docs](self)). `Ambiguous` means "the outcome is unknown if the request was in flight".
pub fn classify_pooler_message(message: &str) -> Option<Classification> {
    const AMBIGUOUS: [&str; 2] = ["server conn crashed", "query timeout"];
    const TRANSIENT: [&str; 10] = [
        "max_client_conn",
        "cannot connect to server",
        "server_login_retry",
        "query_wait_timeout",
        "client_idle_timeout",
        "idle transaction timeout",
        "database configuration changed",
        "database removed",
        "shutting down",
        "RECONNECT",
    ];
    const PERMANENT: [&str; 6] = [
        "no such database",
        "no such user",
        "authentication failed",
        "unsupported startup parameter",
        "not allowed",
        "SSL required",
    ];
    if AMBIGUOUS.iter().any(|m| message.contains(m)) {
        Some(Classification::Ambiguous)
    } else if TRANSIENT.iter().any(|m| message.contains(m)) {
        Some(Classification::Transient)
    } else if PERMANENT.iter().any(|m| message.contains(m)) {
        Some(Classification::Permanent)
    } else {
        None
    }
}

/// The classification of a server's (or a pooler's) error: the SQLSTATE, refined by the message for a
/// pooler's `08P01`.
fn classify_db(code: &SqlState, err: &tokio_postgres::Error) -> Classification {
    if *code == SqlState::PROTOCOL_VIOLATION {
        if let Some(class) = err
            .as_db_error()
            .and_then(|db| classify_pooler_message(db.message()))
        {
            return class;
        }
    }
    classify_sqlstate(code)
}

/// Where in a request's life a tokio-postgres error happened; decides whether a lost connection leaves
/// the outcome unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Making a connection: nothing was sent.
    Connect,
    /// The connection was already closed before the request was written: nothing was sent.
    BeforeSend,
    /// The request was (or may have been) written to the server.
    InFlight,
    /// Inside a transaction that has not been committed: if the link is lost, the server rolls it back,
    /// so nothing was applied.
    InTransaction,
}

/// Converts a tokio-postgres error into a classified [`Error`]. `server` is the redacted address.
pub(crate) fn from_pg(err: tokio_postgres::Error, stage: Stage, server: &str) -> Error {
    if stage == Stage::Connect {
        if let Some(tls) = crate::tls::classify_tls_failure(&err, server) {
            return tls.with_source(err);
        }
    }
    if let Some(code) = err.code().cloned() {
        let class = match classify_db(&code, &err) {
            // Nothing was sent, or it was inside a transaction the server rolls back.
            Classification::Ambiguous
                if stage != Stage::InFlight && code.code().starts_with("08") =>
            {
                Classification::Transient
            }
            class => class,
        };
        let message = match err.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => err.to_string(),
        };
        let kind = if stage == Stage::Connect {
            ErrorKind::Connect
        } else {
            ErrorKind::Db
        };
        let message = if stage == Stage::Connect {
            format!("could not connect to {server}: {message}")
        } else {
            message
        };
        return Error::new(kind, class, message)
            .with_code(code)
            .with_source(err);
    }
    if is_caller_mistake(&err) {
        let message = err.to_string();
        return Error::new(
            ErrorKind::InvalidRequest,
            Classification::Permanent,
            message,
        )
        .with_source(err);
    }
    match stage {
        Stage::Connect => Error::new(
            ErrorKind::Connect,
            Classification::Transient,
            format!("could not connect to {server}: {}", describe_io(&err)),
        )
        .with_source(err),
        Stage::BeforeSend => Error::new(
            ErrorKind::ConnectionLost,
            Classification::Transient,
            format!("connection to {server} was closed before the request was sent"),
        )
        .with_source(err),
        Stage::InTransaction => Error::new(
            ErrorKind::ConnectionLost,
            Classification::Transient,
            format!(
                "connection to {server} was lost inside an uncommitted transaction (the server rolls it back): {}",
                describe_io(&err)
            ),
        )
        .with_source(err),
        Stage::InFlight => Error::new(
            ErrorKind::ConnectionLost,
            Classification::Ambiguous,
            format!("connection to {server} was lost while the request was in flight: {}", describe_io(&err)),
        )
        .with_source(err),
    }
}

/// Whether tokio-postgres refused the request before sending anything because the request is wrong: a
/// parameter that cannot be encoded as the statement's type (`error serializing parameter N`) or the wrong
/// number of parameters (`expected N parameters but got M`). tokio-postgres exposes no kind for these but
/// its message; they have no SQLSTATE, and without this check they would pass for a lost connection:
/// retried, counted toward a pool rebuild, and their healthy connection thrown away.
pub(crate) fn is_caller_mistake(err: &tokio_postgres::Error) -> bool {
    if err.code().is_some() || err.is_closed() {
        return false;
    }
    let message = err.to_string();
    message.starts_with("error serializing parameter")
        || (message.starts_with("expected ") && message.contains(" parameters but got "))
}

/// Whether the connection is unusable after `err`: any failure without a SQLSTATE except a request
/// tokio-postgres refused before sending it.
pub(crate) fn link_failed(err: &tokio_postgres::Error) -> bool {
    err.code().is_none() && !is_caller_mistake(err)
}

/// The error for a connection found closed before the request was written: nothing was sent.
pub(crate) fn closed_before_send(server: &str) -> Error {
    Error::new(
        ErrorKind::ConnectionLost,
        Classification::Transient,
        format!("connection to {server} was closed before the request was sent"),
    )
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

/// The classifier for rampart's Postgres services and stacks.
///
/// It reads the classification a [`rampart::Error`](Error) carries (decided from the SQLSTATE and the
/// stage the request had reached), and for stacks whose error is `BoxError` it finds a `rampart::Error`
/// or a timeout in the error chain. Anything it cannot identify is `Permanent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgClassifier;

impl<Res> Classify<Res, Error> for PgClassifier {
    fn classify_error(&self, error: &Error) -> Classification {
        error.classification()
    }
}

impl<Res> Classify<Res, BoxError> for PgClassifier {
    fn classify_error(&self, error: &BoxError) -> Classification {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        while let Some(err) = current {
            if let Some(pg) = err.downcast_ref::<Error>() {
                return pg.classification();
            }
            if let Some(pg) = err.downcast_ref::<tokio_postgres::Error>() {
                return match pg.code() {
                    Some(code) => classify_db(code, pg),
                    None => Classification::Ambiguous,
                };
            }
            current = err.source();
        }
        Classify::<Res, BoxError>::classify_error(&TimeoutsAreTransient, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_table() {
        let cases = [
            ("08000", Classification::Transient),
            ("08001", Classification::Transient),
            ("08003", Classification::Transient),
            ("08006", Classification::Transient),
            ("08007", Classification::Ambiguous),
            ("40001", Classification::Transient),
            ("40P01", Classification::Transient),
            ("40003", Classification::Ambiguous),
            ("53300", Classification::Transient),
            ("55P03", Classification::Transient),
            ("57014", Classification::Transient),
            ("57P01", Classification::Transient),
            ("57P02", Classification::Transient),
            ("57P03", Classification::Transient),
            ("57P05", Classification::Transient),
            ("25006", Classification::Transient),
            ("42601", Classification::Permanent),
            ("42P01", Classification::Permanent),
            ("23505", Classification::Permanent),
            ("22P02", Classification::Permanent),
            ("22012", Classification::Permanent),
            ("28P01", Classification::Permanent),
            ("3D000", Classification::Permanent),
            ("53100", Classification::Permanent),
            ("XX000", Classification::Permanent),
        ];
        for (code, want) in cases {
            assert_eq!(
                classify_sqlstate(&SqlState::from_code(code)),
                want,
                "{code}"
            );
        }
    }

    #[test]
    fn pgbouncer_messages() {
        let cases = [
            (
                "no more connections allowed (max_client_conn)",
                Some(Classification::Transient),
            ),
            (
                "server login has been failing, try again later (server_login_retry)",
                Some(Classification::Transient),
            ),
            (
                "pgbouncer cannot connect to server",
                Some(Classification::Transient),
            ),
            ("query_wait_timeout", Some(Classification::Transient)),
            ("client_idle_timeout", Some(Classification::Transient)),
            ("idle transaction timeout", Some(Classification::Transient)),
            (
                "database configuration changed",
                Some(Classification::Transient),
            ),
            ("server conn crashed?", Some(Classification::Ambiguous)),
            ("query timeout", Some(Classification::Ambiguous)),
            ("no such database: app", Some(Classification::Permanent)),
            ("no such user: app", Some(Classification::Permanent)),
            (
                "password authentication failed",
                Some(Classification::Permanent),
            ),
            (
                "unsupported startup parameter: search_path",
                Some(Classification::Permanent),
            ),
            (
                "transaction blocks not allowed in statement pooling mode",
                Some(Classification::Permanent),
            ),
            ("invalid frontend message", None),
        ];
        for (message, want) in cases {
            assert_eq!(classify_pooler_message(message), want, "{message}");
        }
    }

    #[test]
    fn box_errors_are_classified_through_the_chain() {
        let lost: BoxError = Box::new(Error::new(
            ErrorKind::ConnectionLost,
            Classification::Ambiguous,
            "lost",
        ));
        assert_eq!(
            Classify::<(), BoxError>::classify_error(&PgClassifier, &lost),
            Classification::Ambiguous
        );
        let timeout: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(
            Classify::<(), BoxError>::classify_error(&PgClassifier, &timeout),
            Classification::Transient
        );
        let unknown: BoxError = "what is this".into();
        assert_eq!(
            Classify::<(), BoxError>::classify_error(&PgClassifier, &unknown),
            Classification::Permanent
        );
    }
}
