//! The HTTP application: its routes and how a rampart error becomes an HTTP status. Separate from `main`
//! so that `tests/http_health` serves the very same router.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rampart::{Db, Status};
use serde::Deserialize;
use serde_json::json;

use crate::signups::{self, Failure, Signup};

/// How long the `/health` probe (`SELECT 1`) may take.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The process-wide Prometheus recorder: rampart's layers report to it through the `metrics` facade,
/// and `/metrics` renders it. Installed once, on first use.
pub(crate) fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

#[derive(Clone)]
struct AppState {
    db: Db,
    metrics: PrometheusHandle,
}

/// The routes: `GET /health`, `GET /metrics`, `POST /signup`, `GET /users/count`.
pub(crate) fn app(db: Db, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/signup", post(signup))
        .route("/users/count", get(count))
        .with_state(AppState { db, metrics })
}

/// The health report as JSON: 200 when up or degraded (still serving), 503 when down.
async fn health(State(state): State<AppState>) -> Response {
    // The whole probe (checkout, validation, connect, statement) is bounded by PROBE_TIMEOUT. On the
    // serverless preset no probe is made, so a load balancer polling /health does not keep a suspended
    // compute awake: the report gives the last known state.
    let report = state.db.health(Some(PROBE_TIMEOUT)).await;
    let code = match report.status {
        Status::Down => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (code, Json(report)).into_response()
}

/// Prometheus text: rampart's counters (retries, timeouts, breaker transitions, ...) and the stack's
/// gauges (pool, breaker state, multiplexer), published by rampart at scrape time.
async fn metrics_text(State(state): State<AppState>) -> Response {
    // The pool's, the breaker's and the multiplexer's figures, read now; the layers' counters are
    // recorded as they happen.
    state.db.publish_metrics();
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct SignupBody {
    email: String,
    request_id: String,
}

/// 201 with the new id; 200 with the same id when the `request_id` was signed up before.
async fn signup(State(state): State<AppState>, Json(body): Json<SignupBody>) -> Response {
    if let Err(reason) = signups::check(&body.email, &body.request_id) {
        return problem(StatusCode::BAD_REQUEST, "invalid", reason);
    }
    match signups::signup(&state.db, &body.email, &body.request_id).await {
        Ok(Signup::Created(id)) => (
            StatusCode::CREATED,
            Json(json!({"id": id, "created": true})),
        )
            .into_response(),
        Ok(Signup::Replayed(id)) => {
            (StatusCode::OK, Json(json!({"id": id, "created": false}))).into_response()
        }
        Ok(Signup::KeyReused) => problem(
            StatusCode::CONFLICT,
            "request_id_reused",
            "this request_id was already used for another sign-up",
        ),
        Err(err) => failure(&err, "signup"),
    }
}

async fn count(State(state): State<AppState>) -> Response {
    match signups::count(&state.db).await {
        Ok(count) => Json(json!({ "count": count })).into_response(),
        Err(err) => failure(&err, "count"),
    }
}

/// A rampart error as an HTTP response:
///
/// | failure | status |
/// |---|---|
/// | circuit open | 503, with `Retry-After` |
/// | unavailable (connect failure, lost connection, exhausted pool) | 503 |
/// | timeout, deadline exceeded | 504 |
/// | outcome unknown | 502, with a body saying to resend the same `request_id` |
/// | conflict (23505) | 409 |
/// | invalid input (classes 22, 23) | 400 |
/// | transaction aborted (40001, 40P01) | 409 |
/// | anything else | 500 |
fn failure(err: &rampart::Error, route: &'static str) -> Response {
    let failure = Failure::of(err);
    let status = match failure {
        Failure::CircuitOpen(_) | Failure::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Failure::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        Failure::OutcomeUnknown => StatusCode::BAD_GATEWAY,
        Failure::Conflict | Failure::Aborted => StatusCode::CONFLICT,
        Failure::Invalid => StatusCode::BAD_REQUEST,
        Failure::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // The error's Display names the server by its redacted URL: no password reaches the log.
    if status.is_server_error() {
        tracing::warn!(route, failure = failure.name(), error = %err, "request failed");
    } else {
        tracing::info!(route, failure = failure.name(), error = %err, "request refused");
    }
    let mut response = problem(status, failure.name(), failure.message());
    if let Failure::CircuitOpen(wait) = failure {
        // Whole seconds, rounded up, at least one.
        let seconds = wait.map_or(1, |w| w.as_secs_f64().ceil().max(1.0) as u64);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn problem(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}
