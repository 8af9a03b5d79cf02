//! Future types.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Service};

use super::{
    error::{GaveUp, RetryError},
    policy::{RetryEvent, RetryPolicy},
    replay::Replay,
};
use crate::{
    backoff::Backoff,
    classify::{Classification, Classify},
    deadline::{DeadlineExceeded, Deadlined},
    events,
    rng::SplitMix64,
};

pin_project! {
    /// Response future of [`Retry`](super::Retry): attempts, waits and gives up as its policy says.
    ///
    /// Dropping it cancels the attempt in flight or the wait, and no further attempt is made.
    pub struct ResponseFuture<S, Req, C, B>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // `None` once the request itself was sent: it could not be replayed.
        request: Option<Req>,
        policy: Arc<RetryPolicy<C, B>>,
        tracker: Bookkeeping<B, S::Response>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Waiting out the backoff before the next attempt. Boxed: a retry is rare next to a success,
        // and an inline `Sleep` would make every request's future (and every move of it) much larger.
        Backoff { sleep: Pin<Box<Sleep>> },
        // Waiting for the inner service to be ready for the next attempt.
        Ready,
    }
}

/// The per-request bookkeeping, apart from the pinned state so it can be borrowed alongside it.
///
/// The schedule and the jitter generator are set up (boxed) at the first failure, and the clock is read
/// at the start only when a deadline or `max_elapsed` needs it: the success path, by far the commonest,
/// pays for none of them (a lock on the shared generator, a copy of the schedule, a clock read), and its
/// future stays small.
struct Bookkeeping<B, Res> {
    backoff: Option<Box<(B, SplitMix64)>>,
    idempotent: bool,
    deadline: Option<Instant>,
    started: Option<Instant>,
    attempts: u32,
    last: Option<Failure<Res>>,
}

/// The last failed outcome, kept while waiting so the layer can give it back if it stops before retrying.
enum Failure<Res> {
    Error {
        error: BoxError,
        class: Classification,
    },
    Response {
        response: Res,
    },
}

impl<S, Req, C, B> ResponseFuture<S, Req, C, B>
where
    S: Service<Req>,
    Req: Deadlined,
    B: Backoff + Clone,
{
    /// Starts the first attempt on `service`, which must be ready, unless the request's deadline has
    /// already passed.
    #[inline]
    pub(super) fn new(
        mut service: S,
        request: Req,
        policy: Arc<RetryPolicy<C, B>>,
        idempotent: bool,
    ) -> Self
    where
        Req: Replay,
    {
        let deadline = request.deadline();
        let now = (deadline.is_some() || policy.max_elapsed().is_some()).then(Instant::now);
        let mut tracker = Bookkeeping {
            backoff: None,
            idempotent,
            deadline,
            started: now.filter(|_| policy.max_elapsed().is_some()),
            attempts: 0,
            last: None,
        };
        let mut request = Some(request);
        let state = if now.is_some_and(|now| tracker.expired(now)) {
            // `Ready` gives up at once, without calling the service.
            State::Ready
        } else {
            tracker.attempts = 1;
            events::counter("rampart_retry_attempts_total", &[], 1);
            State::Calling {
                future: service.call(next_request(&mut request)),
            }
        };
        Self {
            state,
            service,
            request,
            policy,
            tracker,
        }
    }
}

/// The request to send now: a replay if one can be made (the request is kept for a later attempt),
/// else the request itself.
#[inline]
fn next_request<Req: Replay>(kept: &mut Option<Req>) -> Req {
    let request = kept
        .as_ref()
        .expect("a request is kept while attempts remain");
    match request.replay() {
        Some(copy) => copy,
        None => kept.take().expect("checked above"),
    }
}

impl<B, Res> Bookkeeping<B, Res> {
    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| now >= deadline)
    }

    /// Gives the last outcome back, as a response or a [`RetryError`].
    fn give_up(&mut self, reason: GaveUp) -> Result<Res, RetryError> {
        match self.last.take() {
            Some(Failure::Response { response }) => Ok(response),
            Some(Failure::Error { error, class }) => {
                Err(RetryError::new(error, self.attempts, reason, Some(class)))
            }
            None => {
                let cause = Box::new(DeadlineExceeded::new(
                    self.deadline.unwrap_or_else(Instant::now),
                ));
                Err(RetryError::new(cause, self.attempts, reason, None))
            }
        }
    }
}

impl<B: Backoff + Clone, Res> Bookkeeping<B, Res> {
    /// The wait before the next attempt, or why there is none. Withdraws from the budget only when the
    /// answer is to retry.
    fn next_delay<C>(
        &mut self,
        policy: &RetryPolicy<C, B>,
        class: Classification,
        replayable: bool,
    ) -> Result<Duration, GaveUp> {
        if !class.is_retryable(self.idempotent) {
            return Err(if class == Classification::Ambiguous {
                GaveUp::NotIdempotent
            } else {
                GaveUp::Permanent
            });
        }
        if !replayable {
            return Err(GaveUp::NotReplayable);
        }
        if self.attempts >= policy.max_attempts() {
            return Err(GaveUp::AttemptsExhausted);
        }
        let (schedule, rng) = &mut **self.backoff.get_or_insert_with(|| {
            let mut schedule = policy.schedule().clone();
            schedule.reset();
            Box::new((schedule, policy.request_rng()))
        });
        let scheduled = schedule
            .next_delay(self.attempts, rng)
            .ok_or(GaveUp::ScheduleEnded)?;
        let error = match &self.last {
            Some(Failure::Error { error, .. }) => Some(&**error),
            _ => None,
        };
        let delay = policy
            .generated_delay(&RetryEvent {
                attempt: self.attempts,
                delay: scheduled,
                classification: class,
                error,
            })
            .unwrap_or(scheduled);
        let now = Instant::now();
        if let (Some(max_elapsed), Some(started)) = (policy.max_elapsed(), self.started) {
            if now.saturating_duration_since(started).saturating_add(delay) > max_elapsed {
                return Err(GaveUp::ElapsedLimit);
            }
        }
        // An attempt starting exactly at the deadline has no time to run: stop rather than sleep into it.
        if let Some(deadline) = self.deadline {
            if deadline.saturating_duration_since(now) <= delay {
                return Err(GaveUp::Deadline);
            }
        }
        if let Some(budget) = policy.budget() {
            if !budget.try_withdraw() {
                return Err(GaveUp::BudgetExhausted);
            }
        }
        Ok(delay)
    }
}

