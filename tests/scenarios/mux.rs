//! The multiplexed mode (`StackBuilder::multiplex`) under the faults the pooled stack survives: a reset of
//! every connection under load, a silent kill while idle, a slow statement beside fast ones, a restart,
//! and transactions mixed with multiplexed statements. Outcomes are checked against the table.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart::IsolationLevel;
use rampart::testing::{Accounts, Cluster, FaultProxy};
use rampart::{Db, ErrorKind, MuxConfig, PoolerMode, Query, Stack};

use crate::support::{
    RestartOutcome, Tally, connect, count, keyed_writes_across_a_restart, pool_config, report,
    stack, until,
};

fn mux(connections: usize) -> MuxConfig {
    MuxConfig::builder()
        .connections(connections)
        .build()
        .unwrap()
}

fn stats(db: &Db) -> rampart::MuxStats {
    db.service().mux_stats().expect("the stack is multiplexed")
}

/// Sends a first request (which finds no shared connection yet and goes to the pool while they are
/// opened) and waits until all `connections` shared connections are ready.
async fn ready(db: &Db, connections: usize) {
    db.run(Query::read("SELECT 1")).await.unwrap();
    until("the shared connections are ready", || {
        stats(db).ready == connections
    })
    .await;
}

/// A cluster with `schema` applied, the fault proxy in front of it, and a stack with two shared
/// connections through the proxy, both ready.
async fn behind_proxy(schema: &str) -> (Cluster, FaultProxy, Db) {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    connect(&cluster.url())
        .await
        .batch_execute(schema)
        .await
        .unwrap();
    // Lost replies not resolved: the plain writes of these tests ride the shared connections, whose
    // failures they are about (with resolution, the default, plain writes take the pool: that path is
    // `resolved.rs`'s).
    let db = stack(&proxy.url(&cluster))
        .multiplex(mux(2))
        .resolve_outcomes(false)
        .build()
        .unwrap();
    ready(&db, 2).await;
    (cluster, proxy, db)
}

#[tokio::test]
async fn mux_independent_statements_share_connections_and_session_work_does_not() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url()).multiplex(mux(2)).build().unwrap();
    // The first requests find no shared connection yet and go to the pool while two are opened.
    ready(&db, 2).await;

    let reads = (0..200).map(|i| db.run(Query::read("SELECT $1::int + 1").bind(i)));
    for (i, r) in futures_util::future::join_all(reads)
        .await
        .into_iter()
        .enumerate()
    {
        let n: i32 = r.unwrap().rows()[0].get(0);
        assert_eq!(n, i as i32 + 1);
    }
    let s = stats(&db);
    assert!(s.shared >= 200, "reads ran on shared connections: {s:?}");
    assert_eq!(s.connects, 2, "two shared connections, opened once: {s:?}");
    assert_eq!(s.exclusive, 0);
    let backends = count(
        &cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = current_database()",
    )
    .await;
    assert!(
        backends <= 2 + 1 + 1,
        "200 concurrent reads used the two shared connections (plus at most the warm-up's pooled one \
         and the counting one), not a connection each: {backends}"
    );

    // Session work takes a connection of its own.
    db.run(Query::new("CREATE TEMP TABLE scratch (x int)"))
        .await
        .unwrap();
    db.run(Query::read("SELECT pg_sleep(0)").exclusive())
        .await
        .unwrap();
    db.run(Query::read("SELECT 1").timeout(Duration::from_secs(9)))
        .await
        .unwrap();
    assert_eq!(
        stats(&db).exclusive,
        3,
        "a temp table, an exclusive() query and one granted more than the shared statement timeout"
    );
    // Bad SQL on a shared connection is the caller's error, not the connection's.
    let err = db.run(Query::read("SELEC 1")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Db);
    assert_eq!(err.code().map(|c| c.code()), Some("42601"));
    assert_eq!(stats(&db).lost, 0);
    let health = db.health(None).await;
    assert_eq!(health.multiplex.map(|m| m.connections), Some(2));
}

#[tokio::test]
async fn mux_is_refused_behind_a_transaction_pooler() {
    let err = Stack::server("postgres://app@127.0.0.1:6432/app")
        .pooling(PoolerMode::Transaction)
        .multiplex(MuxConfig::default())
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "multiplex");
}

