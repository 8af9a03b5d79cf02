//! Reads on replicas (issue 22): a stack given a replica (a streaming hot standby) sends `Query::read`
//! there and everything else to the primary; a read the replica fails falls back to the primary; a read
//! that must see the caller's own write says `Query::primary()`.
//!
//! Asserted, as counts: no read and no write fails when the replica dies; reads were served by the
//! replica before and by the primary after. With replay paused on the replica (a replica that lags), a
//! plain read does not see the caller's write and a `primary()` read does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rampart::testing::Cluster;
use rampart::{Db, MuxConfig, Query, Stack};

use crate::support::*;

async fn pair() -> (Cluster, Cluster) {
    let primary = Cluster::new().await.expect("primary");
    connect(&primary.url())
        .await
        .batch_execute("CREATE TABLE seen (id bigserial PRIMARY KEY, caller int)")
        .await
        .unwrap();
    let standby = primary.standby().await.expect("standby");
    (primary, standby)
}

/// The replicas' URL names both servers with `target_session_attrs=read-only`, as one would for a set of
/// servers whose roles change: its connections go to the standby only.
fn with_replica(primary: &Cluster, standby: &Cluster, multiplexed: bool) -> Db {
    let replicas = Cluster::url_of_all(&[primary, standby], "target_session_attrs=read-only");
    let builder = Stack::server(&primary.url()).replicas(&replicas);
    let builder = if multiplexed {
        builder.multiplex(MuxConfig::default())
    } else {
        builder
    };
    builder.build().expect("stack")
}

#[derive(Default)]
struct Seen {
    reads: Tally,
    writes: Tally,
    /// Reads answered, by the port of the server that answered.
    reads_on: BTreeMap<i32, usize>,
    writes_on: BTreeMap<i32, usize>,
    samples: BTreeMap<String, String>,
}

async fn replica_dies(multiplexed: bool) {
    let (primary, standby) = pair().await;
    let db = with_replica(&primary, &standby, multiplexed);
    let (on_primary, on_replica) = (i32::from(primary.port()), i32::from(standby.port()));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks: Vec<_> = (0..4)
        .map(|caller: i32| {
            let (db, stop, seen) = (db.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let written = db
                        .run(
                            Query::write("INSERT INTO seen (caller) VALUES ($1) RETURNING inet_server_port()")
                                .bind(caller),
                        )
                        .await
                        .and_then(|r| r.scalar::<i32>());
                    let read = db
                        .run(Query::read("SELECT inet_server_port()"))
                        .await
                        .and_then(|r| r.scalar::<i32>());
                    let mut s = seen.lock().unwrap();
                    s.writes.record_rampart(&written);
                    s.reads.record_rampart(&read);
                    if let Ok(port) = written {
                        *s.writes_on.entry(port).or_default() += 1;
                    }
                    if let Ok(port) = read {
                        *s.reads_on.entry(port).or_default() += 1;
                    }
                    for e in [written.err(), read.err()].into_iter().flatten() {
                        s.samples
                            .entry(e.kind().as_str().to_owned())
                            .or_insert_with(|| e.to_string());
                    }
                }
            })
        })
        .collect();
    until("reads are served by the replica", || {
        seen.lock()
            .unwrap()
            .reads_on
            .get(&on_replica)
            .copied()
            .unwrap_or(0)
            >= 100
    })
    .await;
    standby.kill().unwrap();
    let before = seen
        .lock()
        .unwrap()
        .reads_on
        .get(&on_primary)
        .copied()
        .unwrap_or(0);
    until("reads fall back to the primary", || {
        seen.lock()
            .unwrap()
            .reads_on
            .get(&on_primary)
            .copied()
            .unwrap_or(0)
            >= before + 300
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let health = db.health(None).await;
    let roles: Vec<(&str, Option<String>, Option<&str>)> = health
        .servers
        .iter()
        .map(|s| (s.role, s.host.clone(), s.breaker.as_ref().map(|b| b.state)))
        .collect();
    println!("SCENARIO replica dies | health: {roles:?}");
    assert_eq!(
        roles.iter().map(|r| (r.0, r.1.clone())).collect::<Vec<_>>(),
        [
            ("primary", Some(primary.addr().to_string())),
            ("replica", Some(standby.addr().to_string()))
        ]
    );
    let s = seen.lock().unwrap();
    let replica = db.replica_pool().unwrap().stats();
    let path = if multiplexed { "multiplexed" } else { "pooled" };
    println!(
        "SCENARIO replica dies {path} | reads: {} sent, {} failed {:?}, served by the replica {}, by the primary {} | \
         writes: {} sent, {} failed, on the primary {} | replica pool: {} made, {} failed connects | samples: {:?}",
        s.reads.sent,
        s.reads.failed(),
        s.reads.errors,
        s.reads_on.get(&on_replica).copied().unwrap_or(0),
        s.reads_on.get(&on_primary).copied().unwrap_or(0),
        s.writes.sent,
        s.writes.failed(),
        s.writes_on.get(&on_primary).copied().unwrap_or(0),
        replica.created,
        replica.connect_failures,
        s.samples,
    );
    assert_eq!(s.reads.failed(), 0, "{:?}", s.samples);
    assert_eq!(s.writes.failed(), 0, "{:?}", s.samples);
    assert_eq!(
        s.writes_on.get(&on_replica),
        None,
        "writes go to the primary only"
    );
}

#[tokio::test]
async fn replica_dies_pooled() {
    replica_dies(false).await;
}

#[tokio::test]
async fn replica_dies_multiplexed() {
    replica_dies(true).await;
}

#[tokio::test]
async fn replica_lags() {
    let (primary, standby) = pair().await;
    let db = with_replica(&primary, &standby, false);
    let count = "SELECT count(*) FROM seen";
    connect(&standby.url())
        .await
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    until_count_is(
        &standby,
        "SELECT (pg_get_wal_replay_pause_state() = 'paused')::int::bigint",
        |n| n == 1,
        "1 (replay paused)",
    )
    .await;
    db.run(Query::write("INSERT INTO seen (caller) VALUES (1)"))
        .await
        .unwrap();
    let on_replica: i64 = db.run(Query::read(count)).await.unwrap().scalar().unwrap();
    let on_primary: i64 = db
        .run(Query::read(count).primary())
        .await
        .unwrap()
        .scalar()
        .unwrap();
    connect(&standby.url())
        .await
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut reads = 0;
    loop {
        reads += 1;
        let n: i64 = db.run(Query::read(count)).await.unwrap().scalar().unwrap();
        if n == 1 {
            break;
        }
        assert!(started.elapsed() < BOUND, "the replica never caught up");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    println!(
        "SCENARIO replica lags | while replay was paused: a plain read saw {on_replica} rows, a primary() read \
         {on_primary}; after resuming, the replica showed the write after {reads} reads ({:.1} ms)",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(on_replica, 0, "a plain read went to the lagging replica");
    assert_eq!(
        on_primary, 1,
        "a primary() read sees the caller's own write"
    );
}
