//! Lost replies resolved (issue 19): a plain write — no idempotency key — whose reply is lost is looked
//! up on the server, and is then either applied exactly once and reported so, or reported as not applied
//! and retried, applied exactly once in the end. On every path: pooled, multiplexed (a marked write takes
//! a pooled connection), behind PgBouncer in transaction mode, and the transactor.
//!
//! Each fault is built so that the answer is forced, and the test says which it must be:
//!
//! - **committed**: the commit waits for a synchronous standby that does not exist
//!   (`synchronous_standby_names`), so the reply never comes; the attempt timeout cuts the attempt, the
//!   lookup finds the transaction in progress, terminates its backend (which leaves a commit that waits
//!   for a standby committed locally: PostgreSQL's documented behaviour) and finds it committed. Nothing
//!   may be retried: one row.
//! - **not applied, COMMIT never sent**: every reply is held (a black hole after the request is
//!   delivered), so the transaction id never comes back and COMMIT is never written; the attempt is cut and
//!   answered "not applied" without asking, and retried once the link is back: one row.
//! - **either, but definite**: the link is reset while the statement is still running on the server
//!   (COMMIT already sent behind it): the lookup must give a definite answer, and the row must be there
//!   exactly once.

use std::sync::Arc;
use std::time::Duration;

use rampart::testing::{Cluster, Fault, FaultProxy, PgBouncer, until, until_async};
use rampart::{Db, ErrorKind, MuxConfig, Query, StackBuilder};

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Pooled,
    Multiplexed,
    Pooler,
}

struct Rig {
    cluster: Cluster,
    proxy: FaultProxy,
    _bouncer: Option<PgBouncer>,
    db: Db,
}

async fn rig(path: Path) -> Rig {
    // A commit waits for a synchronous standby only when commits are synchronous.
    let cluster = Cluster::builder()
        .setting("synchronous_commit", "on")
        .start()
        .await
        .unwrap();
    connect(&cluster.url())
        .await
        .batch_execute("CREATE TABLE t (v int NOT NULL)")
        .await
        .unwrap();
    let (proxy, bouncer) = match path {
        Path::Pooler => {
            let bouncer = PgBouncer::builder().start(&cluster).await.unwrap();
            (
                FaultProxy::start(bouncer.addr()).await.unwrap(),
                Some(bouncer),
            )
        }
        _ => (FaultProxy::start(cluster.addr()).await.unwrap(), None),
    };
    let url = proxy.url(&cluster);
    let mut builder: StackBuilder = match path {
        Path::Pooler => rampart::Stack::pooler(&url),
        _ => stack(&url),
    };
    builder = builder
        .attempt_timeout(Duration::from_millis(600))
        .deadline(Duration::from_secs(20));
    if path == Path::Multiplexed {
        builder = builder.multiplex(MuxConfig::default());
    }
    let db = builder.build().unwrap();
    // Warm: the statements prepared (or their types learned) and the server's functions known, so the
    // fault meets the write itself.
    for sql in [INSERT, INSERT_RETURNING] {
        db.run(Query::write(sql).bind(-1)).await.unwrap();
    }
    db.run(Query::write(SLOW_INSERT).bind(-1).timeout(SLOW_GRANT))
        .await
        .unwrap();
    Rig {
        cluster,
        proxy,
        _bouncer: bouncer,
        db,
    }
}

const INSERT: &str = "INSERT INTO t (v) VALUES ($1)";
const INSERT_RETURNING: &str = "INSERT INTO t (v) VALUES ($1) RETURNING v";
/// Slow enough (1.5 s, granted its own 10 s) that a loaded machine still resets the link while it runs.
const SLOW_INSERT: &str = "INSERT INTO t (v) SELECT $1 FROM pg_sleep(1.5)";
const SLOW_GRANT: Duration = Duration::from_secs(10);

async fn rows_of(cluster: &Cluster, v: i32) -> i64 {
    count(cluster, &format!("SELECT count(*) FROM t WHERE v = {v}")).await
}

