//! The `grpc` example over a real socket, against a throwaway cluster: the server's status codes, called
//! with the plain client, and the client-side stack (deadline, retry, breaker, attempt timeout around the
//! tonic channel) retrying `UNAVAILABLE` and failing fast once the server is gone.

#[allow(dead_code)] // shared with http_health, which also counts
#[path = "../../examples/common/signups.rs"]
mod signups;

#[path = "../../examples/grpc/service.rs"]
mod service;

#[path = "../../examples/grpc/client.rs"]
mod client;

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use client::{ClientSettings, GrpcClassifier, ResilientClient, classify_status, find};
use futures_util::future::BoxFuture;
use rampart::layers::backoff::{Exponential, Jitter};
use rampart::layers::breaker::{BreakerConfig, BreakerState, SlidingWindow};
use rampart::layers::retry::{GaveUp, RetryError};
use rampart::layers::{AttemptTimedOut, CircuitOpen, Classification, Classify};
use rampart::testing::Cluster;
use rampart::{Query, Stack};
use service::{HealthRequest, SignupRequest, SignupsClient, SignupsServer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::BoxError;

/// The longest the test waits for the breaker to open.
const BOUND: Duration = Duration::from_secs(40);
/// The longest one call may take.
const CALL_BOUND: Duration = Duration::from_secs(15);

async fn bounded<T>(call: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_BOUND, call)
        .await
        .expect("no answer within the bound")
}

/// Serves `service` with tonic on 127.0.0.1, on a port of its own, until `stop` is sent.
async fn serve<S>(
    service: S,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<Result<(), tonic::transport::Error>>,
)
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            service,
            tonic::transport::server::TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        ),
    );
    (addr, stop, served)
}

#[tokio::test]
async fn signup_is_idempotent_and_errors_become_status_codes() {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    signups::prepare(&db).await.unwrap();

    let (addr, stop, served) = serve(SignupsServer::new(db.clone())).await;
    let mut client = SignupsClient::lazy(addr);

    let health = bounded(client.call(HealthRequest {}, None)).await.unwrap();
    assert_eq!(health.status, "up", "{}", health.report_json);
    assert_eq!(health.breaker, "closed");
    assert!(!health.report_json.is_empty());

    let first = bounded(client.call(SignupRequest::new("ada@example.com", "req-1"), None))
        .await
        .unwrap();
    assert!(first.created);
    let again = bounded(client.call(SignupRequest::new("ada@example.com", "req-1"), None))
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

    let duplicate = bounded(client.call(SignupRequest::new("ada@example.com", "req-2"), None))
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    let invalid = bounded(client.call(SignupRequest::new("not an address", "req-3"), None))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");

    // The server goes away: UNAVAILABLE, until the breaker opens and says how long to wait.
    cluster.stop().unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    let refused = loop {
        let status = bounded(client.call(SignupRequest::new("grace@example.com", "req-4"), None))
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
    let health = bounded(client.call(HealthRequest {}, None)).await.unwrap();
    assert_eq!(health.status, "down", "{}", health.report_json);
    assert_eq!(health.breaker, "open");

    drop(client);
    stop.send(()).unwrap();
    bounded(served).await.unwrap().unwrap();
}

/// In front of the server: answers the first `failures` calls with `UNAVAILABLE` itself, as a
/// restarting server or a proxy without a backend would, and counts every call that arrives.
#[derive(Clone)]
struct FailFirst<S> {
    inner: S,
    failures: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

impl<S> tower::Service<http::Request<Body>> for FailFirst<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let inject = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if inject {
            let response = Status::unavailable("injected: the server is restarting").into_http();
            Box::pin(async move { Ok(response) })
        } else {
            Box::pin(self.inner.call(request))
        }
    }
}

/// Client settings for the tests: short backoff, a breaker that opens once half of at least 5 calls
/// failed and then stays open for the rest of the test.
fn test_settings() -> ClientSettings {
    ClientSettings {
        deadline: Duration::from_secs(12),
        attempt_timeout: Duration::from_secs(5),
        max_attempts: 4,
        backoff: Exponential::builder()
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50))
            .jitter(Jitter::None)
            .build()
            .unwrap(),
        breaker: BreakerConfig::builder()
            .name("signups-grpc-test")
            .failure_rate(0.5)
            .sliding_window(SlidingWindow::Count(10))
            .minimum_calls(5)
            .wait_in_open(Duration::from_secs(600))
            .max_wait_in_open(Duration::from_secs(600))
            .build()
            .unwrap(),
    }
}

