//! The `grpc` example's service over a real socket, against a throwaway cluster, called with its client.

#[allow(dead_code)] // shared with http_health, which also counts
#[path = "../../examples/common/signups.rs"]
mod signups;

#[path = "../../examples/grpc/service.rs"]
mod service;

use std::net::Ipv4Addr;
use std::time::Duration;

use rampart::testing::Cluster;
use rampart::{Query, Stack};
use service::{SignupsClient, SignupsServer};
use tonic::Code;

/// The longest the test waits for the breaker to open.
const BOUND: Duration = Duration::from_secs(40);
/// The longest one call may take.
const CALL_BOUND: Duration = Duration::from_secs(15);

async fn bounded<T>(call: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_BOUND, call)
        .await
        .expect("no answer within the bound")
}

#[tokio::test]
async fn signup_is_idempotent_and_errors_become_status_codes() {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    signups::prepare(&db).await.unwrap();

    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            SignupsServer::new(db.clone()),
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        ),
    );
    let mut client = bounded(SignupsClient::connect(addr)).await.unwrap();

    let health = bounded(client.health()).await.unwrap();
    assert_eq!(health.status, "up", "{}", health.report_json);
    assert_eq!(health.breaker, "closed");
    assert!(!health.report_json.is_empty());

    let first = bounded(client.signup("ada@example.com", "req-1"))
        .await
        .unwrap();
    assert!(first.created);
    let again = bounded(client.signup("ada@example.com", "req-1"))
        .await
        .unwrap();
    assert_eq!((again.id, again.created), (first.id, false));
    let rows = db
        .run(Query::read("SELECT count(*) FROM rampart_example_signups"))
        .await
        .unwrap();
    assert_eq!(
        rows.first().unwrap().get::<_, i64>(0),
        1,
        "one row for one request_id"
    );

    let duplicate = bounded(client.signup("ada@example.com", "req-2"))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    let invalid = bounded(client.signup("not an address", "req-3"))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");

    // The server goes away: UNAVAILABLE, until the breaker opens and says how long to wait.
    cluster.stop().unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    let refused = loop {
        let status = bounded(client.signup("grace@example.com", "req-4"))
            .await
            .unwrap_err();
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "{status:?}"
        );
        if status.metadata().contains_key("grpc-retry-pushback-ms") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened: {status:?}"
        );
    };
    assert_eq!(refused.code(), Code::Unavailable);
    let health = bounded(client.health()).await.unwrap();
    assert_eq!(health.status, "down", "{}", health.report_json);
    assert_eq!(health.breaker, "open");

    drop(client);
    stop.send(()).unwrap();
    bounded(served).await.unwrap().unwrap();
}
