//! The two small layers of a ready-made stack that know what a request is: at the top, the outcome is
//! settled (the layers' errors converted once and explained, the outcome recorded for health); below the
//! retry layer, each attempt is counted and one cut by the attempt timeout is classified by whether its
//! statement had been sent.
//!
//! An attempt timeout or a deadline that fires after the statement was written may leave it running,
//! and committing: the cancel request goes out in the background and can arrive after the commit. Such a
//! cut is `Ambiguous` for a request that is not idempotent (never replayed, reported as outcome unknown);
//! one that fires before anything was sent (waiting for a connection, connecting, preparing) is
//! `Transient`. The service marks the moment of sending on the request (`Query::mark_sent`); these
//! layers read it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::future::BoxFuture;
use pin_project_lite::pin_project;
use rampart_layers::breaker::BreakerHandle;
use rampart_layers::deadline::AttemptTimedOut;
use rampart_layers::deadline::Deadlined;
use tokio::time::Instant;
use tower::{BoxError, Service};

use crate::error::{Error, ErrorKind};
use crate::health::Outcomes;
use crate::outcome::cut_leaves_outcome_unknown;
use crate::query::{Marked, Query, Response, Tracking};
use crate::resolve::{Resolution, Settled, resolve, settled};
use crate::xact::Counts;

use super::db::Services;

/// What the top of a stack knows besides the request.
pub(super) struct Known {
    pub(super) outcomes: Arc<Outcomes>,
    /// Where lost replies of plain writes are counted as they are resolved; `None`: not resolved.
    pub(super) resolved: Option<Arc<Counts>>,
    pub(super) breaker: Option<BreakerHandle>,
    pub(super) server: Arc<str>,
    pub(super) deadline: Duration,
}

/// The top of a stack: tracks the request's attempts, converts what the layers return into an [`Error`]
/// once (explaining an open breaker and a deadline), and records the outcome.
#[derive(Clone)]
pub(super) struct Settle<S> {
    inner: S,
    context: Arc<Known>,
}

impl<S> Settle<S> {
    pub(super) fn new(inner: S, context: Arc<Known>) -> Self {
        Self { inner, context }
    }
}

impl<S> Service<Query> for Settle<S>
where
    S: Service<Query, Response = Response, Error = BoxError>,
{
    type Response = Response;
    type Error = Error;
    type Future = SettleFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_layers(e, false))
    }

    fn call(&mut self, mut query: Query) -> Self::Future {
        let tracking = query.track(self.context.resolved.as_ref());
        let request = Request {
            read: query.is_read(),
            limit: query.granted().unwrap_or(self.context.deadline),
            tracking,
        };
        SettleFuture {
            inner: self.inner.call(query),
            request,
            context: self.context.clone(),
        }
    }
}

/// What the top keeps of a request while it runs.
pub(super) struct Request {
    read: bool,
    limit: Duration,
    tracking: Arc<Tracking>,
}

impl Request {
    /// Whether a cut now leaves the outcome unknown: the statement may be running, and it changes data
    /// (a read is the same either way). An idempotent write is still retried: the retry layer replays
    /// `Ambiguous` failures of idempotent requests.
    fn unknown_if_cut(&self) -> bool {
        // A marked write whose COMMIT was never sent cannot have committed (see `resolve.rs`); one whose
        // COMMIT was sent has no time left to be looked up.
        let never_committed = matches!(self.tracking.marked(), Marked::Opening { .. });
        cut_leaves_outcome_unknown(self.read, self.tracking.was_sent()) && !never_committed
    }
}

pin_project! {
    /// The response future of [`Settle`].
    pub(super) struct SettleFuture<F> {
        #[pin]
        inner: F,
        request: Request,
        context: Arc<Known>,
    }
}

impl<F> Future for SettleFuture<F>
where
    F: Future<Output = Result<Response, BoxError>>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(|e| {
            let error = Error::from_layers(e, this.request.unknown_if_cut());
            let error = explain(error, this.request, this.context);
            // A keyed write whose first attempt was lost mid-flight and whose retry was refused: it may
            // have been applied by the first, so it is not "not applied".
            if !this.request.read && this.request.tracking.was_ever_unknown() {
                error.after_an_unknown_outcome()
            } else {
                error
            }
        });
        this.context.outcomes.record(&result);
        Poll::Ready(result)
    }
}

/// Says what the layer that gave up knows: why the breaker is open, what the deadline cut short.
fn explain(error: Error, request: &Request, context: &Known) -> Error {
    match error.kind() {
        ErrorKind::CircuitOpen => {
            let mut error = error;
            if let Some(breaker) = &context.breaker {
                let m = breaker.metrics();
                error = error.explained(format_args!(
                    " ({} of the last {} calls to {} failed",
                    m.window_failures, m.window_calls, context.server
                ));
                error = match context.outcomes.last_failure() {
                    Some(last) => error.explained(format_args!("; the last: {last})")),
                    None => error.explained(")"),
                };
            }
            error
        }
        ErrorKind::DeadlineExceeded => {
            let attempts = request.tracking.attempts();
            let error = error.explained(format_args!(
                " (the {:?} deadline, {attempts} attempt(s) on {}",
                request.limit, context.server
            ));
            let error = match request.tracking.last_failure() {
                Some(last) => error.explained(format_args!("; the last failed with: {last})")),
                None => error.explained(")"),
            };
            if attempts > 0 {
                error.with_attempts(attempts)
            } else {
                error
            }
        }
        // An attempt timeout of the layers: name the server it waited for, as the service's errors do.
        ErrorKind::Timeout if !error.to_string().contains(&*context.server) => {
            error.explained(format_args!(" (waiting for {})", context.server))
        }
        _ => error,
    }
}

