//! What a Postgres failure means: SQLSTATE and pooler messages to a classification; what a stack's breaker and pool rebuild count.
//!
//! What users read is on [`PgClassifier`] (the module is private: the flat list in `lib.rs` is the one public path).

use rampart_layers::Classification;
use rampart_layers::classify::{Classify, TimeoutsAreTransient};
use tokio_postgres::error::SqlState;

use crate::error::{Error, ErrorKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The classification of a SQLSTATE (see the table in the [`PgClassifier`] docs).
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
/// in the [`PgClassifier`] docs). `Ambiguous` means "the outcome is unknown if the request was in flight".
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
pub(crate) fn classify_db(code: &SqlState, err: &tokio_postgres::Error) -> Classification {
    if *code == SqlState::PROTOCOL_VIOLATION {
        let message = err.as_db_error().map(|db| db.message()).unwrap_or("");
        // Postgres's own refusal of a message over its 1 GiB limit: the request is too big, and will be
        // every time.
        if message.starts_with("invalid message length") {
            return Classification::Permanent;
        }
        if let Some(class) = classify_pooler_message(message) {
            return class;
        }
    }
    classify_sqlstate(code)
}

/// The classifier for rampart's Postgres services and stacks.
///
/// It reads the classification a [`rampart::Error`](Error) carries (decided from the SQLSTATE and the
/// stage the request had reached), and for stacks whose error is `BoxError` it finds a `rampart::Error`
/// or a timeout in the error chain. Anything it cannot identify is `Permanent`.
///
/// Every layer of a rampart stack asks [`PgClassifier`], so retry, the circuit breaker and pool recreation
/// agree. The mapping:
///
/// | SQLSTATE / condition | meaning | classification |
/// |---|---|---|
/// | class `08` (`08000`, `08001`, `08003`, `08004`, `08006`, `08P01`) | connection exception | `Transient` |
/// | `08007` | transaction resolution unknown | `Ambiguous` |
/// | `40001`, `40P01` | serialization failure, deadlock detected (the transaction was rolled back) | `Transient` |
/// | `40003` | statement completion unknown | `Ambiguous` |
/// | `53300`, `53200` | too many connections, out of memory | `Transient` |
/// | `55P03` | lock not available (`NOWAIT`, `lock_timeout`) | `Transient` |
/// | `57014` | query canceled (statement timeout, cancel request): rolled back | `Transient` |
/// | `57P01`, `57P02`, `57P03`, `57P05` | admin shutdown, crash shutdown, cannot connect now (starting up), idle session timeout | `Transient` |
/// | `25006` | read-only transaction (a failover left us on a standby) | `Transient` |
/// | a refused, reset or timed-out **connect** | nothing was sent | `Transient` |
/// | the connection found closed **before** the request was sent | nothing was sent | `Transient` |
/// | the connection lost (closed, reset, I/O error) **while** the request was in flight | it may have been applied | `Ambiguous` |
/// | an attempt timeout or deadline | the statement is cancelled on the server | `Transient` |
/// | classes `22` (data), `23` (constraint), `42` (syntax, access), `28` (authentication), `3D` (no such database) and every other code | the caller's mistake or a hard failure | `Permanent` |
///
///
/// # A pooler's own errors
///
/// PgBouncer (through 1.18 at least; later versions keep the messages) reports its own failures as
/// `08P01` with a message, and closes the client connection after most of them. `08P01` alone would make
/// them all transient; [`classify_pooler_message`] tells them apart:
///
/// | PgBouncer message | meaning | classification |
/// |---|---|---|
/// | `no more connections allowed (max_client_conn)` | the pooler's client limit is reached (at connect) | `Transient` |
/// | `pgbouncer cannot connect to server`, `server login has been failing, try again later (server_login_retry)` | Postgres is down or refusing the pooler; it waits `server_login_retry` before trying again | `Transient` |
/// | `query_wait_timeout` | no server connection became free in time: the request never reached Postgres | `Transient` |
/// | `client_idle_timeout`, `idle transaction timeout`, `database configuration changed`, `database removed`, `pooler is shutting down`, `RECONNECT` | the pooler closed this client connection; a new one works | `Transient` |
/// | `server conn crashed?`, `query timeout` | the server connection was lost (or dropped by the pooler's `query_timeout`) while the request used it: it may have been applied | `Ambiguous` (`Transient` inside an uncommitted transaction or before anything was sent) |
/// | `no such database`, `no such user`, `password authentication failed`, `unsupported startup parameter`, `... not allowed` | configuration: retrying will not help | `Permanent` |
///
/// `Permanent` errors are never retried and never count against the breaker: a burst of bad SQL does not
/// take the database "down". `Ambiguous` errors are retried only for requests marked idempotent.
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

/// What a stack's circuit breaker counts: what [`PgClassifier`] calls a failure of the database, except a
/// connection lost on a pooled link and the errors of a database that answers ([`answered_but_contended`]). A lost link says that *connection* failed (a middlebox forgot it, the
/// server closed it), not that the database is down: the retry's fresh connection answers that, and if
/// the database is really down, its connect failures and timeouts are counted. Counting lost links would
/// let one burst of stale connections open the breaker in front of a healthy database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerClassifier;

impl<Res> Classify<Res, BoxError> for BreakerClassifier {
    fn classify_error(&self, err: &BoxError) -> Classification {
        match err.downcast_ref::<Error>() {
            Some(e) if e.kind() == ErrorKind::ConnectionLost => Classification::Permanent,
            Some(e) if e.code().is_some_and(answered_but_contended) => Classification::Permanent,
            _ => Classify::<Res, BoxError>::classify_error(&PgClassifier, err),
        }
    }
}

/// SQLSTATEs that are worth a retry but say the database is up and answering: one table's contention
/// (`40001` serialization failure, `40P01` deadlock, `55P03` lock not available), a statement cut by its
/// own `statement_timeout` or a cancel (`57014`: the server answered), a server that no longer takes
/// writes (`25006`: reads still work there). None of them is evidence that the database is down, so the
/// breaker never counts them: five requests on one locked row must not refuse everyone else's queries.
fn answered_but_contended(code: &SqlState) -> bool {
    matches!(code.code(), "40001" | "40P01" | "55P03" | "57014" | "25006")
}

/// What counts toward rebuilding a stack's pool: only pooled links found dead. Failed connects do not
/// count: a new pool would connect to the same server and fail the same way (the breaker and the retry
/// backoff are what help then). Nor do shared connections lost in multiplexed mode: one lost shared
/// connection fails every request in flight on it at once, and the multiplexer replaces it itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LostPooledLinks;

impl<Res> Classify<Res, Error> for LostPooledLinks {
    fn classify_error(&self, e: &Error) -> Classification {
        if e.kind() == ErrorKind::ConnectionLost && !e.is_on_shared_connection() {
            Classification::Transient
        } else {
            Classification::Permanent
        }
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
