//! Outcomes that never lie (issue 16): what a request's error says is what happened to it, whatever the
//! fault's shape, and nothing a caller does can leave a pooled connection in a state the next caller
//! would inherit.

use std::time::Duration;

use rampart::layers::Classification;
use rampart::testing::{Cluster, Fault, FaultProxy};
use rampart::{ErrorKind, PoolConfig, Query};

use crate::support::*;

/// A plain write (`v = 1`) through a link slower than the attempt timeout, with lost replies resolved
/// or not; returns what the caller got. One connection, on which the statement is already prepared: with
/// the fault on, the first thing sent is the statement itself (a statement still to be prepared would be
/// cut while preparing, before it was sent, and retried: the test after these). Each way 200 ms: the
/// statement arrives after 200 ms, its reply after 400 ms, past the 300 ms cut.
async fn write_through_a_slow_link(
    deadline: Duration,
    resolve: bool,
) -> (Cluster, FaultProxy, rampart::Db, rampart::Error) {
    let cluster = Cluster::new().await.unwrap();
    connect(&cluster.url())
        .await
        .batch_execute("CREATE TABLE t (v int)")
        .await
        .unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = stack(&proxy.url(&cluster))
        .pool(PoolConfig::builder().max_size(1).build().unwrap())
        .attempt_timeout(Duration::from_millis(300))
        .deadline(deadline)
        .resolve_outcomes(resolve)
        .build()
        .unwrap();
    let insert = Query::write("INSERT INTO t (v) VALUES ($1)");
    db.run(insert.clone().bind(0)).await.unwrap();
    proxy.set_fault(Fault::Latency(Duration::from_millis(200)));
    let err = db
        .run(insert.bind(1))
        .await
        .expect_err("the reply comes after the attempt timeout");
    proxy.set_fault(Fault::PassThrough);
    (cluster, proxy, db, err)
}

/// A plain write through a link slower than the attempt timeout: its statement reaches the server and
/// its reply comes too late. The write must never be sent again (one row at most), and if the caller
/// gets an error it must say the outcome is unknown.
#[tokio::test]
async fn a_write_whose_reply_is_slower_than_the_attempt_timeout_is_never_replayed() {
    // Lost replies not resolved (`resolve_outcomes(false)`): the next test is the same write with them
    // resolved.
    let (cluster, proxy, db, err) = write_through_a_slow_link(Duration::from_secs(10), false).await;
    assert!(
        err.is_outcome_unknown(),
        "the statement had been sent: {err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert_eq!(err.attempts(), None, "one attempt only: {err:?}");
    // The statement was delivered and runs to its end (the background cancel may or may not beat it):
    // at most one row, and no further attempt ever adds one.
    let rows = count(&cluster, "SELECT count(*) FROM t WHERE v = 1").await;
    assert!(
        rows <= 1,
        "a plain write is applied at most once: {rows} rows"
    );
    let retries = db.retries();
    assert_eq!(retries, 0, "no retry of a write whose outcome is unknown");

    // A read through the same slow link is retried: replaying it is harmless.
    proxy.set_fault(Fault::Latency(Duration::from_millis(200)));
    let read = db.run(Query::read("SELECT 1")).await.unwrap_err();
    proxy.set_fault(Fault::PassThrough);
    assert!(
        read.attempts().is_some_and(|a| a > 1),
        "reads are retried: {read:?}"
    );
    report(
        "O1",
        &format!(
            "plain write, reply slower than the attempt timeout: `{}`, outcome unknown, 1 attempt, {rows} row(s)",
            err.kind().as_str()
        ),
        "-",
    );
}

/// The same slow link, with lost replies resolved (the default): the transaction id comes back after
/// the attempt timeout, so COMMIT is never sent and each attempt is certainly not applied — retried,
/// and when the deadline ends it the error says "not applied", which the empty table confirms.
#[tokio::test]
async fn a_write_whose_reply_is_slower_than_the_attempt_timeout_is_resolved_not_applied() {
    let (cluster, _proxy, db, err) = write_through_a_slow_link(Duration::from_secs(2), true).await;
    assert!(!err.is_outcome_unknown(), "COMMIT was never sent: {err}");
    assert!(err.attempts().is_some_and(|a| a > 1), "retried: {err:?}");
    let resolved = db.resolved();
    assert!(resolved.not_applied >= 1, "{resolved:?}");
    assert_eq!(resolved.unknown, 0, "{resolved:?}");
    // Nothing committed, then or later (the old transactions end with their links or their idle limit).
    until_count_is(
        &cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
        |n| n == 0,
        "0",
    )
    .await;
    assert_eq!(
        count(&cluster, "SELECT count(*) FROM t WHERE v = 1").await,
        0
    );
    report(
        "O1r",
        &format!(
            "plain write, reply slower than the attempt timeout, lost replies resolved: `{}` not applied after {} attempts, 0 rows",
            err.kind().as_str(),
            err.attempts().unwrap_or(1)
        ),
        "-",
    );
}

/// A write cut by the attempt timeout *before* it was sent (the checkout or connect is what is slow) did
/// not happen, and says so: it is retried like any transient failure.
#[tokio::test]
async fn a_write_cut_before_it_was_sent_is_not_outcome_unknown() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = stack(&proxy.url(&cluster))
        .attempt_timeout(Duration::from_millis(300))
        .deadline(Duration::from_secs(10))
        .max_attempts(2)
        .build()
        .unwrap();
    // No connection yet, and none can be made: every attempt is cut while connecting.
    proxy.set_fault(Fault::BlackHole);
    let err = db
        .run(Query::write("CREATE TABLE never (v int)"))
        .await
        .unwrap_err();
    proxy.set_fault(Fault::PassThrough);
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
    assert!(!err.is_outcome_unknown(), "nothing was sent: {err:?}");
    assert_eq!(
        err.attempts(),
        Some(2),
        "retried: nothing had been sent: {err:?}"
    );
}

