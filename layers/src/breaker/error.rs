//! Errors of the circuit breaker.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// The breaker rejected a call without sending it: the circuit is open.
///
/// Small and cheap on purpose (no allocation until it is boxed into a [`tower::BoxError`]), because
/// failing fast is the whole point. Find it in a boxed error with `err.is::<CircuitOpen>()` or
/// `err.downcast_ref::<CircuitOpen>()`.
#[derive(Clone, Copy)]
pub struct CircuitOpen {
    wait: Wait,
}

/// The wait a rejection reports. A rejection by an open breaker keeps the two instants and subtracts them
/// only if [`CircuitOpen::retry_after`] is asked for: the rejection path does not pay for turning two
/// instants into a duration that most callers never read.
#[derive(Clone, Copy)]
enum Wait {
    For(Duration),
    Between { now: Instant, until: Instant },
    Forced,
}

impl CircuitOpen {
    pub(crate) fn new(retry_after: Option<Duration>, forced: bool) -> Self {
        let wait = match (forced, retry_after) {
            (true, _) | (false, None) => Wait::Forced,
            (false, Some(d)) => Wait::For(d),
        };
        Self { wait }
    }

    /// Rejected at `now` by a breaker open until `until`.
    #[inline]
    pub(crate) fn between(now: Instant, until: Instant) -> Self {
        Self {
            wait: Wait::Between { now, until },
        }
    }

    /// How long until the breaker lets a probe through, as of the rejection.
    ///
    /// `Some(Duration::ZERO)` when the breaker is half-open and every probe slot is taken (the decision may
    /// come at any moment); `None` when it was forced open and only an operator can close it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.wait {
            Wait::For(d) => Some(d),
            Wait::Between { now, until } => Some(until.saturating_duration_since(now)),
            Wait::Forced => None,
        }
    }

    /// Whether an operator forced the breaker open (see [`BreakerHandle::force_open`](super::BreakerHandle::force_open)).
    pub fn is_forced(&self) -> bool {
        matches!(self.wait, Wait::Forced)
    }
}

impl PartialEq for CircuitOpen {
    fn eq(&self, other: &Self) -> bool {
        self.retry_after() == other.retry_after() && self.is_forced() == other.is_forced()
    }
}

impl Eq for CircuitOpen {}

impl fmt::Debug for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitOpen")
            .field("retry_after", &self.retry_after())
            .field("forced", &self.is_forced())
            .finish()
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_forced(), self.retry_after()) {
            (true, _) => f.write_str("circuit breaker forced open"),
            (false, Some(d)) => write!(f, "circuit breaker open; next probe in {d:?}"),
            (false, None) => f.write_str("circuit breaker open"),
        }
    }
}

impl std::error::Error for CircuitOpen {}
