//! tower's `tests/retry/main.rs` and backoff tests, and Polly v8's `RetryHelperTests`, replayed against
//! the retry layer and the schedules, with tokio's clock paused.

use std::time::Duration;

use rampart_layers::backoff::{
    Backoff, Constant, Exponential, Fibonacci, Jitter, Linear, MAX_DELAY,
};
use rampart_layers::classify::{Classification, Classify, Idempotence};
use rampart_layers::deadline::{Deadlined, WithDeadline};
use rampart_layers::retry::{GaveUp, NotReplayable, Replay, RetryLayer, RetryPolicy};
use rampart_layers::rng::Rng;
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower_test::mock;

/// Errors starting with "retry" are transient, others permanent: tower's `UnlessErr("reject")`.
#[derive(Debug, Clone, Copy)]
struct RetryUnlessReject;

impl<Res> Classify<Res, tower::BoxError> for RetryUnlessReject {
    fn classify_error(&self, e: &tower::BoxError) -> Classification {
        if e.to_string().starts_with("retry") {
            Classification::Transient
        } else {
            Classification::Permanent
        }
    }
}

fn policy(attempts: u32) -> RetryPolicy<RetryUnlessReject, Constant> {
    RetryPolicy::builder()
        .max_attempts(attempts)
        .classifier(RetryUnlessReject)
        .schedule(Constant::new(Duration::ZERO))
        .build()
        .unwrap()
}

type Req = WithDeadline<&'static str>;
type RetrySvc<R> =
    rampart_layers::retry::Retry<mock::Mock<R, &'static str>, RetryUnlessReject, Constant>;

fn service<R: Replay + Idempotence + Deadlined + Send + 'static>(
    attempts: u32,
) -> (mock::Spawn<RetrySvc<R>>, mock::Handle<R, &'static str>) {
    mock::spawn_layer(RetryLayer::new(policy(attempts)))
}

/// The next request the mock received (failing if there is none yet).
fn next<R>(h: &mut mock::Handle<R, &'static str>) -> (R, mock::SendResponse<&'static str>) {
    match h.poll_request() {
        std::task::Poll::Ready(Some(pair)) => pair,
        _ => panic!("expected a request"),
    }
}

/// tower `retry_errors`: an error is retried, and the retry's response returned.
#[tokio::test(start_paused = true)]
async fn tower_retry_errors() {
    let (mut svc, mut h) = service::<Req>(5);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(WithDeadline::new("hello")));
    let (req, send) = next(&mut h);
    assert_eq!(*req.get_ref(), "hello");
    send.send_error("retry me");
    assert_pending!(fut.poll());
    next(&mut h).1.send_response("world");
    assert_eq!(fut.await.unwrap(), "world");
}

/// tower `retry_limit`: after the last attempt, its error comes back.
#[tokio::test(start_paused = true)]
async fn tower_retry_limit() {
    let (mut svc, mut h) = service::<Req>(3);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(WithDeadline::new("hello")));
    for n in 1..=2 {
        next(&mut h).1.send_error(format!("retry {n}"));
        assert_pending!(fut.poll());
    }
    next(&mut h).1.send_error("retry 3");
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(err.cause().to_string(), "retry 3");
    assert_eq!(
        (err.attempts(), err.reason()),
        (3, GaveUp::AttemptsExhausted)
    );
}

/// tower `retry_error_inspection`: the classifier stops at an error it does not retry.
#[tokio::test(start_paused = true)]
async fn tower_retry_error_inspection() {
    let (mut svc, mut h) = service::<Req>(5);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(WithDeadline::new("hello")));
    next(&mut h).1.send_error("retry 1");
    assert_pending!(fut.poll());
    next(&mut h).1.send_error("reject");
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(err.cause().to_string(), "reject");
    assert_eq!(err.reason(), GaveUp::Permanent);
}

/// tower `retry_cannot_clone_request`: a request that cannot be replayed gets one attempt; its
/// retryable error comes back, first and only, and nothing else is sent.
#[tokio::test(start_paused = true)]
async fn tower_retry_cannot_clone_request() {
    let (mut svc, mut h) = service::<NotReplayable<Req>>(5);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(NotReplayable(WithDeadline::new("hello"))));
    let (req, send) = next(&mut h);
    assert_eq!(*req.0.get_ref(), "hello");
    send.send_error("retry 1");
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!(err.cause().to_string(), "retry 1");
    assert_eq!((err.attempts(), err.reason()), (1, GaveUp::NotReplayable));
    assert!(h.poll_request().is_pending(), "no second attempt");
}

