use std::time::Duration;

use tower::Layer;

use super::{AttemptTimeout, Deadline, GrantedAttemptTimeout};

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

    /// The same limit, except that a request whose caller granted it more time
    /// ([`Deadlined::granted`](super::Deadlined::granted)) may use all of it in one attempt. Requires
    /// requests that implement [`Deadlined`](super::Deadlined).
    pub const fn honouring_grants(self) -> GrantedAttemptTimeoutLayer {
        GrantedAttemptTimeoutLayer { limit: self.limit }
    }
}

/// Applies [`GrantedAttemptTimeout`]: see [`AttemptTimeoutLayer::honouring_grants`].
#[derive(Debug, Clone, Copy)]
pub struct GrantedAttemptTimeoutLayer {
    limit: Duration,
}

impl<S> Layer<S> for GrantedAttemptTimeoutLayer {
    type Service = GrantedAttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrantedAttemptTimeout::new(inner, self.limit)
    }
}

impl<S> Layer<S> for AttemptTimeoutLayer {
    type Service = AttemptTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout::new(inner, self.limit)
    }
}
