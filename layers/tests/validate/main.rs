//! Validation before use: the policy alone, and the service that checks and replaces its inner resource.

use std::future::Ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_layers::validate::{
    Checked, ReplaceError, Validation, ValidationLayer, ValidationPolicy, validate_fn,
};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

/// A connection-like resource: answers with its id; `alive` says whether a check passes.
#[derive(Clone, Debug)]
struct Conn {
    id: u32,
    alive: Arc<AtomicBool>,
    check_delay: Duration,
}

impl Service<&'static str> for Conn {
    type Response = u32;
    type Error = BoxError;
    type Future = Ready<Result<u32, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: &'static str) -> Self::Future {
        std::future::ready(Ok(self.id))
    }
}

fn conn(id: u32, alive: bool) -> Conn {
    Conn {
        id,
        alive: Arc::new(AtomicBool::new(alive)),
        check_delay: Duration::ZERO,
    }
}

struct Fixture {
    checks: Arc<AtomicU32>,
    made: Arc<AtomicU32>,
}

fn fixture() -> Fixture {
    Fixture {
        checks: Arc::new(AtomicU32::new(0)),
        made: Arc::new(AtomicU32::new(0)),
    }
}

fn service(
    f: &Fixture,
    first: Conn,
    factory_fails: bool,
) -> impl Service<&'static str, Response = u32, Error = BoxError> + use<> {
    let checks = f.checks.clone();
    let made = f.made.clone();
    let validator = validate_fn(move |c: &mut Conn| {
        checks.fetch_add(1, Ordering::SeqCst);
        let (alive, delay) = (c.alive.load(Ordering::SeqCst), c.check_delay);
        async move {
            tokio::time::sleep(delay).await;
            if alive {
                Ok(())
            } else {
                Err("connection closed")
            }
        }
    });
    let factory = service_fn(move |()| {
        let id = made.fetch_add(1, Ordering::SeqCst) + 100;
        async move {
            if factory_fails {
                Err::<Conn, BoxError>("refused".into())
            } else {
                Ok(conn(id, true))
            }
        }
    });
    let policy = ValidationPolicy::builder()
        .bypass_window(Duration::from_millis(500))
        .check_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    ValidationLayer::new(policy, validator, factory).layer(first)
}

#[tokio::test(start_paused = true)]
async fn hot_path_skips_the_check() {
    let f = fixture();
    let mut svc = service(&f, conn(1, true), false);
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(svc.ready().await.unwrap().call("q").await.unwrap(), 1);
    }
    assert_eq!(f.checks.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn idle_resource_is_checked_and_kept_when_healthy() {
    let f = fixture();
    let mut svc = service(&f, conn(1, true), false);
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(svc.ready().await.unwrap().call("q").await.unwrap(), 1);
    assert_eq!(f.checks.load(Ordering::SeqCst), 1);
    assert_eq!(f.made.load(Ordering::SeqCst), 0);
    // Just used: the next call skips the check.
    svc.ready().await.unwrap().call("q").await.unwrap();
    assert_eq!(f.checks.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_check_replaces_the_resource_before_use() {
    let f = fixture();
    let mut svc = service(&f, conn(1, false), false);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.ready().await.unwrap().call("q").await.unwrap(), 100);
    assert_eq!(f.made.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn check_that_hangs_is_cut_by_its_timeout() {
    let f = fixture();
    let mut hung = conn(1, true);
    hung.check_delay = Duration::from_secs(30);
    let mut svc = service(&f, hung, false);
    tokio::time::advance(Duration::from_secs(1)).await;
    let start = tokio::time::Instant::now();
    assert_eq!(svc.ready().await.unwrap().call("q").await.unwrap(), 100);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "waited exactly the check timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_replacement_is_a_typed_error() {
    let f = fixture();
    let mut svc = service(&f, conn(1, false), true);
    tokio::time::advance(Duration::from_secs(1)).await;
    let Err(err) = svc.ready().await else {
        panic!("expected an error")
    };
    let replace = err.downcast_ref::<ReplaceError>().expect("a ReplaceError");
    assert_eq!(replace.factory_error().to_string(), "refused");
}

#[tokio::test(start_paused = true)]
async fn service_counts_replacements() {
    let policy = ValidationPolicy::default();
    let validator = validate_fn(|c: &mut Conn| {
        let alive = c.alive.load(Ordering::SeqCst);
        async move { if alive { Ok(()) } else { Err("dead") } }
    });
    let factory = service_fn(|()| async { Ok::<_, BoxError>(conn(7, false)) });
    let mut svc = Validation::new(conn(1, false), policy, validator, factory);
    for round in 1..=3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(svc.ready().await.unwrap().call("q").await.unwrap(), 7);
        assert_eq!(svc.replacements(), round);
    }
}

#[tokio::test(start_paused = true)]
async fn policy_alone_bypasses_checks_and_times_out() {
    let policy = ValidationPolicy::builder()
        .check_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let now = tokio::time::Instant::now();
    let called = AtomicBool::new(false);
    let bypassed = policy
        .validate(Some(now), || {
            called.store(true, Ordering::SeqCst);
            async { Ok::<(), &str>(()) }
        })
        .await;
    assert_eq!(bypassed.unwrap(), Checked::Bypassed);
    assert!(!called.load(Ordering::SeqCst), "the check was never built");

    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(policy.needs_check(Some(now)));
    let failed = policy
        .validate(Some(now), || async { Err::<(), _>("closed") })
        .await
        .unwrap_err();
    assert_eq!(failed.check_error(), Some(&"closed"));
    assert!(!failed.is_timeout());

    let slow = policy
        .validate(None, || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<(), &str>(())
        })
        .await
        .unwrap_err();
    assert!(slow.is_timeout());
}

#[test]
fn zero_check_timeout_is_rejected() {
    let err = ValidationPolicy::builder()
        .check_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "check_timeout");
}