fn report_gave_up<Res>(reason: GaveUp, attempts: u32, last: Option<&Failure<Res>>) {
    let (class, error): (&str, &dyn fmt::Display) = match last {
        Some(Failure::Error { error, class }) => (class.as_str(), error),
        Some(Failure::Response { .. }) => ("response", &"failed response"),
        None => ("none", &"deadline passed before the first attempt"),
    };
    match reason {
        GaveUp::Permanent | GaveUp::NotIdempotent | GaveUp::NotReplayable => {
            tracing::debug!(target: "rampart::retry", attempt = attempts, class, reason = reason.as_str(), error = %error, "not retrying");
        }
        GaveUp::BudgetExhausted => {
            tracing::warn!(target: "rampart::retry", attempt = attempts, class, reason = reason.as_str(), error = %error, "retry budget exhausted");
            events::counter("rampart_retry_budget_exhausted_total", &[], 1);
        }
        _ => {
            tracing::warn!(target: "rampart::retry", attempt = attempts, class, reason = reason.as_str(), error = %error, "giving up");
            events::counter(
                "rampart_retry_exhausted_total",
                &[("reason", reason.as_str().into())],
                1,
            );
        }
    }
}

impl<S, Req, C, B> Future for ResponseFuture<S, Req, C, B>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Replay,
    C: Classify<S::Response, S::Error>,
    B: Backoff + Clone,
{
    type Output = Result<S::Response, RetryError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let tracker = this.tracker;
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let (failure, class) = match ready!(future.poll(cx)) {
                        Ok(response) => match this.policy.classifier().classify_response(&response)
                        {
                            None => return Poll::Ready(Ok(response)),
                            Some(class) => (Failure::Response { response }, class),
                        },
                        Err(error) => {
                            let class = this.policy.classifier().classify_error(&error);
                            (
                                Failure::Error {
                                    error: error.into(),
                                    class,
                                },
                                class,
                            )
                        }
                    };
                    tracker.last = Some(failure);
                    let delay = match tracker.next_delay(this.policy, class, this.request.is_some())
                    {
                        Ok(delay) => delay,
                        Err(reason) => {
                            report_gave_up(reason, tracker.attempts, tracker.last.as_ref());
                            return Poll::Ready(tracker.give_up(reason));
                        }
                    };
                    let error = match &tracker.last {
                        Some(Failure::Error { error, .. }) => Some(&**error),
                        _ => None,
                    };
                    let shown: &dyn fmt::Display = match error {
                        Some(error) => error,
                        None => &"failed response",
                    };
                    tracing::debug!(
                        target: "rampart::retry",
                        attempt = tracker.attempts,
                        delay_ms = delay.as_millis() as u64,
                        class = class.as_str(),
                        error = %shown,
                        "retrying",
                    );
                    events::counter(
                        "rampart_retry_retries_total",
                        &[("class", class.as_str().into())],
                        1,
                    );
                    this.policy.notify(&RetryEvent {
                        attempt: tracker.attempts,
                        delay,
                        classification: class,
                        error,
                    });
                    if delay.is_zero() {
                        this.state.set(State::Ready);
                    } else {
                        this.state.set(State::Backoff {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        });
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    if tracker.expired(Instant::now()) {
                        report_gave_up(GaveUp::Deadline, tracker.attempts, tracker.last.as_ref());
                        return Poll::Ready(tracker.give_up(GaveUp::Deadline));
                    }
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        let error: BoxError = error.into();
                        tracing::warn!(target: "rampart::retry", attempt = tracker.attempts, error = %error, "service failed to become ready");
                        return Poll::Ready(Err(RetryError::new(
                            error,
                            tracker.attempts,
                            GaveUp::ServiceNotReady,
                            None,
                        )));
                    }
                    // Readiness may have taken a while.
                    if tracker.expired(Instant::now()) {
                        report_gave_up(GaveUp::Deadline, tracker.attempts, tracker.last.as_ref());
                        return Poll::Ready(tracker.give_up(GaveUp::Deadline));
                    }
                    tracker.attempts += 1;
                    events::counter("rampart_retry_attempts_total", &[], 1);
                    // The failed response of the previous attempt is dropped only now that another starts.
                    tracker.last = None;
                    let future = this.service.call(next_request(this.request));
                    this.state.set(State::Calling { future });
                }
            }
        }
    }
}

impl<S, Req, C, B> fmt::Debug for ResponseFuture<S, Req, C, B>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.tracker.attempts)
            .field("deadline", &self.tracker.deadline)
            .finish_non_exhaustive()
    }
}
