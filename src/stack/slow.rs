//! Slow statements: a statement slower than its attempt is cut by the server, not by the attempt timeout,
//! so that a slow statement and a dead link tell themselves apart.
//!
//! Below the attempt timeout, [`ServerCut`] narrows the deadline the service sees to four fifths of the
//! attempt (the service pushes it down as `statement_timeout`, which it may round up by a fifth): a
//! statement still running then is cancelled by the server, which answers `57014`. That answer says the
//! server and the link are fine and the statement is slow: the breaker does not count it (see
//! `BreakerClassifier`), so ten slow reads cannot open the breaker in front of everyone's `SELECT 1`.
//! Only an attempt the server did not answer in time is cut by the attempt timeout and counted as a
//! failure. A slow statement will be slow again: it is retried at most `slow_retries` times in a request
//! (counted in the request's record, `request.rs`).
//!
//! A request granted its own time ([`Query::timeout`](crate::Query::timeout)) is left alone: its attempt
//! may use the whole grant.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use rampart_layers::Classification;
use rampart_layers::deadline::Deadlined;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tower::{BoxError, Service};

use crate::error::{Error, ErrorKind};
use crate::query::Query;

use super::request;

/// Below the attempt timeout: the server cuts a statement slower than the attempt, and a request's
/// slow cuts past `retries` are not retried.
#[derive(Clone)]
pub(super) struct ServerCut<S> {
    inner: S,
    attempt: Duration,
    retries: u32,
}

impl<S> ServerCut<S> {
    pub(super) fn new(inner: S, attempt: Duration, retries: u32) -> Self {
        Self {
            inner,
            attempt,
            retries,
        }
    }
}

impl<S> Service<Query> for ServerCut<S>
where
    S: Service<Query, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ServerCutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut query: Query) -> Self::Future {
        let mut limit = None;
        if query.granted().is_none() {
            // The service may round the statement timeout up by a fifth: four fifths of the attempt
            // keeps the server's cut ahead of the attempt timeout's.
            let cut = self.attempt.mul_f64(0.8);
            let at = Instant::now() + cut;
            if query.deadline().is_none_or(|d| at < d) {
                query.set_deadline(at);
                limit = Some(self.attempt);
            }
        }
        ServerCutFuture {
            inner: self.inner.call(query),
            limit,
            retries: self.retries,
        }
    }
}

pin_project! {
    /// The response future of [`ServerCut`].
    pub(super) struct ServerCutFuture<F> {
        #[pin]
        inner: F,
        // The attempt timeout, if this attempt's deadline was narrowed to it.
        limit: Option<Duration>,
        retries: u32,
    }
}

impl<F, R> Future for ServerCutFuture<F>
where
    F: Future<Output = Result<R, BoxError>>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Err(err) = result else {
            return Poll::Ready(result);
        };
        let (Some(limit), Some(e)) = (*this.limit, err.downcast_ref::<Error>()) else {
            return Poll::Ready(Err(err));
        };
        if e.code() != Some(&SqlState::QUERY_CANCELED) {
            return Poll::Ready(Err(err));
        }
        let cuts = request::slow_cut();
        tracing::info!(
            target: "rampart::query",
            cuts,
            limit_ms = limit.as_millis() as u64,
            "slow statement cut by the server at the attempt timeout"
        );
        if cuts <= *this.retries {
            return Poll::Ready(Err(err));
        }
        let slow = Error::new(
            ErrorKind::Timeout,
            Classification::Permanent,
            format!(
                "statement ran longer than the attempt timeout ({limit:?}) in {cuts} attempts; the \
                 server cancelled it each time; grant it a longer Query::timeout"
            ),
        )
        .with_code(SqlState::QUERY_CANCELED)
        .with_source(err);
        Poll::Ready(Err(Box::new(slow) as BoxError))
    }
}
