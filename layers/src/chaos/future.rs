//! The response future of [`Chaos`](super::Chaos).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::BoxError;

use super::error::{Fault, InjectedFault};

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Passed { #[pin] inner: F },
        Delayed { #[pin] sleep: Sleep, #[pin] inner: F },
        Failed { fault: Option<InjectedFault> },
        Hanging { #[pin] sleep: Sleep },
    }
}

pin_project! {
    /// The inner call, possibly delayed, or an injected failure.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn passed(inner: F) -> Self {
        Self {
            state: State::Passed { inner },
        }
    }
    pub(crate) fn delayed(sleep: Sleep, inner: F) -> Self {
        Self {
            state: State::Delayed { sleep, inner },
        }
    }
    pub(crate) fn failed() -> Self {
        Self {
            state: State::Failed {
                fault: Some(InjectedFault::new(Fault::Error)),
            },
        }
    }
    pub(crate) fn hanging(sleep: Sleep) -> Self {
        Self {
            state: State::Hanging { sleep },
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
        match self.project().state.project() {
            StateProj::Passed { inner } => inner.poll(cx).map_err(Into::into),
            StateProj::Delayed { sleep, inner } => {
                ready!(sleep.poll(cx));
                inner.poll(cx).map_err(Into::into)
            }
            StateProj::Failed { fault } => Poll::Ready(Err(Box::new(
                fault
                    .take()
                    .expect("ResponseFuture polled after completion"),
            ))),
            StateProj::Hanging { sleep } => {
                ready!(sleep.poll(cx));
                Poll::Ready(Err(Box::new(InjectedFault::new(Fault::Timeout))))
            }
        }
    }
}