/// Transaction control through `run` is refused before anything is sent: a pooled connection left inside
/// a transaction would swallow the next caller's writes.
#[tokio::test]
async fn transaction_control_through_run_is_refused_and_session_state_never_leaks() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url())
        .pool(PoolConfig::builder().max_size(1).build().unwrap())
        .build()
        .unwrap();
    db.run(Query::write("CREATE TABLE t (v int)"))
        .await
        .unwrap();
    for sql in [
        "BEGIN",
        "start transaction",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT s",
        "PREPARE TRANSACTION 'x'",
        "/* hidden */ BEGIN",
        "COPY t TO STDOUT",
    ] {
        let err = db.run(Query::new(sql)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{sql}: {err}");
        assert_eq!(err.classification(), Classification::Permanent, "{sql}");
    }
    // The one pooled connection is not inside a transaction: this write is committed.
    db.run(Query::write("INSERT INTO t VALUES (1)"))
        .await
        .unwrap();
    assert_eq!(count(&cluster, "SELECT count(*) FROM t").await, 1);

    // A session setting does not follow the connection to the next caller: it is closed after use.
    let before = db.pool().stats().discarded;
    db.run(Query::new("SET search_path = nowhere"))
        .await
        .unwrap();
    assert_eq!(
        db.pool().stats().discarded,
        before + 1,
        "closed after a SET"
    );
    let path = db.run(Query::read("SHOW search_path")).await.unwrap();
    let path: String = path.first().unwrap().get(0);
    assert_eq!(
        path, "\"$user\", public",
        "the next caller gets a clean session"
    );
    let failures = db
        .breaker()
        .unwrap()
        .metrics()
        .failure_rate()
        .unwrap_or(0.0);
    assert_eq!(
        failures, 0.0,
        "refusals are the caller's mistakes, not the database's failures"
    );
}

/// Requests that are wrong fail once, as the caller's mistake: no retry, no breaker count, and their
/// healthy connection is kept.
#[tokio::test]
async fn deterministic_failures_are_permanent_and_cost_no_connection() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url()).build().unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    let created = db.pool().stats().created;
    let cases: Vec<(&str, Query)> = vec![
        ("NUL byte in the SQL", Query::read("SELECT 'a\0b'")),
        (
            "65,536 parameters",
            Query::read(format!(
                "SELECT {}",
                (1..=65_536)
                    .map(|i| format!("${i}::int"))
                    .collect::<Vec<_>>()
                    .join("+")
            )),
        ),
        (
            "a parameter of the wrong type",
            Query::read("SELECT $1::int").bind("text"),
        ),
    ];
    for (what, query) in cases {
        let err = db.run(query).await.unwrap_err();
        assert_eq!(
            err.classification(),
            Classification::Permanent,
            "{what}: {err:?}"
        );
        assert_eq!(err.attempts(), None, "{what}: one attempt: {err:?}");
        assert_ne!(err.kind(), ErrorKind::ConnectionLost, "{what}: {err:?}");
    }
    assert_eq!(db.pool().stats().discarded, 0, "{:?}", db.pool().stats());
    assert_eq!(db.pool().stats().created, created, "no new connection");
    assert_eq!(db.retries(), 0);
}

