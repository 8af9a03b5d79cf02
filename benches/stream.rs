//! Streamed reads against tokio-postgres's own `query_raw` stream and against a buffered `Db::run`: rows
//! per second (criterion), and the most heap live at once while reading a million rows (a counting
//! allocator, sampled every 1,000 rows). See BENCHMARKS.md.

use std::alloc::System;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{StreamExt, TryStreamExt};
use rampart::testing::Cluster;
use rampart::{Db, Query, Stack};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio_postgres::NoTls;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SQL: &str = "SELECT g, md5(g::text) FROM generate_series(1, $1::bigint) g";

fn live() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize + s.bytes_reallocated
}

struct Setup {
    _cluster: Cluster,
    db: Db,
    raw: tokio_postgres::Client,
}

async fn setup() -> Setup {
    let cluster = Cluster::new()
        .await
        .expect("cluster (needs the PostgreSQL server binaries)");
    let db = Stack::server(&cluster.url()).build().expect("stack");
    let (raw, conn) = tokio_postgres::connect(&cluster.url(), NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    Setup {
        _cluster: cluster,
        db,
        raw,
    }
}

async fn rampart_stream(db: &Db, rows: i64) -> usize {
    let mut stream = db.stream(Query::read(SQL).bind(rows)).await.unwrap();
    let mut n = 0;
    while let Some(row) = stream.next().await {
        row.unwrap();
        n += 1;
    }
    n
}

async fn raw_stream(client: &tokio_postgres::Client, rows: i64) -> usize {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&rows];
    let stream = client.query_raw(SQL, params.iter().copied()).await.unwrap();
    futures_util::pin_mut!(stream);
    let mut n = 0;
    while stream.try_next().await.unwrap().is_some() {
        n += 1;
    }
    n
}

/// The most heap live at once while reading `rows` rows by each method, above what was live before.
async fn peaks(s: &Setup, rows: i64) {
    let sample = |base: isize, peak: &mut isize| *peak = (*peak).max(live() - base);
    let base = live();
    let mut peak = 0;
    let mut stream = s.db.stream(Query::read(SQL).bind(rows)).await.unwrap();
    let mut n = 0u64;
    while let Some(row) = stream.next().await {
        drop(row.unwrap());
        n += 1;
        if n % 1_000 == 0 {
            sample(base, &mut peak);
        }
    }
    drop(stream);
    println!(
        "PEAK rampart Db::stream, {rows} rows: {:.1} KiB",
        peak as f64 / 1024.0
    );

    let base = live();
    let mut peak = 0;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&rows];
    let raw = s.raw.query_raw(SQL, params.iter().copied()).await.unwrap();
    futures_util::pin_mut!(raw);
    let mut n = 0u64;
    while let Some(row) = raw.try_next().await.unwrap() {
        drop(row);
        n += 1;
        if n % 1_000 == 0 {
            sample(base, &mut peak);
        }
    }
    println!(
        "PEAK tokio-postgres query_raw, {rows} rows: {:.1} KiB",
        peak as f64 / 1024.0
    );

    let base = live();
    let all = s.db.run(Query::read(SQL).bind(rows)).await.unwrap();
    let peak = live() - base;
    drop(all);
    println!(
        "PEAK rampart Db::run (buffered), {rows} rows: {:.1} KiB",
        peak as f64 / 1024.0
    );
}

fn streams(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    rt.block_on(peaks(&s, 1_000_000));
    const ROWS: i64 = 100_000;
    let mut group = c.benchmark_group("stream 100,000 rows");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("rampart Db::stream", |b| {
        b.to_async(&rt).iter(|| rampart_stream(&s.db, ROWS))
    });
    group.bench_function("tokio-postgres query_raw", |b| {
        b.to_async(&rt).iter(|| raw_stream(&s.raw, ROWS))
    });
    group.bench_function("rampart Db::run (buffered)", |b| {
        b.to_async(&rt).iter(|| async {
            s.db.run(Query::read(SQL).bind(ROWS))
                .await
                .unwrap()
                .rows()
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, streams);
criterion_main!(benches);
