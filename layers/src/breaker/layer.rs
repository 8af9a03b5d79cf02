use tower::Layer;

use super::CircuitBreaker;
use super::config::BreakerConfig;
use super::handle::BreakerHandle;
use super::state::Shared;
use super::sync::Arc;
use crate::classify::TimeoutsAreTransient;

/// Applies a [`CircuitBreaker`] to services.
///
/// The layer owns one breaker: every service it wraps (and every clone of those) shares it, so stack it
/// once per backend. Its errors are classified by [`TimeoutsAreTransient`] unless you pass your own
/// classifier with [`with_classifier`](Self::with_classifier).
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = TimeoutsAreTransient> {
    shared: Arc<Shared>,
    classifier: C,
}

impl<C> std::fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A layer with a new breaker configured by `config`.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            shared: Shared::new_arc(config),
            classifier: TimeoutsAreTransient,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses `classifier` to decide which outcomes count as failures.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            shared: self.shared,
            classifier,
        }
    }

    /// A handle on the layer's breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.shared.clone())
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.classifier.clone(), self.shared.clone())
    }
}