/// tower `success_with_cannot_clone`: a request that cannot be replayed still succeeds on its one
/// attempt.
#[tokio::test(start_paused = true)]
async fn tower_success_with_cannot_clone() {
    let (mut svc, mut h) = service::<NotReplayable<Req>>(5);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(NotReplayable(WithDeadline::new("hello"))));
    next(&mut h).1.send_response("world");
    assert_eq!(assert_ready_ok!(fut.poll()), "world");
}

/// A request of the user's own, not `Clone`, that can be replayed twice (tower's `clone_request`
/// returning `Some` and then `None`): three attempts, the last with the request itself.
#[derive(Debug)]
struct Body {
    copies_left: std::cell::Cell<u32>,
    attempt: u32,
    deadline: Option<Instant>,
}

impl Replay for Body {
    fn replay(&self) -> Option<Self> {
        let left = self.copies_left.get().checked_sub(1)?;
        self.copies_left.set(left);
        Some(Body {
            copies_left: std::cell::Cell::new(0),
            attempt: 2 - left,
            deadline: self.deadline,
        })
    }
}

impl Idempotence for Body {}

impl Deadlined for Body {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
}

/// (`Body` holds a `Cell`: it is not `Sync`, which the retry layer does not need.)
#[tokio::test(start_paused = true)]
async fn a_request_replayed_until_it_cannot_be() {
    let (mut svc, mut h) = service::<Body>(10);
    assert_ready_ok!(svc.poll_ready());
    let body = Body {
        copies_left: std::cell::Cell::new(2),
        attempt: 99,
        deadline: None,
    };
    let mut fut = task::spawn(svc.call(body));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (req, send) = next(&mut h);
        seen.push(req.attempt);
        send.send_error("retry");
        assert_pending!(fut.poll());
    }
    let (req, send) = next(&mut h);
    seen.push(req.attempt);
    send.send_error("retry");
    assert_eq!(seen, [1, 2, 99], "two replays, then the request itself");
    let err = assert_ready!(fut.poll()).unwrap_err();
    assert_eq!((err.attempts(), err.reason()), (3, GaveUp::NotReplayable));
}

/// A generator that returns `fraction` of each range: Polly's tests fix their randomizer the same way.
struct Fixed(f64);

