//! What the layer benchmarks share: a ready no-op service, every layer under test built over it, rampart's
//! and the alternatives' configured alike, and a driver that makes one call by hand (no executor).
#![allow(dead_code, unreachable_pub)]

use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rampart_layers::breaker::{BreakerConfig, CircuitBreakerLayer, SlidingWindow};
use rampart_layers::deadline::{AttemptTimeoutLayer, DeadlineLayer, WithDeadline};
use rampart_layers::retry::backoff::{Exponential, Jitter};
use rampart_layers::retry::{RetryBudget, RetryLayer, RetryPolicy};
use rampart_layers::validate::{ValidationLayer, ValidationPolicy, validate_fn};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

/// The request every case sends: rampart's layers need a request that carries its deadline.
pub type Req = WithDeadline<&'static str>;

pub fn request() -> Req {
    WithDeadline::new("SELECT 1")
}

/// A service that is always ready and answers at once: the floor every layer adds to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl<R> Service<R> for Noop {
    type Response = u32;
    type Error = BoxError;
    type Future = Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        ready(Ok(1))
    }
}

/// Fails its first `left` calls with a timeout (which every breaker counts as a failure), then answers
/// at once: trips a breaker open the ordinary way.
#[derive(Clone, Copy, Debug)]
pub struct FailFirst {
    pub left: u32,
}

impl<R> Service<R> for FailFirst {
    type Response = u32;
    type Error = BoxError;
    type Future = Ready<Result<u32, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        if self.left > 0 {
            self.left -= 1;
            return ready(Err(Box::new(tower::timeout::error::Elapsed::new())));
        }
        ready(Ok(1))
    }
}

/// How many failing calls trip the breakers of the open cases (their minimum number of calls).
const TRIP: u32 = 20;

/// One call by hand: `poll_ready`, `call`, polls of the response future until it is ready (over a
/// ready no-op service, the first poll is). Returns whether the call succeeded.
#[inline(always)]
pub fn call_once<S, R>(svc: &mut S, req: R, cx: &mut Context<'_>) -> bool
where
    S: Service<R>,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(_)) => return false,
        Poll::Pending => panic!("a case over a ready service was not ready"),
    }
    let mut fut = pin!(svc.call(req));
    loop {
        if let Poll::Ready(result) = fut.as_mut().poll(cx) {
            return result.is_ok();
        }
    }
}

/// A context whose waker does nothing (nothing here ever waits).
pub fn noop_context() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Async form for criterion's `to_async`: the same call through `ServiceExt::ready`.
pub async fn call_async<S, R>(svc: &mut S, req: R) -> bool
where
    S: Service<R>,
{
    match svc.ready().await {
        Ok(svc) => svc.call(req).await.is_ok(),
        Err(_) => false,
    }
}

// ---- rampart ----

