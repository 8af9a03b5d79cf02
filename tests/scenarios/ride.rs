//! Riding through the shapes of the seed's faults (issue 17), each through a ready-made stack with its
//! documented defaults: stale links killed inside the bypass window, black-holed stale links, a restart
//! under looping callers.
//!
//! Timings are printed, never asserted; what is asserted is counted (failures, attempts, connections
//! checked or dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rampart::testing::{Cluster, FaultProxy};
use rampart::{PoolConfig, Query, Stack};

use crate::support::*;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The median of `n` sequential `SELECT 1` through `db`: a normal request's time.
async fn normal_latency(db: &rampart::Db, n: usize) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        db.run(Query::read("SELECT 1"))
            .await
            .expect("normal request");
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

/// Opens `n` connections with `SELECT pg_sleep($1)` prepared on each (so a later `pg_sleep(0)` sends no
/// Parse: its first write is the statement itself).
async fn warm_prepared(db: &rampart::Db, n: usize) {
    let queries = (0..n).map(|_| db.run(Query::read("SELECT pg_sleep($1)").bind(0.2f64)));
    for r in futures_util::future::join_all(queries).await {
        r.expect("warm-up query");
    }
}

/// What the first request after a silent kill cost.
struct First {
    took: Duration,
    retries: u64,
    checked_and_dropped: u64,
}

/// Warms `stale` connections, lets them idle 100 ms, kills them silently, waits 200 ms (all still inside
/// the 500 ms bypass window), and times the first request, `query`.
async fn first_after_kill(
    db: &rampart::Db,
    proxy: &FaultProxy,
    stale: usize,
    query: Query,
    tally: &mut Tally,
) -> First {
    warm_prepared(db, stale).await;
    assert_eq!(db.pool().stats().idle, stale);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(proxy.kill_silently(), stale);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (retries, evicted) = (db.retries(), db.pool().stats().evicted_validation);
    let started = Instant::now();
    let result = db.run(query).await;
    let took = started.elapsed();
    tally.record_rampart(&result);
    First {
        took,
        retries: db.retries() - retries,
        checked_and_dropped: db.pool().stats().evicted_validation - evicted,
    }
}