#[tokio::test]
async fn the_client_stack_retries_unavailable_and_fails_fast_once_the_server_is_gone() {
    let cluster = Cluster::new().await.unwrap();
    let db = Stack::server(&cluster.url()).build().unwrap();
    signups::prepare(&db).await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let server = FailFirst {
        inner: SignupsServer::new(db),
        failures: Arc::new(AtomicU32::new(2)),
        calls: Arc::clone(&calls),
    };
    let (addr, stop, served) = serve(server).await;
    let mut client = ResilientClient::new(SignupsClient::lazy(addr), test_settings()).unwrap();

    // Two UNAVAILABLEs, then the server's answer: the caller sees only the answer.
    let reply = bounded(client.signup("ada@example.com", "req-1"))
        .await
        .unwrap();
    assert!(reply.created);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two injected failures and the call that went through"
    );
    assert_eq!(client.retries(), 2);
    let breaker = client.breaker().metrics();
    assert_eq!(
        (breaker.state, breaker.calls, breaker.failures),
        (BreakerState::Closed, 3, 2),
        "{breaker:?}"
    );
    let health = bounded(client.health()).await.unwrap();
    assert_eq!(health.status, "up", "{}", health.report_json);
    assert_eq!(calls.load(Ordering::SeqCst), 4);

    // A permanent status is returned at once: one attempt, not counted against the server.
    let err = bounded(client.signup("not an address", "req-2"))
        .await
        .unwrap_err();
    assert_eq!(
        find::<Status>(&err).map(Status::code),
        Some(Code::InvalidArgument),
        "{err}"
    );
    let retry = find::<RetryError>(&err).expect("the retry layer's error");
    assert_eq!((retry.attempts(), retry.reason()), (1, GaveUp::Permanent));
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(client.retries(), 2);
    assert_eq!(client.breaker().metrics().ignored, 1);

    // The server goes away: connections are refused (UNAVAILABLE, retried) until the client's breaker
    // opens, and from then on calls are refused without a connection attempt or a wait.
    stop.send(()).unwrap();
    bounded(served).await.unwrap().unwrap();
    let mut failed_calls = 0;
    let opened = loop {
        let err = bounded(client.signup("grace@example.com", "req-3"))
            .await
            .unwrap_err();
        if find::<CircuitOpen>(&err).is_some() {
            break err;
        }
        let status = find::<Status>(&err).unwrap_or_else(|| panic!("not a status: {err}"));
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Unknown),
            "{err}"
        );
        failed_calls += 1;
        assert!(failed_calls < 5, "the client's breaker never opened: {err}");
    };
    let retry = find::<RetryError>(&opened).expect("the retry layer's error");
    assert_eq!(retry.reason(), GaveUp::Permanent, "{opened}");
    let breaker = client.breaker().metrics();
    // Two injected failures and two successes before, and the first refused connection makes five
    // calls, three failed: 60 % is over the threshold.
    assert_eq!(
        (
            breaker.state,
            breaker.calls,
            breaker.failures,
            breaker.transitions
        ),
        (BreakerState::Open, 5, 3, 1),
        "{breaker:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5, "nothing reached a server");

    let (retries, rejections) = (client.retries(), breaker.rejections);
    for n in 1..=3 {
        let err = bounded(client.signup("grace@example.com", "req-3"))
            .await
            .unwrap_err();
        let open = find::<CircuitOpen>(&err).unwrap_or_else(|| panic!("not refused: {err}"));
        assert!(
            open.retry_after().is_some_and(|wait| wait > Duration::ZERO),
            "{open}"
        );
        let retry = find::<RetryError>(&err).expect("the retry layer's error");
        assert_eq!(
            (retry.attempts(), retry.reason()),
            (1, GaveUp::Permanent),
            "{err}"
        );
        assert_eq!(client.breaker().metrics().rejections, rejections + n);
    }
    assert_eq!(client.retries(), retries, "a refused call is not retried");
    assert!(client::describe(&opened).starts_with("refused by the client's breaker"));
}

#[test]
fn grpc_statuses_are_classified_for_retry_and_breaker() {
    for (code, class) in [
        (Code::Unavailable, Classification::Transient),
        (Code::DeadlineExceeded, Classification::Transient),
        (Code::Unknown, Classification::Ambiguous),
        (Code::InvalidArgument, Classification::Permanent),
        (Code::AlreadyExists, Classification::Permanent),
        (Code::Aborted, Classification::Permanent),
        (Code::Internal, Classification::Permanent),
        (Code::Cancelled, Classification::Permanent),
    ] {
        let status = Status::new(code, "x");
        assert_eq!(classify_status(&status), class, "{code:?}");
        let boxed: BoxError = Box::new(Status::new(code, "x"));
        assert_eq!(
            Classify::<(), BoxError>::classify_error(&GrpcClassifier, &boxed),
            class,
            "{code:?} boxed"
        );
    }
    let timed_out: BoxError = Box::new(AttemptTimedOut::new(Duration::from_secs(1)));
    assert_eq!(
        Classify::<(), BoxError>::classify_error(&GrpcClassifier, &timed_out),
        Classification::Transient
    );
    let other: BoxError = "something else".into();
    assert_eq!(
        Classify::<(), BoxError>::classify_error(&GrpcClassifier, &other),
        Classification::Permanent
    );
}
