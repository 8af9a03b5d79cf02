use tower::Layer;

use super::{Recreate, RecreateConfig};
use crate::classify::TimeoutsAreTransient;

/// Applies [`Recreate`]: the wrapped service is generation 0, and a clone of the factory rebuilds it.
///
/// Each wrapped service gets its own rebuild state; wrap the service once and clone the result. Failures
/// are classified by [`TimeoutsAreTransient`] unless you pass your own classifier with
/// [`with_classifier`](Self::with_classifier).
#[derive(Debug, Clone)]
pub struct RecreateLayer<M, C = TimeoutsAreTransient> {
    factory: M,
    config: RecreateConfig,
    classifier: C,
}

impl<M> RecreateLayer<M> {
    /// A layer rebuilding through `factory` when [`TimeoutsAreTransient`] has seen enough consecutive
    /// failures.
    pub fn new(factory: M, config: RecreateConfig) -> Self {
        Self {
            factory,
            config,
            classifier: TimeoutsAreTransient,
        }
    }
}

impl<M, C> RecreateLayer<M, C> {
    /// Uses `classifier` to decide which outcomes count as failures (`Transient` or `Ambiguous`).
    pub fn with_classifier<C2>(self, classifier: C2) -> RecreateLayer<M, C2> {
        RecreateLayer {
            factory: self.factory,
            config: self.config,
            classifier,
        }
    }
}

impl<S: Clone, M: Clone, C: Clone> Layer<S> for RecreateLayer<M, C> {
    type Service = Recreate<S, M, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Recreate::with_classifier(
            inner,
            self.factory.clone(),
            self.config.clone(),
            self.classifier.clone(),
        )
    }
}
