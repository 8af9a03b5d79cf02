//! What an outcome means: one classifier shared by every layer.
//!
//! Retry, the circuit breaker and recreation all have to answer the same question about a failed call:
//! *was that the kind of failure that might go away?* Answering it in three places invites three different
//! answers, so they all ask one [`Classify`] implementation instead.
//!
//! | [`Classification`] | meaning | retry | breaker |
//! |---|---|---|---|
//! | `Transient` | the request did not take effect and may succeed if sent again (refused connect, timeout before sending, serialization failure) | yes | counts as a failure |
//! | `Ambiguous` | the request may or may not have taken effect (a connection lost mid-write) | only if the request is [idempotent](Idempotence) | counts as a failure |
//! | `Permanent` | the caller's mistake or a hard failure (bad SQL, constraint violation, bad credentials) | never | ignored |
//!
//! Requests say whether replaying them is harmless through [`Idempotence`]. The default is *not* idempotent:
//! a write whose outcome is unknown is never replayed unless the caller says it may be.
//!
//! # Example
//!
//! ```
//! use rampart_layers::classify::{Classification, Classify, classify_fn};
//!
//! #[derive(Debug)]
//! enum MyError { Refused, BadInput }
//!
//! let classifier = classify_fn(|err: &MyError| match err {
//!     MyError::Refused => Classification::Transient,
//!     MyError::BadInput => Classification::Permanent,
//! });
//! assert_eq!(Classify::<(), MyError>::classify_error(&classifier, &MyError::Refused), Classification::Transient);
//! ```

use std::fmt;

// Re-exported so that `classify::Idempotence` and friends stay where users found them; the types
// live in their own module, which imports nothing, so `deadline` can use them without importing
// `classify` (which names `deadline`'s timeout error).
pub use crate::idempotence::{Idempotence, Idempotent, NotIdempotent};

/// What a failed (or suspicious) outcome means for whoever decides whether to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Classification {
    /// The request did not take effect; sending it again may succeed.
    Transient,
    /// The request may have taken effect; replay it only when it is idempotent.
    Ambiguous,
    /// Sending it again cannot help (the caller's mistake or a hard failure). Never retried, never trips a breaker.
    Permanent,
}

impl Classification {
    /// Whether a request with the given idempotence may be sent again after this outcome.
    pub fn is_retryable(self, idempotent: bool) -> bool {
        match self {
            Classification::Transient => true,
            Classification::Ambiguous => idempotent,
            Classification::Permanent => false,
        }
    }

    /// Whether a circuit breaker should count this outcome as a failure of the downstream.
    pub fn is_failure_of_downstream(self) -> bool {
        !matches!(self, Classification::Permanent)
    }

    /// A short lowercase name, stable for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Transient => "transient",
            Classification::Ambiguous => "ambiguous",
            Classification::Permanent => "permanent",
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a circuit breaker counts one outcome: see [`Classify::breaker_count`].
///
/// Resilience4j records an exception as a failure when it matches `recordExceptions`, ignores it when
/// it matches `ignoreExceptions`, and counts any other as a success; Polly counts every outcome its
/// `ShouldHandle` rejects as a success. The default here ([`From<Classification>`]) fails `Transient`
/// and `Ambiguous` errors and ignores `Permanent` ones; a classifier that knows some error means the
/// downstream is healthy (a "not found", a constraint the caller broke, a cancellation by the caller)
/// may count it as a success instead, so it lowers the failure rate as a response would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerCount {
    /// A failure of the downstream: counts towards the failure rate.
    Failure,
    /// A success, whatever the call returned: counts as a call that did not fail (it may still be slow).
    Success,
    /// Not counted: says nothing about the downstream. In half-open, the probe's permit is given back.
    Ignored,
}

impl From<Classification> for BreakerCount {
    fn from(class: Classification) -> Self {
        if class.is_failure_of_downstream() {
            BreakerCount::Failure
        } else {
            BreakerCount::Ignored
        }
    }
}

