//! A circuit breaker: stop sending calls to a backend that is failing, and let a few probes through now
//! and then to find out when it has recovered.
//!
//! Tower has no breaker; this one follows [Resilience4j]'s state machine, the most widely deployed and
//! most precisely specified one, with defaults chosen for a database (see [`BreakerConfig`] for the
//! table comparing them with Resilience4j's and Polly's).
//!
//! ```text
//!            failure rate or slow-call rate >= threshold          wait over (next call, or a timer)
//!  Closed ───────────────────────────────────────────────► Open ───────────────────────────────► HalfOpen
//!    ▲            (once the window holds minimum_calls)      ▲                                     │
//!    │                                                       ├──────── probes over a threshold ───┤
//!    │                                                       └──── probes undecided in max wait ──┤
//!    └──────────────────────────────────────────── probes under both thresholds ─────────────────┘
//!
//!  ForcedOpen, Disabled and MetricsOnly are entered and left only through the BreakerHandle.
//! ```
//!
//! - **Closed**: calls flow; each outcome is counted as the classifier's
//!   [`breaker_count`](crate::classify::Classify::breaker_count) says: by default an error classified
//!   `Transient` or `Ambiguous` (timeouts included, through [`TimeoutsAreTransient`]) is a failure, a
//!   response is a success, and a `Permanent` error is ignored (not recorded at all); a classifier may
//!   also count an error as a success ([`BreakerCount::Success`](crate::classify::BreakerCount::Success)). A call slower than
//!   `slow_call_duration` is also slow, whether it succeeded or failed. Once the [`SlidingWindow`] holds
//!   `minimum_calls` outcomes, the breaker opens when the failure rate or the slow-call rate is
//!   **greater than or equal to** its threshold.
//! - **Open**: every call fails at once with [`CircuitOpen`], which says how long until the next probe.
//!   The wait grows by `wait_multiplier` on each consecutive opening, up to `max_wait_in_open`.
//! - **HalfOpen**: `half_open_calls` probes go through; the rest are rejected. When all have finished,
//!   the breaker opens again if either rate reaches its threshold over the probes, and closes otherwise.
//!   With `max_wait_in_half_open`, it opens again if they have not all finished within that time
//!   ([`TransitionReason::ProbesTimedOut`]), so a probe that hangs cannot hold it half-open.
//! - **MetricsOnly** ([`BreakerHandle::metrics_only`]): every call flows, outcomes are recorded in the
//!   window as while closed, nothing opens the breaker: for watching what a breaker would do before
//!   letting it act.
//!
//! # Boundaries
//!
//! Every comparison with a limit, in one table. Where Resilience4j and Polly v8 differ, the last column
//! says which this breaker follows and why.
//!
//! | rule | at exactly the limit | Resilience4j | Polly v8 | here |
//! |---|---|---|---|---|
//! | failure / slow-call rate against its threshold | opens (`rate >= threshold`) | `>=` | `>=` | both agree |
//! | calls in the window against `minimum_calls` | rates are judged (`calls >= minimum`) | `>=` | `>=` (`MinimumThroughput`) | both agree; a count window caps the minimum at its size (R4j) |
//! | a call's duration against `slow_call_duration` | not slow (`duration > limit` is slow) | `>` | (none) | R4j |
//! | end of the open wait | **a probe is admitted** (`now >= until`) | only strictly after (`isAfter`) | `>=` | **Polly**: a caller that sleeps exactly [`CircuitOpen::retry_after`] (as `tokio::time::sleep_until` wakes, at the instant) is let through instead of being told to wait zero more |
//! | end of `max_wait_in_half_open` | opens (`now >= until`) | timer at the instant | (none) | the same rule as the open wait |
//! | probes in half-open | decided when `half_open_calls` have finished | the same | one probe | R4j |
//! | an outcome in a time window | leaves when its bucket is `buckets` buckets old | the same (1 s buckets) | the same (sampling duration) | all agree (see [`SlidingWindow::Time`]) |
//! | the growing open wait against `max_wait_in_open` | capped (`wait >= max` gives `max`) | (constant wait) | (constant) | 60 s by default, or `wait_in_open` when that is longer |
//!
//! # Choices
//!
//! - A *success* can open the breaker: a slow success counts toward the slow-call rate (R4j).
//! - Open moves to half-open on the first call after the wait, not on a timer, unless
//!   [`automatic_transition`](BreakerConfigBuilder::automatic_transition) is set (R4j's
//!   `automaticTransitionFromOpenToHalfOpenEnabled`): then a task on the tokio runtime makes the
//!   transition at the end of the wait (and leaves half-open at the end of `max_wait_in_half_open`).
//!   Admission is the same either way; only what the handle reads in between differs.
//! - When the half-open limit runs out the breaker opens (R4j), not closes: probes that cannot finish
//!   in that time are no sign of health, and a closed breaker would let the full load onto a backend
//!   that may still hang. Without the timer, the limit is applied by the next call or probe outcome at
//!   or after it: the breaker opens then, and that call is judged by the new open wait.
//! - In half-open, a cancelled call or one that ends in an ignored error gives its permit back, so
//!   another probe may go; it does not count as a probe.
//! - Outcomes of calls let through in an earlier state (a call admitted while closed that finishes after
//!   the breaker opened) are ignored for the state machine; they still show in the handle's totals.
//! - [`BreakerMetrics::failure_rate`] is `None` while the window holds fewer than `minimum_calls`
//!   (R4j's −1): a rate the breaker would not act on is not reported as one.
//!
//! # Cost
//!
//! Closed, a call takes no lock (one atomic load to admit, a compare-and-swap to count a success that
//! cannot open the breaker); open, a rejection takes no lock and allocates once (the `Box` of the
//! [`BoxError`]). Why each path costs what it does is written beside its code in `state.rs`; the
//! figures are in BENCHMARKS.md.
//!
//! # Events and metrics
//!
//! Every state change is a `tracing` event with target `rampart::breaker` and fields `name`, `from`,
//! `to`, `reason` (`warn` when opening, `info` otherwise), and increments
//! `rampart_breaker_transitions_total{name,from,to,reason}`. Each rejection increments
//! `rampart_breaker_rejections_total{name,state}` (`state`: `open`, `half_open` or `forced_open`). [`BreakerHandle::metrics`] reads everything in process.
//!
//! # Per key
//!
//! [`KeyedCircuitBreaker`] keeps one breaker per key (host, tenant, shard) in a [`BreakerRegistry`]
//! with a cap on the number of keys and eviction of idle ones.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use rampart_layers::breaker::{BreakerConfig, CircuitBreakerLayer, CircuitOpen, BreakerState};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let config = BreakerConfig::builder()
//!     .name("orders-db")
//!     .minimum_calls(2)
//!     .wait_in_open(Duration::from_secs(5))
//!     .build()?;
//! let breaker = CircuitBreakerLayer::new(config);
//! let handle = breaker.handle();
//!
//! let mut db = ServiceBuilder::new()
//!     .layer(breaker)
//!     .timeout(Duration::from_secs(2))
//!     .service(service_fn(|_q: &'static str| async {
//!         tokio::time::sleep(Duration::from_secs(10)).await; // a hung database
//!         Ok::<_, BoxError>(())
//!     }));
//!
//! # tokio::time::pause();
//! for _ in 0..2 {
//!     let err = db.ready().await?.call("SELECT 1").await.unwrap_err();
//!     assert!(err.is::<tower::timeout::error::Elapsed>());
//! }
//! assert_eq!(handle.state(), BreakerState::Open);
//! let err = db.ready().await?.call("SELECT 1").await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().expect("rejected");
//! assert_eq!(open.retry_after(), Some(Duration::from_secs(5)));
//! # Ok(()) }
//! ```
//!
//! [Resilience4j]: https://resilience4j.readme.io/docs/circuitbreaker
//! [`BoxError`]: tower::BoxError