/// What an attempt's failure leaves to be settled by a lookup, as the kind and the words of what was
/// lost: a marked write cut by the attempt timeout (its COMMIT sent or not: `resolve` answers both), or
/// one whose link was lost after its COMMIT was sent (the service leaves that lookup to this layer, see
/// `resolve::finish_marked`). `None`: the failure is the attempt's answer as it is.
fn to_look_up(error: &BoxError, tracking: &Tracking) -> Option<(ErrorKind, String)> {
    let marked = tracking.marked();
    if error.is::<AttemptTimedOut>() {
        return (!matches!(marked, Marked::No)).then(|| {
            (
                ErrorKind::Timeout,
                format!("{error}, after the statement was sent"),
            )
        });
    }
    let lost = error
        .downcast_ref::<Error>()
        .filter(|e| e.is_outcome_unknown() && marked.mark().is_some())?;
    Some((lost.kind(), lost.message().to_owned()))
}

/// Below the retry layer: one attempt. It is counted and starts with nothing sent; an attempt that ends
/// with an answer (a response or the service's own error) leaves nothing running; one cut by the attempt
/// timeout is classified by whether its statement had been sent — or, for a marked write
/// ([`crate::resolve`]), resolved: not applied if its `COMMIT` was never sent, else what the server says.
#[derive(Clone)]
pub(super) struct Attempt<S> {
    inner: S,
    resolver: Option<Arc<Resolver>>,
}

impl<S> Attempt<S> {
    pub(super) fn new(inner: S, resolver: Option<Arc<Resolver>>) -> Self {
        Self { inner, resolver }
    }
}

/// Where a cut attempt's marked write is looked up: the stack's current pool.
pub(super) struct Resolver {
    pub(super) services: Services,
    /// Each lookup's limit: the stack's attempt timeout.
    pub(super) per_try: Duration,
}

impl Resolver {
    /// The outcome of an attempt whose marked write was `marked` when its reply was lost (`kind`, said
    /// as `lost`: cut by the attempt timeout, or its link lost under it), looked up within the request's
    /// `deadline` — here, above the attempt timeout, so the lookup has the request's time and not what
    /// was left of the attempt's.
    fn settle_lost(
        self: Arc<Self>,
        marked: Marked,
        kind: ErrorKind,
        lost: String,
        deadline: Option<Instant>,
        tracking: Arc<Tracking>,
    ) -> BoxFuture<'static, Result<Response, BoxError>> {
        Box::pin(async move {
            let service = self.services.current();
            let pool = service.pool();
            let resolution = resolve(pool, marked.mark(), deadline, self.per_try).await;
            tracking.resolved(resolution.label());
            if !matches!(resolution, Resolution::Unknown(_)) {
                // Settled: nothing of this attempt is left that could still commit.
                tracking.answered();
            }
            match settled(resolution, kind, &lost, marked.returns_rows()) {
                Settled::Applied => Ok(Response::applied_reply_lost()),
                Settled::Err(error) => {
                    tracking.failed(&error);
                    if error.is_outcome_unknown() {
                        tracking.outcome_unknown();
                    }
                    Err(Box::new(error) as BoxError)
                }
            }
        })
    }
}

impl<S> Service<Query> for Attempt<S>
where
    S: Service<Query, Response = Response, Error = BoxError>,
{
    type Response = Response;
    type Error = BoxError;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, query: Query) -> Self::Future {
        let tracking = query.tracking().cloned();
        if let Some(t) = &tracking {
            t.attempt();
        }
        AttemptFuture {
            read: query.is_read(),
            deadline: query.deadline(),
            inner: self.inner.call(query),
            tracking,
            resolver: self.resolver.clone(),
            resolving: None,
        }
    }
}

pin_project! {
    /// The response future of [`Attempt`].
    pub(super) struct AttemptFuture<F> {
        #[pin]
        inner: F,
        read: bool,
        deadline: Option<Instant>,
        tracking: Option<Arc<Tracking>>,
        resolver: Option<Arc<Resolver>>,
        // A cut marked write being looked up.
        resolving: Option<BoxFuture<'static, Result<Response, BoxError>>>,
    }
}

impl<F> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response, BoxError>>,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(resolving) = this.resolving {
            return resolving.as_mut().poll(cx);
        }
        let result = ready!(this.inner.poll(cx));
        let Some(tracking) = this.tracking else {
            return Poll::Ready(result);
        };
        if let (Some(resolver), Err(e)) = (this.resolver.as_ref(), &result)
            && let Some((kind, lost)) = to_look_up(e, tracking)
        {
            let resolving = resolver.clone().settle_lost(
                tracking.marked(),
                kind,
                lost,
                *this.deadline,
                tracking.clone(),
            );
            return this.resolving.insert(resolving).as_mut().poll(cx);
        }
        Poll::Ready(match result {
            Err(e) if e.is::<AttemptTimedOut>() => {
                let unknown = cut_leaves_outcome_unknown(*this.read, tracking.was_sent());
                let error = Error::from_layers(e, unknown);
                tracking.failed(&error);
                if error.is_outcome_unknown() {
                    tracking.outcome_unknown();
                }
                Err(Box::new(error) as BoxError)
            }
            other => {
                // Answered: nothing of this attempt is left running on the server.
                tracking.answered();
                if let Err(e) = &other {
                    tracking.failed(e);
                    let unknown = e
                        .downcast_ref::<Error>()
                        .is_some_and(Error::is_outcome_unknown);
                    if unknown && !*this.read {
                        tracking.outcome_unknown();
                    }
                }
                other
            }
        })
    }
}
