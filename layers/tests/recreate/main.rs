//! Recreation with paused time and mock factories.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rampart_layers::classify::{Classification, ClassifyFn, classify_fn};
use rampart_layers::recreate::{Recreate, RecreateConfig, RecreateHandle};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt, service_fn};

/// One generation of the inner service (a stand-in for a pool).
#[derive(Clone)]
struct Backend {
    generation: u64,
    broken: bool,
    gate: Option<Arc<Notify>>,
    /// When set, overrides `broken` (for tests that flip health mid-run).
    toggle: Option<Arc<AtomicBool>>,
}

impl Service<&'static str> for Backend {
    type Response = u64;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<u64, BoxError>> + Send>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: &'static str) -> Self::Future {
        let broken = self
            .toggle
            .as_ref()
            .map_or(self.broken, |t| t.load(Ordering::SeqCst));
        let (generation, gate) = (self.generation, self.gate.clone());
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            if broken {
                Err("connection refused".into())
            } else {
                Ok(generation)
            }
        })
    }
}

type Factory =
    Box<dyn FnMut(()) -> Pin<Box<dyn Future<Output = Result<Backend, BoxError>> + Send>> + Send>;
type Svc =
    Recreate<Backend, tower::util::ServiceFn<Factory>, ClassifyFn<fn(&BoxError) -> Classification>>;

fn transient(_: &BoxError) -> Classification {
    Classification::Transient
}

/// A factory that fails its first `failures` attempts, takes `build_time` per attempt, and records when
/// each attempt started.
struct MockFactory {
    attempts: Arc<Mutex<Vec<Instant>>>,
    built: Arc<AtomicU64>,
}

fn factory(failures: u32, build_time: Duration) -> (MockFactory, Factory) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let built = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU32::new(0));
    let mock = MockFactory {
        attempts: attempts.clone(),
        built: built.clone(),
    };
    let f: Factory = Box::new(move |()| {
        attempts.lock().unwrap().push(Instant::now());
        let (built, failed) = (built.clone(), failed.clone());
        Box::pin(async move {
            tokio::time::sleep(build_time).await;
            if failed.load(Ordering::SeqCst) < failures {
                failed.fetch_add(1, Ordering::SeqCst);
                return Err("database unreachable".into());
            }
            let generation = built.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(Backend {
                generation,
                broken: false,
                gate: None,
                toggle: None,
            })
        })
    });
    (mock, f)
}

fn recreate(
    first: Backend,
    f: Factory,
    threshold: u32,
) -> (
    Svc,
    RecreateHandle<Backend, tower::util::ServiceFn<Factory>>,
) {
    let config = RecreateConfig::builder()
        .failure_threshold(threshold)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = Recreate::with_classifier(
        first,
        service_fn(f),
        config,
        classify_fn(transient as fn(&BoxError) -> _),
    );
    let handle = svc.handle();
    (svc, handle)
}

async fn wait_for_generation(
    handle: &RecreateHandle<Backend, tower::util::ServiceFn<Factory>>,
    generation: u64,
) {
    for _ in 0..1_000 {
        if handle.generation() >= generation {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "generation {generation} never came; at {}",
        handle.generation()
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_concurrent_failures_rebuilds_once() {
    let (mock, f) = factory(0, Duration::from_millis(50));
    let (svc, handle) = recreate(
        Backend {
            generation: 0,
            broken: true,
            gate: None,
            toggle: None,
        },
        f,
        5,
    );

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        calls.spawn(svc.clone().oneshot("SELECT 1"));
    }
    let failures = calls
        .join_all()
        .await
        .into_iter()
        .filter(Result::is_err)
        .count();
    assert_eq!(failures, 50);

    wait_for_generation(&handle, 1).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        mock.attempts.lock().unwrap().len(),
        1,
        "one rebuild for one burst"
    );
    assert_eq!(handle.generation(), 1);
    assert_eq!(svc.clone().oneshot("SELECT 1").await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_rebuilds_back_off() {
    let (mock, f) = factory(3, Duration::ZERO);
    let (mut svc, handle) = recreate(
        Backend {
            generation: 0,
            broken: true,
            gate: None,
            toggle: None,
        },
        f,
        2,
    );
    for _ in 0..2 {
        svc.ready().await.unwrap().call("q").await.unwrap_err();
    }
    wait_for_generation(&handle, 1).await;
    let attempts = mock.attempts.lock().unwrap().clone();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(
        gaps,
        [
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(400)
        ]
    );
    assert_eq!(handle.failed_attempts(), 3);
    assert_eq!(mock.built.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn in_flight_calls_finish_on_the_old_service() {
    let (_mock, f) = factory(0, Duration::from_millis(50));
    let gate = Arc::new(Notify::new());
    let (svc, handle) = recreate(
        Backend {
            generation: 0,
            broken: false,
            gate: Some(gate.clone()),
            toggle: None,
        },
        f,
        5,
    );

    let in_flight = tokio::spawn(svc.clone().oneshot("slow query"));
    tokio::task::yield_now().await; // let it reach the old service
    assert!(handle.rebuild("operator"));
    assert!(!handle.rebuild("operator"), "one rebuild at a time");
    wait_for_generation(&handle, 1).await;

    assert_eq!(
        svc.clone().oneshot("new query").await.unwrap(),
        1,
        "new calls use the new service"
    );
    gate.notify_waiters();
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        0,
        "the old call finished on the old service"
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_count() {
    let (mock, f) = factory(0, Duration::ZERO);
    let broken = Arc::new(AtomicBool::new(true));
    let first = Backend {
        generation: 0,
        broken: true,
        gate: None,
        toggle: Some(broken.clone()),
    };
    let (mut svc, handle) = recreate(first, f, 5);
    for _ in 0..4 {
        svc.ready().await.unwrap().call("q").await.unwrap_err();
    }
    broken.store(false, Ordering::SeqCst);
    svc.ready().await.unwrap().call("q").await.unwrap();
    broken.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        svc.ready().await.unwrap().call("q").await.unwrap_err();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        mock.attempts.lock().unwrap().is_empty(),
        "4 + 4 failures split by a success stay under 5"
    );
    svc.ready().await.unwrap().call("q").await.unwrap_err();
    wait_for_generation(&handle, 1).await;
}

#[tokio::test(start_paused = true)]
async fn health_check_triggers_a_rebuild() {
    let (_mock, f) = factory(0, Duration::ZERO);
    let (_svc, handle) = recreate(
        Backend {
            generation: 0,
            broken: true,
            gate: None,
            toggle: None,
        },
        f,
        100,
    );
    let task = handle.spawn_health_check(Duration::from_secs(1), |backend: Backend| async move {
        !backend.broken
    });
    tokio::time::sleep(Duration::from_millis(999)).await;
    assert_eq!(handle.generation(), 0);
    wait_for_generation(&handle, 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        handle.generation(),
        1,
        "the rebuilt service passes its health checks"
    );
    task.abort();
}
