//! The deadline and attempt-timeout layers against `tower-test` mocks with paused time, alone and stacked
//! as `deadline → retry → attempt timeout`.
#![cfg(feature = "deadline")]

use std::time::Duration;

use rampart_layers::deadline::{
    AttemptTimedOut, AttemptTimeoutLayer, DeadlineExceeded, DeadlineLayer, Deadlined, WithDeadline,
};
use tokio::time::{self, Instant};
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::BoxError;
use tower_test::mock;

type Req = WithDeadline<&'static str>;
type Handle = mock::Handle<Req, &'static str>;

/// The request that must have been sent by now (failing rather than waiting for one).
fn next<T, U>(handle: &mut mock::Handle<T, U>) -> (T, mock::SendResponse<U>) {
    match handle.poll_request() {
        std::task::Poll::Ready(Some(request)) => request,
        _ => panic!("expected a request, none was sent"),
    }
}

fn no_request<T, U>(handle: &mut mock::Handle<T, U>) {
    assert!(handle.poll_request().is_pending(), "no request expected");
}

#[tokio::test(start_paused = true)]
async fn sets_the_deadline_and_fires_exactly_then() {
    let (mut service, mut handle): (_, Handle) =
        mock::spawn_layer(DeadlineLayer::new(Duration::from_secs(5)));
    let start = Instant::now();
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(WithDeadline::new("hello")));

    let (req, _send) = next(&mut handle);
    assert_eq!(req.deadline(), Some(start + Duration::from_secs(5)));
    assert_eq!(req.remaining(), Some(Duration::from_secs(5)));

    time::advance(Duration::from_millis(4_999)).await;
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(1)).await;
    let err: BoxError = assert_ready_err!(fut.poll());
    let exceeded = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("DeadlineExceeded");
    assert_eq!(exceeded.deadline(), start + Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn keeps_an_earlier_deadline_and_replaces_a_later_one() {
    let (mut service, mut handle): (_, Handle) =
        mock::spawn_layer(DeadlineLayer::new(Duration::from_secs(5)));
    let start = Instant::now();

    assert_ready_ok!(service.poll_ready());
    let _early = service.call(WithDeadline::until("early", start + Duration::from_secs(1)));
    let (req, _send) = next(&mut handle);
    assert_eq!(req.deadline(), Some(start + Duration::from_secs(1)));

    assert_ready_ok!(service.poll_ready());
    let _late = service.call(WithDeadline::until("late", start + Duration::from_secs(60)));
    let (req, _send) = next(&mut handle);
    assert_eq!(req.deadline(), Some(start + Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_fails_without_calling() {
    let (mut service, mut handle): (_, Handle) =
        mock::spawn_layer(DeadlineLayer::new(Duration::from_secs(5)));
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(WithDeadline::until("late", Instant::now())));
    assert!(assert_ready_err!(fut.poll()).is::<DeadlineExceeded>());
    no_request(&mut handle);
}

#[tokio::test(start_paused = true)]
async fn responses_and_errors_before_the_deadline_pass_through() {
    let (mut service, mut handle): (_, Handle) =
        mock::spawn_layer(DeadlineLayer::new(Duration::from_secs(5)));
    assert_ready_ok!(service.poll_ready());
    let mut ok = task::spawn(service.call(WithDeadline::new("a")));
    next(&mut handle).1.send_response("fine");
    assert_eq!(assert_ready_ok!(ok.poll()), "fine");

    assert_ready_ok!(service.poll_ready());
    let mut err = task::spawn(service.call(WithDeadline::new("b")));
    next(&mut handle).1.send_error("inner");
    assert_eq!(assert_ready_err!(err.poll()).to_string(), "inner");

    handle.send_error("not ready");
    assert_eq!(
        assert_ready_err!(service.poll_ready()).to_string(),
        "not ready"
    );
}

#[tokio::test(start_paused = true)]
async fn from_request_enforces_only_a_carried_deadline() {
    let (mut service, mut handle): (_, Handle) = mock::spawn_layer(DeadlineLayer::from_request());
    let start = Instant::now();

    assert_ready_ok!(service.poll_ready());
    let mut open = task::spawn(service.call(WithDeadline::new("open")));
    let (req, send) = next(&mut handle);
    assert_eq!(req.deadline(), None);
    time::advance(Duration::from_secs(3_600)).await;
    assert_pending!(open.poll());
    send.send_response("late but fine");
    assert_ready_ok!(open.poll());

    assert_ready_ok!(service.poll_ready());
    let mut bounded = task::spawn(service.call(WithDeadline::until(
        "bounded",
        Instant::now() + Duration::from_secs(2),
    )));
    let _send = next(&mut handle);
    time::advance(Duration::from_secs(2)).await;
    assert!(assert_ready_err!(bounded.poll()).is::<DeadlineExceeded>());
    assert!(Instant::now() > start);
}

/// A request whose caller granted it a time of its own.
#[derive(Debug, Clone)]
struct Granted {
    deadline: Option<Instant>,
    granted: Duration,
}

impl Granted {
    fn new(granted: Duration) -> Self {
        Self {
            deadline: Some(Instant::now() + granted),
            granted,
        }
    }
}

impl Deadlined for Granted {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
    fn granted(&self) -> Option<Duration> {
        Some(self.granted)
    }
}

#[tokio::test(start_paused = true)]
async fn a_granted_deadline_wins_over_the_budget_later_or_earlier() {
    for granted in [Duration::from_secs(30), Duration::from_millis(500)] {
        let (mut service, mut handle) =
            mock::spawn_layer::<Granted, &str, _>(DeadlineLayer::new(Duration::from_secs(10)));
        assert_ready_ok!(service.poll_ready());
        let start = Instant::now();
        let mut fut = task::spawn(service.call(Granted::new(granted)));
        let (seen, _send) = next(&mut handle);
        assert_eq!(seen.deadline(), Some(start + granted), "the grant is kept");
        time::advance(granted - Duration::from_millis(1)).await;
        assert_pending!(fut.poll());
        time::advance(Duration::from_millis(1)).await;
        assert!(assert_ready_err!(fut.poll()).is::<DeadlineExceeded>());
    }
}

#[tokio::test(start_paused = true)]
async fn an_attempt_honouring_grants_may_use_the_whole_grant() {
    let layer = AttemptTimeoutLayer::new(Duration::from_millis(200)).honouring_grants();
    // A grant longer than the limit extends the attempt to it...
    let (mut service, mut handle) = mock::spawn_layer::<Granted, &str, _>(layer);
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Granted::new(Duration::from_secs(5))));
    let _send = next(&mut handle);
    time::advance(Duration::from_millis(4999)).await;
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(1)).await;
    let err = assert_ready_err!(fut.poll());
    assert_eq!(
        err.downcast_ref::<AttemptTimedOut>()
            .expect("AttemptTimedOut")
            .limit(),
        Duration::from_secs(5)
    );
    // ...and a shorter one leaves the limit as it is.
    let (mut service, mut handle) = mock::spawn_layer::<Granted, &str, _>(layer);
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call(Granted::new(Duration::from_millis(50))));
    let _send = next(&mut handle);
    time::advance(Duration::from_millis(199)).await;
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(1)).await;
    assert!(assert_ready_err!(fut.poll()).is::<AttemptTimedOut>());
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_fires_at_its_limit() {
    let (mut service, mut handle) =
        mock::spawn_layer::<&str, &str, _>(AttemptTimeoutLayer::new(Duration::from_millis(200)));
    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call("hello"));
    let _send = next(&mut handle);
    time::advance(Duration::from_millis(199)).await;
    assert_pending!(fut.poll());
    time::advance(Duration::from_millis(1)).await;
    let err = assert_ready_err!(fut.poll());
    assert_eq!(
        err.downcast_ref::<AttemptTimedOut>()
            .expect("AttemptTimedOut")
            .limit(),
        Duration::from_millis(200)
    );
    assert!(!err.is::<DeadlineExceeded>());

    assert_ready_ok!(service.poll_ready());
    let mut fut = task::spawn(service.call("again"));
    next(&mut handle).1.send_error("inner");
    assert_eq!(assert_ready_err!(fut.poll()).to_string(), "inner");
}

