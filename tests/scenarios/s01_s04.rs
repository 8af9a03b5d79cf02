//! S1 idle connection killed, S2 restart while idle, S3 server down longer than the retry policy, S4 black hole.

use std::time::Duration;

use rampart::testing::{Cluster, Fault, FaultProxy};
use rampart::{ErrorKind, Query};

use crate::support::*;

async fn signups_table(cluster: &Cluster) {
    connect(&cluster.url())
        .await
        .batch_execute("CREATE TABLE signups (id bigserial PRIMARY KEY, email text)")
        .await
        .unwrap();
}

#[tokio::test]
async fn s01_idle_connection_killed() {
    let cluster = Cluster::builder()
        .setting("idle_session_timeout", "5s")
        .start()
        .await
        .unwrap();
    signups_table(&cluster).await;
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = stack(&proxy.url(&cluster)).build().unwrap();
    warm(&db, 4).await;
    assert_eq!(db.pool().stats().size, 4);

    // The links go quiet for longer than the bypass window, then a middlebox forgets them silently.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(proxy.kill_silently(), 4);
    let mut tally = Tally::default();
    for i in 0..4 {
        tally.record_rampart(&db.run(Query::read("SELECT count(*) FROM signups")).await);
        let write = Query::write("INSERT INTO signups (email) VALUES ($1)")
            .bind(format!("s1-{i}@example.com"));
        tally.record_rampart(&db.run(write).await);
    }
    assert_eq!(tally.ok, 8, "the caller sees no error: {tally:?}");
    assert_eq!(
        count(&cluster, "SELECT count(*) FROM signups").await,
        4,
        "every write applied once"
    );
    let stats = db.pool().stats();
    assert_eq!(
        stats.evicted_validation, 4,
        "each dead connection dropped at checkout: {stats:?}"
    );

    // The server side of the same trap: backends terminated while idle, and the server's own idle timeout.
    tokio::time::sleep(Duration::from_millis(150)).await;
    count(&cluster, "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'rampart') t").await;
    until_count(
        &cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rampart'",
        0,
    )
    .await;
    for _ in 0..4 {
        tally.record_rampart(
            &db.run(Query::write(
                "INSERT INTO signups (email) VALUES ('after-terminate')",
            ))
            .await,
        );
    }
    assert_eq!(tally.ok, 12, "{tally:?}");

    // The bare client, after the same silent kill: the next query meets the dead link.
    let bare = connect(&proxy.url(&cluster)).await;
    bare.simple_query("SELECT 1").await.unwrap();
    proxy.kill_silently();
    let mut bare_tally = Tally::default();
    bare_tally.record_pg(&bare.query("SELECT count(*) FROM signups", &[]).await);
    assert_eq!(
        bare_tally.ok, 0,
        "the bare client gets the dead connection: {bare_tally:?}"
    );

    // deadpool-postgres with its defaults checks only `is_closed()`, which a silent kill does not set.
    let pool = deadpool(&proxy.url(&cluster), 4);
    let held: Vec<_> = futures_util::future::join_all((0..4).map(|_| pool.get()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(held);
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.kill_silently();
    let mut deadpool_tally = Tally::default();
    for _ in 0..4 {
        let conn = pool.get().await.unwrap();
        deadpool_tally.record_pg(&conn.query("SELECT 1", &[]).await);
    }
    assert!(
        deadpool_tally.failed() >= 1,
        "deadpool hands out a silently killed connection: {deadpool_tally:?}"
    );
    report(
        "S1",
        &format!(
            "{}/{} ok, {} dead connections replaced at checkout",
            tally.ok, tally.sent, stats.evicted_validation
        ),
        &format!(
            "bare client: {}/{} failed ({:?}); deadpool: {}/{} failed",
            bare_tally.failed(),
            bare_tally.sent,
            bare_tally.errors.keys().collect::<Vec<_>>(),
            deadpool_tally.failed(),
            deadpool_tally.sent
        ),
    );
}

#[tokio::test]
async fn s02_server_restarted_while_idle() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url()).build().unwrap();
    warm(&db, 3).await;
    let bare = connect(&cluster.url()).await;
    bare.simple_query("SELECT 1").await.unwrap();

    cluster.restart().await.unwrap();
    let mut tally = Tally::default();
    for _ in 0..10 {
        tally.record_rampart(&db.run(Query::read("SELECT 1")).await);
    }
    assert_eq!(
        tally.ok, 10,
        "no error reaches the caller for idempotent work: {tally:?}"
    );

    let mut bare_tally = Tally::default();
    for _ in 0..10 {
        bare_tally.record_pg(&bare.query("SELECT 1", &[]).await);
    }
    assert_eq!(
        bare_tally.ok, 0,
        "the bare client's connection is gone for good: {bare_tally:?}"
    );
    report(
        "S2",
        &format!("{}/{} ok after a restart", tally.ok, tally.sent),
        &format!(
            "bare client: {}/{} failed ({:?})",
            bare_tally.failed(),
            bare_tally.sent,
            bare_tally.errors.keys().collect::<Vec<_>>()
        ),
    );
}

