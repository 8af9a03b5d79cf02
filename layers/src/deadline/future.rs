//! Future types.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::BoxError;

use super::error::{AttemptTimedOut, DeadlineExceeded};
use crate::events;

// Why lazily: both layers fix their deadline at `call` (one clock read) but make the `Sleep` only when
// the response is not ready on its first poll. Making a `Sleep` takes a handle on the runtime (a
// thread-local look-up and a reference count) and dropping it gives it back: most of what tower's
// `Timeout` costs per call. One consequence: outside a tokio runtime, the panic that
// `tokio::time::sleep` raises comes at the first `Pending` poll instead of at `call`.
pin_project! {
    /// A timer started only if the response is not ready at once: a response that is ready when first
    /// polled (a cache, a fast path, a refusal) never touches tokio's timer (a handle on the runtime, an
    /// entry in its wheel). The deadline itself is fixed before, so when the timer starts does not
    /// change when it fires: a `Sleep` made at the first `Pending` poll with the deadline read at `call`
    /// is the `Sleep` that `tokio::time::sleep` would have made at `call`, registered with the timer
    /// wheel at the same moment (tokio registers a `Sleep` on its first poll, not when it is made).
    #[project = LazySleepProj]
    #[derive(Debug)]
    enum LazySleep {
        Unset,
        Set { #[pin] sleep: Sleep },
    }
}

impl LazySleep {
    /// Polls the timer for `deadline`, starting it first if needed.
    fn poll_until(mut self: Pin<&mut Self>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if let LazySleepProj::Unset = self.as_mut().project() {
            self.set(LazySleep::Set {
                sleep: tokio::time::sleep_until(deadline),
            });
        }
        match self.project() {
            LazySleepProj::Set { sleep } => sleep.poll(cx),
            LazySleepProj::Unset => unreachable!("set above"),
        }
    }
}

pin_project! {
    /// Response future of [`Deadline`](super::Deadline).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        // Racing the inner future against the deadline.
        Limited { #[pin] response: F, #[pin] sleep: LazySleep, deadline: Instant },
        // The request carries no deadline and the layer sets none.
        Unlimited { #[pin] response: F },
        // The deadline had passed before the call: the inner service was not called.
        Expired { deadline: Instant },
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(super) fn limited(response: F, deadline: Instant) -> Self {
        Self {
            state: State::Limited {
                response,
                sleep: LazySleep::Unset,
                deadline,
            },
        }
    }

    pub(super) fn unlimited(response: F) -> Self {
        Self {
            state: State::Unlimited { response },
        }
    }

    pub(super) fn expired(deadline: Instant) -> Self {
        Self {
            state: State::Expired { deadline },
        }
    }
}

fn exceeded(deadline: Instant) -> BoxError {
    tracing::debug!(target: "rampart::deadline", "deadline exceeded");
    events::counter("rampart_deadline_exceeded_total", &[], 1);
    Box::new(DeadlineExceeded::new(deadline))
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Limited {
                response,
                sleep,
                deadline,
            } => {
                // The response first: one that is ready as the deadline passes still counts.
                if let Poll::Ready(result) = response.poll(cx) {
                    return Poll::Ready(result.map_err(Into::into));
                }
                match sleep.poll_until(*deadline, cx) {
                    Poll::Ready(()) => Poll::Ready(Err(exceeded(*deadline))),
                    Poll::Pending => Poll::Pending,
                }
            }
            StateProj::Unlimited { response } => response.poll(cx).map_err(Into::into),
            StateProj::Expired { deadline } => Poll::Ready(Err(exceeded(*deadline))),
        }
    }
}

pin_project! {
    /// Response future of [`AttemptTimeout`](super::AttemptTimeout).
    #[derive(Debug)]
    pub struct AttemptFuture<F> {
        #[pin]
        response: F,
        #[pin]
        sleep: LazySleep,
        deadline: Instant,
        limit: Duration,
    }
}

impl<F> AttemptFuture<F> {
    /// The attempt's clock starts now (at `call`), whenever the timer itself starts.
    #[inline]
    pub(super) fn new(response: F, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            response,
            sleep: LazySleep::Unset,
            // As `tokio::time::sleep` does for a limit too long to add.
            deadline: now
                .checked_add(limit)
                .unwrap_or_else(|| super::far_future(now)),
            limit,
        }
    }
}

impl<F, T, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.response.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        match this.sleep.poll_until(*this.deadline, cx) {
            Poll::Ready(()) => {
                let limit_ms = this.limit.as_millis() as u64;
                tracing::debug!(target: "rampart::deadline", limit_ms, "attempt timed out");
                events::counter("rampart_attempt_timeouts_total", &[], 1);
                Poll::Ready(Err(Box::new(AttemptTimedOut::new(*this.limit))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
