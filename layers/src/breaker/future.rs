//! The response future of [`CircuitBreaker`](super::CircuitBreaker).

use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::time::Instant;
use tower::BoxError;

use super::error::CircuitOpen;
use super::state::{Permit, Shared};
use super::sync::{Arc, Ordering};
use super::window::Outcome;
use crate::classify::{BreakerCount, Classify, breaker_count_of};

/// A permitted call's claim on the breaker; gives the permit back if dropped without an outcome
/// (the caller cancelled the call).
pub(crate) struct PermitGuard {
    shared: Arc<Shared>,
    permit: Option<Permit>,
}

impl PermitGuard {
    pub(crate) fn new(shared: Arc<Shared>, permit: Permit) -> Self {
        Self {
            shared,
            permit: Some(permit),
        }
    }

    #[inline]
    fn finish<Res, E, C: Classify<Res, E>>(
        mut self,
        classifier: &C,
        result: &Result<Res, E>,
        slow_after: Option<Instant>,
    ) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let failure = match breaker_count_of(classifier, result) {
            BreakerCount::Success => {
                if result.is_err() {
                    self.shared
                        .totals
                        .counted_as_success
                        .fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            BreakerCount::Failure => true,
            _ => {
                // An ignored error says nothing about the downstream: give the permit back (in
                // half-open, another probe may go), as Resilience4j does for ignored exceptions.
                self.shared.totals.ignored.fetch_add(1, Ordering::Relaxed);
                self.shared.release(permit);
                return;
            }
        };
        // One clock read, compared with the instant the call would become slow at (computed at
        // `call`): no conversion of either into a duration.
        let finished = Instant::now();
        let slow = slow_after.is_some_and(|after| finished > after);
        self.shared
            .record(permit, Outcome { failure, slow }, finished);
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.shared.release(permit);
        }
    }
}

impl std::fmt::Debug for PermitGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermitGuard")
            .field("permit", &self.permit)
            .finish()
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            guard: Option<PermitGuard>,
            classifier: C,
            slow_after: Option<Instant>,
        },
        Rejected {
            error: Option<CircuitOpen>,
        },
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker): the inner call, whose outcome it
    /// records when it finishes, or an immediate [`CircuitOpen`] error.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C> ResponseFuture<F, C> {
    // Cost. Timing a call is two reads of tokio's clock (here and when the response is ready) and a
    // comparison of instants: the instant the call would turn slow is computed here, so no instant is
    // converted into a duration on the way. Both reads are needed: a call is slow by the time from
    // `call` to its response, and the time window files an outcome by when it finished.
    #[inline]
    pub(crate) fn called(future: F, guard: PermitGuard, classifier: C) -> Self {
        let slow_after = guard.shared.slow_after(Instant::now());
        Self {
            kind: Kind::Called {
                future,
                guard: Some(guard),
                classifier,
                slow_after,
            },
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res, E>,
{
    type Output = Result<Res, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Rejected { error } => Poll::Ready(Err(Box::new(
                error
                    .take()
                    .expect("ResponseFuture polled after completion"),
            ))),
            KindProj::Called {
                future,
                guard,
                classifier,
                slow_after,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(guard) = guard.take() {
                    guard.finish(classifier, &result, *slow_after);
                }
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}