#[tokio::test]
async fn s03_server_down_longer_than_the_retry_policy() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = stack(&proxy.url(&cluster)).max_attempts(3).build().unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    cluster.stop().unwrap();

    // Calls fail until the breaker opens...
    let mut before_open = Tally::default();
    loop {
        let result = db.run(Query::read("SELECT 1")).await;
        let open = matches!(&result, Err(e) if e.kind() == ErrorKind::CircuitOpen);
        before_open.record_rampart(&result);
        if open {
            break;
        }
        assert!(
            before_open.sent < 1000,
            "the breaker never opened: {before_open:?}"
        );
    }
    // ...then they fail fast, without touching the network.
    let links = proxy.stats().links_accepted;
    let mut open_tally = Tally::default();
    for _ in 0..200 {
        let result = db.run(Query::read("SELECT 1")).await;
        if let Err(e) = &result {
            assert_eq!(e.kind(), ErrorKind::CircuitOpen, "{e}");
            assert!(e.retry_in().is_some());
        }
        open_tally.record_rampart(&result);
    }
    assert_eq!(open_tally.errors.get("circuit_open"), Some(&200));
    assert_eq!(
        proxy.stats().links_accepted,
        links,
        "an open breaker makes no attempt"
    );

    // The server comes back; after the open wait, probes go through and the breaker closes.
    cluster.start().await.unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    let mut probes = 0;
    loop {
        probes += 1;
        if db.run(Query::read("SELECT 1")).await.is_ok()
            && db.breaker().unwrap().state().as_str() == "closed"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts = proxy.stats().links_accepted;
    assert!(
        attempts < 60,
        "no retry storm: {attempts} connection attempts in all"
    );
    report(
        "S3",
        &format!(
            "opened after {} failed calls; 200 calls then failed fast with circuit_open and 0 connection attempts; closed again after {probes} calls once the server was back; {attempts} connection attempts in all",
            before_open.sent
        ),
        "-",
    );
}

#[tokio::test]
async fn s04_network_black_hole() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    // The deadline is far beyond attempts × attempt timeout: if the attempt timeout did not cut each
    // attempt, the request would end at the deadline (DeadlineExceeded), not with Timeout after 2 attempts.
    let db = stack(&proxy.url(&cluster))
        .attempt_timeout(Duration::from_millis(500))
        .deadline(Duration::from_secs(20))
        .max_attempts(2)
        .build()
        .unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    let bare = connect(&proxy.url(&cluster)).await;
    bare.simple_query("SELECT 1").await.unwrap();

    proxy.set_fault(Fault::BlackHole);
    let err = tokio::time::timeout(BOUND, db.run(Query::read("SELECT 1")))
        .await
        .expect("bounded")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "each attempt is cut: {err}");
    assert_eq!(
        err.attempts(),
        Some(2),
        "both attempts were made and cut: {err}"
    );
    let discarded = db.pool().stats().discarded;
    assert!(
        discarded >= 1,
        "the stuck connection is discarded, never reused: {:?}",
        db.pool().stats()
    );

    // The bare client has no limit of its own: its query is still waiting when ours has long given up.
    let hung = tokio::time::timeout(Duration::from_secs(3), bare.query("SELECT 1", &[]))
        .await
        .is_err();
    assert!(hung, "the bare query hangs in a black hole");

    proxy.set_fault(Fault::PassThrough);
    let opened = proxy.stats().links_opened;
    db.run(Query::read("SELECT 1"))
        .await
        .expect("works again once the path is back");
    assert!(proxy.stats().links_opened > opened, "on a new connection");
    report(
        "S4",
        &format!(
            "{} after 2 attempts cut at the 500 ms attempt timeout (deadline 20 s); {discarded} stuck connection(s) discarded",
            err.kind().as_str()
        ),
        "bare client: no answer after 3 s (TCP would retransmit for minutes)",
    );
}
