//! Errors of validation.

use std::fmt;
use std::time::Duration;

use tower::BoxError;

/// A resource failed its check: the check returned an error, or did not finish within the check timeout.
#[derive(Debug)]
#[non_exhaustive]
pub struct ValidationError<E> {
    kind: Kind<E>,
}

#[derive(Debug)]
enum Kind<E> {
    Failed(E),
    TimedOut(Duration),
}

impl<E> ValidationError<E> {
    pub(crate) fn failed(error: E) -> Self {
        Self {
            kind: Kind::Failed(error),
        }
    }

    pub(crate) fn timed_out(limit: Duration) -> Self {
        Self {
            kind: Kind::TimedOut(limit),
        }
    }

    /// Whether the check ran out of time (rather than returning an error).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::TimedOut(_))
    }

    /// The check's own error, if it returned one.
    pub fn check_error(&self) -> Option<&E> {
        match &self.kind {
            Kind::Failed(e) => Some(e),
            Kind::TimedOut(_) => None,
        }
    }

    /// The check's own error, if it returned one.
    pub fn into_check_error(self) -> Option<E> {
        match self.kind {
            Kind::Failed(e) => Some(e),
            Kind::TimedOut(_) => None,
        }
    }

    /// A short lowercase name of the outcome, stable for logs and metric labels.
    pub fn outcome(&self) -> &'static str {
        match self.kind {
            Kind::Failed(_) => "failed",
            Kind::TimedOut(_) => "timed_out",
        }
    }
}

impl<E: fmt::Display> fmt::Display for ValidationError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Failed(e) => write!(f, "resource failed validation: {e}"),
            Kind::TimedOut(d) => write!(f, "resource validation timed out after {d:?}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ValidationError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Failed(e) => Some(e),
            Kind::TimedOut(_) => None,
        }
    }
}

/// A resource failed its check and building its replacement failed too; the source is the factory's error.
#[derive(Debug)]
#[non_exhaustive]
pub struct ReplaceError {
    source: BoxError,
}

impl ReplaceError {
    pub(crate) fn new(source: BoxError) -> Self {
        Self { source }
    }

    /// The factory's error.
    pub fn factory_error(&self) -> &BoxError {
        &self.source
    }
}

impl fmt::Display for ReplaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resource failed validation and could not be replaced: {}",
            self.source
        )
    }
}

impl std::error::Error for ReplaceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}
