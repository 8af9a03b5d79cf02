//! The retry layer against `tower-test` mocks, with paused time. Ports tower's own retry tests
//! (`tower/tests/retry/main.rs`) where they apply, and adds classification, schedules, budget and deadline.
#![cfg(feature = "retry")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_layers::classify::{Classification, Classify, Idempotence};
use rampart_layers::deadline::{DeadlineExceeded, Deadlined};
use rampart_layers::retry::backoff::{Backoff, Constant, Exponential, Jitter};
use rampart_layers::retry::{
    GaveUp, RetryBudget, RetryError, RetryLayer, RetryPolicy, RetryPolicyBuilder,
};
use rampart_layers::rng::{Rng, SplitMix64};
use tokio::time::{self, Instant};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower::BoxError;
use tower_test::mock;

#[derive(Debug, Clone, PartialEq)]
struct Req {
    body: &'static str,
    idempotent: bool,
    deadline: Option<Instant>,
}

impl Req {
    fn write(body: &'static str) -> Self {
        Self {
            body,
            idempotent: false,
            deadline: None,
        }
    }
    fn read(body: &'static str) -> Self {
        Self {
            body,
            idempotent: true,
            deadline: None,
        }
    }
    fn until(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }
}

impl Idempotence for Req {
    fn is_idempotent(&self) -> bool {
        self.idempotent
    }
}

impl Deadlined for Req {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
}

type Res = &'static str;
type Handle = mock::Handle<Req, Res>;

/// Errors say what they are by their prefix; a `503` response is a transient failure.
#[derive(Debug, Clone, Copy)]
struct ByPrefix;

impl Classify<Res, BoxError> for ByPrefix {
    fn classify_error(&self, error: &BoxError) -> Classification {
        let text = error.to_string();
        if text.starts_with("transient") {
            Classification::Transient
        } else if text.starts_with("ambiguous") {
            Classification::Ambiguous
        } else {
            Classification::Permanent
        }
    }
    fn classify_response(&self, response: &Res) -> Option<Classification> {
        (*response == "503").then_some(Classification::Transient)
    }
}

fn policy() -> RetryPolicyBuilder<ByPrefix, Constant> {
    RetryPolicy::builder()
        .classifier(ByPrefix)
        .schedule(Constant::new(Duration::from_millis(100)))
}

type Svc<B> = rampart_layers::retry::Retry<mock::Mock<Req, Res>, ByPrefix, B>;

fn new_service<B: Backoff + Clone>(
    policy: RetryPolicy<ByPrefix, B>,
) -> (mock::Spawn<Svc<B>>, Handle) {
    mock::spawn_layer(RetryLayer::new(policy))
}

/// Takes the request that must have been sent by now (failing rather than waiting for one), checks its
/// body, and returns the means to answer it.
async fn expect(handle: &mut Handle, body: &str) -> mock::SendResponse<Res> {
    let std::task::Poll::Ready(Some((req, send))) = handle.poll_request() else {
        panic!("expected a request for {body:?}, none was sent");
    };
    assert_eq!(req.body, body);
    send
}

fn no_request(handle: &mut Handle) {
    assert!(
        handle.poll_request().is_pending(),
        "no further attempt expected"
    );
}

fn retry_error(err: RetryError) -> (String, u32, GaveUp) {
    (err.cause().to_string(), err.attempts(), err.reason())
}

#[tokio::test(start_paused = true)]
async fn retry_errors() {
    let (mut service, mut handle) = new_service(policy().build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));

    expect(&mut handle, "hello")
        .await
        .send_error("transient: retry me");
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(fut.poll());

    expect(&mut handle, "hello").await.send_response("world");
    assert_eq!(fut.await.unwrap(), "world");
}

