//! S5 reset mid-write, S6 query slower than its deadline, S7 connection refused, S8 pool exhausted,
//! S9 too many connections.

use std::time::Duration;

use rampart::testing::{Cluster, Fault, FaultProxy};
use rampart::{ErrorKind, Query};

use crate::support::*;

/// Waits until a statement containing `marker` is running on the server: sleeping in `pg_sleep`, not
/// merely being parsed (a prepared statement's text shows as active while its `Parse` is handled, before
/// it is even sent to run; a fault then is one before sending).
async fn until_running(cluster: &Cluster, marker: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND state = 'active' AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()"
    );
    until_count_is(cluster, &sql, |n| n >= 1, "at least 1").await;
}

#[tokio::test]
async fn s05_reset_in_the_middle_of_a_non_idempotent_write() {
    let cluster = Cluster::new().await.unwrap();
    connect(&cluster.url())
        .await
        .batch_execute("CREATE TABLE w (request_id text PRIMARY KEY, at timestamptz DEFAULT now())")
        .await
        .unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = stack(&proxy.url(&cluster)).build().unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    // Without resolving lost replies (`resolve_outcomes(false)`): what every driver and pool does.
    let unresolved = stack(&proxy.url(&cluster))
        .resolve_outcomes(false)
        .build()
        .unwrap();

    // Not idempotent: the reset leaves the outcome unknown, and it is reported, not replayed.
    let write = unresolved.run(Query::write(
        "INSERT INTO w (request_id) SELECT 'plain' FROM pg_sleep(2) /* s5-plain */",
    ));
    let reset = async {
        until_running(&cluster, "s5-plain").await;
        proxy.reset_all();
    };
    let (result, ()) = tokio::join!(write, reset);
    let err = result.unwrap_err();
    assert!(err.is_outcome_unknown(), "{err}");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost);
    assert_eq!(err.attempts(), None, "not retried");
    assert!(
        err.to_string().contains("outcome is unknown"),
        "the error says so: {err}"
    );
    // The server finishes the statement it had (the reset reaches the backend only when it answers):
    // the write the caller was told is "unknown" was in fact applied, which is why replaying it would
    // have been wrong.
    until_count(
        &cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%s5-plain%' AND state = 'active' AND pid <> pg_backend_pid()",
        0,
    )
    .await;
    let plain_rows = count(
        &cluster,
        "SELECT count(*) FROM w WHERE request_id = 'plain'",
    )
    .await;
    assert!(plain_rows <= 1);

    // The same plain write through the default stack: the lost reply is looked up on the server (the
    // statement still running: its backend ended, its transaction rolled back, so it is retried), and the
    // caller gets a definite answer — applied exactly once.
    let write = db.run(Query::write(
        "INSERT INTO w (request_id) SELECT 'resolved' FROM pg_sleep(2) /* s5-resolved */",
    ));
    let reset = async {
        until_running(&cluster, "s5-resolved").await;
        proxy.reset_all();
    };
    let (resolved, ()) = tokio::join!(write, reset);
    let resolved = resolved.expect("a definite answer: applied");
    let looked_up = db.resolved();
    assert_eq!(looked_up.unknown, 0, "{looked_up:?}");
    assert_eq!(looked_up.total(), 1, "{looked_up:?}");
    until_count(
        &cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%s5-resolved%' AND state = 'active' AND pid <> pg_backend_pid()",
        0,
    )
    .await;
    assert_eq!(
        count(
            &cluster,
            "SELECT count(*) FROM w WHERE request_id = 'resolved'"
        )
        .await,
        1,
        "applied exactly once"
    );

    // Marked idempotent with a key the statement deduplicates on: replayed, applied exactly once.
    let keyed = Query::write(
        "INSERT INTO w (request_id) SELECT $1 FROM pg_sleep(2) ON CONFLICT (request_id) DO NOTHING /* s5-keyed */",
    )
        .bind("keyed")
        .idempotency_key("keyed");
    let write = db.run(keyed);
    let reset = async {
        until_running(&cluster, "s5-keyed").await;
        proxy.reset_all();
    };
    let (result, ()) = tokio::join!(write, reset);
    result.expect("an idempotent write is retried after an unknown outcome");
    assert_eq!(
        count(
            &cluster,
            "SELECT count(*) FROM w WHERE request_id = 'keyed'"
        )
        .await,
        1
    );
    report(
        "S5",
        &format!(
            "plain write, lost replies not resolved: `{}` after 1 attempt (row applied: {plain_rows}); resolved (the default): Ok{}, 1 row ({} committed, {} not applied and retried); keyed write: retried, 1 row",
            err.kind().as_str(),
            if resolved.reply_lost() {
                ", reply lost"
            } else {
                ""
            },
            looked_up.committed,
            looked_up.not_applied
        ),
        "-",
    );
}

