//! Error types.

use std::{error::Error, fmt, time::Duration};

use tokio::time::Instant;

/// One attempt took longer than the per-attempt limit of [`AttemptTimeout`](super::AttemptTimeout).
///
/// [`TimeoutsAreTransient`](crate::classify::TimeoutsAreTransient) classifies it as transient, so the retry
/// layer above tries again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptTimedOut {
    limit: Duration,
}

impl AttemptTimedOut {
    /// An attempt-timeout error for the given limit.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }

    /// The per-attempt limit that was exceeded.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt timed out after {:?}", self.limit)
    }
}

impl Error for AttemptTimedOut {}

/// The request's overall deadline passed before it completed.
///
/// Unlike [`AttemptTimedOut`], this ends the request: no layer retries it, since there is no time left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineExceeded {
    deadline: Instant,
}

impl DeadlineExceeded {
    /// A deadline error for the given instant.
    pub fn new(deadline: Instant) -> Self {
        Self { deadline }
    }

    /// The deadline that passed.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl Error for DeadlineExceeded {}
