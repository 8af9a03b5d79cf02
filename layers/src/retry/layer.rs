use std::sync::Arc;

use tower::Layer;

use super::{Retry, RetryPolicy};

/// Applies [`Retry`] to a service: see the [module docs](super).
#[derive(Debug)]
pub struct RetryLayer<C, B> {
    policy: Arc<RetryPolicy<C, B>>,
}

impl<C, B> RetryLayer<C, B> {
    /// Retries as `policy` says.
    pub fn new(policy: RetryPolicy<C, B>) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<C, B> Clone for RetryLayer<C, B> {
    fn clone(&self) -> Self {
        Self {
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S, C, B> Layer<S> for RetryLayer<C, B> {
    type Service = Retry<S, C, B>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            policy: Arc::clone(&self.policy),
        }
    }
}