#[tokio::test]
async fn s06_query_slower_than_its_deadline() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url())
        .deadline(Duration::from_millis(800))
        .attempt_timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let err = db
        .run(Query::read("SELECT pg_sleep(30)"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::DeadlineExceeded),
        "{err}"
    );
    // The server-side query is cancelled too: no backend is left running it.
    until_count(&cluster, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'", 0)
        .await;
    report(
        "S6",
        &format!(
            "`{}` at the 800 ms deadline; server-side query cancelled",
            err.kind().as_str()
        ),
        "-",
    );
}

#[tokio::test]
async fn s07_connection_refused() {
    let cluster = Cluster::builder()
        .password("hunter2-s7")
        .start()
        .await
        .unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    proxy.set_fault(Fault::Refuse);
    until("the proxy refuses", || {
        std::net::TcpStream::connect(proxy.addr()).is_err()
    })
    .await;
    let db = stack(&proxy.url(&cluster))
        .max_attempts(3)
        .breaker(None)
        .build()
        .unwrap();
    let err = db.run(Query::read("SELECT 1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    assert_eq!(
        err.attempts(),
        Some(3),
        "stops at the configured limit: {err}"
    );
    assert_eq!(db.pool().stats().connect_failures, 3);
    let shown = format!("{err} | {err:?}");
    assert!(
        shown.contains(&proxy.addr().to_string()),
        "names the address: {shown}"
    );
    assert!(shown.contains("refused"), "{shown}");
    assert!(
        !shown.contains("hunter2-s7"),
        "without the password: {shown}"
    );
    report(
        "S7",
        &format!(
            "`{}` after 3 attempts, naming {} and not the password",
            err.kind().as_str(),
            proxy.addr()
        ),
        "-",
    );
}

#[tokio::test]
async fn s08_pool_exhausted() {
    let cluster = Cluster::new().await.unwrap();
    let config = pool_config()
        .max_size(2)
        .wait_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let db = stack(&cluster.url())
        .pool(config)
        .deadline(Duration::from_secs(2))
        .attempt_timeout(Duration::from_secs(2))
        .max_attempts(1)
        .build()
        .unwrap();
    // Two callers hold both connections, blocked on a lock an admin session holds until the waiters
    // have had their answers; six more arrive once both connections are seen in use.
    let admin = connect(&cluster.url()).await;
    admin
        .simple_query("SELECT pg_advisory_lock(1)")
        .await
        .unwrap();
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                db.run(Query::read("SELECT pg_advisory_xact_lock(1)").timeout(BOUND))
                    .await
            })
        })
        .collect();
    until("both pooled connections are held", || {
        db.pool().stats().in_use == 2
    })
    .await;
    let waiters = (0..6).map(|_| db.run(Query::read("SELECT 1")));
    let waited = tokio::time::timeout(BOUND, futures_util::future::join_all(waiters))
        .await
        .expect("no deadlock: every waiter gets an answer");
    admin
        .simple_query("SELECT pg_advisory_unlock(1)")
        .await
        .unwrap();
    let mut held = Vec::new();
    for holder in holders {
        held.push(holder.await.expect("holder task"));
    }
    let mut tally = Tally::default();
    for r in held.iter() {
        tally.record_rampart(r);
    }
    for r in waited.iter() {
        tally.record_rampart(r);
        if let Err(e) = r {
            assert_eq!(e.kind(), ErrorKind::PoolExhausted, "{e}");
            assert!(e.to_string().contains("2 of 2 connections in use"), "{e}");
        }
    }
    assert_eq!(tally.sent, 8);
    assert_eq!(held.iter().filter(|r| r.is_ok()).count(), 2);
    assert_eq!(tally.errors.get("pool_exhausted"), Some(&6), "{tally:?}");
    report(
        "S8",
        &format!(
            "2 holders ok; 6 waiters got `pool_exhausted` after the 300 ms wait; {} answers for 8 callers",
            tally.sent
        ),
        "-",
    );
}

#[tokio::test]
async fn s09_too_many_connections() {
    let cluster = Cluster::builder()
        .setting("max_connections", "3")
        .setting("superuser_reserved_connections", "0")
        .start()
        .await
        .unwrap();
    let mut hogs = Vec::new();
    for _ in 0..3 {
        hogs.push(connect(&cluster.url()).await);
    }
    let db = stack(&cluster.url())
        .deadline(Duration::from_secs(20))
        .max_attempts(20)
        .breaker(None)
        .build()
        .unwrap();
    let query = db.run(Query::read("SELECT 1"));
    let free_a_slot = async {
        until("a connect was refused with 53300", || {
            db.pool().stats().connect_failures >= 1
        })
        .await;
        hogs.pop();
    };
    let (result, ()) = tokio::join!(query, free_a_slot);
    result.expect("retried with backoff until a slot freed");
    let failures = db.pool().stats().connect_failures;
    assert!(failures >= 1);
    report(
        "S9",
        &format!("ok after {failures} connect(s) refused with 53300, once a slot freed"),
        "-",
    );
}
