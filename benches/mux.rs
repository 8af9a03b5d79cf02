//! Multiplexing, side by side in one criterion run: time per query with 1, 8, 32 and 128 concurrent
//! callers, for `SELECT 1` and an indexed read (`SELECT v FROM kv WHERE k = $1` on 1,000 rows), through
//! rampart's multiplexed stack (`Stack::server(..).multiplex(MuxConfig::default())`: one shared
//! connection), one raw tokio-postgres client shared by every caller (it pipelines their queries over
//! one connection), deadpool-postgres (Fast recycling, 16 connections, statements cached per connection)
//! and bb8-postgres (16 connections, its default check on every checkout, the simple-query protocol).
//!
//! Criterion times one operation; here one "iteration" is one query out of a batch that `callers` tasks
//! run concurrently (`iter_custom`: the batch's wall time divided by its size), so the time per iteration
//! is the inverse of the throughput at that concurrency. Latency percentiles under concurrency come from
//! `cargo bench --bench e2e -- --mux`. The server is a throwaway loopback cluster of the test harness.
//!
//! `cargo bench --bench mux` (`-- "SELECT 1/32"` to select one group).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use rampart::{Db, MuxConfig, PoolConfig, Query, Stack};
use tokio_postgres::{Client, NoTls, Statement};

mod common;

const POOL_SIZE: usize = 16;

#[derive(Clone)]
enum Target {
    Rampart(Db),
    Shared(Arc<(Client, Statement)>),
    Deadpool(deadpool_postgres::Pool),
    Bb8(bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>),
}

/// `SELECT 1` (`indexed == false`) or the indexed read of `key`.
async fn once(target: &Target, indexed: bool, key: i32) {
    let sql = if indexed {
        "SELECT v FROM kv WHERE k = $1"
    } else {
        "SELECT 1"
    };
    let ok = match target {
        Target::Rampart(db) => {
            let q = Query::read(sql);
            let q = if indexed { q.bind(key) } else { q };
            db.run(q).await.is_ok()
        }
        Target::Shared(shared) => {
            let (client, stmt) = &**shared;
            if indexed {
                client.query(stmt, &[&key]).await.is_ok()
            } else {
                client.query(stmt, &[]).await.is_ok()
            }
        }
        Target::Deadpool(pool) => {
            let client = pool.get().await.expect("checkout");
            let stmt = client.prepare_cached(sql).await.expect("prepare");
            if indexed {
                client.query(&stmt, &[&key]).await.is_ok()
            } else {
                client.query(&stmt, &[]).await.is_ok()
            }
        }
        Target::Bb8(pool) => {
            let client = pool.get().await.expect("checkout");
            let sql = if indexed {
                format!("SELECT v FROM kv WHERE k = {key}")
            } else {
                "SELECT 1".to_owned()
            };
            client.simple_query(&sql).await.is_ok()
        }
    };
    assert!(ok, "query failed");
}

/// Runs `iters` queries spread over `callers` concurrent tasks; returns the wall time.
async fn batch(target: &Target, indexed: bool, callers: usize, iters: u64) -> Duration {
    let per_caller = iters.div_ceil(callers as u64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut key = caller as i32;
                for _ in 0..per_caller {
                    key = key.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    once(&target, indexed, key.rem_euclid(1000) + 1).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    // Scaled to exactly `iters` queries.
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_caller * callers as u64) as f64)
}

fn multiplexing(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = rt.block_on(common::cluster_with_kv());
    let url = cluster.url();
    let pg: tokio_postgres::Config = url.parse().expect("url");

    for indexed in [false, true] {
        let work = if indexed { "indexed read" } else { "SELECT 1" };
        let targets: Vec<(&str, Target)> = rt.block_on(async {
            let sql = if indexed {
                "SELECT v FROM kv WHERE k = $1"
            } else {
                "SELECT 1"
            };
            let (client, conn) = pg.connect(NoTls).await.expect("connect");
            tokio::spawn(conn);
            let stmt = client.prepare(sql).await.expect("prepare");
            let db = Stack::server(&url)
                .pool(
                    PoolConfig::builder()
                        .max_size(POOL_SIZE)
                        .build()
                        .expect("pool"),
                )
                .multiplex(MuxConfig::default())
                .build()
                .expect("stack");
            let deadpool =
                deadpool_postgres::Pool::builder(deadpool_postgres::Manager::from_config(
                    pg.clone(),
                    NoTls,
                    ManagerConfig {
                        recycling_method: RecyclingMethod::Fast,
                    },
                ))
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .expect("deadpool");
            let bb8 = bb8::Pool::builder()
                .max_size(POOL_SIZE as u32)
                .build(bb8_postgres::PostgresConnectionManager::new(
                    pg.clone(),
                    NoTls,
                ))
                .await
                .expect("bb8");
            vec![
                ("rampart multiplexed stack", Target::Rampart(db)),
                (
                    "raw tokio-postgres, one shared client",
                    Target::Shared(Arc::new((client, stmt))),
                ),
                ("deadpool-postgres Fast", Target::Deadpool(deadpool)),
                ("bb8-postgres (test on checkout)", Target::Bb8(bb8)),
            ]
        });
        for callers in [1usize, 8, 32, 128] {
            let mut group = c.benchmark_group(format!("{work}/{callers}"));
            group.throughput(Throughput::Elements(1));
            group.warm_up_time(Duration::from_secs(1));
            group.measurement_time(Duration::from_secs(3));
            for (name, target) in &targets {
                group.bench_function(BenchmarkId::from_parameter(name), |b| {
                    b.to_async(&rt)
                        .iter_custom(|iters| batch(target, indexed, callers, iters.max(1)))
                });
            }
            group.finish();
        }
    }
    drop(cluster);
}

criterion_group!(benches, multiplexing);
criterion_main!(benches);
