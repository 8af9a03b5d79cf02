//! The response future of [`Recreate`](super::Recreate).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::shared::OutcomeSink;
use crate::classify::{Classification, Classify, classify_result};

pin_project! {
    /// The call on the service that was current when it started (it finishes there even if a rebuilt
    /// service is swapped in meanwhile); its outcome counts toward the next rebuild.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        classifier: C,
        generation: u64,
        sink: Option<Arc<dyn OutcomeSink>>,
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(
        inner: F,
        classifier: C,
        generation: u64,
        sink: Arc<dyn OutcomeSink>,
    ) -> Self {
        Self {
            inner,
            classifier,
            generation,
            sink: Some(sink),
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(sink) = this.sink.take() {
            let failure = classify_result(this.classifier, &result)
                .is_some_and(Classification::is_failure_of_downstream);
            sink.on_outcome(*this.generation, failure);
        }
        Poll::Ready(result.map_err(Into::into))
    }
}