/// Makes every commit wait for a standby that does not exist (`on`), or stops that.
async fn commits_wait(cluster: &Cluster, on: bool) {
    let admin = connect(&cluster.url()).await;
    let set = if on {
        "ALTER SYSTEM SET synchronous_standby_names = 'absent'"
    } else {
        "ALTER SYSTEM RESET synchronous_standby_names"
    };
    admin.batch_execute(set).await.unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    // The setting is in force once a new session sees it.
    let want = if on { "absent" } else { "" };
    until_async("the standby setting is in force", || async {
        let c = connect(&cluster.url()).await;
        let row = c
            .query_one("SHOW synchronous_standby_names", &[])
            .await
            .unwrap();
        row.get::<_, String>(0) == want
    })
    .await;
}

async fn committed_reply_lost(path: Path) {
    let rig = rig(path).await;
    commits_wait(&rig.cluster, true).await;
    let retries = rig.db.retries();

    let plain = rig.db.run(Query::write(INSERT).bind(1)).await;
    let returning = rig.db.run(Query::write(INSERT_RETURNING).bind(2)).await;
    commits_wait(&rig.cluster, false).await;

    let plain = plain.expect("a committed write whose reply was lost is applied: Ok");
    assert!(
        plain.reply_lost(),
        "{path:?}: the response says the reply was lost"
    );
    let err = returning.expect_err("the rows of a RETURNING were lost with the reply");
    assert_eq!(err.kind(), ErrorKind::ReplyLost, "{path:?}: {err}");
    assert!(
        err.was_applied() && !err.is_outcome_unknown(),
        "{path:?}: {err}"
    );
    assert_eq!(rows_of(&rig.cluster, 1).await, 1, "{path:?}: applied once");
    assert_eq!(rows_of(&rig.cluster, 2).await, 1, "{path:?}: applied once");
    assert_eq!(rig.db.retries(), retries, "{path:?}: nothing retried");
    let resolved = rig.db.resolved();
    assert_eq!(resolved.committed, 2, "{path:?}: {resolved:?}");
    assert_eq!(resolved.unknown, 0, "{path:?}: {resolved:?}");
    println!(
        "RESOLVED {path:?} | commit reply lost | plain: Ok, reply_lost | RETURNING: `{}` | 1 row each | {} retries | {resolved:?}",
        err.kind().as_str(),
        rig.db.retries() - retries
    );
}

#[tokio::test]
async fn committed_pooled() {
    committed_reply_lost(Path::Pooled).await;
}

#[tokio::test]
async fn committed_multiplexed() {
    committed_reply_lost(Path::Multiplexed).await;
}

#[tokio::test]
async fn committed_pooler() {
    committed_reply_lost(Path::Pooler).await;
}

async fn never_committed_is_retried(path: Path) {
    let rig = Arc::new(rig(path).await);
    let retries = rig.db.retries();
    rig.proxy.set_fault(Fault::BlackHole);
    let write = {
        let rig = rig.clone();
        tokio::spawn(async move { rig.db.run(Query::write(INSERT).bind(3)).await })
    };
    // The first attempt is cut with its COMMIT unsent: not applied, so it is retried.
    until("the lost reply is answered 'not applied'", || {
        rig.db.resolved().not_applied >= 1
    })
    .await;
    rig.proxy.set_fault(Fault::PassThrough);
    let response = write.await.unwrap().expect("retried once the link is back");
    assert!(
        !response.reply_lost(),
        "{path:?}: the retry's own reply came"
    );
    assert_eq!(rows_of(&rig.cluster, 3).await, 1, "{path:?}: applied once");
    assert!(rig.db.retries() > retries, "{path:?}: it was retried");
    let resolved = rig.db.resolved();
    assert_eq!(resolved.unknown, 0, "{path:?}: {resolved:?}");
    assert_eq!(resolved.committed, 0, "{path:?}: {resolved:?}");
    println!(
        "RESOLVED {path:?} | replies held before COMMIT | Ok after {} retries | 1 row | {resolved:?}",
        rig.db.retries() - retries
    );
}

