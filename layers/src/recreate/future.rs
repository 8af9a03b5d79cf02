//! The response future of [`Recreate`](super::Recreate).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::shared::Tracker;
use crate::classify::Classify;

pin_project! {
    /// The call on the service that was current when it started (it finishes there even if a rebuilt
    /// service is swapped in meanwhile); its outcome counts toward the next rebuild.
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        classifier: C,
        generation: u64,
        tracker: Option<Arc<dyn Tracker>>,
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
    pub(crate) fn new(inner: F, classifier: C, generation: u64, tracker: Arc<dyn Tracker>) -> Self {
        Self {
            inner,
            classifier,
            generation,
            tracker: Some(tracker),
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
        if let Some(tracker) = this.tracker.take() {
            tracker.on_outcome(*this.generation, is_failure(this.classifier, &result));
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

pub(crate) fn is_failure<T, E, C: Classify<T, E>>(classifier: &C, result: &Result<T, E>) -> bool {
    let class = match result {
        Ok(response) => classifier.classify_response(response),
        Err(error) => Some(classifier.classify_error(error)),
    };
    class.is_some_and(|c| c.is_failure_of_downstream())
}
