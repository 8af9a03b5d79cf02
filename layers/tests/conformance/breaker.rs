//! Resilience4j's `CircuitBreakerStateMachineTest` and Polly v8's `CircuitBreakerResilienceStrategyTests`
//! (and the break-duration rule of its `CircuitStateControllerTests`), replayed through the tower
//! service with tokio's clock paused.
//!
//! The configuration is Resilience4j's test setup: failure and slow-call thresholds of 50 %, calls
//! slower than 4 s are slow, 4 probes in half-open, a 5 s wait, a window of 5 calls that must all
//! be in before the rates count. Resilience4j drives its state machine by hand
//! (`transitionToOpenState`); here every transition is made by calls, as a user's would be.

use std::time::Duration;

use rampart_layers::breaker::{
    BreakerConfig, BreakerConfigBuilder, BreakerHandle, BreakerMetrics, BreakerState,
    CircuitBreaker, CircuitOpen, SlidingWindow,
};
use rampart_layers::classify::{BreakerCount, Classification, Classify};
use tokio::time::{Instant, advance};
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceExt};

/// What the backend does with a call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Call {
    Ok,
    /// A transient error: a failure.
    Fail,
    /// A permanent error: ignored (Resilience4j's `ignoreExceptions`, Polly's unhandled exception).
    Ignored,
    /// An error the classifier counts as a success (Resilience4j: not in `recordExceptions`).
    Benign,
    /// A response the classifier fails (Polly's handled result).
    BadResponse,
    /// 5 s (slower than the 4 s limit), then a response or a failure.
    SlowOk,
    SlowFail,
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone, Copy)]
struct Classes;

impl Classify<&'static str, BoxError> for Classes {
    fn classify_error(&self, e: &BoxError) -> Classification {
        match e.to_string().as_str() {
            "fail" => Classification::Transient,
            _ => Classification::Permanent,
        }
    }
    fn classify_response(&self, r: &&'static str) -> Option<Classification> {
        (*r == "bad").then_some(Classification::Transient)
    }
    fn breaker_count(&self, e: &BoxError) -> BreakerCount {
        if e.to_string() == "benign" {
            BreakerCount::Success
        } else {
            self.classify_error(e).into()
        }
    }
}

type Svc = CircuitBreaker<BoxCloneService<Call, &'static str, BoxError>, Classes>;

fn backend() -> BoxCloneService<Call, &'static str, BoxError> {
    BoxCloneService::new(tower::service_fn(|call: Call| async move {
        match call {
            Call::Ok => Ok("ok"),
            Call::Fail => Err("fail".into()),
            Call::Ignored => Err("ignored".into()),
            Call::Benign => Err("benign".into()),
            Call::BadResponse => Ok("bad"),
            Call::SlowOk | Call::SlowFail => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if call == Call::SlowOk {
                    Ok("slow")
                } else {
                    Err("fail".into())
                }
            }
            Call::Hang => std::future::pending().await,
        }
    }))
}

/// Resilience4j's test configuration.
fn r4j() -> BreakerConfigBuilder {
    BreakerConfig::builder()
        .name("testName")
        .failure_rate(0.5)
        .half_open_calls(4)
        .slow_call_duration(Duration::from_secs(4))
        .slow_call_rate(0.5)
        .sliding_window(SlidingWindow::Count(5))
        .minimum_calls(5)
        .wait_in_open(Duration::from_secs(5))
        .wait_multiplier(1.0)
}

fn breaker(config: BreakerConfigBuilder) -> (Svc, BreakerHandle) {
    let svc = CircuitBreaker::with_classifier(backend(), config.build().unwrap(), Classes);
    let handle = svc.handle();
    (svc, handle)
}

async fn call(svc: &mut Svc, c: Call) -> Result<&'static str, BoxError> {
    svc.ready().await?.call(c).await
}

/// The rejection, if the breaker rejected the call.
async fn rejection(svc: &mut Svc, c: Call) -> Option<CircuitOpen> {
    call(svc, c)
        .await
        .err()
        .and_then(|e| e.downcast_ref::<CircuitOpen>().copied())
}

async fn admitted(svc: &mut Svc, c: Call) -> bool {
    rejection(svc, c).await.is_none()
}

