//! One request's record, from the top of the stack: how many attempts it took and why, logged once when
//! it ends if it needed more than one.
//!
//! The record is a task-local of the request's future, set by [`RequestScope`] (just below the top of a
//! stack) and written by the layers below it while they are polled within it: the retry policy's
//! `on_retry` callback notes each retry's cause, [`ServerCut`](super::slow::ServerCut) each slow cut.
//! No request type or error carries it.
//!
//! | event (target `rampart::query`) | level | when |
//! |---|---|---|
//! | `request recovered after retries` | `info` | a request that needed retries succeeded: `attempts`, `causes` (the error kinds, in order) |
//! | `request failed after retries` | `warn` | a request that was retried still failed: `attempts`, `causes`, `error` |

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::Service;

use crate::error::{Error, ErrorKind};
use crate::query::{Query, Response};

#[derive(Debug, Default)]
struct Record {
    retries: u32,
    /// The error kinds that caused the retries, comma-separated.
    causes: String,
    slow_cuts: u32,
    /// Retries after a failure other than a failed connect.
    not_connecting: u32,
}

tokio::task_local! {
    static RECORD: RefCell<Record>;
}

/// A retry is about to be made after an error of this kind (`None`: not a rampart error).
pub(super) fn retried(kind: Option<ErrorKind>) {
    let _ = RECORD.try_with(|r| {
        let mut r = r.borrow_mut();
        r.retries += 1;
        if kind != Some(ErrorKind::Connect) {
            r.not_connecting += 1;
        }
        if !r.causes.is_empty() {
            r.causes.push(',');
        }
        let _ = write!(r.causes, "{}", kind.map_or("other", ErrorKind::as_str));
    });
}

/// The attempts this request has had so far that did not fail to connect, the one that just failed
/// included (1 outside a scope).
pub(super) fn attempts_not_connecting() -> u32 {
    RECORD
        .try_with(|r| r.borrow().not_connecting + 1)
        .unwrap_or(1)
}

/// The server cut this request's statement at the attempt timeout: how many times so far (1 outside a
/// scope).
pub(super) fn slow_cut() -> u32 {
    RECORD
        .try_with(|r| {
            let mut r = r.borrow_mut();
            r.slow_cuts += 1;
            r.slow_cuts
        })
        .unwrap_or(1)
}

/// Near the top of a stack: gives each request its record, and logs the request once at its end if it
/// was retried.
#[derive(Clone)]
pub(super) struct RequestScope<S> {
    inner: S,
}

impl<S> RequestScope<S> {
    pub(super) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<Query> for RequestScope<S>
where
    S: Service<Query, Response = Response, Error = Error>,
{
    type Response = Response;
    type Error = Error;
    type Future = ScopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, query: Query) -> Self::Future {
        ScopeFuture {
            inner: RECORD.scope(
                RefCell::default(),
                Logged {
                    inner: self.inner.call(query),
                },
            ),
        }
    }
}

pin_project! {
    /// The inner future, logging its request's record when it ends (polled within the scope, so the
    /// record can be read).
    pub(super) struct Logged<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Future for Logged<F>
where
    F: Future<Output = Result<Response, Error>>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(self.project().inner.poll(cx));
        let _ = RECORD.try_with(|r| {
            let r = r.borrow();
            if r.retries == 0 {
                return;
            }
            let attempts = r.retries + 1;
            let causes = r.causes.as_str();
            match &result {
                Ok(_) => tracing::info!(
                    target: "rampart::query", attempts, causes, "request recovered after retries"
                ),
                Err(e) => tracing::warn!(
                    target: "rampart::query", attempts, causes, kind = e.kind().as_str(), error = %e,
                    "request failed after retries"
                ),
            }
        });
        Poll::Ready(result)
    }
}

pin_project! {
    /// The response future of [`RequestScope`].
    pub(super) struct ScopeFuture<F> {
        #[pin]
        inner: TaskLocalFuture<RefCell<Record>, Logged<F>>,
    }
}

impl<F> Future for ScopeFuture<F>
where
    F: Future<Output = Result<Response, Error>>,
{
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
