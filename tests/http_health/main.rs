//! The `http_health` example's server over a real socket, against a throwaway cluster: health, metrics,
//! idempotent sign-up, the breaker opening and closing, and no password anywhere.

#[path = "../../examples/common/signups.rs"]
mod signups;

#[path = "../../examples/http_health/app.rs"]
mod app;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rampart::testing::Cluster;
use rampart::{Db, Stack};
use serde_json::{Value, json};

/// The longest a test waits for something that should happen (the breaker opening, the server coming back).
const BOUND: Duration = Duration::from_secs(40);
/// The longest one HTTP request may take.
const REQUEST_BOUND: Duration = Duration::from_secs(15);

/// The example's router on 127.0.0.1, on a port of its own, and a client for it.
struct Server {
    addr: SocketAddr,
    client: Client<HttpConnector, Body>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Server {
    async fn start(db: Db) -> Server {
        let metrics = app::recorder();
        signups::prepare(&db).await.expect("creating the table");
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let router = app::app(db, metrics);
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Server {
            addr,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr));
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let exchange = async {
            let response = self.client.request(request.body(body).unwrap()).await?;
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(Body::new(body), usize::MAX)
                .await
                .expect("reading the body");
            Ok::<_, hyper_util::client::legacy::Error>(Answer {
                status: parts.status,
                headers: parts.headers,
                body: String::from_utf8(bytes.to_vec()).expect("a UTF-8 body"),
            })
        };
        tokio::time::timeout(REQUEST_BOUND, exchange)
            .await
            .unwrap_or_else(|_| panic!("no answer to {path} within {REQUEST_BOUND:?}"))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None).await
    }

    async fn signup(&self, email: &str, request_id: &str) -> Answer {
        let body = json!({"email": email, "request_id": request_id});
        self.send(Method::POST, "/signup", Some(body)).await
    }
}

