//! End to end on loopback Postgres: `SELECT 1` and a small indexed read, at 1, 8, 32 and 128 concurrent
//! callers, through raw tokio-postgres clients (one per pool slot, and one client shared by every caller,
//! which pipelines their queries), deadpool-postgres alone (Fast and Verified recycling), bb8-postgres
//! (its default: a check on every checkout) and rampart's full stack, pooled and multiplexed, every pool
//! of the same size. Prints throughput and latency percentiles as a Markdown table.
//!
//! Criterion measures one operation at a time; throughput under concurrency and tail latency need callers
//! running side by side for a fixed time, so this is a plain program: `cargo bench --bench e2e`
//! (`-- --secs N` to change the measuring time per row, `-- --quick` for 32 callers only,
//! `-- --latency MS` to put every client behind a proxy adding MS milliseconds each way,
//! `-- --only NAME` for the clients whose name contains NAME, `-- --rounds N` for the number of
//! interleaved runs a row is the median of, 3 by default, `-- --mux` for the multiplexing comparison
//! only: the shared raw client, deadpool Fast, bb8 and rampart multiplexed, `-- --mux-connections N` for
//! the number of shared connections, 1 by default, as `MuxConfig::default()`).
//! `-- --writes`: a plain `INSERT` (no idempotency key) at 1, 8 and 32 callers through raw tokio-postgres,
//! deadpool-postgres Fast and rampart's stack with lost replies resolved (the default: each write in a
//! transaction of its own whose id is read before `COMMIT`) and without (`resolve_outcomes(false)`).
//! The server is a throwaway cluster of the test harness (fsync off), on loopback.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use hdrhistogram::Histogram;
use rampart::testing::{Fault, FaultProxy};
use rampart::{Db, MuxConfig, PgConfig, PgService, Pool, PoolConfig, Query, Stack};
use tokio_postgres::{Client, NoTls, Statement};
use tower::ServiceExt;

mod common;

const POOL_SIZE: usize = 16;

/// Shared connections of the multiplexed stack (`-- --mux-connections N`, 1 by default).
static MUX_CONNECTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

#[derive(Clone, Copy)]
enum Work {
    SelectOne,
    IndexedRead,
    /// A plain insert, not idempotent.
    Insert,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::SelectOne => "SELECT 1",
            Work::IndexedRead => "indexed read",
            Work::Insert => "plain INSERT",
        }
    }
    /// The statement with a parameter, for clients with prepared statements.
    fn sql(self) -> &'static str {
        match self {
            Work::SelectOne => "SELECT 1",
            Work::IndexedRead => "SELECT v FROM kv WHERE k = $1",
            Work::Insert => "INSERT INTO events (v) VALUES ($1)",
        }
    }
    /// The same statement as one simple query, for bb8 (no per-connection statement cache).
    fn simple(self, key: i32) -> String {
        match self {
            Work::SelectOne => "SELECT 1".to_owned(),
            Work::IndexedRead => format!("SELECT v FROM kv WHERE k = {key}"),
            Work::Insert => format!("INSERT INTO events (v) VALUES ({key})"),
        }
    }
}

impl Work {
    /// The request as rampart takes it: a read, or a plain write.
    fn query(self, key: i32) -> Query {
        match self {
            Work::SelectOne => Query::read(self.sql()),
            Work::IndexedRead => Query::read(self.sql()).bind(key),
            Work::Insert => Query::write(self.sql()).bind(key),
        }
    }
}

/// One client under test; every caller runs `once` in a loop.
#[derive(Clone)]
enum Target {
    Raw(Arc<Vec<(Client, Statement)>>),
    /// One client shared by every caller: tokio-postgres pipelines their queries over one connection.
    Shared(Arc<(Client, Statement)>),
    Deadpool(deadpool_postgres::Pool),
    Bb8(bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>),
    Rampart(Db),
    /// The bottom of the stack alone: what the layers above it cost end to end is the difference.
    PgService(PgService),
}

