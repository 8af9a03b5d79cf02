//! The client side: rampart's layers around the tonic channel, to show they are not database-only.
//!
//! The server's handlers call the database through the ready-made stack (`rampart::Stack`). The client
//! here puts the same generic layers of `rampart::layers` around its gRPC calls:
//!
//! ```text
//! Deadline ─► Retry ─► CircuitBreaker ─► AttemptTimeout ─► SignupsClient (tonic Channel, HTTP/2)
//! ```
//!
//! - **Deadline**: each call gets an overall deadline, retries and backoff included. It travels in the
//!   request ([`WithDeadline`]), and [`SignupsClient::call`] sends the time left as `grpc-timeout`, so
//!   the server stops working on a call the client has given up on.
//! - **Retry**: exponential backoff with full jitter and a retry budget. It retries what
//!   [`GrpcClassifier`] calls transient, and ambiguous failures only for idempotent requests. Both
//!   methods are idempotent ([`Idempotence`] below): `Signup` carries its `request_id`, which the server
//!   uses as an idempotency key, and `Health` only reads.
//! - **CircuitBreaker**: when most recent calls failed, calls fail at once with
//!   [`CircuitOpen`](rampart::layers::CircuitOpen) instead of each waiting for a connect error or a
//!   timeout, until a probe finds the server back.
//! - **AttemptTimeout**: one attempt may take this long, waiting for the connection included.
//!
//! One classifier, [`GrpcClassifier`], decides for retry and breaker alike what a status means:
//!
//! | status | classification | retried | counted by the breaker |
//! |---|---|---|---|
//! | `UNAVAILABLE` (server down or restarting, connection refused, breaker open on the server) | transient | yes | yes |
//! | `DEADLINE_EXCEEDED` | transient | yes, while the overall deadline allows | yes |
//! | `UNKNOWN` (the server's "outcome unknown", a connection lost mid-call) | ambiguous | only idempotent requests | yes |
//! | anything else (`INVALID_ARGUMENT`, `ALREADY_EXISTS`, `ABORTED`, `INTERNAL`, ...) | permanent | no | no |
//! | an attempt timeout | transient | yes | yes |
//! | the client's own breaker rejecting the call | permanent: nothing was sent, and retrying inside the breaker's wait cannot help | no | (not a call) |
//!
//! The server may also answer `UNAVAILABLE` with `grpc-retry-pushback-ms` when its database breaker is
//! open; this client retries with its own backoff, within its deadline, and its breaker opens if the
//! failures go on.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rampart::layers::backoff::{Exponential, Jitter};
use rampart::layers::breaker::{BreakerConfig, BreakerHandle, CircuitBreaker, SlidingWindow};
use rampart::layers::classify::{Classification, Classify, Idempotence, TimeoutsAreTransient};
use rampart::layers::deadline::{AttemptTimeout, Deadline, Deadlined, WithDeadline};
use rampart::layers::retry::{Retry, RetryBudget, RetryError, RetryPolicy};
use rampart::layers::{
    AttemptTimeoutLayer, CircuitBreakerLayer, CircuitOpen, ConfigError, DeadlineLayer, RetryLayer,
};
use tonic::{Code, Status};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use crate::service::{
    HealthReply, HealthRequest, Method, SignupReply, SignupRequest, SignupsClient,
};

/// What a gRPC status means for retry and breaker: see the table in the [module docs](self).
pub(crate) fn classify_status(status: &Status) -> Classification {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded => Classification::Transient,
        Code::Unknown => Classification::Ambiguous,
        _ => Classification::Permanent,
    }
}

/// The classifier of the client-side stack, shared by its retry and its breaker.
///
/// Below the attempt timeout the errors are [`Status`]es; above it they are boxed, so it classifies
/// both: a boxed status by [`classify_status`], an attempt timeout as transient, the client's own
/// [`CircuitOpen`] as permanent (so the retry does not spin on a breaker that refuses), and anything
/// it does not recognise as permanent.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GrpcClassifier;

impl<Res> Classify<Res, Status> for GrpcClassifier {
    fn classify_error(&self, status: &Status) -> Classification {
        classify_status(status)
    }
}

impl<Res> Classify<Res, BoxError> for GrpcClassifier {
    fn classify_error(&self, error: &BoxError) -> Classification {
        if let Some(status) = find::<Status>(error) {
            classify_status(status)
        } else if find::<CircuitOpen>(error).is_some() {
            Classification::Permanent
        } else if TimeoutsAreTransient::is_timeout(error.as_ref()) {
            Classification::Transient
        } else {
            Classification::Permanent
        }
    }
}

/// A sign-up may be sent twice: the server inserts at most one row per `request_id` and answers a
/// repeat with the first row's id.
impl Idempotence for SignupRequest {
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// The health check only reads.
impl Idempotence for HealthRequest {
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// The plain client as the innermost `tower::Service` of the stack: one request, one attempt.
///
/// It is always ready: the channel's own readiness (connecting, reconnecting) is awaited inside the
/// call, as tonic's generated clients do, so the attempt timeout bounds that wait too.
impl<M: Method> Service<WithDeadline<M>> for SignupsClient {
    type Response = M::Reply;
    type Error = Status;
    type Future = BoxFuture<'static, Result<M::Reply, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: WithDeadline<M>) -> Self::Future {
        let mut client = self.clone();
        let time_left = request.remaining();
        Box::pin(async move { client.call(request.into_inner(), time_left).await })
    }
}

/// The client stack's settings.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    /// The overall deadline of one call, retries and backoff included.
    pub(crate) deadline: Duration,
    /// How long one attempt may take.
    pub(crate) attempt_timeout: Duration,
    /// Attempts in all, the first included.
    pub(crate) max_attempts: u32,
    /// The wait between attempts.
    pub(crate) backoff: Exponential,
    /// The breaker's settings; its name labels its events and metrics.
    pub(crate) breaker: BreakerConfig,
}