/// Resilience4j's `assertCircuitBreakerMetricsEqualTo(failureRate, successful, buffered, failed, _)`,
/// with `None` for its −1.
fn assert_window(m: &BreakerMetrics, rate: Option<f64>, ok: u32, calls: u32, failed: u32) {
    assert_eq!(m.failure_rate(), rate, "failure rate in {m:?}");
    assert_eq!(
        (m.window_successes, m.window_calls, m.window_failures),
        (ok, calls, failed),
        "{m:?}"
    );
}

/// Trips a fresh breaker with five failures.
async fn tripped(config: BreakerConfigBuilder) -> (Svc, BreakerHandle) {
    let (mut svc, handle) = breaker(config);
    for _ in 0..5 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), BreakerState::Open);
    (svc, handle)
}

/// Trips the breaker and waits out the open state: the next call is the first probe.
async fn half_open(config: BreakerConfigBuilder) -> (Svc, BreakerHandle) {
    let (svc, handle) = tripped(config).await;
    advance(Duration::from_secs(5)).await;
    (svc, handle)
}

/// R4j `shouldOpenAfterFailureRateThresholdExceeded`: the rate is "not yet" (−1, here `None`) until the
/// window holds `minimum_calls`; 3 failures in 5 open it; the next call is not permitted.
#[tokio::test(start_paused = true)]
async fn r4j_should_open_after_failure_rate_threshold_exceeded() {
    let (mut svc, handle) = breaker(r4j());
    assert_window(&handle.metrics(), None, 0, 0, 0);
    for n in 1..=3 {
        let _ = call(&mut svc, Call::Fail).await;
        assert_eq!(handle.state(), BreakerState::Closed);
        assert_window(&handle.metrics(), None, 0, n, n);
    }
    call(&mut svc, Call::Ok).await.unwrap();
    assert_window(&handle.metrics(), None, 1, 4, 3);
    assert_eq!(handle.metrics().minimum_calls, 5);
    assert_eq!(handle.config().effective_minimum_calls(), 5);
    assert_eq!(handle.config().failure_rate(), 0.5);
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.state(), BreakerState::Open);
    assert_window(&handle.metrics(), Some(0.6), 2, 5, 3);
    assert_eq!(handle.metrics().rejected_open, 0);
    assert!(rejection(&mut svc, Call::Ok).await.is_some());
    let m = handle.metrics();
    assert_eq!((m.rejected_open, m.rejections), (1, 1), "{m:?}");
    assert_window(&m, Some(0.6), 2, 5, 3);
}

/// R4j `shouldOpenAfterSlowCallRateThresholdExceeded`: slow successes and slow failures count towards
/// the slow-call rate; 3 slow calls in 5 open the breaker while the failure rate (2 in 5) is under.
#[tokio::test(start_paused = true)]
async fn r4j_should_open_after_slow_call_rate_threshold_exceeded() {
    let (mut svc, handle) = breaker(r4j());
    for c in [Call::SlowFail, Call::SlowOk, Call::Fail, Call::Ok] {
        let _ = call(&mut svc, c).await;
        assert_eq!(handle.state(), BreakerState::Closed);
    }
    call(&mut svc, Call::SlowOk).await.unwrap();
    assert_eq!(handle.state(), BreakerState::Open);
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_slow_calls), (5, 3));
    assert_eq!(m.slow_call_rate(), Some(0.6));
    assert_eq!(m.failure_rate(), Some(0.4));
}

/// R4j `shouldTransitionToHalfOpenAfterWaitDuration`: rejected 3 s into the 5 s wait, a probe at 6 s,
/// and the half-open window starts empty.
#[tokio::test(start_paused = true)]
async fn r4j_should_transition_to_half_open_after_wait_duration() {
    let (mut svc, handle) = tripped(r4j()).await;
    assert!(!admitted(&mut svc, Call::Ok).await);
    advance(Duration::from_secs(3)).await;
    assert!(!admitted(&mut svc, Call::Ok).await);
    assert_eq!(handle.metrics().rejected_open, 2);
    advance(Duration::from_secs(3)).await;
    let probe = svc.ready().await.unwrap().call(Call::Hang);
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    assert_window(&handle.metrics(), None, 0, 0, 0);
    drop(probe);
}

