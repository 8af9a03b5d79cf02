//! Deadlines: a per-attempt timeout, and an overall deadline that travels with the request.
//!
//! Two different limits, two layers:
//!
//! - [`AttemptTimeout`] bounds **one** call to the inner service and fails it with [`AttemptTimedOut`].
//!   Put it *inside* the retry layer: a stuck attempt becomes a transient failure that is tried again.
//! - [`Deadline`] bounds the **whole** request, retries and backoff included, and fails it with
//!   [`DeadlineExceeded`]. Put it *outside* the retry layer.
//!
//! The overall deadline is not only a timer around the call: it is written *into the request*, through the
//! [`Deadlined`] trait, so every layer below can see it. The retry layer reads it and never sleeps or starts
//! an attempt past it (it gives up early with the last error rather than sleeping into the deadline); an
//! inner service can read [`Deadlined::remaining`] and push the time left down to the server (the Postgres
//! service sets `statement_timeout` from it). Request types implement [`Deadlined`] by holding an
//! `Option<Instant>`; requests that don't can be wrapped in [`WithDeadline`].
//!
//! [`DeadlineLayer::new`] keeps a deadline the request already carries when it is earlier, so a caller's
//! tighter deadline always wins over a layer's default. A request whose deadline has already passed fails
//! at once, without reaching the inner service. A request can also say that its caller chose its time
//! ([`Deadlined::granted`]): then its deadline wins over the layer's budget even when it is later, and
//! [`AttemptTimeoutLayer::honouring_grants`] lets one attempt use the whole grant. The layers' limits are
//! defaults for requests that say nothing, not caps on one whose caller knows it is slow.
//!
//! # Why not just `tower::timeout`
//!
//! tower's `Timeout` is a timer around a call, which is exactly an attempt timeout, but it cannot tell the
//! layers below how much time is left, and its `Elapsed` error cannot say whether one attempt or the whole
//! request ran out of time. A retry layer must treat those two oppositely (retry one, never the other), so
//! both layers here have their own error types: [`AttemptTimedOut`] (carrying its limit) and
//! [`DeadlineExceeded`]. The futures are the same small `pin_project_lite` race of response against
//! `tokio::time::Sleep` as tower's; errors are boxed ([`BoxError`]) as tower's are, so test them with
//! `err.is::<AttemptTimedOut>()`.
//!
//! # Events
//!
//! Target `rampart::deadline` (debug) when either limit fires; with the `metrics` feature, counters
//! `rampart_attempt_timeouts_total` and `rampart_deadline_exceeded_total`.
//!
//! # Example
//!
//! Deadline outside, retry in the middle, attempt timeout inside:
//!
//! ```
//! use std::time::Duration;
//! use rampart_layers::deadline::{AttemptTimeoutLayer, DeadlineLayer, Deadlined, WithDeadline};
//! use rampart_layers::retry::{RetryLayer, RetryPolicy};
//! use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let inner = tower::service_fn(|req: WithDeadline<&'static str>| async move {
//!     // Inner services see the time left and can hand it to the server.
//!     let left = req.remaining().expect("the deadline layer set one");
//!     assert!(left <= Duration::from_secs(5));
//!     Ok::<_, BoxError>(req.into_inner().len())
//! });
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(5)))
//!     .layer(RetryLayer::new(RetryPolicy::three_attempts_half_second_doubling()))
//!     .layer(AttemptTimeoutLayer::new(Duration::from_secs(2)))
//!     .service(inner);
//!
//! let len = svc.ready().await?.call(WithDeadline::new("SELECT 1")).await?;
//! assert_eq!(len, 8);
//! # Ok(())
//! # }
//! ```

mod error;
pub mod future;
mod layer;