#[tokio::test(start_paused = true)]
async fn success_at_first_attempt_makes_no_other() {
    let (mut service, mut handle) = new_service(policy().build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    expect(&mut handle, "hello").await.send_response("world");
    assert_eq!(assert_ready_ok!(fut.poll()), "world");
    no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn retry_limit_reports_last_cause_and_attempts() {
    let (mut service, mut handle) = new_service(policy().max_attempts(3).build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));

    for n in 1..=2 {
        expect(&mut handle, "hello")
            .await
            .send_error(format!("transient {n}"));
        assert_pending!(fut.poll());
        time::advance(Duration::from_millis(100)).await;
        assert_pending!(fut.poll());
    }
    expect(&mut handle, "hello").await.send_error("transient 3");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(err.classification(), Some(Classification::Transient));
    assert_eq!(
        retry_error(err),
        ("transient 3".into(), 3, GaveUp::AttemptsExhausted)
    );
    no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn retry_error_inspection_stops_at_permanent() {
    let (mut service, mut handle) = new_service(policy().build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));

    expect(&mut handle, "hello").await.send_error("transient 1");
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(fut.poll());
    expect(&mut handle, "hello").await.send_error("reject");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(retry_error(err), ("reject".into(), 2, GaveUp::Permanent));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_returned_at_once() {
    let (mut service, mut handle) = new_service(policy().max_attempts(5).build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let start = Instant::now();
    let mut fut = task::spawn(service.call(Req::read("hello")));
    expect(&mut handle, "hello").await.send_error("bad input");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(Instant::now(), start, "no wait before a permanent error");
    assert_eq!(err.classification(), Some(Classification::Permanent));
    assert_eq!(retry_error(err), ("bad input".into(), 1, GaveUp::Permanent));
    no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn ambiguous_is_not_retried_unless_idempotent() {
    let (mut service, mut handle) = new_service(policy().build().unwrap());

    assert_ready_ok!(service.poll_ready());
    let mut write = task::spawn(service.call(Req::write("INSERT")));
    expect(&mut handle, "INSERT")
        .await
        .send_error("ambiguous: connection lost");
    let err = assert_ready_err!(write.poll());
    assert_eq!(err.classification(), Some(Classification::Ambiguous));
    assert_eq!(
        retry_error(err),
        (
            "ambiguous: connection lost".into(),
            1,
            GaveUp::NotIdempotent
        )
    );
    no_request(&mut handle);

    assert_ready_ok!(service.poll_ready());
    let mut read = task::spawn(service.call(Req::read("SELECT")));
    expect(&mut handle, "SELECT")
        .await
        .send_error("ambiguous: connection lost");
    assert_pending!(read.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(read.poll());
    expect(&mut handle, "SELECT").await.send_response("rows");
    assert_eq!(assert_ready_ok!(read.poll()), "rows");
}

#[tokio::test(start_paused = true)]
async fn delays_are_exact_under_paused_time() {
    let schedule = Exponential::builder()
        .base_delay(Duration::from_millis(500))
        .multiplier(2.0)
        .max_delay(Duration::from_secs(30))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let policy = RetryPolicy::builder()
        .classifier(ByPrefix)
        .schedule(schedule)
        .max_attempts(3)
        .build()
        .unwrap();
    let (mut service, mut handle) = new_service(policy);
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));

    for delay_ms in [500, 1_000] {
        expect(&mut handle, "hello").await.send_error("transient");
        assert_pending!(fut.poll());
        time::advance(Duration::from_millis(delay_ms - 1)).await;
        assert_pending!(fut.poll());
        no_request(&mut handle);
        time::advance(Duration::from_millis(1)).await;
        assert_pending!(fut.poll());
    }
    expect(&mut handle, "hello").await.send_response("world");
    assert_eq!(assert_ready_ok!(fut.poll()), "world");
}

#[tokio::test(start_paused = true)]
async fn preset_waits_half_a_second_then_one_and_stops_after_three() {
    let policy = RetryPolicy::three_attempts_half_second_doubling().with_classifier(ByPrefix);
    let (mut service, mut handle) = new_service(policy);
    assert_ready_ok!(service.poll_ready());
    let start = Instant::now();
    let mut fut = task::spawn(service.call(Req::write("hello")));
    let mut started_at = Vec::new();
    for _ in 0..3 {
        let send = loop {
            assert_pending!(fut.poll());
            if let std::task::Poll::Ready(Some((_, send))) = handle.poll_request() {
                break send;
            }
            time::advance(Duration::from_millis(1)).await;
        };
        started_at.push(Instant::now() - start);
        send.send_error("transient");
    }
    let err = assert_ready_err!(fut.poll());
    assert_eq!(started_at, [0, 500, 1_500].map(Duration::from_millis));
    assert_eq!(err.attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn on_retry_sees_each_retry() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let policy = policy()
        .on_retry(move |event| {
            record.lock().unwrap().push((
                event.attempt(),
                event.delay(),
                event.classification(),
                event.error().map(|e| e.to_string()),
            ))
        })
        .build()
        .unwrap();
    let (mut service, mut handle) = new_service(policy);
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::read("hello")));
    expect(&mut handle, "hello").await.send_error("transient 1");
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(fut.poll());
    expect(&mut handle, "hello").await.send_error("ambiguous 2");
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(fut.poll());
    expect(&mut handle, "hello").await.send_response("ok");
    assert_ready_ok!(fut.poll());

    let d = Duration::from_millis(100);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (
                1,
                d,
                Classification::Transient,
                Some("transient 1".to_owned())
            ),
            (
                2,
                d,
                Classification::Ambiguous,
                Some("ambiguous 2".to_owned())
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failed_responses_are_retried_and_returned_when_exhausted() {
    let (mut service, mut handle) = new_service(policy().max_attempts(2).build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    expect(&mut handle, "hello").await.send_response("503");
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(fut.poll());
    expect(&mut handle, "hello").await.send_response("503");
    assert_eq!(assert_ready_ok!(fut.poll()), "503");
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_is_repeatable() {
    let schedule = Exponential::builder()
        .base_delay(Duration::from_millis(100))
        .jitter(Jitter::Full)
        .build()
        .unwrap();
    // What the layer should do: one generator per request, seeded from the policy's generator.
    let mut expected_schedule = schedule.clone();
    let mut request_rng = SplitMix64::seeded(SplitMix64::seeded(42).next_u64());
    let expected: Vec<Duration> = (1..=3)
        .map(|n| expected_schedule.next_delay(n, &mut request_rng).unwrap())
        .collect();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let policy = RetryPolicy::builder()
        .classifier(ByPrefix)
        .schedule(schedule)
        .max_attempts(4)
        .rng(SplitMix64::seeded(42))
        .on_retry(move |event| record.lock().unwrap().push(event.delay()))
        .build()
        .unwrap();
    let (mut service, mut handle) = new_service(policy);
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    for delay in &expected {
        expect(&mut handle, "hello").await.send_error("transient");
        assert_pending!(fut.poll());
        // tokio's timer rounds a sleep up to the next millisecond.
        time::advance(Duration::from_millis(
            delay.as_nanos().div_ceil(1_000_000) as u64
        ))
        .await;
        assert_pending!(fut.poll());
    }
    expect(&mut handle, "hello").await.send_response("ok");
    assert_ready_ok!(fut.poll());
    assert_eq!(*seen.lock().unwrap(), expected);
}

#[tokio::test(start_paused = true)]
async fn budget_is_shared_and_exhausts() {
    // No floor; each request earns half a retry.
    let budget = RetryBudget::builder()
        .window(Duration::from_secs(1))
        .min_retries_per_second(0)
        .retry_ratio(0.5)
        .build()
        .unwrap();
    let (mut service, mut handle) =
        new_service(policy().max_attempts(5).budget(budget).build().unwrap());

    // The first request has earned half a retry: not enough.
    assert_ready_ok!(service.poll_ready());
    let mut first = task::spawn(service.call(Req::write("first")));
    expect(&mut handle, "first").await.send_error("transient");
    let err = assert_ready_err!(first.poll());
    assert_eq!(
        retry_error(err),
        ("transient".into(), 1, GaveUp::BudgetExhausted)
    );
    no_request(&mut handle);

    // A second request through a clone of the service brings the shared budget to one retry.
    let mut clone = mock::Spawn::new(service.get_ref().clone());
    assert_ready_ok!(clone.poll_ready());
    let mut second = task::spawn(clone.call(Req::write("second")));
    expect(&mut handle, "second").await.send_error("transient");
    assert_pending!(second.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(second.poll());
    expect(&mut handle, "second").await.send_error("transient");
    let err = assert_ready_err!(second.poll());
    assert_eq!(
        retry_error(err),
        ("transient".into(), 2, GaveUp::BudgetExhausted)
    );
}

#[tokio::test(start_paused = true)]
async fn gives_up_early_rather_than_sleep_into_the_deadline() {
    let (mut service, mut handle) = new_service(
        policy()
            .schedule(Constant::new(Duration::from_millis(600)))
            .max_attempts(5)
            .build()
            .unwrap(),
    );
    let start = Instant::now();
    assert_ready_ok!(service.poll_ready());
    let mut fut =
        task::spawn(service.call(Req::write("hello").until(start + Duration::from_secs(1))));

    expect(&mut handle, "hello").await.send_error("transient 1");
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(600)).await;
    assert_pending!(fut.poll());
    // 400 ms are left and the next wait is 600 ms: stop now, with the last cause.
    expect(&mut handle, "hello").await.send_error("transient 2");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(Instant::now() - start, Duration::from_millis(600));
    assert_eq!(
        retry_error(err),
        ("transient 2".into(), 2, GaveUp::Deadline)
    );
    no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_past_the_deadline() {
    let (mut service, mut handle) = new_service(policy().build().unwrap());
    let start = Instant::now();

    // Passed before the call: the inner service is never called.
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("late").until(start)));
    let err = assert_ready_err!(fut.poll());
    assert_eq!((err.attempts(), err.reason()), (0, GaveUp::Deadline));
    assert!(err.cause().is::<DeadlineExceeded>());
    no_request(&mut handle);

    // Passed while waiting for readiness after a backoff: no second attempt.
    assert_ready_ok!(service.poll_ready());
    let mut fut =
        task::spawn(service.call(Req::write("hello").until(start + Duration::from_millis(300))));
    expect(&mut handle, "hello").await.send_error("transient 1");
    handle.allow(0);
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(300)).await;
    handle.allow(1);
    let err = assert_ready_err!(fut.poll());
    assert_eq!(
        retry_error(err),
        ("transient 1".into(), 1, GaveUp::Deadline)
    );
    no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn max_elapsed_stops_retrying() {
    let (mut service, mut handle) = new_service(
        policy()
            .schedule(Constant::new(Duration::from_millis(400)))
            .max_attempts(10)
            .max_elapsed(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    for _ in 0..2 {
        expect(&mut handle, "hello").await.send_error("transient");
        assert_pending!(fut.poll());
        time::advance(Duration::from_millis(400)).await;
        assert_pending!(fut.poll());
    }
    // At 800 ms, another 400 ms wait would end past the 1 s limit.
    expect(&mut handle, "hello").await.send_error("transient");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(
        retry_error(err),
        ("transient".into(), 3, GaveUp::ElapsedLimit)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_backoff_makes_no_more_attempts() {
    let (mut service, mut handle) = new_service(policy().max_attempts(5).build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    expect(&mut handle, "hello").await.send_error("transient");
    assert_pending!(fut.poll());
    drop(fut);
    time::advance(Duration::from_secs(60)).await;
    no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_mid_attempt_cancels_it() {
    let (mut service, mut handle) = new_service(policy().build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    assert_pending!(fut.poll());
    let send = expect(&mut handle, "hello").await;
    drop(fut);
    send.send_error("transient");
    time::advance(Duration::from_secs(60)).await;
    no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_errors_are_propagated() {
    let (mut service, mut handle) = new_service(policy().build().unwrap());

    handle.send_error("not ready");
    let err = assert_ready_err!(service.poll_ready());
    assert_eq!(
        retry_error(err),
        ("not ready".into(), 0, GaveUp::ServiceNotReady)
    );

    // Between attempts too.
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    expect(&mut handle, "hello").await.send_error("transient");
    handle.send_error("broken");
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(100)).await;
    let err = assert_ready_err!(fut.poll());
    assert_eq!(err.classification(), None);
    assert_eq!(
        retry_error(err),
        ("broken".into(), 1, GaveUp::ServiceNotReady)
    );
}

#[tokio::test(start_paused = true)]
async fn waits_for_readiness_between_attempts() {
    let (mut service, mut handle) = new_service(policy().build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    expect(&mut handle, "hello").await.send_error("transient");
    handle.allow(0);
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(100)).await;
    assert_pending!(fut.poll());
    no_request(&mut handle);
    handle.allow(1);
    assert!(fut.is_woken(), "readiness wakes the retry");
    assert_pending!(fut.poll());
    expect(&mut handle, "hello").await.send_response("world");
    assert_eq!(assert_ready!(fut.poll()).unwrap(), "world");
}

#[tokio::test(start_paused = true)]
async fn errors_convert_to_box_error_and_back() {
    let (mut service, mut handle) = new_service(policy().max_attempts(1).build().unwrap());
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    expect(&mut handle, "hello").await.send_error("transient");
    let boxed: BoxError = assert_ready_err!(fut.poll()).into();
    let err = boxed.downcast_ref::<RetryError>().expect("a RetryError");
    assert_eq!(
        (err.attempts(), err.reason()),
        (1, GaveUp::AttemptsExhausted)
    );
    assert_eq!(
        boxed.to_string(),
        "gave up after 1 attempt (attempts exhausted): transient"
    );
}

#[cfg(feature = "backoff")]
#[tokio::test(start_paused = true)]
async fn backoff_crate_schedules_work() {
    use rampart_layers::retry::backoff::BackoffCompat;
    let schedule =
        BackoffCompat::from_fn(|| backoff::backoff::Constant::new(Duration::from_millis(250)));
    let policy = RetryPolicy::builder()
        .classifier(ByPrefix)
        .schedule(schedule)
        .build()
        .unwrap();
    let (mut service, mut handle) = new_service(policy);
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Req::write("hello")));
    expect(&mut handle, "hello").await.send_error("transient");
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(249)).await;
    assert_pending!(fut.poll());
    no_request(&mut handle);
    time::advance(Duration::from_millis(1)).await;
    assert_pending!(fut.poll());
    expect(&mut handle, "hello").await.send_response("world");
    assert_ready_ok!(fut.poll());
}