/// R4j `shouldTransitionToHalfOpenAfterWaitInterval`: a growing wait (here ×1.5): after a failed trial
/// the breaker waits 7.5 s, so it still rejects 6 s later and probes at 11 s.
#[tokio::test(start_paused = true)]
async fn r4j_should_transition_to_half_open_after_wait_interval() {
    let (mut svc, handle) = half_open(r4j().wait_multiplier(1.5)).await;
    for _ in 0..4 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), BreakerState::Open);
    assert_eq!(
        handle.metrics().retry_after,
        Some(Duration::from_millis(7_500))
    );
    advance(Duration::from_secs(6)).await;
    assert!(!admitted(&mut svc, Call::Ok).await);
    advance(Duration::from_secs(5)).await;
    assert!(admitted(&mut svc, Call::Ok).await);
    assert_eq!(handle.state(), BreakerState::HalfOpen);
}

/// R4j `shouldOnlyPermitFourCallsInHalfOpenState`, `shouldThrowCallNotPermittedExceptionWhenNotFurther
/// TestCallsArePermitted` and `shouldIncreaseCounterOnReleasePermission`: four probes, the fifth call is
/// not permitted (counted as a half-open rejection), and a probe given back (cancelled) frees a slot.
#[tokio::test(start_paused = true)]
async fn r4j_should_only_permit_four_calls_in_half_open_state() {
    let (mut svc, handle) = half_open(r4j()).await;
    let mut probes: Vec<_> = (0..4)
        .map(|_| {
            futures_util::FutureExt::now_or_never(svc.ready())
                .expect("ready at once")
                .unwrap()
                .call(Call::Hang)
        })
        .collect();
    let open = rejection(&mut svc, Call::Ok).await.expect("a fifth call");
    assert_eq!(
        open.retry_after(),
        Some(Duration::ZERO),
        "the decision may come any moment"
    );
    assert!(rejection(&mut svc, Call::Ok).await.is_some());
    let m = handle.metrics();
    assert_eq!((m.rejected_half_open, m.rejected_open), (2, 0), "{m:?}");
    probes.pop(); // cancelled: its permit goes back
    let again = svc.ready().await.unwrap().call(Call::Hang);
    assert!(rejection(&mut svc, Call::Ok).await.is_some(), "four again");
    drop((probes, again));
}

/// R4j `shouldTransitionBackToOpenStateWhenFailureRateIsAboveThreshold`: 3 failed probes in 4.
#[tokio::test(start_paused = true)]
async fn r4j_should_transition_back_to_open_state_when_failure_rate_is_above_threshold() {
    let (mut svc, handle) = half_open(r4j()).await;
    for c in [Call::Fail, Call::Fail, Call::Ok] {
        let _ = call(&mut svc, c).await;
        assert_eq!(handle.state(), BreakerState::HalfOpen);
    }
    assert_window(&handle.metrics(), None, 1, 3, 2);
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), BreakerState::Open);
}

/// R4j `shouldTransitionBackToOpenStateWhenSlowCallRateIsAboveThreshold`: 3 slow probes in 4, no failure.
#[tokio::test(start_paused = true)]
async fn r4j_should_transition_back_to_open_state_when_slow_call_rate_is_above_threshold() {
    let (mut svc, handle) = half_open(r4j()).await;
    for c in [Call::SlowOk, Call::SlowOk, Call::SlowOk, Call::Ok] {
        call(&mut svc, c).await.unwrap();
    }
    assert_eq!(handle.state(), BreakerState::Open);
}