#[tokio::test]
async fn not_applied_pooled() {
    never_committed_is_retried(Path::Pooled).await;
}

#[tokio::test]
async fn not_applied_multiplexed() {
    never_committed_is_retried(Path::Multiplexed).await;
}

#[tokio::test]
async fn not_applied_pooler() {
    never_committed_is_retried(Path::Pooler).await;
}

async fn reset_while_running(path: Path) {
    let rig = Arc::new(rig(path).await);
    let write = {
        let rig = rig.clone();
        tokio::spawn(async move {
            let write = Query::write(SLOW_INSERT).bind(4).timeout(SLOW_GRANT);
            rig.db.run(write).await
        })
    };
    // The statement is running on the server (its COMMIT queued behind it): cut the link now.
    until_count_is(
        &rig.cluster,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND wait_event = 'PgSleep' AND query LIKE '%pg_sleep(1.5)%' \
         AND pid <> pg_backend_pid()",
        |n| n >= 1,
        "at least 1",
    )
    .await;
    rig.proxy.reset_all();
    let result = write.await.unwrap();
    let resolved = rig.db.resolved();
    let rows = rows_of(&rig.cluster, 4).await;
    assert_eq!(
        rows, 1,
        "{path:?}: applied exactly once ({result:?}, {resolved:?})"
    );
    assert!(result.is_ok(), "{path:?}: a definite answer: {result:?}");
    assert_eq!(resolved.unknown, 0, "{path:?}: {resolved:?}");
    assert!(
        resolved.committed + resolved.not_applied >= 1,
        "{path:?}: the lost reply was looked up: {resolved:?}"
    );
    println!("RESOLVED {path:?} | link reset while the statement ran | Ok | 1 row | {resolved:?}");
}

#[tokio::test]
async fn reset_while_running_pooled() {
    reset_while_running(Path::Pooled).await;
}

#[tokio::test]
async fn reset_while_running_multiplexed() {
    reset_while_running(Path::Multiplexed).await;
}

#[tokio::test]
async fn reset_while_running_pooler() {
    reset_while_running(Path::Pooler).await;
}

/// The transactor: a transaction whose COMMIT reply is lost after it committed returns its value, and is
/// not run again.
#[tokio::test]
async fn a_transaction_whose_commit_reply_is_lost_returns_its_value_once() {
    let rig = rig(Path::Pooled).await;
    let transactor = rig
        .db
        .transactor()
        .attempt_timeout(Some(Duration::from_millis(600)));
    commits_wait(&rig.cluster, true).await;
    let value = transactor
        .run(|tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO t (v) VALUES (5)", &[]).await?;
                Ok(42)
            })
        })
        .await;
    commits_wait(&rig.cluster, false).await;
    assert_eq!(value.expect("committed: its value"), 42);
    assert_eq!(transactor.runs(), 1, "run once");
    assert_eq!(rig.db.resolved().committed, 1, "counted with the stack's");
    assert_eq!(rows_of(&rig.cluster, 5).await, 1, "applied once");

    // Off: the same lost reply is outcome unknown, as without resolution.
    let unresolved = transactor.clone().resolve_outcomes(false);
    commits_wait(&rig.cluster, true).await;
    let err = unresolved
        .run(|tx| {
            Box::pin(async move {
                tx.execute("INSERT INTO t (v) VALUES (6)", &[]).await?;
                Ok(())
            })
        })
        .await
        .expect_err("the commit never answers");
    commits_wait(&rig.cluster, false).await;
    assert!(err.is_outcome_unknown(), "{err}");
    println!(
        "RESOLVED transactor | commit reply lost | Ok(value), 1 run, 1 row; switched off: outcome unknown"
    );
}