impl Target {
    async fn once(&self, work: Work, caller: usize, key: i32) -> bool {
        match self {
            Target::Raw(clients) => {
                let (client, stmt) = &clients[caller % clients.len()];
                match work {
                    Work::SelectOne => client.query(stmt, &[]).await.is_ok(),
                    Work::IndexedRead | Work::Insert => client.query(stmt, &[&key]).await.is_ok(),
                }
            }
            Target::Shared(shared) => {
                let (client, stmt) = &**shared;
                match work {
                    Work::SelectOne => client.query(stmt, &[]).await.is_ok(),
                    Work::IndexedRead | Work::Insert => client.query(stmt, &[&key]).await.is_ok(),
                }
            }
            Target::Deadpool(pool) => {
                let Ok(client) = pool.get().await else {
                    return false;
                };
                let Ok(stmt) = client.prepare_cached(work.sql()).await else {
                    return false;
                };
                match work {
                    Work::SelectOne => client.query(&stmt, &[]).await.is_ok(),
                    Work::IndexedRead | Work::Insert => client.query(&stmt, &[&key]).await.is_ok(),
                }
            }
            Target::Bb8(pool) => {
                let Ok(client) = pool.get().await else {
                    return false;
                };
                client.simple_query(&work.simple(key)).await.is_ok()
            }
            Target::Rampart(db) => db.run(work.query(key)).await.is_ok(),
            Target::PgService(svc) => svc.clone().oneshot(work.query(key)).await.is_ok(),
        }
    }
}

struct Outcome {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    errors: u64,
}

async fn measure(target: &Target, work: Work, callers: usize, secs: f64) -> Outcome {
    // Warm up: every connection opened and every statement prepared.
    let warm_until = Instant::now() + Duration::from_millis(300);
    let run_for = Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut errors = 0;
            let mut key = caller as i32;
            while Instant::now() < warm_until {
                target.once(work, caller, key % 1000 + 1).await;
            }
            let start = Instant::now();
            while start.elapsed() < run_for {
                key = key.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let t = Instant::now();
                if target.once(work, caller, key.rem_euclid(1000) + 1).await {
                    hist.record(t.elapsed().as_micros().max(1) as u64).ok();
                } else {
                    errors += 1;
                }
            }
            (hist, errors, start.elapsed())
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0;
    let mut elapsed = Duration::ZERO;
    for task in tasks {
        let (hist, e, took) = task.await.expect("caller");
        all.add(hist).expect("same bounds");
        errors += e;
        elapsed = elapsed.max(took);
    }
    let us = |v: u64| Duration::from_micros(v);
    Outcome {
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: us(all.value_at_quantile(0.5)),
        p99: us(all.value_at_quantile(0.99)),
        max: us(all.max()),
        errors,
    }
}

const CLIENTS: [&str; 9] = [
    "raw tokio-postgres (16 clients)",
    "deadpool-postgres Fast",
    "deadpool-postgres Verified",
    "bb8-postgres (test on checkout)",
    "rampart Stack::server (validation on)",
    "rampart PgService alone (pool with validation, no layers)",
    "raw tokio-postgres, one shared client (pipelined)",
    "rampart Stack::server multiplexed (shared connections)",
    "rampart Stack::server, lost replies not resolved",
];

/// The clients of the plain-write comparison (`--writes`).
const WRITE_SET: [usize; 4] = [0, 1, 8, 4];

/// The clients of the multiplexing comparison (`--mux`).
const MUX_SET: [usize; 4] = [6, 1, 3, 7];

/// Builds client `which` of [`CLIENTS`] afresh for one row (dropped after it, so the server never holds
/// more than one client's connections).
async fn build(which: usize, work: Work, url: &str) -> Target {
    let pg: tokio_postgres::Config = url.parse().expect("url");
    let deadpool = |method| {
        let manager = deadpool_postgres::Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: method,
            },
        );
        Target::Deadpool(
            deadpool_postgres::Pool::builder(manager)
                .max_size(POOL_SIZE)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .build()
                .expect("deadpool"),
        )
    };
    match which {
        0 => {
            let mut clients = Vec::new();
            for _ in 0..POOL_SIZE {
                let (client, conn) = pg.connect(NoTls).await.expect("connect");
                tokio::spawn(conn);
                let stmt = client.prepare(work.sql()).await.expect("prepare");
                clients.push((client, stmt));
            }
            Target::Raw(Arc::new(clients))
        }
        1 => deadpool(RecyclingMethod::Fast),
        2 => deadpool(RecyclingMethod::Verified),
        3 => Target::Bb8(
            bb8::Pool::builder()
                .max_size(POOL_SIZE as u32)
                .build(bb8_postgres::PostgresConnectionManager::new(
                    pg.clone(),
                    NoTls,
                ))
                .await
                .expect("bb8"),
        ),
        6 => {
            let (client, conn) = pg.connect(NoTls).await.expect("connect");
            tokio::spawn(conn);
            let stmt = client.prepare(work.sql()).await.expect("prepare");
            Target::Shared(Arc::new((client, stmt)))
        }
        7 => Target::Rampart(
            pooled_stack(url)
                .multiplex(
                    MuxConfig::builder()
                        .connections(MUX_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed))
                        .build()
                        .expect("mux"),
                )
                .build()
                .expect("stack"),
        ),
        5 => Target::PgService(PgService::new(
            Pool::new(
                PgConfig::server(url).expect("url"),
                PoolConfig::builder()
                    .max_size(POOL_SIZE)
                    .build()
                    .expect("pool config"),
            )
            .expect("pool"),
        )),
        8 => Target::Rampart(
            pooled_stack(url)
                .resolve_outcomes(false)
                .build()
                .expect("stack"),
        ),
        _ => Target::Rampart(pooled_stack(url).build().expect("stack")),
    }
}

