//! The gRPC service `rampart.example.Signups`, written by hand: its messages, a server that routes the
//! two methods, and a plain client (`client.rs` stacks rampart's layers around it). Separate from `main`
//! so that `tests/grpc` runs the very same code.
//!
//! No code generation: the messages are prost structs with the field tags of `signups.proto` (beside
//! this file, for grpcurl and for clients in other languages), and each method is a closure handed to
//! `tonic::server::Grpc::unary`, which is what generated code does too. That spares the build a
//! `build.rs` and a `protoc`, for the price of the routing `match` below.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::uri::PathAndQuery;
use rampart::Db;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

use crate::signups::{self, Failure, Signup};

/// The service's full name, as in `signups.proto`.
pub(crate) const SERVICE: &str = "rampart.example.Signups";
const SIGNUP: &str = "/rampart.example.Signups/Signup";
const HEALTH: &str = "/rampart.example.Signups/Health";

/// `Signup` asks for an email to be signed up, at most once per `request_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SignupRequest {
    #[prost(string, tag = "1")]
    pub(crate) email: String,
    #[prost(string, tag = "2")]
    pub(crate) request_id: String,
}

/// The sign-up's id; `created` is false when the `request_id` was signed up before.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SignupReply {
    #[prost(int64, tag = "1")]
    pub(crate) id: i64,
    #[prost(bool, tag = "2")]
    pub(crate) created: bool,
}

/// `Health` takes no arguments.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HealthRequest {}

/// The health report: the main fields, and the whole report as JSON.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HealthReply {
    /// `up`, `degraded` or `down`.
    #[prost(string, tag = "1")]
    pub(crate) status: String,
    /// The server, by its redacted URL.
    #[prost(string, tag = "2")]
    pub(crate) server: String,
    /// The breaker's state: `closed`, `open`, `half_open`, ...
    #[prost(string, tag = "3")]
    pub(crate) breaker: String,
    #[prost(uint64, tag = "4")]
    pub(crate) pool_size: u64,
    #[prost(uint64, tag = "5")]
    pub(crate) pool_idle: u64,
    #[prost(uint64, tag = "6")]
    pub(crate) pool_in_use: u64,
    /// The whole [`rampart::HealthReport`] as JSON.
    #[prost(string, tag = "7")]
    pub(crate) report_json: String,
}

/// The server: a `tower::Service` over HTTP/2 requests, for `tonic::transport::Server`.
#[derive(Clone)]
pub(crate) struct SignupsServer {
    db: Db,
}

impl SignupsServer {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }
}

impl tower::Service<http::Request<Body>> for SignupsServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let db = self.db.clone();
        Box::pin(async move {
            let response = match request.uri().path() {
                SIGNUP => {
                    let method = tower::service_fn(move |r| signup(db.clone(), r));
                    tonic::server::Grpc::new(ProstCodec::default())
                        .unary(method, request)
                        .await
                }
                HEALTH => {
                    let method = tower::service_fn(move |r| health(db.clone(), r));
                    tonic::server::Grpc::new(ProstCodec::default())
                        .unary(method, request)
                        .await
                }
                _ => Status::unimplemented(format!("{SERVICE} has no such method")).into_http(),
            };
            Ok(response)
        })
    }
}

async fn signup(db: Db, request: Request<SignupRequest>) -> Result<Response<SignupReply>, Status> {
    let SignupRequest { email, request_id } = request.into_inner();
    signups::check(&email, &request_id).map_err(Status::invalid_argument)?;
    let reply = match signups::signup(&db, &email, &request_id).await {
        Ok(Signup::Created(id)) => SignupReply { id, created: true },
        Ok(Signup::Replayed(id)) => SignupReply { id, created: false },
        Ok(Signup::KeyReused) => {
            return Err(Status::already_exists(
                "this request_id was already used for another sign-up",
            ));
        }
        Err(err) => return Err(status_of(&err)),
    };
    Ok(Response::new(reply))
}

async fn health(db: Db, _: Request<HealthRequest>) -> Result<Response<HealthReply>, Status> {
    let report = db.health(Some(Duration::from_secs(1))).await;
    let json = serde_json::to_value(&report).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(HealthReply {
        status: json["status"].as_str().unwrap_or_default().to_owned(),
        server: report.server.clone(),
        breaker: report
            .breaker
            .as_ref()
            .map_or("none", |b| b.state)
            .to_owned(),
        pool_size: report.pool.size as u64,
        pool_idle: report.pool.idle as u64,
        pool_in_use: report.pool.in_use as u64,
        report_json: json.to_string(),
    }))
}