/// Decides what an outcome of a service call means.
///
/// `Res` is the service's response type and `E` its error type. Most classifiers only look at errors;
/// [`classify_response`](Classify::classify_response) lets protocols whose failures arrive as responses
/// (an HTTP 503, say) take part too.
pub trait Classify<Res, E> {
    /// Classifies an error returned by the service.
    fn classify_error(&self, error: &E) -> Classification;

    /// Classifies a successful response. `None` (the default) means it is a success.
    fn classify_response(&self, _response: &Res) -> Option<Classification> {
        None
    }

    /// How a circuit breaker counts this error. The default follows [`classify_error`](Self::classify_error)
    /// ([`BreakerCount::from`]): override it to count an error as a success. Retry never reads it.
    ///
    /// ```
    /// use rampart_layers::classify::{BreakerCount, Classification, Classify};
    ///
    /// #[derive(Debug)]
    /// enum DbError { Refused, NotFound, BadSql }
    ///
    /// struct Db;
    /// impl Classify<(), DbError> for Db {
    ///     fn classify_error(&self, e: &DbError) -> Classification {
    ///         match e {
    ///             DbError::Refused => Classification::Transient,
    ///             DbError::NotFound | DbError::BadSql => Classification::Permanent,
    ///         }
    ///     }
    ///     fn breaker_count(&self, e: &DbError) -> BreakerCount {
    ///         match e {
    ///             // The database answered: it is up.
    ///             DbError::NotFound => BreakerCount::Success,
    ///             other => self.classify_error(other).into(),
    ///         }
    ///     }
    /// }
    /// assert_eq!(Db.breaker_count(&DbError::NotFound), BreakerCount::Success);
    /// assert_eq!(Db.breaker_count(&DbError::BadSql), BreakerCount::Ignored);
    /// assert_eq!(Db.breaker_count(&DbError::Refused), BreakerCount::Failure);
    /// ```
    fn breaker_count(&self, error: &E) -> BreakerCount {
        self.classify_error(error).into()
    }
}

impl<Res, E, C: Classify<Res, E> + ?Sized> Classify<Res, E> for &C {
    fn classify_error(&self, error: &E) -> Classification {
        (**self).classify_error(error)
    }
    fn classify_response(&self, response: &Res) -> Option<Classification> {
        (**self).classify_response(response)
    }
    fn breaker_count(&self, error: &E) -> BreakerCount {
        (**self).breaker_count(error)
    }
}

impl<Res, E, C: Classify<Res, E> + ?Sized> Classify<Res, E> for std::sync::Arc<C> {
    fn classify_error(&self, error: &E) -> Classification {
        (**self).classify_error(error)
    }
    fn classify_response(&self, response: &Res) -> Option<Classification> {
        (**self).classify_response(response)
    }
    fn breaker_count(&self, error: &E) -> BreakerCount {
        (**self).breaker_count(error)
    }
}

/// How `classifier` judges a call's outcome: `None` for a success.
#[cfg(feature = "recreate")]
pub(crate) fn classify_result<Res, E, C: Classify<Res, E>>(
    classifier: &C,
    result: &Result<Res, E>,
) -> Option<Classification> {
    match result {
        Ok(response) => classifier.classify_response(response),
        Err(error) => Some(classifier.classify_error(error)),
    }
}

/// How a circuit breaker counts a call's outcome.
#[cfg(feature = "breaker")]
#[inline]
pub(crate) fn breaker_count_of<Res, E, C: Classify<Res, E>>(
    classifier: &C,
    result: &Result<Res, E>,
) -> BreakerCount {
    match result {
        Ok(response) => match classifier.classify_response(response) {
            None => BreakerCount::Success,
            Some(class) => class.into(),
        },
        Err(error) => classifier.breaker_count(error),
    }
}