/// `Stack::server` over a pool of [`POOL_SIZE`] connections.
fn pooled_stack(url: &str) -> rampart::StackBuilder {
    Stack::server(url).pool(
        PoolConfig::builder()
            .max_size(POOL_SIZE)
            .build()
            .expect("pool config"),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    let quick = args.iter().any(|a| a == "--quick");
    let mux_only = args.iter().any(|a| a == "--mux");
    let writes = args.iter().any(|a| a == "--writes");
    if let Some(n) = args
        .iter()
        .position(|a| a == "--mux-connections")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
    {
        MUX_CONNECTIONS.store(n, std::sync::atomic::Ordering::Relaxed);
    }
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // `--only NAME`: just the clients whose name contains NAME (for profiling one of them).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    // `--latency MS`: every client goes through the harness's fault proxy, which holds each chunk of data
    // for MS milliseconds in each direction (a far-away server, on loopback).
    let latency: Option<u64> = args
        .iter()
        .position(|a| a == "--latency")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cluster = common::cluster_with_kv().await;
        let proxy = match latency {
            Some(ms) => {
                let proxy = FaultProxy::start(cluster.addr()).await.expect("proxy");
                proxy.set_fault(Fault::Latency(Duration::from_millis(ms)));
                println!("every client through a proxy adding {ms} ms in each direction");
                Some(proxy)
            }
            None => None,
        };
        let url = match &proxy {
            Some(proxy) => proxy.url(&cluster),
            None => cluster.url(),
        };
        let levels: &[usize] = if quick {
            &[32]
        } else if writes {
            &[1, 8, 32]
        } else {
            &[1, 8, 32, 128]
        };
        println!(
            "pool size {POOL_SIZE}, {} shared connections when multiplexed, {secs} s per run, median of {rounds} interleaved runs per row",
            MUX_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed)
        );
        println!();
        println!("| query | callers | client | queries/s | p50 | p99 | max | errors |");
        println!("|---|---:|---|---:|---:|---:|---:|---:|");
        let works: &[Work] = if writes {
            &[Work::Insert]
        } else if quick {
            &[Work::SelectOne]
        } else {
            &[Work::SelectOne, Work::IndexedRead]
        };
        for &work in works {
            for &callers in levels {
                // Rounds interleave the clients, so a burst of load on the shared machine does not land
                // on one client only; each row is the round with the median throughput.
                let mut runs: Vec<Vec<Outcome>> = CLIENTS.iter().map(|_| Vec::new()).collect();
                for _ in 0..rounds {
                    for (which, name) in CLIENTS.iter().enumerate() {
                        if only.as_ref().is_some_and(|o| !name.contains(o.as_str()))
                            || (mux_only && !MUX_SET.contains(&which))
                            || (writes && !WRITE_SET.contains(&which))
                            || (!writes && which == 8)
                        {
                            continue;
                        }
                        let target = build(which, work, &url).await;
                        runs[which].push(measure(&target, work, callers, secs).await);
                        drop(target);
                    }
                }
                for (name, mut outcomes) in CLIENTS.iter().zip(runs) {
                    if outcomes.is_empty() {
                        continue;
                    }
                    outcomes.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
                    let o = &outcomes[outcomes.len() / 2];
                    println!(
                        "| {} | {} | {} | {:.0} | {} µs | {} µs | {:.1?} | {} |",
                        work.name(),
                        callers,
                        name,
                        o.per_second,
                        o.p50.as_micros(),
                        o.p99.as_micros(),
                        o.max,
                        o.errors
                    );
                }
            }
        }
    });
}
