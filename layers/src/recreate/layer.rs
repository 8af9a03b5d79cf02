use tower::Layer;

use super::{Recreate, RecreateConfig};

/// Applies [`Recreate`]: the wrapped service is generation 0, and a clone of the factory rebuilds it.
///
/// Each wrapped service gets its own rebuild state; wrap the service once and clone the result.
#[derive(Debug, Clone)]
pub struct RecreateLayer<M, C> {
    factory: M,
    config: RecreateConfig,
    classifier: C,
}

impl<M, C> RecreateLayer<M, C> {
    /// A layer rebuilding through `factory` when `classifier` has seen enough consecutive failures.
    pub fn new(factory: M, config: RecreateConfig, classifier: C) -> Self {
        Self {
            factory,
            config,
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
            self.config,
            self.classifier.clone(),
        )
    }
}