/// A rampart error as a gRPC status:
///
/// | failure | code |
/// |---|---|
/// | circuit open | `UNAVAILABLE`, with `grpc-retry-pushback-ms` (the gRPC retry design's server pushback) |
/// | unavailable (connect failure, lost connection, exhausted pool) | `UNAVAILABLE` (safe to retry) |
/// | timeout, deadline exceeded | `DEADLINE_EXCEEDED` |
/// | outcome unknown | `UNKNOWN`, with `rampart-outcome: unknown`: not `UNAVAILABLE`, which clients retry blindly, nor `ABORTED`, which says nothing happened; resend with the same `request_id` to learn the outcome |
/// | conflict (23505) | `ALREADY_EXISTS` |
/// | invalid input (classes 22, 23) | `INVALID_ARGUMENT` |
/// | transaction aborted (40001, 40P01) | `ABORTED` (retry the whole transaction) |
/// | anything else | `INTERNAL` |
pub(crate) fn status_of(err: &rampart::Error) -> Status {
    let failure = Failure::of(err);
    // The error's Display names the server by its redacted URL: no password reaches the log.
    tracing::warn!(failure = failure.name(), error = %err, "request failed");
    let code = match failure {
        Failure::CircuitOpen(_) | Failure::Unavailable => Code::Unavailable,
        Failure::TimedOut => Code::DeadlineExceeded,
        Failure::OutcomeUnknown => Code::Unknown,
        Failure::Conflict => Code::AlreadyExists,
        Failure::Invalid => Code::InvalidArgument,
        Failure::Aborted => Code::Aborted,
        Failure::Internal => Code::Internal,
    };
    let mut metadata = MetadataMap::new();
    match failure {
        Failure::CircuitOpen(Some(wait)) => {
            metadata.insert(
                "grpc-retry-pushback-ms",
                MetadataValue::from(wait.as_millis() as u64),
            );
        }
        Failure::OutcomeUnknown => {
            metadata.insert("rampart-outcome", MetadataValue::from_static("unknown"));
        }
        _ => {}
    }
    Status::with_metadata(code, failure.message(), metadata)
}

/// A unary method of `rampart.example.Signups`, named by its request message: the message knows its
/// path and its reply, so one generic call serves both methods (and the client-side stack in
/// `client.rs` wraps that one call).
pub(crate) trait Method: prost::Message + Clone + Send + Sync + 'static {
    /// The method's path, `/package.Service/Method`.
    const PATH: &'static str;
    /// The reply message.
    type Reply: prost::Message + Default + Send + Sync + 'static;
}

impl Method for SignupRequest {
    const PATH: &'static str = SIGNUP;
    type Reply = SignupReply;
}

impl Method for HealthRequest {
    const PATH: &'static str = HEALTH;
    type Reply = HealthReply;
}

impl SignupRequest {
    pub(crate) fn new(email: &str, request_id: &str) -> Self {
        Self {
            email: email.to_owned(),
            request_id: request_id.to_owned(),
        }
    }
}

/// A plain client of `rampart.example.Signups`: one call, one HTTP/2 request, no retry. `client.rs`
/// stacks rampart's layers around it.
#[derive(Clone)]
pub(crate) struct SignupsClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl SignupsClient {
    /// A client for a server on `addr`. It connects on the first call, and again after losing the
    /// connection, so a server that is not up (yet, or any more) is a call failing with `UNAVAILABLE`,
    /// which a retry layer above can handle, rather than an error here.
    pub(crate) fn lazy(addr: SocketAddr) -> Self {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("an address makes a valid URI")
            .connect_lazy();
        Self {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// Calls the method of `message`. With a `timeout`, the request carries it as `grpc-timeout`, so
    /// the server gives up when the caller would (tonic's server enforces the header).
    pub(crate) async fn call<M: Method>(
        &mut self,
        message: M,
        timeout: Option<Duration>,
    ) -> Result<M::Reply, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let mut request = Request::new(message);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let response = self
            .grpc
            .unary(
                request,
                PathAndQuery::from_static(M::PATH),
                ProstCodec::default(),
            )
            .await?;
        Ok(response.into_inner())
    }
}
