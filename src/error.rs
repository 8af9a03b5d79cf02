//! Errors: one type for everything a query can meet, keeping its cause, SQLSTATE and classification.
//!
//! A Postgres failure becomes an [`Error`] where it is met ([`crate::outcome`]). The generic layers above
//! the service return `BoxError`, as tower's own do (so they stack with any tower service); a ready-made
//! stack turns what they return into an [`Error`] once, at its top, with [`Error::from_layers`]: the
//! service's own error comes back as it was made, a layer's (an open breaker, a timeout, a deadline) is
//! classified here.

use std::fmt;
use std::time::Duration;

use rampart_layers::Classification;
use rampart_layers::breaker::CircuitOpen;
use rampart_layers::deadline::{AttemptTimedOut, DeadlineExceeded};
use rampart_layers::retry::RetryError;
use tokio_postgres::error::SqlState;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A setting that cannot work, found when the configuration is built; it names the field. The same type
/// as every layer's builder returns, so a whole stack's bad settings are handled one way.
pub use rampart_layers::ConfigError;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server answered with an error; [`Error::code`] has its SQLSTATE.
    Db,
    /// A connection could not be made: refused, unreachable, TLS, authentication, or the connect timeout.
    Connect,
    /// The connection broke (closed, reset, I/O error) while the request used it.
    ConnectionLost,
    /// No pooled connection became free within the checkout wait timeout.
    PoolExhausted,
    /// The pool is closed: the service is shutting down.
    PoolClosed,
    /// One attempt took longer than the per-attempt timeout.
    Timeout,
    /// The request's overall deadline passed.
    DeadlineExceeded,
    /// The circuit breaker is open: the database is failing and calls are refused without trying.
    CircuitOpen,
    /// The request itself is wrong and was never sent: a parameter that cannot be encoded as the type
    /// the statement expects, or a parameter count that does not match the statement's.
    InvalidRequest,
    /// A row could not be read as the type asked for: a column of another type, or a missing column.
    Decode,
    /// The statement returned zero or several rows where exactly one (or at most one) was expected.
    RowCount,
    /// A write was applied — the server says its transaction committed — but the reply, with the rows
    /// the statement returned (`RETURNING`), was lost with the connection. Never retried: read the rows
    /// again. (A write that returns no rows is reported as a success instead, with
    /// [`Response::reply_lost`](crate::Response::reply_lost).)
    ReplyLost,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short stable name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Db => "db",
            ErrorKind::Connect => "connect",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::PoolExhausted => "pool_exhausted",
            ErrorKind::PoolClosed => "pool_closed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Decode => "decode",
            ErrorKind::RowCount => "row_count",
            ErrorKind::ReplyLost => "reply_lost",
            ErrorKind::Other => "other",
        }
    }
}

/// The error of every rampart Postgres service and stack.
///
/// It keeps the underlying cause ([`source`](std::error::Error::source)), the SQLSTATE of a server error,
/// and how the failure is [classified](Error::classification). `Display` never includes a password.
/// [`Error::is_outcome_unknown`] tells the caller that a write may or may not have been applied.
/// The [crate docs](crate#errors-to-http-statuses) suggest an HTTP status for each kind.
pub struct Error {
    kind: ErrorKind,
    classification: Classification,
    message: String,
    code: Option<SqlState>,
    retry_in: Option<Duration>,
    attempts: Option<u32>,
    source: Option<BoxError>,
    /// Lost on a shared (multiplexed) connection, which the multiplexer replaces itself.
    shared: bool,
}

