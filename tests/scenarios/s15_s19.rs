//! S15 bad configuration, S16 secrets, S17 caller gives up, S18 load during a restart, S19 retry amplification.

use std::time::Duration;

use rampart::layers::retry::backoff::{Exponential, Jitter};
use rampart::layers::retry::{RetryBudget, RetryLayer, RetryPolicy};
use rampart::testing::{Cluster, Fault, FaultProxy};
use rampart::{ErrorKind, PgClassifier, PgConfig, Query, Stack};
use tower::ServiceExt;

use crate::support::*;

#[test]
fn s15_bad_configuration_is_a_typed_error_naming_the_field() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let field = |r: Result<rampart::Db, rampart::ConfigError>| r.unwrap_err().field();
    assert_eq!(field(Stack::server("definitely not a url").build()), "url");
    assert_eq!(field(Stack::server("mysql://u:pw@host/db").build()), "url");
    assert_eq!(
        field(Stack::server("postgres://u@h/db").max_attempts(0).build()),
        "max_attempts"
    );
    assert_eq!(
        field(
            Stack::server("postgres://u@h/db")
                .pool(rampart::PoolConfig::default())
                .deadline(Duration::ZERO)
                .build()
        ),
        "deadline"
    );
    assert_eq!(
        rampart::PoolConfig::builder()
            .max_size(0)
            .build()
            .unwrap_err()
            .field(),
        "max_size"
    );
    // A cap below the base is a valid schedule since issue 21 (the cap wins); a zero base is not.
    let backoff = Exponential::builder().base_delay(Duration::ZERO).build();
    assert_eq!(backoff.unwrap_err().field(), "base_delay");
    assert!(PgConfig::from_url("postgres://u@h/db?sslmode=sometimes").is_err());
    report(
        "S15",
        "invalid URL, zero attempts, zero deadline, zero pool size, zero backoff base: each a typed error naming its field",
        "-",
    );
}