impl Rng for Fixed {
    fn next_u64(&mut self) -> u64 {
        unreachable!("only ranges are drawn")
    }
    fn in_range(&mut self, low: u64, high: u64) -> u64 {
        low + ((high - low) as f64 * self.0).round() as u64
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Polly `Constant_Ok` (and `IsValidDelay_Ok` for zero): a zero delay is valid and stays zero.
#[test]
fn polly_constant_ok() {
    let mut zero = Constant::new(Duration::ZERO);
    let mut one = Constant::new(secs(1.0));
    for retry in 1..=3 {
        assert_eq!(
            zero.next_delay(retry, &mut Fixed(0.5)),
            Some(Duration::ZERO)
        );
        assert_eq!(one.next_delay(retry, &mut Fixed(0.5)), Some(secs(1.0)));
    }
}

/// Polly `Constant_Jitter_Ok`: Polly v8's jitter is ±25 % (`ApplyJitter`), here `proportional(0.25)`.
#[test]
fn polly_constant_jitter_ok() {
    let jittered = |d| {
        Constant::builder()
            .delay(d)
            .jitter(Jitter::proportional(0.25))
            .build()
            .unwrap()
    };
    assert_eq!(
        jittered(Duration::ZERO).next_delay(1, &mut Fixed(1.0)),
        Some(Duration::ZERO)
    );
    for (r, expected) in [(0.0, 0.75), (0.4, 0.95), (0.6, 1.05), (1.0, 1.25)] {
        assert_eq!(
            jittered(secs(1.0)).next_delay(1, &mut Fixed(r)),
            Some(secs(expected)),
            "randomizer {r}"
        );
    }
}

/// Polly `Linear_Ok`: attempts 0, 1, 2 (Polly counts from 0, this crate's retries from 1) wait 1, 2, 3 s.
/// A zero base is refused here (every delay would be zero; `Constant::new(ZERO)` says it plainly).
#[test]
fn polly_linear_ok() {
    let mut s = Linear::builder()
        .base_delay(secs(1.0))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let delays: Vec<_> = (1..=3)
        .map(|n| s.next_delay(n, &mut Fixed(0.0)).unwrap())
        .collect();
    assert_eq!(delays, [secs(1.0), secs(2.0), secs(3.0)]);
    let err = Linear::builder()
        .base_delay(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "base_delay");
}

/// Polly `Linear_Jitter_Ok`: Polly's attempt 2 (retry 3 here) is 3 s, jittered within ±25 %.
#[test]
fn polly_linear_jitter_ok() {
    for (r, expected) in [
        (0.0, 2.25),
        (0.4, 2.85),
        (0.5, 3.0),
        (0.6, 3.15),
        (1.0, 3.75),
    ] {
        let mut s = Linear::builder()
            .base_delay(secs(1.0))
            .jitter(Jitter::proportional(0.25))
            .build()
            .unwrap();
        assert_eq!(
            s.next_delay(3, &mut Fixed(r)),
            Some(secs(expected)),
            "randomizer {r}"
        );
    }
}

/// Polly `Exponential_Ok`: 1, 2, 4 s.
#[test]
fn polly_exponential_ok() {
    let mut s = Exponential::builder()
        .base_delay(secs(1.0))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let delays: Vec<_> = (1..=3)
        .map(|n| s.next_delay(n, &mut Fixed(0.0)).unwrap())
        .collect();
    assert_eq!(delays, [secs(1.0), secs(2.0), secs(4.0)]);
}

/// Polly `MaxDelay_Ok`: a 10 s base under a 1 s cap waits 1 s, for every schedule, with or without
/// jitter. The difference: Polly jitters the uncapped delay and then caps it; this crate caps, jitters
/// the capped delay and caps again, so a jittered delay may fall below the cap (0.75 s here).
#[test]
fn polly_max_delay_ok() {
    let schedules = |jitter: Jitter| -> Vec<Box<dyn Backoff>> {
        vec![
            Box::new(
                Exponential::builder()
                    .base_delay(secs(10.0))
                    .max_delay(secs(1.0))
                    .jitter(jitter)
                    .build()
                    .unwrap(),
            ),
            Box::new(
                Linear::builder()
                    .base_delay(secs(10.0))
                    .max_delay(secs(1.0))
                    .jitter(jitter)
                    .build()
                    .unwrap(),
            ),
            Box::new(
                Fibonacci::builder()
                    .base_delay(secs(10.0))
                    .max_delay(secs(1.0))
                    .jitter(jitter)
                    .build()
                    .unwrap(),
            ),
        ]
    };
    for mut s in schedules(Jitter::None) {
        assert_eq!(s.next_delay(3, &mut Fixed(0.5)), Some(secs(1.0)));
    }
    for mut s in schedules(Jitter::proportional(0.25)) {
        assert_eq!(s.next_delay(3, &mut Fixed(0.5)), Some(secs(1.0)));
    }
    for mut s in schedules(Jitter::proportional(0.25)) {
        assert_eq!(s.next_delay(3, &mut Fixed(0.0)), Some(secs(0.75)));
    }
}

/// Polly `MaxDelay_DelayLessThanMaxDelay_Respected`: a cap above the delay changes nothing.
#[test]
fn polly_max_delay_less_than_the_delay_is_respected() {
    let mut s = Linear::builder()
        .base_delay(secs(1.0))
        .max_delay(secs(2.0))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    assert_eq!(s.next_delay(1, &mut Fixed(0.0)), Some(secs(1.0)));
}

/// Polly `GetRetryDelay_Overflow_ReturnsMaxTimeSpan` and `..._OverflowWithMaxDelay_ReturnsMaxDelay`:
/// without a cap the delay saturates at the longest expressible one; with one, at the cap.
#[test]
fn polly_overflow_returns_the_longest_delay_or_the_cap() {
    let day = secs(86_400.0);
    let mut uncapped = Exponential::builder()
        .base_delay(day)
        .max_delay(Duration::MAX)
        .jitter(Jitter::None)
        .build()
        .unwrap();
    assert_eq!(uncapped.next_delay(1_000, &mut Fixed(0.0)), Some(MAX_DELAY));
    let mut capped = Exponential::builder()
        .base_delay(day)
        .max_delay(day * 2)
        .jitter(Jitter::None)
        .build()
        .unwrap();
    assert_eq!(capped.next_delay(1_000, &mut Fixed(0.0)), Some(day * 2));
}

/// Polly `GetRetryDelay_Exponential_Is_Positive_When_No_Maximum_Delay` and `..._Does_Not_Exceed_MaxDelay`,
/// over Polly's attempts: jittered exponential delays stay positive (decorrelated jitter never goes
/// below the base) and within the cap.
#[test]
fn polly_exponential_jitter_is_positive_and_capped() {
    let mut rng = rampart_layers::rng::SplitMix64::seeded(0);
    for attempt in [1u32, 2, 3, 4, 10, 100, 1_000, 1_024, 1_025] {
        let mut uncapped = Exponential::builder()
            .base_delay(secs(2.0))
            .max_delay(Duration::MAX)
            .jitter(Jitter::Decorrelated)
            .build()
            .unwrap();
        let mut capped = Exponential::builder()
            .base_delay(secs(2.0))
            .max_delay(secs(30.0))
            .jitter(Jitter::Decorrelated)
            .build()
            .unwrap();
        for _ in 0..2 {
            assert!(uncapped.next_delay(attempt + 1, &mut rng).unwrap() > Duration::ZERO);
            let d = capped.next_delay(attempt + 1, &mut rng).unwrap();
            assert!(d > Duration::ZERO && d <= secs(30.0), "{d:?}");
        }
    }
}

/// tower `backoff_base_first` / `backoff_base` / `backoff_jitter`: the first delay is the base, every
/// un-jittered delay is within `[base, max]`, and additive jitter adds something (at most up to the cap)
/// exactly when its factor, the base and the room under the cap are not zero.
#[test]
fn tower_exponential_backoff_and_additive_jitter() {
    let build = |base: f64, max: f64, jitter: Jitter| {
        Exponential::builder()
            .base_delay(secs(base))
            .max_delay(secs(max))
            .jitter(jitter)
            .build()
            .unwrap()
    };
    let s = build(0.05, 10.0, Jitter::None);
    assert_eq!(s.nominal_delay(1), secs(0.05));
    assert!((1..200).all(|n| (secs(0.05)..=secs(10.0)).contains(&s.nominal_delay(n))));
    let d = build(0.05, 10.0, Jitter::additive(0.99)).next_delay(1, &mut Fixed(0.5));
    assert!(d.unwrap() > secs(0.05) && d.unwrap() <= secs(0.05 * 1.99));
    let d = build(0.05, 10.0, Jitter::additive(0.0)).next_delay(1, &mut Fixed(0.5));
    assert_eq!(d, Some(secs(0.05)), "a zero factor adds nothing");
    let d = build(1.0, 1.0, Jitter::additive(0.99)).next_delay(1, &mut Fixed(1.0));
    assert_eq!(d, Some(secs(1.0)), "no room under the cap adds nothing");
    let err = Exponential::builder()
        .jitter(Jitter::additive(100.5))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "jitter", "tower refuses a factor above 100");
}

/// Polly's `DelayGenerator` overrides the delay where it answers and keeps the schedule's where it
/// returns nothing (Polly's `null`).
#[test]
fn polly_delay_generator() {
    let mut s = Constant::new(secs(1.0))
        .with_delay_generator(|retry, scheduled| (retry % 2 == 0).then(|| scheduled * 10));
    let delays: Vec<_> = (1..=4)
        .map(|n| s.next_delay(n, &mut Fixed(0.0)).unwrap())
        .collect();
    assert_eq!(delays, [secs(1.0), secs(10.0), secs(1.0), secs(10.0)]);
}

/// Polly's `DelayGenerator` sees the outcome: here a server's "retry after" hint in the error sets the
/// wait, and an error without one keeps the schedule's (Polly's `null`).
#[tokio::test(start_paused = true)]
async fn polly_delay_generator_sees_the_error() {
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .classifier(RetryUnlessReject)
        .schedule(Constant::new(Duration::from_millis(100)))
        .delay_generator(|event| {
            let hint = event.error()?.to_string();
            let secs = hint.strip_prefix("retry after ")?.parse().ok()?;
            assert_eq!(
                event.delay(),
                Duration::from_millis(100),
                "the schedule's choice"
            );
            Some(Duration::from_secs(secs))
        })
        .build()
        .unwrap();
    let (mut svc, mut h) = mock::spawn_layer::<Req, &'static str, _>(RetryLayer::new(policy));
    assert_ready_ok!(svc.poll_ready());
    let mut fut = task::spawn(svc.call(WithDeadline::new("hello")));
    next(&mut h).1.send_error("retry after 3");
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(2_999)).await;
    assert_pending!(fut.poll());
    assert!(
        h.poll_request().is_pending(),
        "still waiting the hinted 3 s"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_pending!(fut.poll());
    next(&mut h).1.send_error("retry");
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_pending!(fut.poll());
    next(&mut h).1.send_response("world");
    assert_eq!(assert_ready_ok!(fut.poll()), "world");
}
