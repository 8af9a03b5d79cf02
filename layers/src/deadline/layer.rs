use std::time::Duration;

use tower::Layer;

use super::{AttemptTimeout, Deadline};

/// Applies [`Deadline`] to a service: see the [module docs](super).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    budget: Option<Duration>,
}

impl DeadlineLayer {
    /// Gives each request `budget` from the moment it is called, unless it already carries an earlier
    /// deadline, and fails it with [`DeadlineExceeded`](super::DeadlineExceeded) when that passes.
    pub const fn new(budget: Duration) -> Self {
        Self {
            budget: Some(budget),
        }
    }

    /// Enforces only the deadline a request already carries; requests without one are not limited.
    pub const fn from_request() -> Self {
        Self { budget: None }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            budget: self.budget,
        }
    }
}

/// Applies [`AttemptTimeout`] to a service: see the [module docs](super).
#[derive(Debug, Clone, Copy)]
pub struct AttemptTimeoutLayer {
    limit: Duration,
}

impl AttemptTimeoutLayer {
    /// Fails each call that takes longer than `limit` with [`AttemptTimedOut`](super::AttemptTimedOut).
    pub const fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout::new(inner, self.limit)
    }
}
