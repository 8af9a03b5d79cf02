//! Shared pieces of the scenario tests.

use std::collections::BTreeMap;
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

pub(crate) fn pool_config() -> rampart::pool::PoolConfigBuilder {
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
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let n: i64 = client.query_one(sql, &[]).await.expect(sql).get(0);
        if ok(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{sql}` stayed at {n}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until `cond` holds.
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + BOUND;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

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
