//! The logs a stack leaves at `info` for the shapes of issue 17, in a process of their own: `tracing`'s
//! per-thread subscriber misses events when other tests run on other threads of the same process (its
//! callsite interest is global), so these are not among the scenario tests.

#[allow(dead_code)]
#[path = "../scenarios/support.rs"]
mod support;

use std::time::Duration;

use rampart::testing::{Cluster, FaultProxy};
use rampart::{PoolConfig, Query, Stack};

use crate::support::*;

/// The logs at `info` of stale links: a stale connection found by its check leaves one `WARN` line
/// (`rampart::validate`), not two; a request that needed a retry leaves one `INFO` line saying how many
/// attempts it took and why; one that failed after retries one `WARN` line of its own.
#[tokio::test]
async fn ride_logs_one_line_per_event() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    // Other tests' threads may have registered callsites while no subscriber wanted them: ask again.
    tracing::callsite::rebuild_interest_cache();
    let cluster = Cluster::new().await.unwrap();
    let proxy = FaultProxy::start(cluster.addr()).await.unwrap();
    // A 1 s bypass window, so that "inside the window" holds on a loaded machine.
    let window = Duration::from_secs(1);
    let pool = PoolConfig::builder()
        .validation(
            rampart::layers::validate::ValidationPolicy::builder()
                .bypass_window(window)
                .check_timeout(Duration::from_millis(750))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let db = Stack::server(&proxy.url(&cluster))
        .pool(pool)
        .build()
        .unwrap();
    db.run(Query::read("SELECT pg_sleep($1)").bind(0.0f64))
        .await
        .unwrap();

    // Past the bypass window: the check finds it.
    tokio::time::sleep(window + Duration::from_millis(100)).await;
    proxy.kill_silently();
    let mark = logs.text().len();
    db.run(Query::read("SELECT 1")).await.unwrap();
    let checked = logs.text()[mark..].to_owned();
    let warns = |text: &str| text.lines().filter(|l| l.contains(" WARN ")).count();
    let stats = db.pool().stats();
    assert_eq!(
        warns(&checked),
        1,
        "one WARN line per stale connection:\n{checked}\n{stats:?}"
    );

    // Inside the window, with the statement prepared: lost under the request, retried at once.
    db.run(Query::read("SELECT pg_sleep($1)").bind(0.0f64))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.kill_silently();
    let mark = logs.text().len();
    db.run(Query::read("SELECT pg_sleep($1)").bind(0.0f64))
        .await
        .unwrap();
    let retried = logs.text()[mark..].to_owned();
    let recovered: Vec<_> = retried
        .lines()
        .filter(|l| l.contains("request recovered after retries"))
        .collect();
    assert_eq!(recovered.len(), 1, "{retried}");
    assert!(
        recovered[0].contains(" INFO ") && recovered[0].contains("attempts=2"),
        "{retried}"
    );
    assert_eq!(
        warns(&retried),
        0,
        "a recovered request warns of nothing:\n{retried}"
    );

    // Refused for longer than the deadline: the request fails after retries.
    proxy.set_fault(rampart::testing::Fault::Refuse);
    proxy.reset_all();
    let mark = logs.text().len();
    let failed = db
        .run(Query::read("SELECT 1").timeout(Duration::from_millis(600)))
        .await;
    assert!(failed.is_err());
    let failed_text = logs.text()[mark..].to_owned();
    let summary: Vec<_> = failed_text
        .lines()
        .filter(|l| l.contains("request failed after retries"))
        .collect();
    assert_eq!(summary.len(), 1, "{failed_text}");
    assert!(summary[0].contains(" WARN "), "{failed_text}");
    for line in failed_text.lines().filter(|l| l.contains(" WARN ")) {
        println!("R7 warn: {line}");
    }
    report(
        "R7",
        &format!(
            "one stale connection checked: {} WARN line; a request recovered after a retry: 1 INFO line ({}); a request failed after retries: 1 WARN summary line, plus {} other WARN lines",
            warns(&checked),
            recovered[0]
                .split("rampart::query: ")
                .nth(1)
                .unwrap_or(recovered[0])
                .trim(),
            warns(&failed_text) - 1
        ),
        "-",
    );
}
