//! The breaker's transitions, driven through tower-test mocks with tokio's clock paused.

use std::task::Poll;
use std::time::Duration;

use rampart_layers::breaker::{
    BreakerConfig, BreakerHandle, BreakerRegistry, BreakerState, CircuitBreaker, CircuitOpen,
    KeyedCircuitBreakerLayer, SlidingWindow,
};
use rampart_layers::classify::{Classification, ClassifyFn, classify_fn};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_test::mock;

type Mock = mock::Mock<&'static str, &'static str>;
type Handle = mock::Handle<&'static str, &'static str>;
type Classifier = ClassifyFn<fn(&BoxError) -> Classification>;
type Svc = CircuitBreaker<Mock, Classifier>;

fn classify(e: &BoxError) -> Classification {
    if e.to_string() == "permanent" {
        Classification::Permanent
    } else {
        Classification::Transient
    }
}

#[derive(Clone, Copy, Debug)]
enum Out {
    Ok,
    Fail,
    Permanent,
    SlowOk(Duration),
}

fn config() -> rampart_layers::breaker::BreakerConfigBuilder {
    BreakerConfig::builder()
        .name("test")
        .sliding_window(SlidingWindow::Count(10))
        .minimum_calls(4)
        .failure_rate(0.5)
        .wait_in_open(Duration::from_secs(10))
        .max_wait_in_open(Duration::from_secs(100))
        .half_open_calls(2)
        .slow_call_duration(Duration::from_secs(1))
        .slow_call_rate(0.5)
}

fn breaker(builder: rampart_layers::breaker::BreakerConfigBuilder) -> (Svc, Handle, BreakerHandle) {
    let (mock, handle) = mock::pair();
    let svc = CircuitBreaker::with_classifier(
        mock,
        builder.build().unwrap(),
        classify_fn(classify as fn(&BoxError) -> _),
    );
    let breaker = svc.handle();
    (svc, handle, breaker)
}

/// Sends one call; if the breaker lets it through, answers it with `out`.
async fn run(svc: &mut Svc, h: &mut Handle, out: Out) -> Result<&'static str, BoxError> {
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call("q"));
    if let Poll::Ready(r) = fut.poll() {
        return r; // rejected without reaching the mock
    }
    let (_, send) = h.next_request().await.expect("request reached the mock");
    match out {
        Out::Ok => send.send_response("ok"),
        Out::Fail => send.send_error("transient"),
        Out::Permanent => send.send_error("permanent"),
        Out::SlowOk(d) => {
            tokio::time::advance(d).await;
            send.send_response("ok")
        }
    }
    fut.await
}

fn rejection(r: Result<&'static str, BoxError>) -> CircuitOpen {
    *r.expect_err("rejected")
        .downcast_ref::<CircuitOpen>()
        .expect("a CircuitOpen error")
}

async fn open_it(svc: &mut Svc, h: &mut Handle) {
    for _ in 0..4 {
        run(svc, h, Out::Fail).await.unwrap_err();
    }
}

#[tokio::test(start_paused = true)]
async fn closed_opens_when_failure_rate_reaches_threshold() {
    let (mut svc, mut h, b) = breaker(config());
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    // 2 of 4 = 50 %: equal to the threshold opens.
    run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    assert_eq!(b.state(), BreakerState::Open);
    let m = b.metrics();
    assert_eq!((m.calls, m.failures, m.transitions), (4, 2, 1));
}

#[tokio::test(start_paused = true)]
async fn below_minimum_calls_never_opens() {
    let (mut svc, mut h, b) = breaker(config());
    for _ in 0..3 {
        run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    }
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "100 % failures but only 3 of 4 minimum calls"
    );
    run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_at_once_with_time_to_next_probe() {
    let (mut svc, mut h, b) = breaker(config());
    open_it(&mut svc, &mut h).await;
    tokio::time::advance(Duration::from_secs(3)).await;
    let open = rejection(run(&mut svc, &mut h, Out::Ok).await);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(7)));
    assert!(!open.is_forced());
    assert_eq!(b.metrics().rejections, 1);
    assert_eq!(b.metrics().retry_after, Some(Duration::from_secs(7)));
}