impl Error {
    pub(crate) fn new(
        kind: ErrorKind,
        classification: Classification,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            classification,
            message: message.into(),
            code: None,
            retry_in: None,
            attempts: None,
            source: None,
            shared: false,
        }
    }

    /// Marks a lost connection as a shared one (see [`crate::mux`]).
    pub(crate) fn on_shared_connection(mut self) -> Self {
        self.shared = true;
        self
    }

    /// Whether the connection lost was a shared one, which the multiplexer replaces itself.
    pub(crate) fn is_on_shared_connection(&self) -> bool {
        self.shared
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn with_code(mut self, code: SqlState) -> Self {
        self.code = Some(code);
        self
    }

    pub(crate) fn with_retry_in(mut self, retry_in: Duration) -> Self {
        self.retry_in = Some(retry_in);
        self
    }

    /// Adds what the layer that gave up knows to the message (why a breaker is open, what a deadline
    /// cut short).
    pub(crate) fn explained(mut self, more: impl fmt::Display) -> Self {
        use fmt::Write;
        let _ = write!(self.message, "{more}");
        self
    }

    /// An earlier attempt of the request may have been applied: whatever the last attempt met, the
    /// outcome is unknown.
    pub(crate) fn after_an_unknown_outcome(mut self) -> Self {
        if self.classification != Classification::Ambiguous {
            self.classification = Classification::Ambiguous;
            self.message
                .push_str(" (an earlier attempt may have been applied)");
        }
        self
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = Some(attempts);
        self
    }

    /// The message alone, without the SQLSTATE, attempts and outcome that `Display` adds.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether sending the request again may help, and whether it may already have taken effect.
    pub fn classification(&self) -> Classification {
        self.classification
    }

    /// `true` when the request may or may not have taken effect (the connection was lost while it was in
    /// flight, or the server said so with 08007/40003). Such a write is never replayed unless the request
    /// was marked idempotent.
    pub fn is_outcome_unknown(&self) -> bool {
        self.classification == Classification::Ambiguous
    }

    /// `true` when the request is known to have been applied even though it failed: its reply was lost
    /// after its transaction committed ([`ErrorKind::ReplyLost`]).
    pub fn was_applied(&self) -> bool {
        self.kind == ErrorKind::ReplyLost
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&SqlState> {
        self.code.as_ref()
    }

    /// For [`ErrorKind::CircuitOpen`]: how long until the breaker lets a probe through.
    pub fn retry_in(&self) -> Option<Duration> {
        self.retry_in
    }

    /// How many attempts were made, when there was more than one or a deadline ended them. A request
    /// whose retries ran out (attempts, budget, time) keeps the kind of its last attempt's error (a lost
    /// connection stays [`ErrorKind::ConnectionLost`]); this says how many tries it took.
    pub fn attempts(&self) -> Option<u32> {
        self.attempts
    }
}

impl Error {
    /// What the layers of a stack returned, as an [`Error`]: the service's own error as it was made, or
    /// the layer's classified (see the [module docs](self)). `sent`: whether the statement of the attempt
    /// an attempt timeout or the deadline cut may have reached the server, which makes its outcome
    /// unknown.
    pub(crate) fn from_layers(err: BoxError, sent: bool) -> Error {
        let err = match err.downcast::<RetryError>() {
            Ok(retry) => {
                let attempts = retry.attempts();
                let cause = Error::from_layers(retry.into_cause(), sent);
                return if attempts > 1 {
                    cause.with_attempts(attempts)
                } else {
                    cause
                };
            }
            Err(err) => err,
        };
        let err = match err.downcast::<Error>() {
            Ok(e) => return *e,
            Err(err) => err,
        };
        if let Some(open) = err.downcast_ref::<CircuitOpen>() {
            let e = Error::new(
                ErrorKind::CircuitOpen,
                Classification::Permanent,
                open.to_string(),
            );
            return match open.retry_after() {
                Some(after) => e.with_retry_in(after),
                None => e,
            };
        }
        let kind = if err.is::<AttemptTimedOut>() {
            ErrorKind::Timeout
        } else if err.is::<DeadlineExceeded>() {
            ErrorKind::DeadlineExceeded
        } else {
            return Error::new(ErrorKind::Other, Classification::Permanent, err.to_string())
                .with_source(err);
        };
        // Cut while the statement may have been running: it may have been applied (a cancel sent in the
        // background can arrive after the commit). Cut before it was sent: nothing happened.
        let (class, message) = if sent {
            (
                Classification::Ambiguous,
                format!("{err}, after the statement was sent"),
            )
        } else {
            (Classification::Transient, err.to_string())
        };
        Error::new(kind, class, message).with_source(err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("classification", &self.classification)
            .field("message", &self.message);
        if let Some(code) = &self.code {
            d.field("code", &code.code());
        }
        if let Some(attempts) = self.attempts {
            d.field("attempts", &attempts);
        }
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(code) = &self.code {
            write!(f, " (SQLSTATE {})", code.code())?;
        }
        if let Some(attempts) = self.attempts {
            write!(f, " after {attempts} attempts")?;
        }
        if self.is_outcome_unknown() {
            f.write_str("; the outcome is unknown: the request may or may not have been applied")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
