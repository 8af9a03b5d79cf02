//! Retry with backoff, a retry budget, classification and deadline awareness.
//!
//! [`Retry`] sends a request again when an attempt fails in a way that may go away. What "may go away"
//! means is decided by a [classifier](crate::classify::Classify), shared with the other layers:
//!
//! | classification | what the retry layer does |
//! |---|---|
//! | `Transient` | retries, within the policy's limits |
//! | `Ambiguous` | retries only if the request [`is_idempotent`](crate::classify::Idempotence::is_idempotent) |
//! | `Permanent` | returns the error at once |
//!
//! The [`RetryPolicy`] bounds the retrying:
//!
//! - `max_attempts`: attempts in all, the first included.
//! - `max_elapsed`: no wait and no attempt past this long after the first attempt began.
//! - the request's overall **deadline** (see [`deadline`](crate::deadline)): the layer never sleeps or starts
//!   an attempt past it. When the next wait would reach it, the layer gives up at once with the last error
//!   instead of sleeping into the deadline only to fail there.
//! - a [backoff schedule](backoff) between attempts, with jitter drawn from a seedable
//!   [`Rng`](crate::rng::Rng).
//! - an optional [`RetryBudget`] shared by all requests, so an outage does not multiply the load.
//!
//! When it gives up, the error is a [`RetryError`]: the last cause, the number of attempts and the reason
//! ([`GaveUp`]). If the last failure was a *response* the classifier failed (an HTTP 503, say), that response
//! is returned as it is. Requests must be [`Replay`] (every `Clone` type is: each attempt sends a
//! clone), [`Idempotence`] and [`Deadlined`]; wrap plain requests in
//! [`WithDeadline`](crate::deadline::WithDeadline). A request that cannot be sent twice
//! ([`NotReplayable`], or a `Replay` answering `None`: tower's `clone_request` returning `None`) gets one
//! attempt, and its failure comes back as it is, with [`GaveUp::NotReplayable`] where it would have
//! been retried.
//!
//! # Why not `tower::retry::Retry`
//!
//! tower's `Retry` with a `Policy` covers the loop, but its error type is the inner service's, so the final
//! error cannot say how many attempts were made or why the layer stopped without boxing and rewrapping
//! inside the policy; and its policy future cannot see the overall deadline when choosing to stop instead
//! of sleeping. This service is a `pin_project_lite` state machine like tower's (`Calling` → `Backoff` →
//! `Ready` → `Calling`) with tower's readiness contract: between attempts it polls the inner
//! service's `poll_ready` before calling again. The attempt's future is held inline; what only a retry
//! needs (the backoff `Sleep`, the request's copy of the schedule and its jitter generator) is boxed
//! when the first retry is decided, so the future every request carries stays small and a success
//! never pays to set it up.
//!
//! # The retry budget
//!
//! [`RetryBudget`] keeps the semantics of tower's `TpsBudget` (Finagle's): over the last `window`,
//! retries may be at most `retry_ratio` of the requests made, plus `min_retries_per_second × window`.
//! A request costs one relaxed atomic increment (`TpsBudget` reads the clock and takes a lock); the
//! time keeping happens when a retry is withdrawn and on every 64th request. Against the exact rule
//! (the requests and retries of the last `window`, with their times) it is never looser, and
//! stricter by at most the requests of the window's oldest tenth plus 64, and the retries of the tenth
//! before the window; a property test checks both sides. [`RetryBudget::balance`] reads what is left,
//! for metrics. Time is `tokio::time::Instant`, so a paused test clock drives it.
//!
//! # Events
//!
//! Target `rampart::retry`: a `debug` event before each retry (`attempt`, `delay_ms`, `class`, `error`), a
//! `warn` event when retryable failures run out of attempts, time or budget, a `debug` event when a failure
//! is not retryable. The [`on_retry`](RetryPolicyBuilder::on_retry) callback sees each retry as a
//! [`RetryEvent`]. With the `metrics` feature:
//!
//! | counter | counts |
//! |---|---|
//! | `rampart_retry_attempts_total` | every attempt sent to the inner service, the first included |
//! | `rampart_retry_retries_total{class}` | retries (attempts after the first) |
//! | `rampart_retry_exhausted_total{reason}` | requests given up on while still retryable (attempts, time, deadline, schedule) |
//! | `rampart_retry_budget_exhausted_total` | retries refused by the budget |
//!
//! # Example
//!
//! The usual stack: overall deadline outside, retry, a per-attempt timeout inside.
//!
//! ```
//! use std::time::Duration;
//! use rampart_layers::classify::Idempotent;
//! use rampart_layers::deadline::{AttemptTimeoutLayer, DeadlineLayer, WithDeadline};
//! use rampart_layers::retry::{RetryBudget, RetryLayer, RetryPolicy, backoff::{Exponential, Jitter}};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let policy = RetryPolicy::builder()
//!     .max_attempts(4)
//!     .schedule(Exponential::builder().base_delay(Duration::from_millis(50)).jitter(Jitter::Full).build()?)
//!     .budget(RetryBudget::builder().retry_ratio(0.2).build()?)
//!     .on_retry(|event| eprintln!("retry after attempt {}: {:?}", event.attempt(), event.error()))
//!     .build()?;
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(5)))
//!     .layer(RetryLayer::new(policy))
//!     .layer(AttemptTimeoutLayer::new(Duration::from_secs(1)))
//!     .service(tower::service_fn(|req: WithDeadline<Idempotent<&'static str>>| async move {
//!         Ok::<_, BoxError>(format!("ran {}", req.0))
//!     }));
//!
//! let out = svc.ready().await?.call(WithDeadline::new(Idempotent("SELECT 1"))).await?;
//! assert_eq!(out, "ran SELECT 1");
//! # Ok(())
//! # }
//! ```

pub use crate::backoff;
mod budget;
mod error;
pub mod future;
mod layer;
mod policy;
mod replay;

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use tower::{BoxError, Service};

pub use self::{
    budget::{RetryBudget, RetryBudgetBuilder},
    error::{GaveUp, RetryError},
    layer::RetryLayer,
    policy::{RetryEvent, RetryPolicy, RetryPolicyBuilder},
    replay::{NotReplayable, Replay},
};
use crate::backoff::Backoff;
use crate::{
    classify::{Classify, Idempotence},
    deadline::Deadlined,
};

/// Retries failed requests as its [`RetryPolicy`] says. See the [module docs](self).
#[derive(Debug)]
pub struct Retry<S, C, B> {
    inner: S,
    policy: Arc<RetryPolicy<C, B>>,
}

impl<S, C, B> Retry<S, C, B> {
    /// Wraps `inner`, retrying as `policy` says.
    pub fn new(inner: S, policy: RetryPolicy<C, B>) -> Self {
        Self {
            inner,
            policy: Arc::new(policy),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy<C, B> {
        &self.policy
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, B> Clone for Retry<S, C, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S, Req, C, B> Service<Req> for Retry<S, C, B>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    Req: Replay + Idempotence + Deadlined,
    C: Classify<S::Response, S::Error>,
    B: Backoff + Clone,
{
    type Response = S::Response;
    type Error = RetryError;
    type Future = future::ResponseFuture<S, Req, C, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| RetryError::new(error.into(), 0, GaveUp::ServiceNotReady, None))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The ready service goes into the future for the first attempt; this one starts over.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        if let Some(budget) = self.policy.budget() {
            budget.deposit();
        }
        let idempotent = request.is_idempotent();
        future::ResponseFuture::new(ready, request, Arc::clone(&self.policy), idempotent)
    }
}