/// Every shared connection is reset while 32 callers run reads and non-idempotent writes: every read
/// succeeds (replayed on a new connection), and every write is either acknowledged and applied exactly
/// once, or reported as outcome unknown and applied at most once; nothing else fails.
#[tokio::test]
async fn mux_connection_reset_under_load() {
    const CALLERS: usize = 32;
    const PER_CALLER: usize = 60;
    let (cluster, proxy, db) = behind_proxy("CREATE TABLE events (caller int, n int)").await;

    let done = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(Mutex::new(Tally::default()));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let callers = (0..CALLERS).map(|caller| {
        let (db, done, reads, writes) = (db.clone(), done.clone(), reads.clone(), writes.clone());
        async move {
            for n in 0..PER_CALLER {
                let read = db.run(Query::read("SELECT count(*) FROM events")).await;
                reads.lock().unwrap().record_rampart(&read);
                let write = Query::write("INSERT INTO events VALUES ($1, $2)")
                    .bind(caller as i32)
                    .bind(n as i32);
                let result = db.run(write).await;
                writes
                    .lock()
                    .unwrap()
                    .push((caller as i32, n as i32, result));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let fault = async {
        // Both shared connections open (the reads are what use them: plain writes take the pool).
        until(
            "a third of the work is done, on both shared connections",
            || done.load(Ordering::Relaxed) > CALLERS * PER_CALLER / 3 && stats(&db).ready == 2,
        )
        .await;
        proxy.reset_all()
    };
    let (_, reset) = tokio::join!(futures_util::future::join_all(callers), fault);
    assert!(reset >= 2, "the shared connections were reset: {reset}");

    let reads = reads.lock().unwrap().clone();
    assert_eq!(
        reads.ok,
        CALLERS * PER_CALLER,
        "every read succeeded: {reads:?}"
    );
    let client = connect(&cluster.url()).await;
    let (mut acknowledged, mut unknown) = (0, 0);
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    for (caller, n, result) in &writes {
        let applied: i64 = client
            .query_one(
                "SELECT count(*) FROM events WHERE caller = $1 AND n = $2",
                &[caller, n],
            )
            .await
            .unwrap()
            .get(0);
        match result {
            Ok(_) => {
                acknowledged += 1;
                assert_eq!(
                    applied, 1,
                    "acknowledged write ({caller}, {n}) applied exactly once"
                );
            }
            Err(e) if e.is_outcome_unknown() => {
                unknown += 1;
                assert!(
                    applied <= 1,
                    "write ({caller}, {n}) of unknown outcome applied {applied} times"
                );
            }
            Err(e) => panic!("write ({caller}, {n}) failed with {e}; applied {applied} times"),
        }
    }
    let s = stats(&db);
    assert!(
        s.lost >= 1,
        "the multiplexer saw its connections die: {s:?}"
    );
    until("the shared connections are replaced", || {
        stats(&db).ready == 2
    })
    .await;
    assert!(stats(&db).connects >= 3, "{:?}", stats(&db));
    assert_eq!(
        db.pool_rebuilds(),
        0,
        "lost shared connections never rebuild the pool"
    );
    report(
        "MUX-RESET",
        &format!(
            "{CALLERS} callers, shared connections reset mid-run: {} reads all ok; {acknowledged} writes acknowledged and applied once, {unknown} reported outcome unknown",
            reads.ok
        ),
        "-",
    );
}

/// The shared connections go idle past the bypass window and a middlebox forgets them silently: the next
/// requests, writes included, succeed with no error and are applied once.
#[tokio::test]
async fn mux_silent_kill_while_idle_is_invisible() {
    let (cluster, proxy, db) = behind_proxy("CREATE TABLE signups (email text)").await;
    // Idle for longer than the 100 ms bypass window, then every link is silently dropped.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(proxy.kill_silently() >= 2);
    let mut tally = Tally::default();
    for i in 0..4 {
        tally.record_rampart(&db.run(Query::read("SELECT count(*) FROM signups")).await);
        let write =
            Query::write("INSERT INTO signups VALUES ($1)").bind(format!("m{i}@example.com"));
        tally.record_rampart(&db.run(write).await);
    }
    assert_eq!(tally.ok, 8, "the caller sees no error: {tally:?}");
    assert_eq!(count(&cluster, "SELECT count(*) FROM signups").await, 4);
    let s = stats(&db);
    assert!(
        s.validated >= 1 && s.lost >= 1,
        "validation found the dead links: {s:?}"
    );
    report(
        "MUX-SILENT",
        "shared connections silently killed while idle: 8 of 8 requests ok, 4 writes applied once",
        "-",
    );
}

/// A slow statement granted a long timeout goes to a connection of its own, and fast requests beside it
/// never wait for it; one that is not is cut at the shared statement timeout (with an error saying so,
/// not retried), so fast requests queued behind it wait at most that long and all meet their deadline.
#[tokio::test]
async fn mux_slow_statement_beside_fast_ones() {
    let cluster = Cluster::new().await.unwrap();
    let shared_limit = Duration::from_millis(300);
    let db = stack(&cluster.url())
        .multiplex(
            MuxConfig::builder()
                .connections(2)
                .statement_timeout(shared_limit)
                .build()
                .unwrap(),
        )
        .attempt_timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    ready(&db, 2).await;

    // (slow statement, deadline of the fast ones beside it)
    let cases = [
        (
            Query::read("SELECT pg_sleep(1)").timeout(Duration::from_secs(3)),
            Duration::from_millis(200),
        ),
        (Query::read("SELECT pg_sleep(1)"), Duration::from_secs(1)),
    ];
    for (index, (slow, fast_deadline)) in cases.into_iter().enumerate() {
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fast = (0..8).map(|_| {
            let (db, finished) = (db.clone(), finished.clone());
            async move {
                let mut tally = Tally::default();
                // Run until the slow statement is over, and at least 20 times.
                while !finished.load(Ordering::Relaxed) || tally.sent < 20 {
                    let q = Query::read("SELECT 1").timeout(fast_deadline);
                    tally.record_rampart(&db.run(q).await);
                }
                tally
            }
        });
        let slow_run = async {
            let result = db.run(slow).await;
            finished.store(true, Ordering::Relaxed);
            result
        };
        let (tallies, slow_result) = tokio::join!(futures_util::future::join_all(fast), slow_run);
        for tally in &tallies {
            assert_eq!(
                tally.failed(),
                0,
                "case {index}: fast requests all within their {fast_deadline:?} deadline: {tally:?}"
            );
        }
        if index == 0 {
            slow_result.expect("the slow statement ran on a connection of its own");
            assert_eq!(stats(&db).exclusive, 1);
        } else {
            let err = slow_result.expect_err("the shared statement timeout cut it");
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            assert_eq!(err.attempts(), None, "not retried: {err}");
            assert!(err.to_string().contains("exclusive"), "{err}");
        }
    }
    report(
        "MUX-SLOW",
        "8 fast callers beside a 1 s statement: routed to its own connection, fast ones meet a 200 ms deadline; unflagged, cut at the 300 ms shared statement timeout, fast ones meet a 1 s deadline",
        "-",
    );
}

/// The server restarts under load (the workload of S18): every keyed write acknowledged is present, every
/// failure is typed, and the shared connections are reopened and carry the traffic again.
#[tokio::test]
async fn mux_load_during_a_restart() {
    const WRITES: usize = 1500;
    const CONCURRENCY: usize = 48;
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url())
        .pool(pool_config().max_size(8).build().unwrap())
        .multiplex(mux(2))
        .deadline(Duration::from_secs(30))
        .max_attempts(10)
        .build()
        .unwrap();
    ready(&db, 2).await;
    let connects_before = stats(&db).connects;
    let RestartOutcome { tally, rows } =
        keyed_writes_across_a_restart(&cluster, &db, WRITES, CONCURRENCY).await;
    assert!(
        rows >= tally.ok && rows <= WRITES,
        "rows {rows}, acknowledged {}",
        tally.ok
    );
    until("the shared connections are reopened", || {
        let s = stats(&db);
        s.ready == 2 && s.connects >= connects_before + 2
    })
    .await;
    let shared_before = stats(&db).shared;
    for _ in 0..20 {
        db.run(Query::read("SELECT 1")).await.unwrap();
    }
    assert!(stats(&db).shared >= shared_before + 20);
    report(
        "MUX-RESTART",
        &format!(
            "{WRITES} keyed writes at concurrency {CONCURRENCY} across a restart, multiplexed: {} ok, {} typed errors, each acknowledged write present",
            tally.ok,
            tally.failed()
        ),
        "-",
    );
}

/// Serializable transfers (on pool connections) run while multiplexed reads and writes load the shared
/// connections: the money adds up and every statement succeeds.
#[tokio::test]
async fn mux_transactions_mix_with_multiplexed_statements() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url()).multiplex(mux(2)).build().unwrap();
    let bank = Accounts::new(4, 1000);
    bank.create(db.clone()).await.unwrap();
    db.run(Query::write("CREATE TABLE log (n int)"))
        .await
        .unwrap();
    let transfers = db
        .transactor()
        .isolation(IsolationLevel::Serializable)
        .max_attempts(50);
    let mut tasks = vec![tokio::spawn(async move {
        for outcome in bank.run_transfers(&transfers, 6, 10, 10).await {
            outcome.expect("every transfer commits");
        }
    })];
    for c in 0..24i32 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..40i32 {
                let total: i64 = db
                    .run(Query::read("SELECT sum(balance)::bigint FROM accounts"))
                    .await
                    .unwrap()
                    .rows()[0]
                    .get(0);
                assert_eq!(total, 4000, "a read never sees half a transfer");
                db.run(Query::write("INSERT INTO log VALUES ($1)").bind(c * 1000 + n))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(count(&cluster, "SELECT count(*) FROM log").await, 24 * 40);
    assert_eq!(
        Accounts::audit(&cluster.url()).await,
        (bank.total(), 60),
        "the money adds up and each transfer was applied once"
    );
    let s = stats(&db);
    // The reads share; the plain writes (no key) run in transactions of their own, on the pool, so that
    // a lost reply can be resolved.
    assert!(
        s.shared >= 24 * 40,
        "statements ran on the shared connections: {s:?}"
    );
    assert!(
        s.exclusive >= 24 * 40,
        "plain writes went to the pool: {s:?}"
    );
    assert_eq!(s.lost, 0);
}

/// A shared connection past its max lifetime is replaced while it keeps serving: the requests running
/// across the hand-over all succeed.
#[tokio::test]
async fn mux_connections_are_replaced_at_the_end_of_their_lifetime() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url())
        .pool(
            pool_config()
                .max_lifetime(Some(Duration::from_millis(300)))
                .lifetime_jitter(0.0)
                .build()
                .unwrap(),
        )
        .multiplex(mux(1))
        .build()
        .unwrap();
    ready(&db, 1).await;
    let mut tally = Tally::default();
    let deadline = tokio::time::Instant::now() + crate::support::BOUND;
    while stats(&db).retired < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retirement: {:?}",
            stats(&db)
        );
        let batch = (0..8).map(|_| db.run(Query::read("SELECT 1")));
        for r in futures_util::future::join_all(batch).await {
            tally.record_rampart(&r);
        }
    }
    assert_eq!(tally.failed(), 0, "{tally:?}");
    let s = stats(&db);
    assert!(s.connects >= 2 && s.lost == 0, "{s:?}");
}

