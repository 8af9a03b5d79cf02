//! S10 serialization failures and deadlocks, S11 admin shutdown mid-query, S12 every connection stale,
//! S13 connections growing old, S14 bad SQL and constraint violations.

use std::time::Duration;

use rampart::layers::Classification;
use rampart::testing::{Accounts, Cluster, FaultProxy};
use rampart::{ErrorKind, Query};
use rampart::{IsolationLevel, Transactor};

use crate::support::*;

#[tokio::test]
async fn s10_serialization_failures_and_deadlocks_rerun_the_transaction() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url())
        .pool(pool_config().max_size(8).build().unwrap())
        .build()
        .unwrap();
    let bank = Accounts::new(4, 1000);
    bank.create(db.clone()).await.unwrap();
    let transactor = Transactor::new(db.pool())
        .isolation(IsolationLevel::Serializable)
        .max_attempts(100);
    for outcome in bank.run_transfers(&transactor, 8, 10, 3).await {
        outcome.expect("every transfer commits");
    }
    let (total, transfers) = Accounts::audit(&cluster.url()).await;
    assert_eq!(total, bank.total(), "the invariant holds");
    assert_eq!(transfers, 80, "each transfer applied exactly once");
    let reruns = transactor.runs() - 80;
    report(
        "S10",
        &format!(
            "80/80 transfers committed, total balance kept, {reruns} whole-transaction re-runs"
        ),
        "-",
    );
}

#[tokio::test]
async fn s11_admin_shutdown_of_a_busy_backend() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url()).build().unwrap();
    let query = db.run(Query::read("SELECT 7 FROM pg_sleep(0.5)"));
    let terminate = async {
        let busy = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT 7 FROM pg_sleep%' AND state = 'active'";
        until_count(&cluster, busy, 1).await;
        count(&cluster, "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT 7 FROM pg_sleep%') t").await;
    };
    let (result, ()) = tokio::join!(query, terminate);
    let answer = result.expect("retried on a fresh connection");
    assert_eq!(answer.first().unwrap().get::<_, i32>(0), 7);
    let stats = db.pool().stats();
    assert_eq!(stats.created, 2, "{stats:?}");
    report(
        "S11",
        "57P01 mid-query: retried on a fresh connection, ok",
        "-",
    );
}

#[tokio::test]
async fn s12_every_pooled_connection_stale_at_once() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = stack(&proxy.url(&cluster))
        .recreate_after(Some(4))
        .build()
        .unwrap();
    warm(&db, 8).await;
    // Killed while still inside the validation bypass window: checkout trusts them, every one is dead.
    proxy.kill_silently();
    let burst =
        futures_util::future::join_all((0..16).map(|_| db.run(Query::read("SELECT 1")))).await;
    let mut tally = Tally::default();
    for r in &burst {
        tally.record_rampart(r);
    }
    assert_eq!(tally.ok, 16, "the burst succeeds: {tally:?}");
    // The first dead link found makes the pool check every connection as old before use (issue 17),
    // so the burst may never lose a pooled link and need no rebuild; if it does, it is rebuilt once.
    let stats = db.pool().stats();
    assert!(
        db.pool_rebuilds() <= 1,
        "rebuilt at most once for the burst, not once per caller"
    );
    assert!(
        db.pool_rebuilds() == 1 || stats.evicted_validation + stats.discarded >= 8,
        "every dead connection replaced: {stats:?}"
    );

    // deadpool-postgres with its defaults, same fault: the burst meets the dead connections.
    let pool = deadpool(&proxy.url(&cluster), 8);
    let held: Vec<_> = futures_util::future::join_all((0..8).map(|_| pool.get()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(held);
    proxy.kill_silently();
    let results = futures_util::future::join_all((0..16).map(|_| async {
        let conn = pool.get().await.unwrap();
        conn.query("SELECT 1", &[]).await
    }))
    .await;
    let mut bare = Tally::default();
    for r in &results {
        bare.record_pg(r);
    }
    assert!(bare.failed() >= 1, "{bare:?}");
    report(
        "S12",
        &format!(
            "16/16 ok; pool rebuilt {} time(s); {} dead connections dropped before the statement was sent",
            db.pool_rebuilds(),
            stats.evicted_validation + stats.discarded
        ),
        &format!("deadpool: {}/{} failed", bare.failed(), bare.sent),
    );
}

#[tokio::test]
async fn s13_connections_growing_old_are_replaced_without_failures() {
    let cluster = Cluster::new().await.unwrap();
    let config = pool_config()
        .max_size(4)
        .max_lifetime(Some(Duration::from_millis(300)))
        .lifetime_jitter(0.5)
        .build()
        .unwrap();
    let db = stack(&cluster.url())
        .pool(config)
        .max_attempts(1)
        .build()
        .unwrap();
    let mut tally = Tally::default();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        for r in futures_util::future::join_all(
            (0..4).map(|_| db.run(Query::read("SELECT pg_sleep(0.01)"))),
        )
        .await
        {
            tally.record_rampart(&r);
        }
    }
    let stats = db.pool().stats();
    assert_eq!(tally.failed(), 0, "no query fails because of it: {tally:?}");
    assert!(stats.evicted_lifetime >= 4, "{stats:?}");
    assert!(stats.created > 4, "{stats:?}");
    report(
        "S13",
        &format!(
            "{}/{} ok while {} connections were retired by age",
            tally.ok, tally.sent, stats.evicted_lifetime
        ),
        "-",
    );
}

#[tokio::test]
async fn s14_bad_sql_and_constraint_violations_are_never_retried() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = stack(&proxy.url(&cluster)).build().unwrap();
    db.run(Query::write("CREATE TABLE u (id int PRIMARY KEY)"))
        .await
        .unwrap();
    db.run(Query::write("INSERT INTO u VALUES (1)"))
        .await
        .unwrap();
    let cases = [
        ("SELEC 1", "42601"),
        ("INSERT INTO u VALUES (1)", "23505"),
        ("SELECT 'x'::int", "22P02"),
        ("SELECT * FROM nowhere", "42P01"),
    ];
    for _ in 0..10 {
        for (sql, code) in cases {
            let err = db.run(Query::read(sql)).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Db);
            assert_eq!(err.code().map(|c| c.code()), Some(code), "SQLSTATE intact");
            assert_eq!(err.classification(), Classification::Permanent);
            assert_eq!(err.attempts(), None, "never retried");
        }
    }
    let breaker = db.breaker().unwrap().metrics();
    assert_eq!(
        breaker.failures, 0,
        "never counted by the breaker: {breaker:?}"
    );
    assert_eq!(breaker.state.as_str(), "closed");
    assert_eq!(proxy.stats().links_opened, 1, "the connection is kept");
    report(
        "S14",
        "40 errors (42601, 23505, 22P02, 42P01): 1 attempt each, SQLSTATE intact, breaker failures 0",
        "-",
    );
}