#[tokio::test]
async fn s16_secrets_never_show() {
    let secret = "s16-Pa55word";
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let cluster = Cluster::builder().password(secret).start().await.unwrap();
    let good = Stack::server(&cluster.url()).build().unwrap();
    good.run(Query::read("SELECT 1")).await.unwrap();
    let wrong_url = format!(
        "postgres://postgres:{secret}-wrong@{}/postgres",
        cluster.addr()
    );
    let bad = Stack::server(&wrong_url).build().unwrap();
    let err = bad.run(Query::read("SELECT 1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect);

    let health = serde_json::to_string(&good.health(Some(Duration::from_secs(1))).await).unwrap();
    let bad_health = serde_json::to_string(&bad.health(None).await).unwrap();
    let config = PgConfig::from_url(&wrong_url).unwrap();
    let shown = [
        format!("{err}"),
        format!("{err:?}"),
        format!("{good:?}"),
        format!("{bad:?}"),
        format!("{config}"),
        format!("{config:?}"),
        health.clone(),
        bad_health,
        String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned(),
    ];
    for text in &shown {
        assert!(!text.contains(secret), "the password leaked: {text}");
    }
    assert!(
        health.contains("postgres:***@"),
        "the server is still named: {health}"
    );
    assert!(
        !logs.0.lock().unwrap().is_empty(),
        "something was logged (and checked)"
    );
    report(
        "S16",
        "no password in Display, Debug, logs (TRACE) or the health document",
        "-",
    );
}

#[tokio::test]
async fn s17_caller_gives_up() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    proxy.set_fault(Fault::Refuse);
    until("the proxy refuses", || {
        std::net::TcpStream::connect(proxy.addr()).is_err()
    })
    .await;
    let slow_backoff = Exponential::builder()
        .base_delay(Duration::from_millis(400))
        .max_delay(Duration::from_secs(1))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let db = stack(&proxy.url(&cluster))
        .max_attempts(5)
        .backoff(slow_backoff)
        .breaker(None)
        .build()
        .unwrap();

    // Dropped during the backoff sleep: no further attempt.
    let call = Box::pin(db.run(Query::read("SELECT 1")));
    let mut call = Some(call);
    until("the first attempt failed", || {
        if let Some(c) = call.as_mut() {
            let waker = futures_util::task::noop_waker();
            let _ = c.as_mut().poll(&mut std::task::Context::from_waker(&waker));
        }
        db.pool().stats().connect_failures == 1
    })
    .await;
    drop(call.take());
    // Longer than the backoff the dropped call was sleeping: had it lived, it would have tried again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        db.pool().stats().connect_failures,
        1,
        "no attempt after the caller gave up"
    );

    // Dropped during a query: the query is cancelled on the server and the connection discarded, not leaked.
    proxy.set_fault(Fault::PassThrough);
    let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND state = 'active'";
    let mut query = Box::pin(db.run(Query::read("SELECT pg_sleep(60)")));
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        tokio::select! {
            _ = &mut query => panic!("pg_sleep(60) returned"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if count(&cluster, sleeping).await == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    drop(query);
    until_count(&cluster, sleeping, 0).await;
    let stats = db.pool().stats();
    assert_eq!((stats.discarded, stats.in_use), (1, 0), "{stats:?}");
    report(
        "S17",
        "dropped in backoff: 0 further attempts; dropped mid-query: server query cancelled, connection discarded",
        "-",
    );
}

#[tokio::test]
async fn s18_load_during_a_restart() {
    const WRITES: usize = 2000;
    const CONCURRENCY: usize = 64;
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url())
        .pool(pool_config().max_size(16).build().unwrap())
        .deadline(Duration::from_secs(30))
        .max_attempts(10)
        .build()
        .unwrap();
    let RestartOutcome { tally, rows } =
        keyed_writes_across_a_restart(&cluster, &db, WRITES, CONCURRENCY).await;
    // The primary key makes a second application impossible; what is counted is that nothing acknowledged
    // is missing and nothing unacknowledged is invented.
    assert!(
        rows >= tally.ok && rows <= WRITES,
        "rows {rows}, acknowledged {}",
        tally.ok
    );
    report(
        "S18",
        &format!(
            "{WRITES} keyed writes at concurrency {CONCURRENCY} across a restart: {} ok, {} typed errors, {rows} rows, each acknowledged write present once",
            tally.ok,
            tally.failed()
        ),
        "-",
    );
}

#[tokio::test]
async fn s19_retry_amplification_is_capped_by_the_budget() {
    const REQUESTS: u32 = 200;
    let cluster = Cluster::new().await.unwrap();
    // Attempts are counted where they cannot be lost: each is a link the proxy accepts and then resets,
    // since nothing answers behind it.
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let url = proxy.url(&cluster);
    cluster.stop().unwrap();
    let fast = || {
        Exponential::builder()
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(2))
            .build()
            .unwrap()
    };
    let budget = || {
        RetryBudget::builder()
            .window(Duration::from_secs(10))
            .min_retries_per_second(1)
            .retry_ratio(0.2)
            .build()
            .unwrap()
    };
    // Two retry layers, each allowing 4 attempts: without budgets, up to 16 attempts per request.
    let db = stack(&url)
        .max_attempts(4)
        .backoff(fast())
        .retry_budget(Some(budget()))
        .breaker(None)
        .build()
        .unwrap();
    let outer_policy = RetryPolicy::builder()
        .max_attempts(4)
        .schedule(fast())
        .classifier(PgClassifier)
        .budget(budget())
        .build()
        .unwrap();
    let service = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(outer_policy))
        .service(db.clone());
    let started = std::time::Instant::now();
    for _ in 0..REQUESTS {
        let result = service.clone().oneshot(Query::read("SELECT 1")).await;
        assert!(result.is_err());
    }
    let attempts = proxy.stats().links_accepted;
    // What the two budgets promise: each layer retries at most 20% of the calls it sees, plus a floor of
    // one retry a second (10 in reserve for the 10 s window, and one more for every second of the run).
    let floor_per_layer = 10.0 + started.elapsed().as_secs_f64().ceil();
    let cap = (REQUESTS as f64 * 1.2 * 1.2 + floor_per_layer * 1.2 + floor_per_layer) as u64 + 2;
    assert!(
        attempts <= cap,
        "{attempts} attempts for {REQUESTS} requests (cap {cap})"
    );
    println!(
        "S19: {attempts} attempts for {REQUESTS} requests through two stacked retry layers (unbudgeted worst case {})",
        REQUESTS * 16
    );
    report(
        "S19",
        &format!(
            "{attempts} attempts for {REQUESTS} requests through two stacked 4-attempt retry layers ({:.2}x; unbudgeted: up to 16x)",
            attempts as f64 / REQUESTS as f64
        ),
        "-",
    );
}