#[tokio::test]
async fn health_is_up_and_a_repeated_signup_creates_one_row() {
    logs();
    let cluster = Cluster::new().await.unwrap();
    let server = Server::start(Stack::server(&cluster.url()).build().unwrap()).await;

    let health = server.get("/health").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    assert_eq!(health.headers[header::CONTENT_TYPE], "application/json");
    let report = health.json();
    assert_eq!(report["status"], "up", "{report}");
    assert_eq!(report["breaker"]["state"], "closed", "{report}");
    assert!(report["probe_rtt_ms"].is_number(), "{report}");

    let first = server.signup("ada@example.com", "req-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let again = server.signup("ada@example.com", "req-1").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.json()["created"], false);
    let count = server.get("/users/count").await;
    assert_eq!(count.status, StatusCode::OK, "{}", count.body);
    assert_eq!(count.json(), json!({"count": 1}));

    // The same email under another key is a conflict; the same key for another email too.
    let duplicate = server.signup("ada@example.com", "req-2").await;
    assert_eq!(duplicate.status, StatusCode::CONFLICT, "{}", duplicate.body);
    assert_eq!(duplicate.json()["error"], "conflict");
    let reused = server.signup("grace@example.com", "req-1").await;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{}", reused.body);
    assert_eq!(reused.json()["error"], "request_id_reused");
    let invalid = server.signup("not an address", "req-3").await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST, "{}", invalid.body);
    assert_eq!(server.get("/users/count").await.json()["count"], 1);

    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let server_label = format!("@127.0.0.1:{}/", cluster.port());
    let connections = metrics
        .body
        .lines()
        .find(|l| l.starts_with("rampart_pool_connections{") && l.contains(&server_label))
        .unwrap_or_else(|| panic!("no pool gauge for this server:\n{}", metrics.body));
    assert!(connections.ends_with(" 1"), "{connections}");
    // A layer's counter, through the `metrics` feature.
    assert!(
        metrics.body.contains("rampart_retry_attempts_total"),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn the_breaker_opens_when_the_server_stops_and_health_follows_it() {
    logs();
    let cluster = Cluster::new().await.unwrap();
    let server = Server::start(Stack::server(&cluster.url()).build().unwrap()).await;
    assert_eq!(server.get("/users/count").await.status, StatusCode::OK);
    // This server's breaker is named by its redacted URL, so its series are told apart from those of
    // the other tests in this binary, which share the process-wide recorder.
    let this_server = format!("@127.0.0.1:{}/", cluster.port());
    let before = Metrics::scrape(&server).await;
    assert_eq!(
        before.sum(
            "rampart_breaker_transitions_total",
            &[&this_server, r#"to="open""#]
        ),
        0.0,
        "{}",
        before.0
    );

    cluster.stop().unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    let refused = loop {
        let answer = server.get("/users/count").await;
        assert!(answer.status.is_server_error(), "{}", answer.body);
        if answer.json()["error"] == "circuit_open" {
            break answer;
        }
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            answer.body
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened: {}",
            answer.body
        );
    };
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = refused.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    let health = server.get("/health").await;
    assert_eq!(
        health.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        health.body
    );
    assert_eq!(health.json()["status"], "down");
    assert_eq!(health.json()["breaker"]["state"], "open");

    // /metrics shows the outage: the transition to open, the refusal, and the retries before it.
    let down = Metrics::scrape(&server).await;
    assert_eq!(
        down.sum(
            "rampart_breaker_transitions_total",
            &[&this_server, r#"from="closed""#, r#"to="open""#]
        ),
        1.0,
        "{}",
        down.0
    );
    assert!(
        down.sum("rampart_breaker_rejections_total", &[&this_server]) >= 1.0,
        "{}",
        down.0
    );
    // The retry counters carry no server label: they only have to have grown while this server was down.
    for name in [
        "rampart_retry_attempts_total",
        "rampart_retry_retries_total",
    ] {
        assert!(
            down.sum(name, &[]) > before.sum(name, &[]),
            "{name} did not grow:\n{}",
            down.0
        );
    }
    assert!(
        down.sum("rampart_retry_retries_total", &[r#"class="transient""#]) >= 1.0,
        "{}",
        down.0
    );

    // Back: once the breaker's wait is over, a request goes through and closes it again.
    cluster.start().await.unwrap();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let answer = server.get("/users/count").await;
        if answer.status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served again: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let health = server.get("/health").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.body);
    // The first request after the wait was one of the half-open breaker's probes; the others close it.
    let deadline = tokio::time::Instant::now() + BOUND;
    let health = loop {
        let health = server.get("/health").await;
        assert_eq!(health.status, StatusCode::OK, "{}", health.body);
        if health.json()["breaker"]["state"] == "closed" {
            break health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never closed again: {}",
            health.body
        );
        assert_eq!(server.get("/users/count").await.status, StatusCode::OK);
    };
    assert_eq!(health.json()["status"], "up", "{}", health.body);

    // ... and the way back: open to half-open after the wait, half-open to closed on the probes.
    let back = Metrics::scrape(&server).await;
    for (from, to) in [("open", "half_open"), ("half_open", "closed")] {
        let (from, to) = (format!("from=\"{from}\""), format!("to=\"{to}\""));
        assert!(
            back.sum(
                "rampart_breaker_transitions_total",
                &[&this_server, &from, &to]
            ) >= 1.0,
            "no {from} {to} transition:\n{}",
            back.0
        );
    }
}

/// A scrape of `/metrics`, in Prometheus' text format.
struct Metrics(String);

impl Metrics {
    async fn scrape(server: &Server) -> Metrics {
        let answer = server.get("/metrics").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        Metrics(answer.body)
    }

    /// The sum of the series of `name` whose line contains every one of `parts` (0 when there is none).
    fn sum(&self, name: &str, parts: &[&str]) -> f64 {
        self.0
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter(|line| parts.iter().all(|part| line.contains(part)))
            .map(|line| {
                let value = line.rsplit(' ').next().unwrap_or_default();
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("not a sample: {line}"))
            })
            .sum()
    }
}

/// Everything logged by this test binary, at every level, for looking through afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The captured logs; every test calls this first. One global subscriber rather than one per test:
/// tracing caches each call site's interest, and a call site first reached by a test without a
/// subscriber could otherwise stay silent for the test that has one.
fn logs() -> Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
    .clone()
}

#[tokio::test]
async fn the_password_appears_in_no_response_and_no_log_line() {
    const PASSWORD: &str = "s3cret-Horse-Battery";
    let logs = logs();
    let cluster = Cluster::builder().password(PASSWORD).start().await.unwrap();
    assert!(
        cluster.url().contains(PASSWORD),
        "the test needs a password in the URL"
    );
    let server = Server::start(Stack::server(&cluster.url()).build().unwrap()).await;

    let mut bodies = vec![
        server.get("/health").await.body,
        server.signup("ada@example.com", "req-1").await.body,
        server.signup("ada@example.com", "req-2").await.body,
        server.get("/users/count").await.body,
        server.get("/metrics").await.body,
    ];
    assert!(bodies[0].contains("\"status\":\"up\""), "{}", bodies[0]);
    // Errors name the server too: make some.
    cluster.stop().unwrap();
    for _ in 0..3 {
        bodies.push(server.get("/users/count").await.body);
        bodies.push(server.signup("grace@example.com", "req-3").await.body);
    }
    let health = server.get("/health").await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    bodies.push(health.body);
    bodies.push(server.get("/metrics").await.body);

    for body in &bodies {
        assert!(
            !body.contains(PASSWORD),
            "the password is in a response: {body}"
        );
    }
    let logs = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("request failed"),
        "the failures were not logged:\n{logs}"
    );
    for line in logs.lines() {
        assert!(
            !line.contains(PASSWORD),
            "the password is in a log line: {line}"
        );
    }
}
