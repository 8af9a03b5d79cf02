use std::time::Duration;

use tower::Layer;

use super::{AttemptTimeout, Deadline, Fixed, HonouringGrants};

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
pub struct AttemptTimeoutLayer<G = Fixed> {
    limit: Duration,
    grants: G,
}

impl AttemptTimeoutLayer {
    /// Fails each call that takes longer than `limit` with [`AttemptTimedOut`](super::AttemptTimedOut).
    pub const fn new(limit: Duration) -> Self {
        Self {
            limit,
            grants: Fixed,
        }
    }

    /// The same limit, except that a request whose caller granted it more time
    /// ([`Deadlined::granted`](super::Deadlined::granted)) may use all of it in one attempt. Requires
    /// requests that implement [`Deadlined`](super::Deadlined).
    pub const fn honouring_grants(self) -> AttemptTimeoutLayer<HonouringGrants> {
        AttemptTimeoutLayer {
            limit: self.limit,
            grants: HonouringGrants,
        }
    }
}

impl<S, G: Clone> Layer<S> for AttemptTimeoutLayer<G> {
    type Service = AttemptTimeout<S, G>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptTimeout::with_grants(inner, self.limit, self.grants.clone())
    }
}
