use tower::{Layer, Service};

use super::{Validate, Validation, ValidationPolicy};

/// Applies [`Validation`]: each wrapped service is checked with a clone of the validator and replaced
/// through a clone of the factory.
#[derive(Debug, Clone)]
pub struct ValidationLayer<V, M> {
    policy: ValidationPolicy,
    validator: V,
    factory: M,
}

impl<V, M> ValidationLayer<V, M> {
    /// A layer checking resources with `validator` as `policy` says and replacing them through `factory`.
    pub fn new(policy: ValidationPolicy, validator: V, factory: M) -> Self {
        Self {
            policy,
            validator,
            factory,
        }
    }
}

impl<S, V, M> Layer<S> for ValidationLayer<V, M>
where
    V: Validate<S> + Clone,
    M: Service<(), Response = S> + Clone,
{
    type Service = Validation<S, V, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Validation::new(
            inner,
            self.policy,
            self.validator.clone(),
            self.factory.clone(),
        )
    }
}
