//! Errors of the circuit breaker.

use std::fmt;
use std::time::Duration;

/// The breaker rejected a call without sending it: the circuit is open.
///
/// Small and cheap on purpose (no allocation until it is boxed into a [`tower::BoxError`]), because
/// failing fast is the whole point. Find it in a boxed error with `err.is::<CircuitOpen>()` or
/// `err.downcast_ref::<CircuitOpen>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitOpen {
    retry_after: Option<Duration>,
    forced: bool,
}

impl CircuitOpen {
    pub(crate) fn new(retry_after: Option<Duration>, forced: bool) -> Self {
        Self {
            retry_after,
            forced,
        }
    }

    /// How long until the breaker lets a probe through.
    ///
    /// `Some(Duration::ZERO)` when the breaker is half-open and every probe slot is taken (the decision may
    /// come at any moment); `None` when it was forced open and only an operator can close it.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether an operator forced the breaker open (see [`BreakerHandle::force_open`](super::BreakerHandle::force_open)).
    pub fn is_forced(&self) -> bool {
        self.forced
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.forced, self.retry_after) {
            (true, _) => f.write_str("circuit breaker forced open"),
            (false, Some(d)) => write!(f, "circuit breaker open; next probe in {d:?}"),
            (false, None) => f.write_str("circuit breaker open"),
        }
    }
}

impl std::error::Error for CircuitOpen {}