use std::{
    ops::{Deref, DerefMut},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower::{BoxError, Service};

pub use self::{
    error::{AttemptTimedOut, DeadlineExceeded},
    layer::{AttemptTimeoutLayer, DeadlineLayer},
};
use crate::idempotence::{Idempotence, Idempotent, NotIdempotent};

/// A request that carries its overall deadline, so every layer and the service it reaches can see it.
///
/// Implement it for your request type by storing an `Option<tokio::time::Instant>`; wrap requests that
/// don't carry one in [`WithDeadline`].
pub trait Deadlined {
    /// The instant by which the request must be done, if it has one.
    fn deadline(&self) -> Option<Instant>;

    /// Sets the deadline (replacing any earlier one; [`DeadlineLayer`] keeps the earlier itself).
    fn set_deadline(&mut self, deadline: Instant);

    /// Time left before the deadline (zero once it has passed), or `None` without a deadline.
    fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// The time the request's caller granted it, if the caller chose one itself (rather than a layer).
    /// A grant overrides the layers' defaults, longer or shorter: [`DeadlineLayer`] keeps the request's
    /// deadline even when it is later than its own budget, and an attempt timeout made with
    /// [`AttemptTimeoutLayer::honouring_grants`] lets an attempt run as long as the grant. `None` (the
    /// default) leaves the layers' limits in charge.
    fn granted(&self) -> Option<Duration> {
        None
    }
}

impl<R: Deadlined + ?Sized> Deadlined for Box<R> {
    fn deadline(&self) -> Option<Instant> {
        (**self).deadline()
    }
    fn set_deadline(&mut self, deadline: Instant) {
        (**self).set_deadline(deadline)
    }
    fn granted(&self) -> Option<Duration> {
        (**self).granted()
    }
}

impl<R: Deadlined> Deadlined for Idempotent<R> {
    fn deadline(&self) -> Option<Instant> {
        self.0.deadline()
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.0.set_deadline(deadline)
    }
    fn granted(&self) -> Option<Duration> {
        self.0.granted()
    }
}

impl<R: Deadlined> Deadlined for NotIdempotent<R> {
    fn deadline(&self) -> Option<Instant> {
        self.0.deadline()
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.0.set_deadline(deadline)
    }
    fn granted(&self) -> Option<Duration> {
        self.0.granted()
    }
}

/// A request together with its deadline, for request types that cannot carry one themselves.
///
/// It is [idempotent](Idempotence) exactly when the wrapped request is, and derefs to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WithDeadline<R> {
    request: R,
    deadline: Option<Instant>,
}

impl<R> WithDeadline<R> {
    /// Wraps a request that has no deadline yet.
    pub const fn new(request: R) -> Self {
        Self {
            request,
            deadline: None,
        }
    }

    /// Wraps a request that must be done by `deadline`.
    pub const fn until(request: R, deadline: Instant) -> Self {
        Self {
            request,
            deadline: Some(deadline),
        }
    }

    /// The wrapped request.
    pub fn get_ref(&self) -> &R {
        &self.request
    }

    /// The wrapped request, mutably.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.request
    }

    /// Unwraps the request, dropping the deadline.
    pub fn into_inner(self) -> R {
        self.request
    }
}

impl<R> From<R> for WithDeadline<R> {
    fn from(request: R) -> Self {
        Self::new(request)
    }
}

impl<R> Deref for WithDeadline<R> {
    type Target = R;
    fn deref(&self) -> &R {
        &self.request
    }
}

impl<R> DerefMut for WithDeadline<R> {
    fn deref_mut(&mut self) -> &mut R {
        &mut self.request
    }
}

impl<R> Deadlined for WithDeadline<R> {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
}

impl<R: Idempotence> Idempotence for WithDeadline<R> {
    fn is_idempotent(&self) -> bool {
        self.request.is_idempotent()
    }
}

/// Gives each request an overall deadline, writes it into the request, and fails the request with
/// [`DeadlineExceeded`] when it passes. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    budget: Option<Duration>,
}

impl<S> Deadline<S> {
    /// Gives each request `budget` from the moment it is called (an earlier deadline it carries is kept).
    pub const fn new(inner: S, budget: Duration) -> Self {
        Self {
            inner,
            budget: Some(budget),
        }
    }

    /// Enforces only the deadline requests already carry.
    pub const fn from_request(inner: S) -> Self {
        Self {
            inner,
            budget: None,
        }
    }