/// Idle links killed silently (RST on the next write) 200 ms before the next request, all of them idle
/// for less than the 500 ms bypass window, so none is checked by the bypass rule. If the request's
/// statement is new to the connection, the first write is its `Parse`: the dead link is found before
/// anything ran, which costs no attempt. If it is prepared already, the statement itself meets the
/// reset: a read loses one attempt, with no backoff. Either way every connection as old is then suspect
/// and checked (each check fails at once on the reset) before a new one is made.
#[tokio::test]
async fn ride_stale_links_killed_inside_the_bypass_window() {
    const STALE: usize = 6;
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let db = Stack::server(&proxy.url(&cluster)).build().unwrap();
    assert_eq!(
        db.pool().config().validation().bypass_window(),
        Duration::from_millis(500)
    );
    let mut tally = Tally::default();

    let new_sql = first_after_kill(&db, &proxy, STALE, Query::read("SELECT 1"), &mut tally).await;
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert_eq!(
        new_sql.retries, 0,
        "found dead at the Parse: no attempt spent"
    );
    assert_eq!(
        new_sql.checked_and_dropped,
        (STALE - 1) as u64,
        "every other connection as old checked and dropped before use"
    );

    let prepared = first_after_kill(
        &db,
        &proxy,
        STALE,
        Query::read("SELECT pg_sleep($1)").bind(0.0f64),
        &mut tally,
    )
    .await;
    assert_eq!(tally.failed(), 0, "{tally:?}");
    assert_eq!(
        prepared.retries, 1,
        "one attempt lost on the first stale link, none on the others"
    );
    assert_eq!(prepared.checked_and_dropped, (STALE - 1) as u64);

    // A concurrent burst and a run of sequential requests after it: no stale link left to meet.
    let retries = db.retries();
    let started = Instant::now();
    let burst =
        futures_util::future::join_all((0..8).map(|_| db.run(Query::read("SELECT 1")))).await;
    let burst_took = started.elapsed();
    for r in &burst {
        tally.record_rampart(r);
    }
    let normal = normal_latency(&db, 21).await;
    tally.sent += 21;
    tally.ok += 21;
    assert_eq!(tally.failed(), 0, "no request fails: {tally:?}");
    assert_eq!(db.retries(), retries, "no later request met a stale link");

    // deadpool-postgres with its defaults, after the same kill inside the window.
    let pool = deadpool(&proxy.url(&cluster), STALE);
    let held: Vec<_> = futures_util::future::join_all((0..STALE).map(|_| pool.get()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.kill_silently();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut deadpool_tally = Tally::default();
    for _ in 0..STALE {
        let conn = pool.get().await.unwrap();
        deadpool_tally.record_pg(&conn.query("SELECT 1", &[]).await);
    }
    report(
        "R1",
        &format!(
            "{}/{} ok; normal request {}; first request {} (new statement: dead at the Parse, 0 attempts lost) and {} (prepared statement: 1 attempt lost, no backoff); {} + {} stale connections checked and dropped before use; burst of 8 after it {}",
            tally.ok,
            tally.sent,
            ms(normal),
            ms(new_sql.took),
            ms(prepared.took),
            new_sql.checked_and_dropped,
            prepared.checked_and_dropped,
            ms(burst_took),
        ),
        &format!(
            "deadpool (defaults): {}/{} failed",
            deadpool_tally.failed(),
            deadpool_tally.sent
        ),
    );
}

/// Idle links black-holed (writes vanish, nothing comes back) after idling past the bypass window: the
/// first check times out, and every connection as old is dropped unchecked instead of each costing the
/// check timeout in turn; the request then connects anew. Pool sizes 10 and 20.
#[tokio::test]
async fn ride_stale_links_dropped_silently() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let mut lines = Vec::new();
    for size in [10usize, 20] {
        let pool = PoolConfig::builder().max_size(size).build().unwrap();
        // Cold start: a new stack's first request, which connects.
        let cold_db = Stack::server(&proxy.url(&cluster))
            .pool(pool.clone())
            .build()
            .unwrap();
        let started = Instant::now();
        cold_db.run(Query::read("SELECT 1")).await.unwrap();
        let cold = started.elapsed();
        drop(cold_db);

        let db = Stack::server(&proxy.url(&cluster))
            .pool(pool)
            .build()
            .unwrap();
        let check_timeout = db.pool().config().validation().check_timeout();
        warm(&db, size).await;
        assert_eq!(db.pool().stats().size, size);
        // Quiet for longer than the bypass window, then the front end forgets every flow.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(proxy.drop_silently(), size);

        let started = Instant::now();
        let first = db.run(Query::read("SELECT 1")).await;
        let first_took = started.elapsed();
        let stats = db.pool().stats();
        assert!(first.is_ok(), "pool of {size}: {first:?}");
        assert_eq!(db.retries(), 0, "pool of {size}: no attempt lost");
        assert_eq!(
            stats.evicted_validation, 1,
            "pool of {size}: one check timed out, not one per stale connection: {stats:?}"
        );
        assert_eq!(
            stats.evicted_suspect,
            (size - 1) as u64,
            "pool of {size}: the others as old dropped unchecked: {stats:?}"
        );
        let mut tally = Tally::default();
        for _ in 0..20 {
            tally.record_rampart(&db.run(Query::read("SELECT 1")).await);
        }
        assert_eq!(tally.failed(), 0, "pool of {size}: {tally:?}");
        lines.push(format!(
            "pool {size}: first request {} (cold start {}, check timeout {}), 1 check timed out, {} dropped unchecked",
            ms(first_took),
            ms(cold),
            ms(check_timeout),
            stats.evicted_suspect
        ));
    }
    report("R2", &lines.join("; "), "-");
}

/// What looping callers saw across an outage.
#[derive(Default)]
struct Loop {
    tally: std::sync::Mutex<Tally>,
    /// The longest a request took, in microseconds.
    longest_us: AtomicU64,
}

/// Four callers looping `SELECT 1` (with a 5 ms pause) through `db` until `stop` is set.
fn looping_callers(
    db: &rampart::Db,
    stop: &Arc<AtomicBool>,
) -> (Arc<Loop>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Loop::default());
    let callers = (0..4)
        .map(|_| {
            let (db, seen, stop) = (db.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = db.run(Query::read("SELECT 1")).await;
                    let took = started.elapsed().as_micros() as u64;
                    seen.longest_us.fetch_max(took, Ordering::Relaxed);
                    seen.tally.lock().unwrap().record_rampart(&result);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    (seen, callers)
}

/// Four callers loop `SELECT 1` through the server stack while the server is stopped for 3 s and
/// started again, once with a fast shutdown and once with a crash (immediate shutdown, recovery on
/// start): refused connects and `57P03` are retried until the deadline with a capped backoff, so callers
/// see errors only for statements in flight at the shutdown, if any (reads among them are retried).
#[tokio::test]
async fn ride_a_restart_under_looping_callers() {
    let cluster = Arc::new(Cluster::new().await.unwrap());
    let mut lines = Vec::new();
    for crash in [false, true] {
        let db = Stack::server(&cluster.url()).build().unwrap();
        db.run(Query::read("SELECT 1")).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, callers) = looping_callers(&db, &stop);
        let ok = || seen.tally.lock().unwrap().ok;
        // Traffic for a while before, as a service has: the breaker judges the outage against it.
        until("callers running", || ok() >= 600).await;
        let stopped = Instant::now();
        {
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || {
                if crash {
                    cluster.kill()
                } else {
                    cluster.stop()
                }
            })
            .await
            .unwrap()
            .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(stopped.elapsed())).await;
        cluster.start().await.unwrap();
        let outage = stopped.elapsed();
        let back = Instant::now();
        let ok_at_back = ok();
        until("callers served after the restart", || {
            ok() >= ok_at_back + 40
        })
        .await;
        let served_after = back.elapsed();
        stop.store(true, Ordering::Relaxed);
        for c in callers {
            c.await.unwrap();
        }
        let tally = seen.tally.lock().unwrap().clone();
        let longest = Duration::from_micros(seen.longest_us.load(Ordering::Relaxed));
        let breaker = db.breaker().unwrap().state().as_str().to_owned();
        let shape = if crash { "crash" } else { "fast shutdown" };
        assert!(
            tally.failed() <= 4,
            "{shape}: errors only for the (at most 4) statements in flight at the shutdown: {tally:?}"
        );
        assert_eq!(
            breaker, "closed",
            "{shape}: a 3 s outage does not open the breaker"
        );
        lines.push(format!(
            "{shape} ({} down): {}/{} ok, errors {:?}, longest request {} (stall), 40 served {} after the start, {} retries, breaker {}",
            ms(outage),
            tally.ok,
            tally.sent,
            tally.errors,
            ms(longest),
            ms(served_after),
            db.retries(),
            breaker
        ));
    }
    report(
        "R4",
        &format!("3 s outage under 4 looping callers: {}", lines.join("; ")),
        "-",
    );
}

/// A long outage under four looping callers opens the breaker (the breaker, not an attempt count,
/// stops the retrying); once the server is back, the breaker closes within about its 1 s open wait, not
/// after a wait that doubled while the server was down.
#[tokio::test]
async fn ride_the_breaker_closes_soon_after_a_long_outage() {
    let cluster = Arc::new(Cluster::new().await.unwrap());
    let db = Stack::server(&cluster.url()).build().unwrap();
    let breaker = db.breaker().unwrap().clone();
    db.run(Query::read("SELECT 1")).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, callers) = looping_callers(&db, &stop);
    until("callers running", || seen.tally.lock().unwrap().ok >= 200).await;
    let stopped = Instant::now();
    {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .unwrap()
            .unwrap();
    }
    rampart::testing::until_async("the breaker opens in the outage", || async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        breaker.state().as_str() == "open"
    })
    .await;
    let opened_after = stopped.elapsed();
    // Down a while longer with the breaker cycling open → half-open → open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let refused_before = seen
        .tally
        .lock()
        .unwrap()
        .errors
        .get("circuit_open")
        .copied();
    cluster.start().await.unwrap();
    let outage = stopped.elapsed();
    let back = Instant::now();
    rampart::testing::until_async("the breaker closes", || async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        breaker.state().as_str() == "closed"
    })
    .await;
    let closed_after = back.elapsed();
    let refused_after = seen
        .tally
        .lock()
        .unwrap()
        .errors
        .get("circuit_open")
        .copied();
    let ok_at_close = seen.tally.lock().unwrap().ok;
    until("served after closing", || {
        seen.tally.lock().unwrap().ok >= ok_at_close + 40
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let tally = seen.tally.lock().unwrap().clone();
    assert!(tally.errors.contains_key("circuit_open"), "{tally:?}");
    report(
        "R4b",
        &format!(
            "{} outage under 4 looping callers: breaker opened {} in; closed {} after the server was back ({} calls refused with circuit_open after it was back); errors {:?}",
            ms(outage),
            ms(opened_after),
            ms(closed_after),
            refused_after.unwrap_or(0) - refused_before.unwrap_or(0),
            tally.errors
        ),
        "-",
    );
}

/// Ten reads slower than the attempt timeout (no `Query::timeout`) hold the default pool of 10 while a
/// caller loops an unrelated `SELECT 1`: the server cuts each slow read at the attempt (`57014`, it
/// answered), each is retried once and then fails as a slow statement, and the breaker, which does not
/// count a statement the server answered, never opens: no `SELECT 1` is refused with `circuit_open`.
#[tokio::test]
async fn ride_slow_statements_do_not_open_the_breaker() {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    let breaker = db.breaker().unwrap().clone();
    db.run(Query::read("SELECT 1")).await.unwrap();
    let opened = Arc::new(AtomicBool::new(false));
    let slow_done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (breaker, opened, done) = (breaker.clone(), opened.clone(), slow_done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if breaker.state().as_str() != "closed" {
                    opened.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let unrelated = {
        let (db, done) = (db.clone(), slow_done.clone());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            while !done.load(Ordering::Relaxed) {
                tally.record_rampart(&db.run(Query::read("SELECT 1")).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tally
        })
    };
    let started = Instant::now();
    let slow =
        futures_util::future::join_all((0..10).map(|_| db.run(Query::read("SELECT pg_sleep(4)"))))
            .await;
    let slow_took = started.elapsed();
    slow_done.store(true, Ordering::Relaxed);
    let unrelated = unrelated.await.unwrap();
    watcher.await.unwrap();
    let mut slow_tally = Tally::default();
    let mut attempts = Vec::new();
    for r in &slow {
        slow_tally.record_rampart(r);
        if let Err(e) = r {
            assert_eq!(e.kind(), rampart::ErrorKind::Timeout, "{e}");
            assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
            attempts.push(e.attempts().unwrap_or(1));
        }
    }
    let metrics = breaker.metrics();
    assert_eq!(slow_tally.failed(), 10, "{slow_tally:?}");
    assert!(
        attempts.iter().all(|&a| a == 2),
        "each slow read retried once: {attempts:?}"
    );
    assert!(
        !opened.load(Ordering::Relaxed),
        "the breaker never left closed: {metrics:?}"
    );
    assert_eq!(
        unrelated.errors.get("circuit_open"),
        None,
        "no unrelated request refused: {unrelated:?}"
    );
    report(
        "R5",
        &format!(
            "10 reads slower than the 3 s attempt timeout: each cut by the server (57014) and retried once, failing as slow after {}; breaker stayed closed; unrelated SELECT 1: {}/{} ok, errors {:?}",
            ms(slow_took),
            unrelated.ok,
            unrelated.sent,
            unrelated.errors
        ),
        "-",
    );
}

/// `Db::health(Some(limit))` is bounded by the limit in all: a stale idle connection on a black-holed
/// path (whose check would take the 750 ms check timeout) and a connect that would wait out its 5 s
/// connect timeout both answer "down" at the limit. The serverless preset's health makes no probe (no
/// link opened: a suspended compute is not woken) unless asked with `health_waking`.
#[tokio::test]
async fn ride_health_is_bounded_and_does_not_wake_a_serverless_host() {
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    let limit = Duration::from_millis(200);

    let db = Stack::server(&proxy.url(&cluster)).build().unwrap();
    db.run(Query::read("SELECT 1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    proxy.set_fault(rampart::testing::Fault::BlackHole);
    let started = Instant::now();
    let stale = db.health(Some(limit)).await;
    let stale_took = started.elapsed();
    assert_eq!(stale.status, rampart::Status::Down, "{stale:?}");
    // No connection to check now: the probe must connect, into the black hole.
    let started = Instant::now();
    let cold = db.health(Some(limit)).await;
    let cold_took = started.elapsed();
    assert_eq!(cold.status, rampart::Status::Down, "{cold:?}");
    proxy.set_fault(rampart::testing::Fault::PassThrough);

    let url = format!("{}?sslmode=disable", proxy.url(&cluster));
    let serverless = Stack::serverless(&url).build().unwrap();
    let links = proxy.stats().links_accepted;
    let idle = serverless.health(Some(limit)).await;
    assert_eq!(
        proxy.stats().links_accepted,
        links,
        "no link opened: the compute is not woken"
    );
    assert!(idle.probe_skipped.is_some() && idle.probe_rtt_ms.is_none());
    let woken = serverless.health_waking(Duration::from_secs(5)).await;
    assert!(woken.probe_rtt_ms.is_some(), "{woken:?}");
    assert!(proxy.stats().links_accepted > links);
    report(
        "R6",
        &format!(
            "health(Some(200 ms)): stale black-holed connection answered {:?} in {}; connect into a black hole answered {:?} in {}; serverless health: no probe, 0 links opened, status {:?}; health_waking probed in {:.1} ms",
            stale.status,
            ms(stale_took),
            cold.status,
            ms(cold_took),
            idle.status,
            woken.probe_rtt_ms.unwrap_or_default()
        ),
        "-",
    );
}