mod config;
mod error;
pub mod future;
mod handle;
mod keyed;
mod layer;
mod state;
mod sync;
mod window;

#[cfg(all(test, loom))]
mod loom_tests;

use std::task::{Context, Poll};

use tower::{BoxError, Service};

pub use self::config::{BreakerConfig, BreakerConfigBuilder, SlidingWindow};
pub use self::error::CircuitOpen;
pub use self::handle::{BreakerHandle, BreakerMetrics};
pub use self::keyed::{BreakerRegistry, KeyedCircuitBreaker, KeyedCircuitBreakerLayer};
pub use self::layer::CircuitBreakerLayer;
pub use self::state::{BreakerState, TransitionReason};

use self::future::{PermitGuard, ResponseFuture};
use self::state::Shared;
use self::sync::Arc;
use crate::classify::{Classify, TimeoutsAreTransient};

/// A circuit breaker around a service; see the [module docs](self).
pub struct CircuitBreaker<S, C = TimeoutsAreTransient> {
    inner: S,
    classifier: C,
    shared: Arc<Shared>,
    ready: Readiness,
}

/// What the last `poll_ready` reserved for the next `call`.
enum Readiness {
    Idle,
    Admitted(PermitGuard),
    Rejected(CircuitOpen),
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .finish()
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // A clone shares the breaker but not the permit reserved by this one's `poll_ready`.
        Self::from_parts(
            self.inner.clone(),
            self.classifier.clone(),
            self.shared.clone(),
        )
    }
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` in a new breaker that classifies with [`TimeoutsAreTransient`].
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        Self::with_classifier(inner, config, TimeoutsAreTransient)
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner` in a new breaker that classifies outcomes with `classifier`.
    pub fn with_classifier(inner: S, config: BreakerConfig, classifier: C) -> Self {
        Self::from_parts(inner, classifier, Shared::new_arc(config))
    }

    pub(crate) fn from_parts(inner: S, classifier: C, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            classifier,
            shared,
            ready: Readiness::Idle,
        }
    }

    /// A handle on this breaker (shared with every clone).
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.shared.clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the breaker, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Readiness::Idle = self.ready {
            self.ready = match self.shared.try_acquire() {
                Ok(permit) => Readiness::Admitted(PermitGuard::new(self.shared.clone(), permit)),
                Err(open) => Readiness::Rejected(open),
            };
        }
        if let Readiness::Rejected(_) = self.ready {
            // Ready to fail: `call` returns the rejection without touching the inner service.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                self.ready = Readiness::Idle; // gives the permit back
                Poll::Ready(Err(e.into()))
            }
            other => other.map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.ready, Readiness::Idle) {
            Readiness::Admitted(guard) => {
                ResponseFuture::called(self.inner.call(req), guard, self.classifier.clone())
            }
            Readiness::Rejected(open) => ResponseFuture::rejected(open),
            Readiness::Idle => {
                panic!("CircuitBreaker::call without poll_ready returning Ready first")
            }
        }
    }
}
