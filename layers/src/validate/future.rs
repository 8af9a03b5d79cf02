//! The response future of [`Validation`](super::Validation).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use super::LastSuccess;

pin_project! {
    /// The inner call; a success marks the resource as recently used, so the next call skips the check.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        last_success: Arc<LastSuccess>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, last_success: Arc<LastSuccess>) -> Self {
        Self {
            inner,
            last_success,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if result.is_ok() {
            this.last_success.mark();
        }
        Poll::Ready(result.map_err(Into::into))
    }
}