#[tokio::test(start_paused = true)]
async fn open_moves_to_half_open_after_the_wait() {
    let (mut svc, mut h, b) = breaker(config());
    open_it(&mut svc, &mut h).await;
    tokio::time::advance(Duration::from_secs(10) - Duration::from_nanos(1)).await;
    rejection(run(&mut svc, &mut h, Out::Ok).await);
    tokio::time::advance(Duration::from_nanos(1)).await;
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    assert_eq!(b.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_on_successful_probes() {
    let (mut svc, mut h, b) = breaker(config());
    open_it(&mut svc, &mut h).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    // The window starts empty: three failures are below the minimum again.
    for _ in 0..3 {
        run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_reopens_on_failed_probe_with_a_longer_wait() {
    let (mut svc, mut h, b) = breaker(config());
    open_it(&mut svc, &mut h).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    // 1 of 2 probes failed = 50 %: open again, now for 20 s.
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(
        rejection(run(&mut svc, &mut h, Out::Ok).await).retry_after(),
        Some(Duration::from_secs(20))
    );
    tokio::time::advance(Duration::from_secs(20)).await;
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    // Closing resets the growth: the next opening waits 10 s again.
    open_it(&mut svc, &mut h).await;
    assert_eq!(
        rejection(run(&mut svc, &mut h, Out::Ok).await).retry_after(),
        Some(Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn slow_successes_open_the_breaker() {
    let (mut svc, mut h, b) = breaker(config());
    run(&mut svc, &mut h, Out::SlowOk(Duration::from_secs(1)))
        .await
        .unwrap();
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    assert_eq!(
        b.metrics().window_slow_calls,
        0,
        "exactly the threshold is not slow"
    );
    run(&mut svc, &mut h, Out::SlowOk(Duration::from_millis(1001)))
        .await
        .unwrap();
    run(&mut svc, &mut h, Out::SlowOk(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(b.state(), BreakerState::Closed, "2 slow of 5");
    run(&mut svc, &mut h, Out::SlowOk(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(b.state(), BreakerState::Open, "3 slow of 6 = 50 %");
    assert_eq!(b.metrics().failures, 0);
    assert_eq!(b.metrics().slow_calls, 3);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_ignored() {
    let (mut svc, mut h, b) = breaker(config());
    for _ in 0..20 {
        run(&mut svc, &mut h, Out::Permanent).await.unwrap_err();
    }
    assert_eq!(b.state(), BreakerState::Closed);
    let m = b.metrics();
    assert_eq!((m.window_calls, m.ignored), (0, 20));
}

#[tokio::test(start_paused = true)]
async fn half_open_limits_concurrent_probes_and_frees_slots_of_cancelled_or_ignored_calls() {
    let (mut svc, mut h, b) = breaker(config());
    open_it(&mut svc, &mut h).await;
    tokio::time::advance(Duration::from_secs(10)).await;

    let mut a = svc.clone();
    let mut c = svc.clone();
    let first = a.ready().await.unwrap().call("q");
    let second = c.ready().await.unwrap().call("q");
    // Both probe slots taken: a third caller is rejected with "any moment now".
    assert_eq!(
        rejection(run(&mut svc, &mut h, Out::Ok).await).retry_after(),
        Some(Duration::ZERO)
    );

    drop(first); // cancelled: its slot comes back
    let _ = h.next_request().await; // the mock saw both probes
    let (_, send_second) = h.next_request().await.unwrap();
    send_second.send_error("permanent");
    second.await.unwrap_err(); // ignored: its slot comes back too, and it is no probe

    assert_eq!(b.state(), BreakerState::HalfOpen);
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn results_arriving_while_open_are_ignored() {
    let (mut svc, mut h, b) = breaker(config());
    let mut late = svc.clone();
    let late_call = late.ready().await.unwrap().call("q");
    let (_, late_send) = h.next_request().await.unwrap();
    open_it(&mut svc, &mut h).await;
    assert_eq!(b.state(), BreakerState::Open);
    late_send.send_response("ok");
    late_call.await.unwrap();
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    run(&mut svc, &mut h, Out::Ok).await.unwrap();
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen,
        "the late success was not counted as a probe"
    );
}

#[tokio::test(start_paused = true)]
async fn handle_forces_open_disables_and_resets() {
    let (mut svc, mut h, b) = breaker(config());
    b.force_open();
    let open = rejection(run(&mut svc, &mut h, Out::Ok).await);
    assert!(open.is_forced());
    assert_eq!(open.retry_after(), None);
    tokio::time::advance(Duration::from_secs(3600)).await;
    rejection(run(&mut svc, &mut h, Out::Ok).await);

    b.disable();
    for _ in 0..10 {
        run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    }
    assert_eq!(b.state(), BreakerState::Disabled);

    b.reset();
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.metrics().window_calls, 0);
    assert_eq!(b.metrics().transitions, 3);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_outcomes() {
    let (mut svc, mut h, b) =
        breaker(config().sliding_window(SlidingWindow::time(Duration::from_secs(10))));
    for _ in 0..3 {
        run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(b.metrics().window_calls, 0);
    run(&mut svc, &mut h, Out::Fail).await.unwrap_err();
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "the first three failures left the window"
    );
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_breaker() {
    let (svc, mut h, b) = breaker(config());
    for _ in 0..4 {
        let mut clone = svc.clone();
        run(&mut clone, &mut h, Out::Fail).await.unwrap_err();
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_independent_and_bounded() {
    let config = BreakerConfig::builder()
        .name("hosts")
        .minimum_calls(2)
        .build()
        .unwrap();
    let registry = BreakerRegistry::new(config, 2, Duration::from_secs(60)).unwrap();
    let layer = KeyedCircuitBreakerLayer::new(registry.clone(), |req: &(&'static str, bool)| req.0)
        .with_classifier(classify_fn(classify as fn(&BoxError) -> _));
    let mut svc = layer.layer(tower::service_fn(
        |(_, fail): (&'static str, bool)| async move {
            if fail {
                Err::<(), BoxError>("transient".into())
            } else {
                Ok(())
            }
        },
    ));

    for _ in 0..2 {
        svc.ready()
            .await
            .unwrap()
            .call(("a", true))
            .await
            .unwrap_err();
    }
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(("a", false))
        .await
        .unwrap_err();
    assert!(err.is::<CircuitOpen>());
    svc.ready().await.unwrap().call(("b", false)).await.unwrap();
    assert_eq!(registry.get(&"a").unwrap().state(), BreakerState::Open);
    assert_eq!(registry.get(&"b").unwrap().state(), BreakerState::Closed);
    assert_eq!(registry.get(&"a").unwrap().name(), "hosts/\"a\"");

    // A third key evicts the least recently used one ("a": "b" was used after it).
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.ready().await.unwrap().call(("b", false)).await.unwrap();
    svc.ready().await.unwrap().call(("c", false)).await.unwrap();
    assert_eq!(registry.len(), 2);
    assert!(registry.get(&"a").is_none());
    assert!(registry.get(&"b").is_some());
}