impl Default for ClientSettings {
    /// A 10 s deadline, 3 s per attempt, 4 attempts 100 ms apart doubling to 2 s (full jitter), and a
    /// breaker that opens when half of the last 20 calls (at least 5) failed and probes again after
    /// 5 s, doubling up to a minute while the server stays down.
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            max_attempts: 4,
            backoff: Exponential::builder()
                .base_delay(Duration::from_millis(100))
                .multiplier(2.0)
                .max_delay(Duration::from_secs(2))
                .jitter(Jitter::Full)
                .build()
                .expect("constant backoff settings are valid"),
            breaker: BreakerConfig::builder()
                .name("signups-grpc")
                .failure_rate(0.5)
                .sliding_window(SlidingWindow::Count(20))
                .minimum_calls(5)
                .wait_in_open(Duration::from_secs(5))
                .wait_multiplier(2.0)
                .max_wait_in_open(Duration::from_secs(60))
                .half_open_calls(1)
                .build()
                .expect("constant breaker settings are valid"),
        }
    }
}

type ClientStack = Deadline<
    Retry<
        CircuitBreaker<AttemptTimeout<SignupsClient>, GrpcClassifier>,
        GrpcClassifier,
        Exponential,
    >,
>;

/// [`SignupsClient`] behind the stack: deadline, retry, circuit breaker, attempt timeout.
///
/// Clones share the breaker, the retry budget and the retry count.
#[derive(Clone)]
pub(crate) struct ResilientClient {
    stack: ClientStack,
    breaker: BreakerHandle,
    retries: Arc<AtomicU64>,
}

impl ResilientClient {
    /// Stacks the layers around `client`.
    pub(crate) fn new(
        client: SignupsClient,
        settings: ClientSettings,
    ) -> Result<Self, ConfigError> {
        let retries = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&retries);
        let policy = RetryPolicy::builder()
            .max_attempts(settings.max_attempts)
            .schedule(settings.backoff)
            .classifier(GrpcClassifier)
            // Retries may add 20 % to recent calls, plus 10 a second: an outage does not triple the load.
            .budget(RetryBudget::builder().build()?)
            .on_retry(move |event| {
                counted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    attempt = event.attempt(),
                    delay_ms = event.delay().as_millis() as u64,
                    class = %event.classification(),
                    error = event.error().map(|e| brief(e)).unwrap_or_default(),
                    "call failed; retrying"
                );
            })
            .build()?;
        let breaker = CircuitBreakerLayer::new(settings.breaker).with_classifier(GrpcClassifier);
        let handle = breaker.handle();
        let stack = ServiceBuilder::new()
            .layer(DeadlineLayer::new(settings.deadline))
            .layer(RetryLayer::new(policy))
            .layer(breaker)
            .layer(AttemptTimeoutLayer::new(settings.attempt_timeout))
            .service(client);
        Ok(Self {
            stack,
            breaker: handle,
            retries,
        })
    }

    /// Signs `email` up, at most once per `request_id`.
    pub(crate) async fn signup(
        &mut self,
        email: &str,
        request_id: &str,
    ) -> Result<SignupReply, BoxError> {
        self.call(SignupRequest::new(email, request_id)).await
    }

    /// The server's health report.
    pub(crate) async fn health(&mut self) -> Result<HealthReply, BoxError> {
        self.call(HealthRequest {}).await
    }

    /// Calls the method of `message` through the stack. The error is boxed: find the server's status,
    /// a [`RetryError`] or a [`CircuitOpen`] in it with [`find`].
    pub(crate) async fn call<M: Method + Idempotence>(
        &mut self,
        message: M,
    ) -> Result<M::Reply, BoxError> {
        ServiceExt::<WithDeadline<M>>::ready(&mut self.stack)
            .await?
            .call(WithDeadline::new(message))
            .await
    }

    /// The client's breaker: its state and counts.
    pub(crate) fn breaker(&self) -> &BreakerHandle {
        &self.breaker
    }

    /// Retries made so far (attempts after the first of each call).
    pub(crate) fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

/// The first error of type `T` in `error` or its `source()` chain.
pub(crate) fn find<T: Error + 'static>(error: &BoxError) -> Option<&T> {
    let mut current: Option<&(dyn Error + 'static)> = Some(error.as_ref());
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// One line about a failed call: the server's status when there is one, and how many attempts it took.
pub(crate) fn describe(error: &BoxError) -> String {
    let attempts = find::<RetryError>(error).map_or(String::new(), |retry| {
        format!(
            " (after {} attempt(s): {})",
            retry.attempts(),
            retry.reason()
        )
    });
    if let Some(open) = find::<CircuitOpen>(error) {
        format!("refused by the client's breaker: {open}{attempts}")
    } else if let Some(status) = find::<Status>(error) {
        format!("{}{attempts}", brief(status))
    } else {
        format!("{error}{attempts}")
    }
}

/// A status as `Code: message` (its `Display` adds the whole source chain); other errors as they display.
fn brief(error: &(dyn Error + 'static)) -> String {
    match error.downcast_ref::<Status>() {
        Some(status) => format!("{:?}: {}", status.code(), status.message()),
        None => error.to_string(),
    }
}