/// R4j `shouldTransitionBackToClosedStateWhenFailureIsBelowThreshold`: 1 failed probe in 4 closes, with
/// an empty window.
#[tokio::test(start_paused = true)]
async fn r4j_should_transition_back_to_closed_state_when_failure_is_below_threshold() {
    let (mut svc, handle) = half_open(r4j()).await;
    for c in [Call::Fail, Call::Ok, Call::Ok, Call::Ok] {
        let _ = call(&mut svc, c).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    assert_window(&handle.metrics(), None, 0, 0, 0);
    call(&mut svc, Call::Ok).await.unwrap();
    assert_window(&handle.metrics(), None, 1, 1, 0);
}

/// R4j `shouldReleasePermissionWhenExceptionIgnored` and `shouldIgnoreExceptionsAndThenTransitionToClosed`:
/// an ignored error in half-open is not a probe and gives its permit back.
#[tokio::test(start_paused = true)]
async fn r4j_should_release_permission_when_exception_ignored() {
    let (mut svc, handle) = half_open(r4j()).await;
    for _ in 0..4 {
        let _ = call(&mut svc, Call::Ignored).await;
        assert_eq!(handle.state(), BreakerState::HalfOpen);
    }
    assert_window(&handle.metrics(), None, 0, 0, 0);
    for n in 1..=3 {
        call(&mut svc, Call::Ok).await.unwrap();
        assert_window(&handle.metrics(), None, n, n, 0);
    }
    let _ = call(&mut svc, Call::Ignored).await;
    assert_window(&handle.metrics(), None, 3, 3, 0);
    let _ = call(&mut svc, Call::Fail).await;
    assert_eq!(
        handle.state(),
        BreakerState::Closed,
        "1 failure in 4 probes"
    );
    assert_eq!(handle.metrics().ignored, 5);
}

/// R4j `shouldForceOpenCircuitBreaker`: forced open rejects past the wait and stays forced open.
#[tokio::test(start_paused = true)]
async fn r4j_should_force_open_circuit_breaker() {
    let (mut svc, handle) = breaker(r4j());
    handle.force_open();
    let open = rejection(&mut svc, Call::Ok).await.expect("rejected");
    assert!(open.is_forced() && open.retry_after().is_none());
    advance(Duration::from_secs(6)).await;
    assert!(rejection(&mut svc, Call::Ok).await.is_some());
    assert_eq!(handle.state(), BreakerState::ForcedOpen);
    let m = handle.metrics();
    assert_eq!((m.rejected_forced_open, m.rejections), (2, 2));
}

/// R4j `shouldDisableCircuitBreaker`: every call flows and nothing is recorded.
#[tokio::test(start_paused = true)]
async fn r4j_should_disable_circuit_breaker() {
    let (mut svc, handle) = breaker(r4j());
    handle.disable();
    for _ in 0..6 {
        assert!(admitted(&mut svc, Call::Fail).await);
    }
    assert_eq!(handle.state(), BreakerState::Disabled);
    assert_window(&handle.metrics(), None, 0, 0, 0);
}

/// R4j `shouldResetMetricsAfterMetricsOnlyStateTransition` and `shouldRecordMetricsInMetricsOnlyState`:
/// the window starts empty, records every call, reaches 60 % failures and never opens.
#[tokio::test(start_paused = true)]
async fn r4j_should_record_metrics_in_metrics_only_state() {
    let (mut svc, handle) = breaker(r4j());
    call(&mut svc, Call::Ok).await.unwrap();
    call(&mut svc, Call::Ok).await.unwrap();
    assert_eq!(handle.metrics().window_successes, 2);
    handle.metrics_only();
    assert_eq!(handle.state(), BreakerState::MetricsOnly);
    assert_window(&handle.metrics(), None, 0, 0, 0);
    let transitions = handle.metrics().transitions;
    for (n, c) in [Call::Fail, Call::Fail, Call::Fail, Call::Ok]
        .into_iter()
        .enumerate()
    {
        assert!(admitted(&mut svc, c).await);
        assert_eq!(handle.metrics().window_calls, n as u32 + 1);
    }
    call(&mut svc, Call::Ok).await.unwrap();
    assert_window(&handle.metrics(), Some(0.6), 2, 5, 3);
    assert!(admitted(&mut svc, Call::Fail).await);
    assert_eq!(handle.state(), BreakerState::MetricsOnly);
    assert_eq!(handle.metrics().transitions, transitions, "no transition");
    // Many successes, counted without the lock, still land in the window.
    for _ in 0..10 {
        call(&mut svc, Call::Ok).await.unwrap();
    }
    assert_window(&handle.metrics(), Some(0.0), 5, 5, 0);
}

/// R4j `maxWaitDurationInHalfOpenState`: a probe that never finishes does not keep the breaker
/// half-open; once the limit is up the breaker opens again (the next call sees it), with a fresh wait.
#[tokio::test(start_paused = true)]
async fn r4j_max_wait_duration_in_half_open_state() {
    let config = r4j()
        .half_open_calls(1)
        .max_wait_in_half_open(Duration::from_secs(10));
    let (mut svc, handle) = half_open(config).await;
    let hung = svc.ready().await.unwrap().call(Call::Hang);
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    advance(Duration::from_millis(9_999)).await;
    for _ in 0..3 {
        let open = rejection(&mut svc, Call::Ok)
            .await
            .expect("probes still out");
        assert_eq!(open.retry_after(), Some(Duration::ZERO));
    }
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    advance(Duration::from_millis(1)).await;
    let open = rejection(&mut svc, Call::Ok).await.expect("open again");
    assert_eq!(
        open.retry_after(),
        Some(Duration::from_secs(5)),
        "a new wait"
    );
    assert_eq!(handle.state(), BreakerState::Open);
    drop(hung);
    advance(Duration::from_secs(5)).await;
    assert!(admitted(&mut svc, Call::Ok).await, "and probes after it");

    // Without the limit, the same hung probes hold it half-open.
    let (mut svc, handle) = half_open(r4j().half_open_calls(1)).await;
    let hung = svc.ready().await.unwrap().call(Call::Hang);
    advance(Duration::from_secs(3_600)).await;
    assert!(rejection(&mut svc, Call::Ok).await.is_some());
    assert_eq!(handle.state(), BreakerState::HalfOpen);
    drop(hung);
}

/// A probe that finishes after the half-open limit, before any call saw it, does not decide: the
/// probes were too late, and the breaker opens.
#[tokio::test(start_paused = true)]
async fn a_probe_after_the_half_open_limit_opens() {
    let (mut svc, handle) = half_open(
        r4j()
            .half_open_calls(1)
            .max_wait_in_half_open(Duration::from_secs(4)),
    )
    .await;
    let slow = call(&mut svc, Call::SlowOk).await; // 5 s
    assert_eq!(slow.unwrap(), "slow");
    assert_eq!(handle.state(), BreakerState::Open);
}

/// Lets the timer task spawned at a transition run.
async fn run_timers() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

/// R4j `automaticTransitionFromOpenToHalfOpenEnabled`: the state follows the clock without calls
/// (open → half-open at the end of the wait, half-open → open at the end of its limit). Without it,
/// the state changes on the next call.
#[tokio::test(start_paused = true)]
async fn r4j_automatic_transition_from_open_to_half_open() {
    let config = r4j()
        .automatic_transition(true)
        .max_wait_in_half_open(Duration::from_secs(2));
    let (_svc, handle) = tripped(config).await;
    advance(Duration::from_millis(4_999)).await;
    run_timers().await;
    assert_eq!(handle.state(), BreakerState::Open);
    advance(Duration::from_millis(1)).await;
    run_timers().await;
    assert_eq!(handle.state(), BreakerState::HalfOpen, "no call needed");
    advance(Duration::from_secs(2)).await;
    run_timers().await;
    assert_eq!(handle.state(), BreakerState::Open, "probes timed out");
    advance(Duration::from_secs(5)).await;
    run_timers().await;
    assert_eq!(handle.state(), BreakerState::HalfOpen);

    let (_svc, handle) = tripped(r4j()).await;
    advance(Duration::from_secs(60)).await;
    run_timers().await;
    assert_eq!(handle.state(), BreakerState::Open, "off by default");
}

/// A timer holds the breaker weakly: dropping every clone of a breaker whose timer is pending is fine,
/// and the timer then does nothing.
#[tokio::test(start_paused = true)]
async fn a_pending_timer_does_not_keep_the_breaker() {
    let (svc, handle) = tripped(r4j().automatic_transition(true)).await;
    drop((svc, handle));
    advance(Duration::from_secs(5)).await;
    run_timers().await;
}

/// R4j `recordExceptions` (an exception that matches neither list is a success): an error the
/// classifier counts as a success lowers the failure rate as a response does.
#[tokio::test(start_paused = true)]
async fn r4j_an_unrecorded_exception_counts_as_a_success() {
    let (mut svc, handle) = breaker(r4j());
    for c in [
        Call::Fail,
        Call::Fail,
        Call::Benign,
        Call::Benign,
        Call::Benign,
    ] {
        let _ = call(&mut svc, c).await;
    }
    assert_eq!(handle.state(), BreakerState::Closed);
    let m = handle.metrics();
    assert_window(&m, Some(0.4), 3, 5, 2);
    assert_eq!((m.successes, m.counted_as_success, m.ignored), (3, 3, 0));
    // The same calls with the errors ignored instead: 2 failures in 2 calls, too few to judge.
    let (mut svc, handle) = breaker(r4j());
    for c in [
        Call::Fail,
        Call::Fail,
        Call::Ignored,
        Call::Ignored,
        Call::Ignored,
    ] {
        let _ = call(&mut svc, c).await;
    }
    assert_window(&handle.metrics(), None, 0, 2, 2);
}

/// The end of the open wait: this breaker admits a probe at exactly `until` (Polly's `>=`;
/// Resilience4j admits only strictly after). A caller that sleeps `retry_after` is let through.
#[tokio::test(start_paused = true)]
async fn polly_half_open_at_exactly_the_end_of_the_break() {
    let (mut svc, handle) = tripped(r4j()).await;
    let opened = Instant::now();
    advance(Duration::from_secs(5) - Duration::from_nanos(1)).await;
    let open = rejection(&mut svc, Call::Ok).await.expect("1 ns early");
    assert_eq!(open.retry_after(), Some(Duration::from_nanos(1)));
    advance(open.retry_after().unwrap()).await;
    assert_eq!(Instant::now() - opened, Duration::from_secs(5));
    assert!(admitted(&mut svc, Call::Ok).await, "at exactly the end");
    assert_eq!(handle.state(), BreakerState::HalfOpen);
}

/// Polly `Execute_HandledResult_OnFailureCalled` / `Execute_UnhandledResult_OnActionSuccess`: a response
/// the classifier fails is a failure, any other a success.
#[tokio::test(start_paused = true)]
async fn polly_handled_result_is_a_failure_and_unhandled_a_success() {
    let (mut svc, handle) = breaker(r4j());
    for c in [Call::BadResponse, Call::Ok, Call::BadResponse] {
        call(&mut svc, c).await.unwrap();
    }
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_failures), (3, 2));
}

