//! The ready-made stack against a real server: what a user gets from `Stack::server(url).build()`.

use std::time::Duration;

use rampart::layers::Classification;
use rampart::layers::breaker::{BreakerConfig, BreakerState, SlidingWindow};
use rampart::testing::{Cluster, Fault, FaultProxy, until_async};
use rampart::{ErrorKind, Query, Stack, Status};

const BOUND: Duration = Duration::from_secs(20);

#[tokio::test]
async fn queries_pass_and_mistakes_come_back_once_with_their_sqlstate() {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    let answer = db
        .run(Query::read("SELECT 40 + $1::int").bind(2i32))
        .await
        .unwrap();
    assert_eq!(answer.first().unwrap().get::<_, i32>(0), 42);

    let err = db.run(Query::read("SELEC 1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Db);
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    assert_eq!(err.attempts(), None, "a permanent error is not retried");
    let breaker = db.breaker().unwrap().metrics();
    assert_eq!(
        breaker.failures, 0,
        "bad SQL never counts against the breaker"
    );

    let health = db.health(None).await;
    assert_eq!(
        health.status,
        Status::Up,
        "a caller's mistake says nothing about the database: {health:?}"
    );

    // A statement slower than its deadline is a failure of the database's to answer in time.
    let err = db
        .run(Query::read("SELECT pg_sleep(5)").timeout(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(err.classification(), Classification::Transient, "{err}");
    let health = db.health(None).await;
    assert_eq!(health.status, Status::Degraded, "{health:?}");
    assert!(health.recent_error.is_some());

    let health = db.health(Some(Duration::from_secs(2))).await;
    assert_eq!(
        health.status,
        Status::Up,
        "a successful probe is a success: {health:?}"
    );
    assert!(health.probe_rtt_ms.is_some());
}

#[tokio::test]
async fn an_idempotent_query_survives_a_restart() {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    cluster.restart().await.unwrap();
    db.run(Query::read("SELECT 1"))
        .await
        .expect("no error reaches the caller after a restart");
}

#[tokio::test]
async fn a_black_holed_attempt_times_out_at_its_limit_and_its_connection_is_discarded() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = Stack::server(&proxy.url(&cluster))
        .attempt_timeout(Duration::from_millis(300))
        .deadline(Duration::from_secs(5))
        .max_attempts(1)
        .build()
        .unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    proxy.set_fault(Fault::BlackHole);
    let err = tokio::time::timeout(BOUND, db.run(Query::read("SELECT 1")))
        .await
        .expect("bounded")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert_eq!(err.classification(), Classification::Transient);
    assert_eq!(db.pool().stats().discarded, 1, "{:?}", db.pool().stats());
    proxy.set_fault(Fault::PassThrough);
    db.run(Query::read("SELECT 1"))
        .await
        .expect("a fresh connection works");
}

#[tokio::test]
async fn the_breaker_opens_while_the_server_is_down_and_closes_by_a_probe_when_it_is_back() {
    let cluster = Cluster::new().await.unwrap();
    // A short open wait, so the test sees it close on its own through a half-open probe.
    let breaker = BreakerConfig::builder()
        .failure_rate(0.5)
        .sliding_window(SlidingWindow::Count(4))
        .minimum_calls(4)
        .wait_in_open(Duration::from_millis(200))
        .wait_multiplier(1.0)
        .half_open_calls(1)
        .build()
        .unwrap();
    let db = Stack::server(&cluster.url())
        .max_attempts(1)
        .breaker(Some(breaker))
        .build()
        .unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    cluster.stop().unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    let open = loop {
        let err = db.run(Query::read("SELECT 1")).await.unwrap_err();
        if err.kind() == ErrorKind::CircuitOpen {
            break err;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened: {err}"
        );
    };
    assert!(open.retry_in().is_some(), "{open:?}");
    assert_eq!(db.health(None).await.status, Status::Down);

    cluster.start().await.unwrap();
    // No reset: the breaker must close by itself, when a half-open probe succeeds.
    until_async("a query succeeds once the server is back", || async {
        db.run(Query::read("SELECT 1")).await.is_ok()
    })
    .await;
    assert_eq!(
        db.breaker().unwrap().state(),
        BreakerState::Closed,
        "closed by a successful probe"
    );
    assert_eq!(db.health(None).await.status, Status::Up);
}

#[test]
fn bad_settings_are_typed_errors_naming_the_field() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    assert_eq!(
        Stack::server("postgres://u:pw@")
            .build()
            .unwrap_err()
            .field(),
        "url"
    );
    assert_eq!(
        Stack::server("postgres://u@h/db")
            .max_attempts(0)
            .build()
            .unwrap_err()
            .field(),
        "max_attempts"
    );
    let err = Stack::server("postgres://u@h/db")
        .deadline(Duration::from_secs(1))
        .attempt_timeout(Duration::from_secs(2))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "attempt_timeout");
}

/// The stack's deadline and attempt timeout are defaults: a query given its own, longer time gets it (one
/// attempt may use all of it), pooled or multiplexed; one that says nothing is held to the defaults.
#[tokio::test]
async fn a_query_given_its_own_time_outlives_the_stack_defaults() {
    let cluster = Cluster::new().await.unwrap();
    for multiplexed in [false, true] {
        let mut builder = Stack::server(&cluster.url())
            .attempt_timeout(Duration::from_millis(300))
            .deadline(Duration::from_millis(500));
        if multiplexed {
            builder = builder.multiplex(rampart::MuxConfig::default());
        }
        let db = builder.build().unwrap();
        let slow = Query::read("SELECT pg_sleep(1)");
        let err = db.run(slow.clone()).await.unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Timeout | ErrorKind::DeadlineExceeded),
            "multiplexed {multiplexed}: held to the defaults: {err}"
        );
        db.run(slow.timeout(Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| panic!("multiplexed {multiplexed}: granted 5 s: {e}"));
    }
}