/// The stack's retry policy (`Stack::server`): 4 attempts, 50 ms doubling to 2 s with full jitter, a budget.
pub fn rampart_policy() -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(4)
        .schedule(
            Exponential::builder()
                .base_delay(Duration::from_millis(50))
                .multiplier(2.0)
                .max_delay(Duration::from_secs(2))
                .jitter(Jitter::Full)
                .build()
                .unwrap(),
        )
        .budget(
            RetryBudget::builder()
                .window(Duration::from_secs(10))
                .min_retries_per_second(10)
                .retry_ratio(0.2)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

/// The stack's breaker settings (`Stack::server`).
pub fn rampart_breaker_config() -> BreakerConfig {
    BreakerConfig::builder()
        .name("bench")
        .failure_rate(0.5)
        .sliding_window(SlidingWindow::time(Duration::from_secs(10)))
        .minimum_calls(20)
        .wait_in_open(Duration::from_secs(2))
        .wait_multiplier(2.0)
        .max_wait_in_open(Duration::from_secs(30))
        .half_open_calls(3)
        .build()
        .unwrap()
}

pub fn rampart_retry() -> impl Service<Req, Response = u32> + Clone {
    RetryLayer::new(rampart_policy()).layer(Noop)
}

pub fn rampart_breaker() -> impl Service<Req, Response = u32> + Clone {
    CircuitBreakerLayer::new(rampart_breaker_config()).layer(Noop)
}

/// Tripped open by 20 failing calls, with an open wait longer than any run.
pub fn rampart_breaker_open() -> impl Service<Req, Response = u32> {
    let config = BreakerConfig::builder()
        .name("bench")
        .failure_rate(0.5)
        .sliding_window(SlidingWindow::time(Duration::from_secs(10)))
        .minimum_calls(TRIP)
        .wait_in_open(Duration::from_secs(3600))
        .max_wait_in_open(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut svc = CircuitBreakerLayer::new(config).layer(FailFirst { left: TRIP });
    trip(&mut svc);
    svc
}

fn trip<S: Service<Req>>(svc: &mut S) {
    let mut cx = noop_context();
    for _ in 0..TRIP {
        call_once(svc, request(), &mut cx);
    }
}

/// Retry without a budget: the layer alone.
pub fn rampart_retry_no_budget() -> impl Service<Req, Response = u32> + Clone {
    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .schedule(rampart_policy().schedule().clone())
        .build()
        .unwrap();
    RetryLayer::new(policy).layer(Noop)
}

pub fn rampart_attempt_timeout() -> impl Service<Req, Response = u32> + Clone {
    AttemptTimeoutLayer::new(Duration::from_secs(3)).layer(Noop)
}

pub fn rampart_deadline() -> impl Service<Req, Response = u32> + Clone {
    DeadlineLayer::new(Duration::from_secs(10)).layer(Noop)
}

/// Validation inside the bypass window: the first call checks (and marks), every later one bypasses.
pub fn rampart_validate() -> impl Service<Req, Response = u32> {
    let check = validate_fn(|_: &mut Noop| async { Ok::<_, BoxError>(()) });
    let factory = tower::service_fn(|()| async { Ok::<_, BoxError>(Noop) });
    let policy = ValidationPolicy::builder()
        .bypass_window(Duration::from_secs(3600))
        .build()
        .unwrap();
    ValidationLayer::new(policy, check, factory).layer(Noop)
}

/// The recommended stack as `StackBuilder::build` assembles it (deadline, retry, breaker, attempt timeout,
/// errors mapped as it maps them), over the no-op service instead of the pool.
macro_rules! recommended_stack {
    () => {
        ServiceBuilder::new()
            .map_err(|e: BoxError| e)
            .layer(DeadlineLayer::new(Duration::from_secs(10)))
            .layer(RetryLayer::new(rampart_policy()))
            .layer(CircuitBreakerLayer::new(rampart_breaker_config()))
            .layer(AttemptTimeoutLayer::new(Duration::from_secs(3)))
            .map_err(Into::<BoxError>::into)
            .service(Noop)
    };
}

pub fn rampart_stack() -> impl Service<Req, Response = u32, Error = BoxError> + Clone {
    recommended_stack!()
}

/// The same stack behind `BoxCloneSyncService`, as `Db` holds it.
pub fn rampart_stack_boxed() -> impl Service<Req, Response = u32, Error = BoxError> + Clone {
    tower::util::BoxCloneSyncService::new(recommended_stack!())
}

// ---- tower ----

/// tower's `Retry` with a policy that never retries: the floor for a retry layer.
#[derive(Clone, Copy, Debug)]
pub struct NeverRetry;

impl<R: Clone, Res, E> tower::retry::Policy<R, Res, E> for NeverRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut R, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &R) -> Option<R> {
        Some(req.clone())
    }
}

pub fn tower_retry() -> impl Service<Req, Response = u32> + Clone {
    tower::retry::RetryLayer::new(NeverRetry).layer(Noop)
}

pub fn tower_timeout() -> impl Service<Req, Response = u32> + Clone {
    tower::timeout::TimeoutLayer::new(Duration::from_secs(3)).layer(Noop)
}

// ---- tower-resilience, configured like rampart's ----

use tower_resilience::circuitbreaker::{CircuitBreakerLayer as TrBreakerLayer, SlidingWindowType};
use tower_resilience::retry::RetryLayer as TrRetryLayer;
use tower_resilience::timelimiter::TimeLimiterLayer as TrTimeLimiterLayer;

pub fn tr_retry() -> impl Service<Req, Response = u32> + Clone {
    TrRetryLayer::<Req, u32, BoxError>::builder()
        .max_attempts(4)
        .exponential_backoff(Duration::from_millis(50))
        .build()
        .layer(Noop)
}

fn tr_breaker_builder() -> tower_resilience::circuitbreaker::CircuitBreakerConfigBuilder<
    tower_resilience::circuitbreaker::DefaultClassifier,
