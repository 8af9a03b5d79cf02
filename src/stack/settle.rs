//! The two small layers of a ready-made stack that know what a request is: at the top, the outcome is
//! settled (the layers' errors converted once, the outcome recorded for health); below the retry layer,
//! each attempt cut by the attempt timeout is classified by whether its statement had been sent.
//!
//! An attempt timeout or a deadline that fires after the statement was written may leave it running,
//! and committing: the cancel request goes out in the background and can arrive after the commit. Such a
//! cut is `Ambiguous` for a request that is not idempotent (never replayed, reported as outcome unknown);
//! one that fires before anything was sent (waiting for a connection, connecting, preparing) is
//! `Transient`. The service marks the moment of sending on the request ([`Query::mark_sent`]); these
//! layers read it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use rampart_layers::deadline::AttemptTimedOut;
use tower::{BoxError, Service};

use crate::error::Error;
use crate::health::Outcomes;
use crate::query::{Query, Response};

fn was_sent(flag: &Option<Arc<AtomicBool>>) -> bool {
    flag.as_ref().is_some_and(|f| f.load(Ordering::Acquire))
}

/// The top of a stack: starts tracking whether a non-idempotent request's statement was sent, converts
/// what the layers return into an [`Error`] once, and records the outcome.
#[derive(Clone)]
pub(super) struct Settle<S> {
    inner: S,
    outcomes: Arc<Outcomes>,
}

impl<S> Settle<S> {
    pub(super) fn new(inner: S, outcomes: Arc<Outcomes>) -> Self {
        Self { inner, outcomes }
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
        let sent = (!query.is_idempotent()).then(|| query.track_sending());
        SettleFuture {
            inner: self.inner.call(query),
            sent,
            outcomes: self.outcomes.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`Settle`].
    pub(super) struct SettleFuture<F> {
        #[pin]
        inner: F,
        sent: Option<Arc<AtomicBool>>,
        outcomes: Arc<Outcomes>,
    }
}

impl<F> Future for SettleFuture<F>
where
    F: Future<Output = Result<Response, BoxError>>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result =
            ready!(this.inner.poll(cx)).map_err(|e| Error::from_layers(e, was_sent(this.sent)));
        this.outcomes.record(&result);
        Poll::Ready(result)
    }
}

/// Below the retry layer: one attempt. It starts with nothing sent; an attempt that ends with an answer
/// (a response or the service's own error) leaves nothing running; one cut by the attempt timeout is
/// classified by whether its statement had been sent.
#[derive(Clone)]
pub(super) struct Attempt<S> {
    inner: S,
}

impl<S> Attempt<S> {
    pub(super) fn new(inner: S) -> Self {
        Self { inner }
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
        let sent = query.sending().cloned();
        if let Some(flag) = &sent {
            flag.store(false, Ordering::Release);
        }
        AttemptFuture {
            inner: self.inner.call(query),
            sent,
        }
    }
}

pin_project! {
    /// The response future of [`Attempt`].
    pub(super) struct AttemptFuture<F> {
        #[pin]
        inner: F,
        sent: Option<Arc<AtomicBool>>,
    }
}

impl<F> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response, BoxError>>,
{
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(match result {
            Err(e) if e.is::<AttemptTimedOut>() => {
                Err(Box::new(Error::from_layers(e, was_sent(this.sent))) as BoxError)
            }
            other => {
                // Answered: nothing of this attempt is left running on the server.
                if let Some(flag) = this.sent {
                    flag.store(false, Ordering::Release);
                }
                other
            }
        })
    }
}