/// A classifier from a closure over the error; see [`classify_fn`].
#[derive(Clone, Copy)]
pub struct ClassifyFn<F> {
    f: F,
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

/// Builds a classifier from a closure that classifies errors. Responses count as successes.
pub fn classify_fn<E, F>(f: F) -> ClassifyFn<F>
where
    F: Fn(&E) -> Classification,
{
    ClassifyFn { f }
}

impl<Res, E, F> Classify<Res, E> for ClassifyFn<F>
where
    F: Fn(&E) -> Classification,
{
    fn classify_error(&self, error: &E) -> Classification {
        (self.f)(error)
    }
}

/// The classifier for stacks whose errors are [`tower::BoxError`]: it treats a timeout as `Transient`
/// and everything else as `Permanent`.
///
/// A timeout is recognised by type: tower's [`tower::timeout::error::Elapsed`], and this crate's own
/// attempt-timeout error when the `deadline` feature is on. An error it cannot identify is `Permanent`,
/// because retrying what we do not understand is how a blip becomes a retry storm. Stack a classifier that
/// knows your errors (the `rampart` crate has one for Postgres) in front of this where you need more.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeoutsAreTransient;

impl TimeoutsAreTransient {
    /// Whether the error (or anything in its `source()` chain) is a timeout this crate knows.
    pub fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(err) = current {
            if err.is::<tower::timeout::error::Elapsed>() || is_own_timeout(err) {
                return true;
            }
            current = err.source();
        }
        false
    }
}

#[cfg(feature = "deadline")]
fn is_own_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    err.is::<crate::deadline::AttemptTimedOut>()
}

#[cfg(not(feature = "deadline"))]
fn is_own_timeout(_err: &(dyn std::error::Error + 'static)) -> bool {
    false
}

impl<Res> Classify<Res, tower::BoxError> for TimeoutsAreTransient {
    fn classify_error(&self, error: &tower::BoxError) -> Classification {
        if Self::is_timeout(error.as_ref()) {
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
    fn retryable_follows_idempotence_only_for_ambiguous() {
        assert!(Classification::Transient.is_retryable(false));
        assert!(Classification::Transient.is_retryable(true));
        assert!(!Classification::Ambiguous.is_retryable(false));
        assert!(Classification::Ambiguous.is_retryable(true));
        assert!(!Classification::Permanent.is_retryable(true));
    }

    #[test]
    fn permanent_is_not_a_downstream_failure() {
        assert!(!Classification::Permanent.is_failure_of_downstream());
        assert!(Classification::Transient.is_failure_of_downstream());
        assert!(Classification::Ambiguous.is_failure_of_downstream());
    }

    #[test]
    fn timeouts_are_found_by_type_and_in_source_chain() {
        let elapsed: tower::BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(
            Classify::<(), _>::classify_error(&TimeoutsAreTransient, &elapsed),
            Classification::Transient
        );

        #[derive(Debug)]
        struct Wrapper(tower::timeout::error::Elapsed);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped: tower::BoxError = Box::new(Wrapper(tower::timeout::error::Elapsed::new()));
        assert_eq!(
            Classify::<(), _>::classify_error(&TimeoutsAreTransient, &wrapped),
            Classification::Transient
        );

        let other: tower::BoxError = "boom".into();
        assert_eq!(
            Classify::<(), _>::classify_error(&TimeoutsAreTransient, &other),
            Classification::Permanent
        );
    }

    // Here rather than in `deadline`, which must not import this module (it is named from here).
    #[cfg(feature = "deadline")]
    #[test]
    fn attempt_timeouts_are_transient_and_deadlines_are_not() {
        let timed_out: tower::BoxError = Box::new(crate::deadline::AttemptTimedOut::new(
            std::time::Duration::from_secs(1),
        ));
        assert_eq!(
            Classify::<(), _>::classify_error(&TimeoutsAreTransient, &timed_out),
            Classification::Transient
        );
        let exceeded: tower::BoxError = Box::new(crate::deadline::DeadlineExceeded::new(
            tokio::time::Instant::now(),
        ));
        assert_eq!(
            Classify::<(), _>::classify_error(&TimeoutsAreTransient, &exceeded),
            Classification::Permanent
        );
    }
}