/// A parameter that cannot be encoded as the statement's type, or the wrong number of parameters, is the
/// caller's mistake: a typed permanent error, never retried, and the connection (pooled or shared) is
/// kept. tokio-postgres reports it without a SQLSTATE, like a lost connection.
#[tokio::test]
async fn a_bad_parameter_is_the_callers_mistake_pooled_or_multiplexed() {
    let cluster = Cluster::new().await.unwrap();
    for multiplexed in [false, true] {
        let mut builder = stack(&cluster.url());
        if multiplexed {
            builder = builder.multiplex(mux(1));
        }
        let db = builder.build().unwrap();
        if multiplexed {
            ready(&db, 1).await;
        } else {
            db.run(Query::read("SELECT 1")).await.unwrap();
        }
        for query in [
            Query::read("SELECT $1::int").bind("not a number"),
            Query::read("SELECT $1::int"),
        ] {
            let err = db.run(query).await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidRequest, "{err}");
            assert_eq!(
                err.classification(),
                rampart::layers::Classification::Permanent
            );
            assert_eq!(err.attempts(), None, "not retried: {err}");
        }
        db.run(Query::read("SELECT 1")).await.unwrap();
        assert_eq!(db.retries(), 0);
        assert_eq!(
            db.pool().stats().discarded,
            0,
            "the pooled connection is kept"
        );
        if multiplexed {
            let s = stats(&db);
            assert_eq!(
                (s.lost, s.connects),
                (0, 1),
                "the shared connection is kept: {s:?}"
            );
        }
    }
}

/// A shared connection keeps at most 1,024 statements prepared, on the client and on the server, however
/// many distinct statements pass through it.
#[tokio::test]
async fn mux_statement_cache_is_bounded() {
    let cluster = Cluster::new().await.unwrap();
    let db = stack(&cluster.url()).multiplex(mux(1)).build().unwrap();
    ready(&db, 1).await;
    for i in 0..1100 {
        db.run(Query::read(format!("SELECT {i}"))).await.unwrap();
    }
    // Run on the shared connection itself, so it counts that session's statements.
    let prepared: i64 = db
        .run(Query::read("SELECT count(*) FROM pg_prepared_statements"))
        .await
        .unwrap()
        .rows()[0]
        .get(0);
    assert!(
        (1..=1025).contains(&prepared),
        "{prepared} statements prepared on the shared connection"
    );
    let s = stats(&db);
    assert!(s.shared >= 1100 && s.lost == 0, "{s:?}");
}