    /// The time each request is given, or `None` when only the request's own deadline is enforced.
    pub fn budget(&self) -> Option<Duration> {
        self.budget
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

impl<S, Req> Service<Req> for Deadline<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Deadlined,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Req) -> Self::Future {
        let now = Instant::now();
        let ours = self
            .budget
            .map(|budget| now.checked_add(budget).unwrap_or_else(|| far_future(now)));
        let deadline = match (request.deadline(), ours) {
            // A deadline the caller chose for this request overrides the budget, later or earlier.
            (Some(theirs), Some(_)) if request.granted().is_some() => Some(theirs),
            (Some(theirs), Some(ours)) => Some(theirs.min(ours)),
            (theirs, ours) => theirs.or(ours),
        };
        match deadline {
            None => future::ResponseFuture::unlimited(self.inner.call(request)),
            Some(deadline) if deadline <= now => future::ResponseFuture::expired(deadline),
            Some(deadline) => {
                request.set_deadline(deadline);
                future::ResponseFuture::limited(self.inner.call(request), deadline)
            }
        }
    }
}

/// About 30 years ahead, as tokio does for durations too long to add.
#[cold]
fn far_future(now: Instant) -> Instant {
    now + Duration::from_secs(86_400 * 365 * 30)
}

/// Fails each call to the inner service that takes longer than a fixed limit, with [`AttemptTimedOut`].
/// See the [module docs](self).
///
/// `G` says whether a request's own grant ([`Deadlined::granted`]) may lengthen its attempt: [`Fixed`]
/// (the default) never, [`HonouringGrants`] (from [`AttemptTimeoutLayer::honouring_grants`]) when the
/// grant is longer than the limit.
#[derive(Debug, Clone)]
pub struct AttemptTimeout<S, G = Fixed> {
    inner: S,
    limit: Duration,
    grants: G,
}

/// [`AttemptTimeout`]'s limit is the same for every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fixed;

/// [`AttemptTimeout`] lets a request whose caller granted it more time ([`Deadlined::granted`]) use all
/// of it in one attempt (the request's deadline still bounds it): a stack's attempt timeout is a default
/// for requests that say nothing, not a cap on one whose caller knows it is slow.
#[derive(Debug, Clone, Copy, Default)]
pub struct HonouringGrants;

/// How long one attempt of a request may take, given the layer's limit: [`Fixed`] or
/// [`HonouringGrants`].
pub trait AttemptLimit<Req> {
    /// The limit for `request`'s attempt.
    fn limit_for(&self, limit: Duration, request: &Req) -> Duration;
}

impl<Req> AttemptLimit<Req> for Fixed {
    #[inline]
    fn limit_for(&self, limit: Duration, _: &Req) -> Duration {
        limit
    }
}

impl<Req: Deadlined> AttemptLimit<Req> for HonouringGrants {
    #[inline]
    fn limit_for(&self, limit: Duration, request: &Req) -> Duration {
        request
            .granted()
            .map_or(limit, |granted| granted.max(limit))
    }
}

/// [`AttemptTimeout`] honouring requests' grants: see [`HonouringGrants`].
pub type GrantedAttemptTimeout<S> = AttemptTimeout<S, HonouringGrants>;

impl<S> AttemptTimeout<S> {
    /// Limits each call to `limit`.
    pub const fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            grants: Fixed,
        }
    }
}

impl<S, G> AttemptTimeout<S, G> {
    pub(crate) const fn with_grants(inner: S, limit: Duration, grants: G) -> Self {
        Self {
            inner,
            limit,
            grants,
        }
    }

    /// The per-attempt limit (for a request without a longer grant, when grants are honoured).
    pub fn limit(&self) -> Duration {
        self.limit
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

impl<S, G, Req> Service<Req> for AttemptTimeout<S, G>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    G: AttemptLimit<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let limit = self.grants.limit_for(self.limit, &request);
        future::AttemptFuture::new(self.inner.call(request), limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn with_deadline_reports_remaining_time() {
        let mut req = WithDeadline::new("q");
        assert_eq!(req.remaining(), None);
        req.set_deadline(Instant::now() + Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(req.remaining(), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(req.remaining(), Some(Duration::ZERO));
    }

    #[test]
    fn wrappers_forward_idempotence_and_deadline() {
        assert!(WithDeadline::new(Idempotent("q")).is_idempotent());
        assert!(!WithDeadline::new("q").is_idempotent());
        let at = Instant::now();
        let mut req = Idempotent(WithDeadline::new("q"));
        req.set_deadline(at);
        assert_eq!(req.deadline(), Some(at));
    }
}
