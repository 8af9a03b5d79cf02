//! Error types.

use std::{error::Error, fmt};

use tower::BoxError;

use crate::classify::Classification;

/// Why the retry layer stopped and returned an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GaveUp {
    /// The error was [`Permanent`](Classification::Permanent): sending the request again cannot help.
    Permanent,
    /// The outcome was [`Ambiguous`](Classification::Ambiguous) and the request is not idempotent.
    NotIdempotent,
    /// The policy's `max_attempts` were all used.
    AttemptsExhausted,
    /// The backoff schedule returned no further delay.
    ScheduleEnded,
    /// Waiting for the next attempt would pass the policy's `max_elapsed`.
    ElapsedLimit,
    /// Waiting for the next attempt would pass the request's overall deadline.
    Deadline,
    /// The retry budget had no retries left.
    BudgetExhausted,
    /// The inner service failed while getting ready.
    ServiceNotReady,
    /// The failure was retryable, but the request cannot be sent again (see
    /// [`Replay`](super::Replay)).
    NotReplayable,
}

impl GaveUp {
    /// A short lowercase name, stable for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            GaveUp::Permanent => "permanent",
            GaveUp::NotIdempotent => "not_idempotent",
            GaveUp::AttemptsExhausted => "attempts_exhausted",
            GaveUp::ScheduleEnded => "schedule_ended",
            GaveUp::ElapsedLimit => "elapsed_limit",
            GaveUp::Deadline => "deadline",
            GaveUp::BudgetExhausted => "budget_exhausted",
            GaveUp::ServiceNotReady => "service_not_ready",
            GaveUp::NotReplayable => "not_replayable",
        }
    }
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GaveUp::Permanent => "permanent error",
            GaveUp::NotIdempotent => "outcome unknown and request not idempotent",
            GaveUp::AttemptsExhausted => "attempts exhausted",
            GaveUp::ScheduleEnded => "backoff schedule ended",
            GaveUp::ElapsedLimit => "retry time limit reached",
            GaveUp::Deadline => "deadline would pass before the next attempt",
            GaveUp::BudgetExhausted => "retry budget exhausted",
            GaveUp::ServiceNotReady => "service failed to become ready",
            GaveUp::NotReplayable => "request cannot be sent again",
        })
    }
}

/// The error of the [`Retry`](super::Retry) service: the last failure, how many attempts were made, and
/// why no more were.
///
/// The cause is boxed (as [`BoxError`]) so it can carry what any inner stack produces; find a concrete
/// error with [`cause`](RetryError::cause)`().downcast_ref::<T>()`. `RetryError` itself converts into a
/// `BoxError` for the layers above, where `err.downcast_ref::<RetryError>()` recovers it.
#[derive(Debug)]
pub struct RetryError {
    cause: BoxError,
    attempts: u32,
    reason: GaveUp,
    classification: Option<Classification>,
}

impl RetryError {
    pub(crate) fn new(
        cause: BoxError,
        attempts: u32,
        reason: GaveUp,
        classification: Option<Classification>,
    ) -> Self {
        Self {
            cause,
            attempts,
            reason,
            classification,
        }
    }

    /// The last error the inner service returned.
    pub fn cause(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.cause
    }

    /// The last error the inner service returned, owned.
    pub fn into_cause(self) -> BoxError {
        self.cause
    }

    /// How many times the request was sent to the inner service (0 if it never got ready).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why no further attempt was made.
    pub fn reason(&self) -> GaveUp {
        self.reason
    }

    /// How the classifier judged the last error (`None` for a readiness failure, which is not classified).
    pub fn classification(&self) -> Option<Classification> {
        self.classification
    }
}

impl fmt::Display for RetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if self.attempts == 1 { "" } else { "s" };
        write!(
            f,
            "gave up after {} attempt{plural} ({}): {}",
            self.attempts, self.reason, self.cause
        )
    }
}

impl Error for RetryError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_error_reports_cause_and_attempts() {
        let err = RetryError::new(
            "boom".into(),
            3,
            GaveUp::AttemptsExhausted,
            Some(Classification::Transient),
        );
        assert_eq!(
            err.to_string(),
            "gave up after 3 attempts (attempts exhausted): boom"
        );
        assert_eq!(err.attempts(), 3);
        assert_eq!(err.reason(), GaveUp::AttemptsExhausted);
        assert_eq!(err.classification(), Some(Classification::Transient));
        assert_eq!(err.source().unwrap().to_string(), "boom");
        let boxed: BoxError = err.into();
        assert_eq!(
            boxed
                .downcast_ref::<RetryError>()
                .unwrap()
                .cause()
                .to_string(),
            "boom"
        );
    }
}
