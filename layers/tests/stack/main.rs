//! The whole generic stack, `retry → breaker → timeout → validate`, over a backend that fails, recovers
//! and fails again (by hanging), with tokio's clock paused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rampart_layers::breaker::{
    BreakerConfig, BreakerState, CircuitBreakerLayer, CircuitOpen, SlidingWindow,
};
use rampart_layers::classify::{Classification, Idempotent, TimeoutsAreTransient, classify_fn};
use rampart_layers::deadline::WithDeadline;
use rampart_layers::retry::backoff::{Exponential, Jitter};
use rampart_layers::retry::{GaveUp, RetryError, RetryLayer, RetryPolicy};
use rampart_layers::validate::{ValidationLayer, ValidationPolicy, validate_fn};
use tower::timeout::TimeoutLayer;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

const UP: u8 = 0;
const DOWN: u8 = 1;
const HANG: u8 = 2;

/// The database server: its mode, and how many queries reached it.
#[derive(Default)]
struct Server {
    mode: AtomicU8,
    queries: AtomicU32,
    connects: AtomicU32,
}

/// One connection to it, as a service. Once the server drops it, it stays broken.
#[derive(Clone)]
struct Conn {
    server: Arc<Server>,
    broken: Arc<AtomicBool>,
}

type Req = WithDeadline<Idempotent<&'static str>>;

impl Service<Req> for Conn {
    type Response = &'static str;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<&'static str, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Req) -> Self::Future {
        self.server.queries.fetch_add(1, Ordering::SeqCst);
        let mode = self.server.mode.load(Ordering::SeqCst);
        if mode == DOWN {
            self.broken.store(true, Ordering::SeqCst);
        }
        let broken = self.broken.load(Ordering::SeqCst);
        Box::pin(async move {
            if mode == HANG {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if broken {
                Err("connection reset".into())
            } else {
                Ok("row")
            }
        })
    }
}

/// One classifier for every layer: resets and timeouts are transient; a rejection by the breaker is not
/// worth retrying.
fn classify(e: &BoxError) -> Classification {
    if e.is::<CircuitOpen>() {
        Classification::Permanent
    } else if TimeoutsAreTransient::is_timeout(e.as_ref()) || e.to_string() == "connection reset" {
        Classification::Transient
    } else {
        Classification::Permanent
    }
}

#[tokio::test(start_paused = true)]
async fn retry_breaker_timeout_validate_through_an_outage_and_a_hang() {
    let server = Arc::new(Server::default());
    let classifier = classify_fn(classify as fn(&BoxError) -> Classification);

    let breaker = CircuitBreakerLayer::new(
        BreakerConfig::builder()
            .name("db")
            .sliding_window(SlidingWindow::Count(10))
            .minimum_calls(4)
            .wait_in_open(Duration::from_secs(5))
            .half_open_calls(2)
            .build()
            .unwrap(),
    )
    .with_classifier(classifier);
    let b = breaker.handle();

    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .schedule(
            Exponential::builder()
                .base_delay(Duration::from_millis(100))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
        )
        .classifier(classifier)
        .build()
        .unwrap();

    let connect = {
        let server = server.clone();
        service_fn(move |()| {
            server.connects.fetch_add(1, Ordering::SeqCst);
            let conn = Conn {
                server: server.clone(),
                broken: Arc::new(AtomicBool::new(false)),
            };
            async move { Ok::<_, BoxError>(conn) }
        })
    };
    let check = validate_fn(|c: &mut Conn| {
        let broken = c.broken.load(Ordering::SeqCst);
        async move {
            if broken {
                Err("connection reset")
            } else {
                Ok(())
            }
        }
    });
    let first = Conn {
        server: server.clone(),
        broken: Arc::new(AtomicBool::new(false)),
    };

    let mut db = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(ValidationLayer::new(
            ValidationPolicy::default(),
            check,
            connect,
        ))
        .service(first);
    let query = || WithDeadline::new(Idempotent("SELECT 1"));

    // Healthy.
    assert_eq!(
        db.ready().await.unwrap().call(query()).await.unwrap(),
        "row"
    );

    // The server goes down: the first request uses all three attempts, and its third failure (three of
    // the four calls in the window) opens the breaker; the second request is refused without being sent.
    server.mode.store(DOWN, Ordering::SeqCst);
    let err = db.ready().await.unwrap().call(query()).await.unwrap_err();
    assert_eq!(
        (err.attempts(), err.reason()),
        (3, GaveUp::AttemptsExhausted)
    );
    let err: RetryError = db.ready().await.unwrap().call(query()).await.unwrap_err();
    assert_eq!(err.reason(), GaveUp::Permanent);
    assert!(err.cause().is::<CircuitOpen>());
    assert_eq!(b.state(), BreakerState::Open);
    let reached = server.queries.load(Ordering::SeqCst);
    assert_eq!(reached, 4);
    for _ in 0..100 {
        let err = db.ready().await.unwrap().call(query()).await.unwrap_err();
        assert!(err.cause().is::<CircuitOpen>());
    }
    assert_eq!(
        server.queries.load(Ordering::SeqCst),
        reached,
        "fail-fast: nothing reached the server"
    );

    // The server recovers. After the wait, probes go through; validation finds the connection the outage
    // broke and replaces it before the probe uses it, so the probes succeed and the breaker closes.
    server.mode.store(UP, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        db.ready().await.unwrap().call(query()).await.unwrap(),
        "row"
    );
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(
        db.ready().await.unwrap().call(query()).await.unwrap(),
        "row"
    );
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        server.connects.load(Ordering::SeqCst),
        1,
        "one replacement connection"
    );

    // It fails again, this time by hanging: the per-attempt timeout turns hangs into transient failures
    // that retry and the breaker both understand, and the breaker opens again.
    server.mode.store(HANG, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let err = db.ready().await.unwrap().call(query()).await.unwrap_err();
    assert!(TimeoutsAreTransient::is_timeout(err.cause()));
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(3_000 + 100 + 200),
        "three 1 s attempts, two backoffs"
    );
    let err = db.ready().await.unwrap().call(query()).await.unwrap_err();
    assert!(
        err.cause().is::<CircuitOpen>(),
        "the fourth timeout opened the breaker"
    );
    assert_eq!(b.state(), BreakerState::Open);
    let m = b.metrics();
    assert_eq!(m.transitions, 4, "closed→open→half-open→closed→open");
}
