//! Shared pieces of the scenario tests.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart::layers::validate::ValidationPolicy;
use rampart::testing::Cluster;
use rampart::{Db, Error, PoolConfig, Query, Stack, StackBuilder};
use tokio_postgres::{Client, NoTls};

/// How long a bounded wait may last before the test fails; generous for a loaded 2-core machine.
pub(crate) const BOUND: Duration = Duration::from_secs(30);

/// A stack for tests: the server preset, with a short validation bypass window (so "idle longer than
/// the window" takes milliseconds, not minutes) and short backoff.
pub(crate) fn stack(url: &str) -> StackBuilder {
    Stack::server(url).pool(pool_config().build().unwrap())
}

pub(crate) fn pool_config() -> rampart::PoolConfigBuilder {
    PoolConfig::builder().validation(
        ValidationPolicy::builder()
            .bypass_window(Duration::from_millis(100))
            .check_timeout(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
}

/// Outcomes of a workload, by error kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) sent: usize,
    pub(crate) ok: usize,
    pub(crate) errors: BTreeMap<String, usize>,
}

impl Tally {
    pub(crate) fn record<T, E: std::fmt::Display>(
        &mut self,
        result: &Result<T, E>,
        kind: impl FnOnce(&E) -> String,
    ) {
        self.sent += 1;
        match result {
            Ok(_) => self.ok += 1,
            Err(e) => *self.errors.entry(kind(e)).or_default() += 1,
        }
    }

    pub(crate) fn failed(&self) -> usize {
        self.errors.values().sum()
    }

    pub(crate) fn record_rampart<T>(&mut self, result: &Result<T, Error>) {
        self.record(result, |e| e.kind().as_str().to_owned());
    }

    pub(crate) fn record_pg<T>(&mut self, result: &Result<T, tokio_postgres::Error>) {
        self.record(result, pg_kind);
    }
}

/// A short name for what a bare tokio-postgres client reports.
pub(crate) fn pg_kind(e: &tokio_postgres::Error) -> String {
    if e.is_closed() {
        "connection closed".into()
    } else if let Some(code) = e.code() {
        format!("SQLSTATE {}", code.code())
    } else {
        "I/O error".into()
    }
}

/// Prints the line the README's scenario table is made from.
pub(crate) fn report(id: &str, rampart: &str, bare: &str) {
    println!("SCENARIO {id} | rampart: {rampart} | bare: {bare}");
}

pub(crate) async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// A number from the server, through a connection of its own (not through the stack under test).
pub(crate) async fn count(cluster: &Cluster, sql: &str) -> i64 {
    connect(&cluster.url())
        .await
        .query_one(sql, &[])
        .await
        .expect(sql)
        .get(0)
}

/// Waits (bounded) until `sql` counts `want`, polling through one connection of its own.
pub(crate) async fn until_count(cluster: &Cluster, sql: &str, want: i64) {
    until_count_is(cluster, sql, |n| n == want, &format!("{want}")).await
}

/// Waits (bounded) until the number `sql` returns satisfies `ok`.
pub(crate) async fn until_count_is(
    cluster: &Cluster,
    sql: &str,
    ok: impl Fn(i64) -> bool,
    expected: &str,
) {
    let client = connect(&cluster.url()).await;
    let what = format!("`{sql}` counts {expected}");
    rampart::testing::until_async(&what, || async {
        ok(client.query_one(sql, &[]).await.expect(sql).get(0))
    })
    .await
}

pub(crate) use rampart::testing::until;

/// Opens `n` pooled connections at once (so later tests know how many exist), by running `n` concurrent
/// queries that overlap.
pub(crate) async fn warm(db: &Db, n: usize) {
    let queries = (0..n).map(|_| db.run(Query::read("SELECT pg_sleep(0.2)")));
    for r in futures_util::future::join_all(queries).await {
        r.expect("warm-up query");
    }
}

/// A deadpool-postgres pool with its defaults (what most services start with).
pub(crate) fn deadpool(url: &str, max_size: usize) -> deadpool_postgres::Pool {
    let config: tokio_postgres::Config = url.parse().unwrap();
    let manager = deadpool_postgres::Manager::new(config, NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(max_size)
        .build()
        .unwrap()
}

/// What [`keyed_writes_across_a_restart`] saw.
pub(crate) struct RestartOutcome {
    pub(crate) tally: Tally,
    /// Rows in the table afterwards.
    pub(crate) rows: usize,
}

/// `writes` keyed inserts (`INSERT ... ON CONFLICT (request_id) DO NOTHING`, idempotency key set) from
/// `concurrency` callers through `db`, with the server restarted once a third are in. Asserts that every
/// caller got an answer, that every acknowledged write is in the table, and that every failure is a typed
/// one (the breaker may open if the restart is slow), never an untyped one.
pub(crate) async fn keyed_writes_across_a_restart(
    cluster: &Cluster,
    db: &Db,
    writes: usize,
    concurrency: usize,
) -> RestartOutcome {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    connect(&cluster.url())
        .await
        .batch_execute("CREATE TABLE IF NOT EXISTS signups (request_id text PRIMARY KEY)")
        .await
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers = (0..concurrency).map(|_| {
        let (db, next, acknowledged, tally) =
            (db.clone(), next.clone(), acknowledged.clone(), tally.clone());
        async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= writes {
                    return;
                }
                let key = format!("req-{n}");
                let write = Query::write(
                    "INSERT INTO signups (request_id) VALUES ($1) ON CONFLICT (request_id) DO NOTHING",
                )
                .bind(key.clone())
                .idempotency_key(key.clone());
                let result = db.run(write).await;
                if result.is_ok() {
                    acknowledged.lock().unwrap().push(key);
                }
                tally.lock().unwrap().record_rampart(&result);
            }
        }
    });
    let restart = async {
        until("a third of the writes are in", || {
            next.load(Ordering::Relaxed) > writes / 3
        })
        .await;
        cluster.restart().await.unwrap();
    };
    tokio::join!(futures_util::future::join_all(workers), restart);
    let tally = tally.lock().unwrap().clone();
    assert_eq!(tally.sent, writes, "every caller got an answer");
    assert_eq!(
        tally.ok + tally.failed(),
        writes,
        "counts add up: {tally:?}"
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    let client = connect(&cluster.url()).await;
    let present: i64 = client
        .query_one(
            "SELECT count(*) FROM signups WHERE request_id = ANY($1)",
            &[&acknowledged],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        present as usize,
        acknowledged.len(),
        "every acknowledged write is there"
    );
    let typed = [
        "circuit_open",
        "timeout",
        "deadline_exceeded",
        "connect",
        "connection_lost",
    ];
    for kind in tally.errors.keys() {
        assert!(
            typed.contains(&kind.as_str()),
            "unexpected failure kind {kind}: {tally:?}"
        );
    }
    let rows = count(cluster, "SELECT count(*) FROM signups").await as usize;
    RestartOutcome { tally, rows }
}

/// A `tracing` writer into a shared buffer, to read what was logged.
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// What was logged so far (for `tests/logs`, which includes this file).
    #[allow(dead_code)]
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
