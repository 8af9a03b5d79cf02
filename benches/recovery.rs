//! Recovery, rampart against a bare client, printed as a Markdown table (`cargo bench --bench recovery`):
//!
//! - **restart**: a caller runs `SELECT 1` in a loop (pausing 10 ms after an error) while the server is
//!   restarted (`pg_ctl stop -m fast`, then start on the same port); measured from the server accepting
//!   connections again to the caller's first success.
//! - **black hole**: the same loop through a TCP proxy that starts swallowing every byte in both
//!   directions (no reset, as a dead network path); measured from the fault to the caller's first error.
//!
//! The bare client is one tokio-postgres connection, reconnected after any error, with no timeouts: what a
//! program without a resilience layer does. The throwaway cluster and the proxy are the test harness's,
//! on loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rampart::testing::{Cluster, Fault, FaultProxy};
use rampart::{Db, Query, Stack};
use tokio_postgres::{Client, NoTls};

/// A caller that reports when its queries succeed or fail.
#[derive(Clone)]
enum Caller {
    Rampart(Db),
    Bare(String),
}

#[derive(Default)]
struct Seen {
    since: Option<Instant>,
    first_ok: Option<Instant>,
    first_err: Option<Instant>,
}

async fn run(caller: Caller, seen: Arc<Mutex<Seen>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut bare: Option<Client> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let ok = match &caller {
            Caller::Rampart(db) => db.run(Query::read("SELECT 1")).await.is_ok(),
            Caller::Bare(url) => {
                if bare.as_ref().is_none_or(|c| c.is_closed()) {
                    bare = match tokio_postgres::connect(url, NoTls).await {
                        Ok((client, conn)) => {
                            tokio::spawn(conn);
                            Some(client)
                        }
                        Err(_) => None,
                    };
                }
                match &bare {
                    Some(client) => client.simple_query("SELECT 1").await.is_ok(),
                    None => false,
                }
            }
        };
        let now = Instant::now();
        {
            let mut seen = seen.lock().unwrap();
            if seen.since.is_some_and(|since| now >= since) {
                if ok && seen.first_ok.is_none() {
                    seen.first_ok = Some(now);
                }
                if !ok && seen.first_err.is_none() {
                    seen.first_err = Some(now);
                }
            }
        }
        if !ok {
            bare = None;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn show(from: Instant, at: Option<Instant>, cap: Duration) -> String {
    match at {
        Some(at) => format!("{:.0?}", at.saturating_duration_since(from)),
        None => format!("none within {cap:?}"),
    }
}

struct Running {
    seen: Arc<Mutex<Seen>>,
}

fn start(caller: Caller, stop: &Arc<std::sync::atomic::AtomicBool>) -> Running {
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(run(caller, seen.clone(), stop.clone()));
    Running { seen }
}

fn mark(callers: &[(&str, Running)]) -> Instant {
    let now = Instant::now();
    for (_, r) in callers {
        *r.seen.lock().unwrap() = Seen {
            since: Some(now),
            ..Seen::default()
        };
    }
    now
}

/// Waits until every caller has seen what `done` looks for, or `cap`.
async fn wait_for(callers: &[(&str, Running)], cap: Duration, done: fn(&Seen) -> bool) {
    let until = Instant::now() + cap;
    while Instant::now() < until && !callers.iter().all(|(_, r)| done(&r.seen.lock().unwrap())) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cluster = Cluster::new()
            .await
            .expect("cluster (needs the PostgreSQL server binaries)");
        println!("| scenario | client | time |");
        println!("|---|---|---:|");

        // Restart.
        for round in 1..=3 {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let callers = [
                (
                    "rampart Stack::server",
                    start(
                        Caller::Rampart(Stack::server(&cluster.url()).build().expect("stack")),
                        &stop,
                    ),
                ),
                (
                    "bare tokio-postgres client",
                    start(Caller::Bare(cluster.url()), &stop),
                ),
            ];
            tokio::time::sleep(Duration::from_millis(500)).await;
            cluster.stop().expect("stop");
            tokio::time::sleep(Duration::from_millis(200)).await;
            cluster.start().await.expect("start");
            let up = mark(&callers);
            let cap = Duration::from_secs(15);
            wait_for(&callers, cap, |s| s.first_ok.is_some()).await;
            for (name, r) in &callers {
                let at = r.seen.lock().unwrap().first_ok;
                println!(
                    "| restart (round {round}): server accepting → first success | {name} | {} |",
                    show(up, at, cap)
                );
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Black hole.
        let proxy = FaultProxy::start(cluster.addr()).await.expect("proxy");
        let via = proxy.url(&cluster);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let callers = [
            (
                "rampart Stack::server (defaults: 3 s per attempt, 10 s deadline)",
                start(
                    Caller::Rampart(Stack::server(&via).build().expect("stack")),
                    &stop,
                ),
            ),
            (
                "rampart Stack::server, 1 s per attempt, 2 s deadline",
                start(
                    Caller::Rampart(
                        Stack::server(&via)
                            .attempt_timeout(Duration::from_secs(1))
                            .deadline(Duration::from_secs(2))
                            .build()
                            .expect("stack"),
                    ),
                    &stop,
                ),
            ),
            (
                "bare tokio-postgres client",
                start(Caller::Bare(via.clone()), &stop),
            ),
        ];
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.set_fault(Fault::BlackHole);
        let from = mark(&callers);
        let cap = Duration::from_secs(30);
        wait_for(&callers, cap, |s| s.first_err.is_some()).await;
        for (name, r) in &callers {
            let at = r.seen.lock().unwrap().first_err;
            println!(
                "| black hole starts → caller's error | {name} | {} |",
                show(from, at, cap)
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        proxy.set_fault(Fault::PassThrough);
        proxy.kill_silently();
    });
    // A bare caller may still hang on its black-holed link: do not wait for it.
    rt.shutdown_timeout(Duration::from_millis(100));
}
