//! The Postgres service and pool against a real server: queries, classification, validation, lifetime,
//! idle eviction, exhaustion, deadlines and cancellation.

use std::time::Duration;

use rampart::layers::Classification;
use rampart::layers::validate::ValidationPolicy;
use rampart::testing::{Accounts, Cluster, Fault, FaultProxy};
use rampart::{ErrorKind, PgConfig, PgService, Pool, PoolConfig, Query};
use tower::ServiceExt;

const BOUND: Duration = Duration::from_secs(10);

fn pool(url: &str, config: PoolConfig) -> Pool {
    Pool::new(PgConfig::from_url(url).unwrap(), config).unwrap()
}

fn quick_validation() -> ValidationPolicy {
    ValidationPolicy::builder()
        .bypass_window(Duration::from_millis(50))
        .check_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

async fn count(cluster: &Cluster, sql: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits (bounded) until `sql` counts `want`.
async fn until_count(cluster: &Cluster, sql: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let n = count(cluster, sql).await;
        if n == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{sql}` stayed at {n}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn queries_return_rows_and_affected_counts() {
    let cluster = Cluster::new().await.unwrap();
    let db = PgService::new(pool(&cluster.url(), PoolConfig::default()));
    db.clone()
        .oneshot(Query::write("CREATE TABLE t (id int PRIMARY KEY, v text)"))
        .await
        .unwrap();
    let inserted = db
        .clone()
        .oneshot(
            Query::write("INSERT INTO t VALUES ($1, $2), ($3, $4) RETURNING id")
                .bind(1i32)
                .bind("a")
                .bind(2i32)
                .bind("b"),
        )
        .await
        .unwrap();
    assert_eq!(inserted.rows_affected(), 2);
    assert_eq!(inserted.rows().len(), 2);
    let read = db
        .clone()
        .oneshot(Query::read("SELECT v FROM t WHERE id = $1").bind(2i32))
        .await
        .unwrap();
    assert_eq!(read.first().unwrap().get::<_, String>(0), "b");
    let updated = db
        .oneshot(Query::write("UPDATE t SET v = 'c'"))
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 2);
    assert!(updated.rows().is_empty());
}

#[tokio::test]
async fn caller_mistakes_are_permanent_and_keep_their_sqlstate() {
    let cluster = Cluster::new().await.unwrap();
    let db = PgService::new(pool(&cluster.url(), PoolConfig::default()));
    db.clone()
        .oneshot(Query::write("CREATE TABLE u (id int PRIMARY KEY)"))
        .await
        .unwrap();
    db.clone()
        .oneshot(Query::write("INSERT INTO u VALUES (1)"))
        .await
        .unwrap();
    for (sql, code) in [
        ("SELEC 1", "42601"),
        ("INSERT INTO u VALUES (1)", "23505"),
        ("SELECT 'x'::int", "22P02"),
        ("SELECT * FROM missing", "42P01"),
        ("SELECT 1/0", "22012"),
    ] {
        let err = db.clone().oneshot(Query::write(sql)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Db, "{sql}");
        assert_eq!(err.code().map(|c| c.code()), Some(code), "{sql}");
        assert_eq!(err.classification(), Classification::Permanent, "{sql}");
    }
    // The connection that saw the errors is fine and reused.
    assert_eq!(db.pool().stats().created, 1);
}

#[tokio::test]
async fn silently_killed_idle_connections_are_replaced_before_a_caller_sees_them() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let config = PoolConfig::builder()
        .validation(quick_validation())
        .build()
        .unwrap();
    let db = PgService::new(pool(&proxy.url(&cluster), config));
    db.clone().oneshot(Query::read("SELECT 1")).await.unwrap();

    proxy.kill_silently();
    // Idle past the bypass window, as after a serverless suspend.
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A write, not idempotent: it must not meet the dead link at all.
    db.clone()
        .oneshot(Query::write("SELECT 2"))
        .await
        .expect("validation replaced the dead connection");
    let stats = db.pool().stats();
    assert_eq!(stats.evicted_validation, 1, "{stats:?}");
    assert_eq!(stats.created, 2, "{stats:?}");
    assert_eq!(proxy.stats().links_opened, 2);
}

#[tokio::test]
async fn connections_closed_by_the_server_are_dropped_without_a_round_trip() {
    let cluster = Cluster::new().await.unwrap();
    let db = PgService::new(pool(&cluster.url(), PoolConfig::default()));
    db.clone().oneshot(Query::read("SELECT 1")).await.unwrap();
    count(&cluster, "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'rampart') t").await;
    until_count(
        &cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rampart'",
        0,
    )
    .await;
    // The client learns of the close asynchronously; until it has, a checkout may still hand the connection
    // out (and the query then fails as a lost connection, which retry layers handle). Once it has, the
    // checkout drops it without sending anything.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match db.clone().oneshot(Query::read("SELECT 1")).await {
            Ok(_) => break,
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            db.pool().stats()
        );
    }
    let stats = db.pool().stats();
    assert_eq!(
        stats.evicted_closed + stats.discarded,
        1,
        "the closed connection is dropped once: {stats:?}"
    );
    assert_eq!(stats.created, 2, "{stats:?}");
}

#[tokio::test]
async fn exhausted_pool_fails_waiters_with_a_typed_error() {
    let cluster = Cluster::new().await.unwrap();
    let config = PoolConfig::builder()
        .max_size(1)
        .wait_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let pool = pool(&cluster.url(), config);
    let held = pool.checkout().await.unwrap();
    let err = pool.checkout().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PoolExhausted);
    assert_eq!(err.classification(), Classification::Transient);
    assert!(
        err.to_string().contains("1 of 1 connections in use"),
        "{err}"
    );
    assert_eq!(pool.stats().checkout_timeouts, 1);
    drop(held);
    let _free = pool.checkout().await.expect("free again");
}

#[tokio::test]
async fn connections_are_replaced_after_their_max_lifetime() {
    let cluster = Cluster::new().await.unwrap();
    let config = PoolConfig::builder()
        .max_lifetime(Some(Duration::from_millis(150)))
        .lifetime_jitter(0.0)
        .idle_timeout(None)
        .build()
        .unwrap();
    let db = PgService::new(pool(&cluster.url(), config));
    db.clone().oneshot(Query::read("SELECT 1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    db.clone().oneshot(Query::read("SELECT 1")).await.unwrap();
    let stats = db.pool().stats();
    assert_eq!(stats.created, 2, "{stats:?}");
    assert_eq!(stats.evicted_lifetime, 1, "{stats:?}");
}

#[tokio::test]
async fn idle_connections_are_evicted_in_the_background() {
    let cluster = Cluster::new().await.unwrap();
    let config = PoolConfig::builder()
        .idle_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let db = PgService::new(pool(&cluster.url(), config));
    db.clone().oneshot(Query::read("SELECT 1")).await.unwrap();
    assert_eq!(db.pool().stats().size, 1);
    let deadline = tokio::time::Instant::now() + BOUND;
    while db.pool().stats().evicted_idle == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            db.pool().stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(db.pool().stats().size, 0);
    until_count(
        &cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rampart'",
        0,
    )
    .await;
}

#[tokio::test]
async fn the_keepalive_pinger_checks_idle_connections_only_when_asked() {
    let cluster = Cluster::new().await.unwrap();
    let pinged = PoolConfig::builder()
        .validation(quick_validation())
        .keepalive_interval(Some(Duration::from_millis(100)))
        .build()
        .unwrap();
    let db = PgService::new(pool(&cluster.url(), pinged));
    db.clone().oneshot(Query::read("SELECT 1")).await.unwrap();
    // Nobody sends a query; the pinger's checks are the only traffic, and they pass.
    let deadline = tokio::time::Instant::now() + BOUND;
    while db.pool().stats().validated < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            db.pool().stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        db.pool().stats().created,
        1,
        "pinging reuses the idle connection"
    );

    // The default (and the serverless preset) never pings: an idle pool stays silent.
    let quiet = PgService::new(pool(
        &cluster.url(),
        PoolConfig::builder()
            .validation(quick_validation())
            .build()
            .unwrap(),
    ));
    quiet
        .clone()
        .oneshot(Query::read("SELECT 1"))
        .await
        .unwrap();
    let validated = quiet.pool().stats().validated;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        quiet.pool().stats().validated,
        validated,
        "no pinger unless asked"
    );
}

#[tokio::test]
async fn the_deadline_is_pushed_down_as_statement_timeout() {
    let cluster = Cluster::new().await.unwrap();
    let db = PgService::new(pool(&cluster.url(), PoolConfig::default()));
    let err = db
        .clone()
        .oneshot(Query::read("SELECT pg_sleep(30)").timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert_eq!(err.classification(), Classification::Transient);
    // The server stopped the query itself; the connection is healthy and kept.
    db.clone().oneshot(Query::read("SELECT 1")).await.unwrap();
    assert_eq!(db.pool().stats().created, 1);
    // A later query without a deadline runs without the leftover setting.
    let shown = db
        .oneshot(Query::read("SHOW statement_timeout"))
        .await
        .unwrap();
    assert_eq!(shown.first().unwrap().get::<_, String>(0), "0");
}

#[tokio::test]
async fn an_abandoned_query_is_cancelled_on_the_server_and_its_connection_discarded() {
    let cluster = Cluster::new().await.unwrap();
    let db = PgService::new(pool(&cluster.url(), PoolConfig::default()));
    let sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND state = 'active'";
    // Boxed, so that dropping it really drops the future (a `pin!`ned one lives to the end of the scope).
    let mut query = Box::pin(db.clone().oneshot(Query::read("SELECT pg_sleep(60)")));
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        tokio::select! {
            _ = &mut query => panic!("pg_sleep(60) returned"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if count(&cluster, sleeping).await == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the query never started"
        );
    }
    drop(query);
    until_count(&cluster, sleeping, 0).await;
    assert_eq!(db.pool().stats().discarded, 1);
    assert_eq!(db.pool().stats().size, 0);
}

#[tokio::test]
async fn a_link_lost_mid_write_is_an_unknown_outcome() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = PgService::new(pool(&proxy.url(&cluster), PoolConfig::default()));
    db.clone()
        .oneshot(Query::write("CREATE TABLE w (v int)"))
        .await
        .unwrap();
    let write = db
        .clone()
        .oneshot(Query::write("INSERT INTO w SELECT 1 FROM pg_sleep(1)"));
    let reset = async {
        until_count(&cluster, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO w%' AND state = 'active'", 1).await;
        proxy.reset_all();
    };
    let (result, ()) = tokio::join!(write, reset);
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
    assert!(err.is_outcome_unknown(), "{err}");
    assert!(err.to_string().contains("outcome is unknown"), "{err}");
    assert_eq!(db.pool().stats().discarded, 1);
}

#[tokio::test]
async fn connect_errors_name_the_server_keep_the_cause_and_hide_the_password() {
    let cluster = Cluster::builder()
        .password("correct-horse")
        .start()
        .await
        .unwrap();
    let wrong = format!(
        "postgres://postgres:battery-staple@{}/postgres",
        cluster.addr()
    );
    let db = PgService::new(pool(&wrong, PoolConfig::default()));
    let err = db.oneshot(Query::read("SELECT 1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"));
    assert_eq!(
        err.classification(),
        Classification::Permanent,
        "bad credentials are not retried"
    );
    let shown = format!("{err} {err:?}");
    assert!(shown.contains(&cluster.addr().to_string()), "{shown}");
    assert!(
        !shown.contains("battery-staple") && !shown.contains("correct-horse"),
        "{shown}"
    );

    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    proxy.set_fault(Fault::Refuse);
    let refused = format!(
        "postgres://postgres:battery-staple@{}/postgres",
        proxy.addr()
    );
    // Let the proxy close its listener (bounded).
    let deadline = tokio::time::Instant::now() + BOUND;
    let err = loop {
        let db = PgService::new(pool(&refused, PoolConfig::default()));
        let err = db.oneshot(Query::read("SELECT 1")).await.unwrap_err();
        if err.to_string().contains("refused") || tokio::time::Instant::now() > deadline {
            break err;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(err.kind(), ErrorKind::Connect);
    assert_eq!(err.classification(), Classification::Transient);
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(err.to_string().contains(&proxy.addr().to_string()), "{err}");
    assert!(!format!("{err} {err:?}").contains("battery-staple"));
}

#[tokio::test]
async fn bad_pool_settings_are_typed_errors_naming_the_field() {
    assert_eq!(
        PoolConfig::builder()
            .max_size(0)
            .build()
            .unwrap_err()
            .field(),
        "max_size"
    );
    assert_eq!(
        PoolConfig::builder()
            .wait_timeout(Duration::ZERO)
            .build()
            .unwrap_err()
            .field(),
        "wait_timeout"
    );
    assert_eq!(
        PoolConfig::builder()
            .lifetime_jitter(0.9)
            .build()
            .unwrap_err()
            .field(),
        "lifetime_jitter"
    );
    assert_eq!(PgConfig::from_url("not a url").unwrap_err().field(), "url");
}

mod transactions {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use rampart::{IsolationLevel, Transactor};

    use super::*;

    async fn accounts(db: &PgService, n: i32) {
        Accounts::new(n, 100).create(db.clone()).await.unwrap();
    }

    #[tokio::test]
    async fn a_serialization_failure_reruns_the_whole_closure() {
        let cluster = Cluster::new().await.unwrap();
        let db = PgService::new(pool(&cluster.url(), PoolConfig::default()));
        accounts(&db, 2).await;
        let transactor = Transactor::new(db.pool().clone()).isolation(IsolationLevel::Serializable);
        // Both transactions read both rows, then each writes one: a write skew Postgres must refuse.
        // The barrier makes them overlap on their first run only.
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let first_runs = Arc::new(AtomicU32::new(0));
        let transfer = |from: i32| {
            let transactor = transactor.clone();
            let barrier = barrier.clone();
            let first_runs = first_runs.clone();
            async move {
                transactor
                    .run(|tx| {
                        let barrier = barrier.clone();
                        let first = first_runs.fetch_add(1, Ordering::SeqCst) < 2;
                        Box::pin(async move {
                            let total: i64 = tx
                                .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
                                .await?
                                .get(0);
                            if first {
                                barrier.wait().await;
                            }
                            tx.execute(
                                "UPDATE accounts SET balance = balance - 50 WHERE id = $1",
                                &[&from],
                            )
                            .await?;
                            Ok(total)
                        })
                    })
                    .await
            }
        };
        let (a, b) = tokio::join!(transfer(1), transfer(2));
        let (a, b) = (a.unwrap(), b.unwrap());
        // One of them saw the other's write when it ran again.
        assert_eq!((a.min(b), a.max(b)), (150, 200));
        assert_eq!(transactor.runs(), 3, "one transaction was re-run once");
        let total = db
            .oneshot(Query::read("SELECT sum(balance)::bigint FROM accounts"))
            .await
            .unwrap();
        assert_eq!(total.first().unwrap().get::<_, i64>(0), 100);
    }

    #[tokio::test]
    async fn concurrent_serializable_transfers_keep_the_total() {
        let cluster = Cluster::new().await.unwrap();
        let db = PgService::new(pool(
            &cluster.url(),
            PoolConfig::builder().max_size(8).build().unwrap(),
        ));
        let bank = Accounts::new(5, 100);
        bank.create(db.clone()).await.unwrap();
        let transactor = Transactor::new(db.pool().clone())
            .isolation(IsolationLevel::Serializable)
            .max_attempts(50);
        for outcome in bank.run_transfers(&transactor, 8, 15, 7).await {
            outcome.expect("every transfer commits within 50 runs");
        }
        let (total, transfers) = Accounts::audit(&cluster.url()).await;
        assert_eq!(total, bank.total(), "money is neither made nor lost");
        assert_eq!(transfers, 8 * 15, "each transfer applied exactly once");
    }

    #[tokio::test]
    async fn permanent_errors_roll_back_and_are_not_rerun() {
        let cluster = Cluster::new().await.unwrap();
        let db = PgService::new(pool(&cluster.url(), PoolConfig::default()));
        accounts(&db, 1).await;
        let transactor = Transactor::new(db.pool().clone());
        let err = transactor
            .run(|tx| {
                Box::pin(async move {
                    tx.execute("UPDATE accounts SET balance = 0", &[]).await?;
                    tx.execute("INSERT INTO accounts VALUES (1, 1)", &[])
                        .await?;
                    Ok(())
                })
            })
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("23505"));
        assert_eq!(transactor.runs(), 1);
        let balance = db
            .oneshot(Query::read("SELECT balance FROM accounts"))
            .await
            .unwrap();
        assert_eq!(
            balance.first().unwrap().get::<_, i64>(0),
            100,
            "rolled back"
        );
    }
}