/// Polly `Execute_HandledException_OnFailureCalled` / `Execute_UnhandledException_NoCalls`: a handled
/// exception is a failure; an unhandled one propagates and records nothing.
#[tokio::test(start_paused = true)]
async fn polly_handled_exception_is_a_failure_and_unhandled_records_nothing() {
    let (mut svc, handle) = breaker(r4j());
    assert_eq!(
        call(&mut svc, Call::Fail).await.unwrap_err().to_string(),
        "fail"
    );
    assert_eq!(
        call(&mut svc, Call::Ignored).await.unwrap_err().to_string(),
        "ignored"
    );
    let m = handle.metrics();
    assert_eq!((m.window_calls, m.window_failures, m.ignored), (1, 1, 1));
}

/// Polly `Ctor_ManualControl_EnsureAttached`: isolate rejects, close lets calls through again.
#[tokio::test(start_paused = true)]
async fn polly_manual_control() {
    let (mut svc, handle) = breaker(r4j());
    handle.force_open();
    assert!(rejection(&mut svc, Call::Ok).await.unwrap().is_forced());
    handle.reset();
    assert_eq!(call(&mut svc, Call::Ok).await.unwrap(), "ok");
}

/// A lone `wait_in_open` above the default 60 s cap builds, and is the wait.
#[tokio::test(start_paused = true)]
async fn a_lone_wait_in_open_above_sixty_seconds_builds() {
    let (mut svc, _handle) = tripped(
        r4j()
            .wait_in_open(Duration::from_secs(90))
            .wait_multiplier(2.0),
    )
    .await;
    advance(Duration::from_secs(89)).await;
    assert!(rejection(&mut svc, Call::Ok).await.is_some());
    advance(Duration::from_secs(1)).await;
    assert!(admitted(&mut svc, Call::Fail).await);
    // A failed trial: the doubled wait is capped at the lone wait itself.
    for _ in 0..3 {
        let _ = call(&mut svc, Call::Fail).await;
    }
    let open = rejection(&mut svc, Call::Ok).await.expect("open again");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(90)));
}