#[cfg(feature = "retry")]
mod stacked {
    use super::*;
    use rampart_layers::classify::Idempotent;
    use rampart_layers::retry::{GaveUp, RetryError, RetryLayer, RetryPolicy};
    use tower::{Layer, ServiceBuilder};

    type Req = WithDeadline<Idempotent<&'static str>>;

    /// `deadline (5 s) → retry (3 attempts, 0.5 s doubling) → attempt timeout (attempt_limit)`.
    fn stack(
        attempt_limit: Duration,
    ) -> (
        mock::Spawn<impl tower::Service<Req, Response = &'static str, Error = BoxError>>,
        mock::Handle<Req, &'static str>,
    ) {
        let layers = ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_secs(5)))
            .layer(RetryLayer::new(
                RetryPolicy::three_attempts_half_second_doubling(),
            ))
            .layer(AttemptTimeoutLayer::new(attempt_limit))
            .into_inner();
        let (inner, handle) = mock::pair();
        (mock::Spawn::new(layers.layer(inner)), handle)
    }

    #[tokio::test(start_paused = true)]
    async fn attempt_timeouts_are_retried_until_the_deadline_would_pass() {
        let (mut service, mut handle) = stack(Duration::from_secs(2));
        let start = Instant::now();
        assert_ready_ok!(service.poll_ready());
        let mut fut = task::spawn(service.call(WithDeadline::new(Idempotent("SELECT 1"))));

        // Attempt 1 runs 0–2 s and times out; the wait is 0.5 s; attempt 2 runs 2.5–4.5 s and times out.
        let (first, _a) = next(&mut handle);
        assert_eq!(first.deadline(), Some(start + Duration::from_secs(5)));
        time::advance(Duration::from_secs(2)).await;
        assert_pending!(fut.poll());
        no_request(&mut handle);
        time::advance(Duration::from_millis(500)).await;
        assert_pending!(fut.poll());
        let (second, _b) = next(&mut handle);
        assert_eq!(second.remaining(), Some(Duration::from_millis(2_500)));
        time::advance(Duration::from_secs(2)).await;

        // The next wait (1 s) would end at 5.5 s: give up at 4.5 s with the attempt timeout as the cause.
        let err = assert_ready_err!(fut.poll());
        assert_eq!(Instant::now() - start, Duration::from_millis(4_500));
        let err = err.downcast_ref::<RetryError>().expect("RetryError");
        assert_eq!((err.attempts(), err.reason()), (2, GaveUp::Deadline));
        assert!(err.cause().is::<AttemptTimedOut>());
        no_request(&mut handle);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_a_long_attempt_short_and_nothing_follows() {
        let (mut service, mut handle) = stack(Duration::from_secs(60));
        assert_ready_ok!(service.poll_ready());
        let mut fut =
            task::spawn(service.call(WithDeadline::new(Idempotent("SELECT pg_sleep(100)"))));
        let (_req, _send) = next(&mut handle);
        time::advance(Duration::from_millis(4_999)).await;
        assert_pending!(fut.poll());
        time::advance(Duration::from_millis(1)).await;
        assert!(assert_ready_err!(fut.poll()).is::<DeadlineExceeded>());
        drop(fut);
        time::advance(Duration::from_secs(60)).await;
        no_request(&mut handle);
    }

    #[tokio::test(start_paused = true)]
    async fn success_after_a_timed_out_attempt() {
        let (mut service, mut handle) = stack(Duration::from_secs(1));
        assert_ready_ok!(service.poll_ready());
        let mut fut = task::spawn(service.call(WithDeadline::new(Idempotent("SELECT 1"))));
        let _first = next(&mut handle);
        time::advance(Duration::from_secs(1)).await;
        assert_pending!(fut.poll());
        time::advance(Duration::from_millis(500)).await;
        assert_pending!(fut.poll());
        next(&mut handle).1.send_response("1");
        assert_eq!(assert_ready_ok!(fut.poll()), "1");
    }
}
