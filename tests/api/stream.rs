//! Streamed reads against a real server: bounded, retried only until the first row, never restarted.

use futures_util::StreamExt;
use rampart::testing::{Cluster, Fault, FaultProxy, until_async};
use rampart::{ErrorKind, Query, Stack};

const BIG: i64 = 200_000;

#[tokio::test]
async fn a_stream_hands_out_every_row_in_order_and_releases_its_connection() {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    let mut rows = db
        .stream(Query::read("SELECT g FROM generate_series(1, $1::bigint) g").bind(BIG))
        .await
        .unwrap();
    let mut expected = 1i64;
    while let Some(row) = rows.next().await {
        let g: i64 = row.unwrap().try_get(0).unwrap();
        assert_eq!(g, expected, "in order, none twice");
        expected += 1;
    }
    assert_eq!(expected - 1, BIG, "every row");
    assert_eq!(db.pool().stats().in_use, 0, "the connection went back");
    // An empty result is a stream that ends at once.
    let mut none = db
        .stream(Query::read("SELECT 1 WHERE false"))
        .await
        .unwrap();
    assert!(none.next().await.is_none());
}

#[tokio::test]
async fn a_stream_is_retried_until_its_first_row_and_never_after() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = Stack::server(&proxy.url(&cluster)).build().unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();

    // Before the first row: the pooled connection is dead (killed silently), the stream is opened again
    // on a fresh one, invisibly.
    proxy.kill_silently();
    // Rows produced slowly (a sleep per row), so the reset lands long before the end.
    let huge = 100_000i64;
    let mut rows = db
        .stream(
            Query::read("SELECT g, pg_sleep(0.0005) FROM generate_series(1, $1::bigint) g")
                .bind(huge),
        )
        .await
        .expect("retried before its first row");
    let first: i64 = rows.next().await.unwrap().unwrap().try_get(0).unwrap();
    assert_eq!(first, 1);

    // After it: the link is reset; the stream ends with an error and never starts over.
    proxy.reset_all();
    let mut last = first;
    let mut error = None;
    while let Some(item) = rows.next().await {
        match item {
            Ok(row) => {
                let g: i64 = row.try_get(0).unwrap();
                assert_eq!(g, last + 1, "no row twice: the stream was not restarted");
                last = g;
            }
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let error = error.expect("a failure after the first row is an error of the stream");
    assert_eq!(error.kind(), ErrorKind::ConnectionLost, "{error}");
    assert!(last < huge, "the stream did not complete: {last}");
    assert!(rows.next().await.is_none(), "it ends after its error");
    proxy.set_fault(Fault::PassThrough);
}

#[tokio::test]
async fn a_stream_dropped_early_cancels_its_query() {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    let mut rows = db
        .stream(Query::read(
            "SELECT g, pg_sleep(0.001) FROM generate_series(1, 1000000) g",
        ))
        .await
        .unwrap();
    rows.next().await.unwrap().unwrap();
    drop(rows);
    let (admin, conn) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    until_async("the server no longer runs the dropped stream's query", || async {
        let running: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%generate_series(1, 1000000)%' \
                 AND pid <> pg_backend_pid() AND state = 'active'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        running == 0
    })
    .await;
}
