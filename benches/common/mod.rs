//! Set-up shared by the end-to-end benchmarks.

use rampart::testing::Cluster;
use tokio_postgres::NoTls;

/// A throwaway loopback cluster of the test harness with the `kv` table of the indexed-read workload:
/// 1,000 rows keyed 1..=1000, and the `events` table of the plain-insert workload.
pub(crate) async fn cluster_with_kv() -> Cluster {
    let cluster = Cluster::new()
        .await
        .expect("cluster (needs the PostgreSQL server binaries)");
    let (setup, conn) = cluster
        .url()
        .parse::<tokio_postgres::Config>()
        .expect("url")
        .connect(NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    setup
        .batch_execute(
            "CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL);
             INSERT INTO kv SELECT g, md5(g::text) FROM generate_series(1, 1000) g;
             ANALYZE kv;
             CREATE TABLE events (v int NOT NULL);",
        )
        .await
        .expect("schema");
    cluster
}