> {
    TrBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_type(SlidingWindowType::TimeBased)
        .sliding_window_duration(Duration::from_secs(10))
        .minimum_number_of_calls(20)
        .wait_duration_in_open(Duration::from_secs(2))
        .permitted_calls_in_half_open(3)
}

pub fn tr_breaker() -> impl Service<Req, Response = u32> + Clone {
    tr_breaker_builder().build().unwrap().layer(Noop)
}

/// Its count-based window (the last 100 calls): its time-based window keeps every call's outcome, so its
/// cost grows with the call rate.
pub fn tr_breaker_count() -> impl Service<Req, Response = u32> + Clone {
    tr_breaker_builder()
        .sliding_window_type(SlidingWindowType::CountBased)
        .sliding_window_size(100)
        .build()
        .unwrap()
        .layer(Noop)
}

/// Tripped open by 20 failing calls, like rampart's.
pub fn tr_breaker_open() -> impl Service<Req, Response = u32> {
    let mut svc = tr_breaker_builder()
        .wait_duration_in_open(Duration::from_secs(3600))
        .build()
        .unwrap()
        .layer(FailFirst { left: TRIP });
    trip(&mut svc);
    svc
}

pub fn tr_time_limiter() -> impl Service<Req, Response = u32> + Clone {
    TrTimeLimiterLayer::builder()
        .timeout_duration(Duration::from_secs(3))
        .build()
        .layer(Noop)
}

/// tower-resilience's retry, breaker and time limiter stacked like rampart's.
pub fn tr_stack() -> impl Service<Req, Response = u32> + Clone {
    ServiceBuilder::new()
        .layer(
            TrRetryLayer::<Req, u32, _>::builder()
                .max_attempts(4)
                .exponential_backoff(Duration::from_millis(50))
                .build(),
        )
        .layer(tr_breaker_builder().build().unwrap())
        .layer(
            TrTimeLimiterLayer::builder()
                .timeout_duration(Duration::from_secs(3))
                .build(),
        )
        .service(Noop)
}

/// tower-resilience's retry, breaker and time limiter with their own defaults (the breaker's window: the
/// last 100 calls), as a user who configures nothing gets them.
pub fn tr_stack_defaults() -> impl Service<Req, Response = u32> + Clone {
    ServiceBuilder::new()
        .layer(TrRetryLayer::<Req, u32, _>::builder().build())
        .layer(TrBreakerLayer::builder().build().unwrap())
        .layer(TrTimeLimiterLayer::builder().build())
        .service(Noop)
}

/// Every case by name, for both harnesses: `$run!(name, constructor)` is invoked once per case.
#[macro_export]
macro_rules! for_each_case {
    ($run:ident) => {
        $run!("noop (floor)", support::Noop);
        $run!(
            "retry/tower Retry (never-retry policy)",
            support::tower_retry()
        );
        $run!(
            "retry/rampart Retry (with the stack's retry budget)",
            support::rampart_retry()
        );
        $run!(
            "retry/rampart Retry (no budget)",
            support::rampart_retry_no_budget()
        );
        $run!("retry/tower-resilience retry", support::tr_retry());
        $run!("breaker closed/rampart", support::rampart_breaker());
        $run!(
            "breaker closed/tower-resilience (10 s time window)",
            support::tr_breaker()
        );
        $run!(
            "breaker closed/tower-resilience (100-call window)",
            support::tr_breaker_count()
        );
        $run!("breaker open/rampart", support::rampart_breaker_open());
        $run!("breaker open/tower-resilience", support::tr_breaker_open());
        $run!("timeout/tower Timeout", support::tower_timeout());
        $run!(
            "timeout/rampart AttemptTimeout",
            support::rampart_attempt_timeout()
        );
        $run!("timeout/rampart Deadline", support::rampart_deadline());
        $run!(
            "timeout/tower-resilience time limiter",
            support::tr_time_limiter()
        );
        $run!(
            "validate/rampart (bypass window)",
            support::rampart_validate()
        );
        $run!("stack/rampart recommended", support::rampart_stack());
        $run!(
            "stack/rampart recommended, boxed as in Db",
            support::rampart_stack_boxed()
        );
        $run!(
            "stack/tower-resilience retry+breaker+time limiter (breaker on a 10 s time window)",
            support::tr_stack()
        );
        $run!(
            "stack/tower-resilience retry+breaker+time limiter (its defaults)",
            support::tr_stack_defaults()
        );
    };
}