/// One table's contention is not the database failing: requests failing on a locked row never open the
/// breaker, and a healthy query is served.
#[tokio::test]
async fn contention_on_one_row_never_opens_the_breaker() {
    let cluster = Cluster::new().await.unwrap();
    let admin = connect(&cluster.url()).await;
    admin
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let db = stack(&cluster.url()).max_attempts(1).build().unwrap();
    let locker = connect(&cluster.url()).await;
    locker
        .batch_execute("BEGIN; SELECT * FROM t WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    for _ in 0..30 {
        let err = db
            .run(Query::read(
                "SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT",
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("55P03"), "{err}");
    }
    db.run(Query::read("SELECT 1"))
        .await
        .expect("the database is up: the breaker stays closed");
    assert_eq!(
        db.breaker().unwrap().state(),
        rampart::layers::breaker::BreakerState::Closed
    );
    locker.batch_execute("ROLLBACK").await.unwrap();
}

/// Settings a builder cannot honour are typed errors; extreme durations that can be honoured work.
#[tokio::test]
async fn extreme_settings_are_refused_or_honoured_never_a_panic() {
    for size in [0, 10_001, 1_000_000_000, usize::MAX] {
        let err = PoolConfig::builder().max_size(size).build().unwrap_err();
        assert_eq!(err.field(), "max_size");
    }
    let err = PoolConfig::builder()
        .keepalive_interval(Some(Duration::from_nanos(1)))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "keepalive_interval");

    let cluster = Cluster::new().await.unwrap();
    let pg = rampart::PgConfig::server(&cluster.url())
        .unwrap()
        .connect_timeout(Duration::MAX);
    let db = rampart::Stack::with_config(pg)
        .pool(
            PoolConfig::builder()
                .max_lifetime(Some(Duration::MAX))
                .validation(
                    rampart::layers::validate::ValidationPolicy::builder()
                        .check_timeout(Duration::MAX)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .deadline(Duration::from_secs(30 * 86_400))
        .attempt_timeout(Duration::from_secs(30 * 86_400))
        .build()
        .unwrap();
    db.run(Query::read("SELECT 1")).await.expect(
        "a 30-day deadline, an endless lifetime, connect and check timeouts of Duration::MAX work",
    );
    db.run(Query::read("SELECT 1").timeout(Duration::MAX))
        .await
        .expect("a query granted forever works");
}

/// Statements built with inlined values, each a new text: the pooled connection keeps a bounded number
/// prepared, on the client and on the server.
#[tokio::test]
async fn a_pooled_connection_keeps_a_bounded_number_of_prepared_statements() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url())
        .pool(PoolConfig::builder().max_size(1).build().unwrap())
        .build()
        .unwrap();
    for n in 0..2_500 {
        db.run(Query::read(format!("SELECT {n}"))).await.unwrap();
    }
    let prepared = db
        .run(Query::read("SELECT count(*) FROM pg_prepared_statements"))
        .await
        .unwrap();
    let prepared: i64 = prepared.first().unwrap().get(0);
    assert!(
        prepared <= 1_025,
        "at most 1,024 statements kept (and this one): {prepared} on the backend"
    );
    assert_eq!(db.pool().stats().created, 1, "all on the one connection");
    report(
        "O7",
        &format!(
            "2,500 distinct statements on one pooled connection: {prepared} prepared on its backend"
        ),
        "-",
    );
}

/// Errors say what happened: an open breaker says why it opened, a deadline says its limit, the attempts
/// made, the server and the last cause.
#[tokio::test]
async fn errors_of_the_layers_say_what_happened() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = stack(&proxy.url(&cluster))
        .attempt_timeout(Duration::from_millis(200))
        .deadline(Duration::from_millis(900))
        .breaker(None)
        .build()
        .unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    proxy.set_fault(Fault::BlackHole);
    let err = db.run(Query::read("SELECT 1")).await.unwrap_err();
    proxy.set_fault(Fault::PassThrough);
    let shown = err.to_string();
    if err.kind() == ErrorKind::DeadlineExceeded {
        assert!(err.attempts().is_some_and(|a| a >= 1), "{err:?}");
        assert!(shown.contains("900ms deadline"), "{shown}");
        assert!(
            shown.contains("attempt timed out after 200ms"),
            "the last cause: {shown}"
        );
    } else {
        // The retry layer gave up before sleeping into the deadline: the last cause, and the count.
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err:?}");
        assert!(err.attempts().is_some_and(|a| a > 1), "{err:?}");
    }
    assert!(shown.contains("127.0.0.1"), "names the server: {shown}");

    // The breaker: opened by refused connects, it says how many calls failed and the last cause.
    let proxy_url = proxy.url(&cluster);
    let breaker = rampart::layers::breaker::BreakerConfig::builder()
        .sliding_window(rampart::layers::breaker::SlidingWindow::Count(4))
        .minimum_calls(4)
        .wait_in_open(Duration::from_secs(60))
        .build()
        .unwrap();
    let db = stack(&proxy_url)
        .max_attempts(1)
        .breaker(Some(breaker))
        .build()
        .unwrap();
    proxy.set_fault(Fault::Refuse);
    let open = loop {
        let err = db.run(Query::read("SELECT 1")).await.unwrap_err();
        if err.kind() == ErrorKind::CircuitOpen {
            break err;
        }
        assert_eq!(err.kind(), ErrorKind::Connect, "{err}");
    };
    let shown = open.to_string();
    assert!(shown.contains("4 of the last 4 calls"), "{shown}");
    assert!(shown.contains("the last: connect"), "{shown}");
    assert!(open.retry_in().is_some(), "{open:?}");
}
