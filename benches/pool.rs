//! Pool checkout and return, one caller, side by side in one criterion run: rampart's pool (validation
//! with its bypass window: a connection used within the last 500 ms is handed out unchecked), deadpool-postgres
//! (Fast: no check; Verified: a round trip on every checkout) and bb8-postgres (its default
//! `test_on_check_out`: a round trip on every checkout). Each pool holds 16 connections to a throwaway
//! loopback cluster. `cargo bench --bench pool`.

use criterion::{Criterion, criterion_group, criterion_main};
use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use rampart::testing::Cluster;
use rampart::{PgConfig, Pool, PoolConfig};
use tokio_postgres::NoTls;

const POOL_SIZE: usize = 16;

fn checkout(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = rt
        .block_on(Cluster::new())
        .expect("cluster (needs the PostgreSQL server binaries)");
    let url = cluster.url();
    let pg: tokio_postgres::Config = url.parse().expect("url");

    let rampart = rt.block_on(async {
        Pool::new(
            PgConfig::server(&url).expect("config"),
            PoolConfig::builder()
                .max_size(POOL_SIZE)
                .build()
                .expect("pool config"),
        )
        .expect("pool")
    });
    let deadpool = |method| {
        let _entered = rt.enter();
        deadpool_postgres::Pool::builder(deadpool_postgres::Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: method,
            },
        ))
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .expect("deadpool")
    };
    let fast = deadpool(RecyclingMethod::Fast);
    let verified = deadpool(RecyclingMethod::Verified);
    let bb8 = rt.block_on(async {
        bb8::Pool::builder()
            .max_size(POOL_SIZE as u32)
            .build(bb8_postgres::PostgresConnectionManager::new(
                pg.clone(),
                NoTls,
            ))
            .await
            .expect("bb8")
    });

    let mut group = c.benchmark_group("pool checkout");
    group.bench_function("rampart Pool (validation, 500 ms bypass window)", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(rampart.checkout().await.expect("checkout")) })
    });
    group.bench_function("deadpool-postgres Fast", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(fast.get().await.expect("checkout")) })
    });
    group.bench_function("deadpool-postgres Verified", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(verified.get().await.expect("checkout")) })
    });
    group.bench_function("bb8-postgres (test on checkout)", |b| {
        b.to_async(&rt)
            .iter(|| async { drop(bb8.get().await.expect("checkout")) })
    });
    group.finish();
    drop(cluster);
}

criterion_group!(benches, checkout);
criterion_main!(benches);
