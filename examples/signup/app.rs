//! The sign-up service's router: its handlers, its rows, and how a rampart error becomes an HTTP
//! status. Separate from `main` so that `tests/api` serves the very same router.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rampart::layers::Classification;
use rampart::postgres::Row;
use rampart::{Db, DecodeError, Error, ErrorKind, FromRow, Query};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The table; the name is the example's own, so a `DATABASE_URL` of a real database cannot collide.
pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS rampart_signup_users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    request_id text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
)";

/// Creates the table if it is missing (`IF NOT EXISTS` makes a replay harmless).
pub(crate) async fn prepare(db: &Db) -> Result<(), Error> {
    db.run(Query::write(SCHEMA).idempotent()).await.map(drop)
}

/// The routes: `POST /signup`, and `GET /signup/{request_id}` to check what a request did.
pub(crate) fn app(db: Db) -> Router {
    Router::new()
        .route("/signup", post(signup))
        .route("/signup/{request_id}", get(lookup))
        .with_state(db)
}

#[derive(Deserialize)]
struct SignupRequest {
    email: String,
    request_id: String,
}

/// A user, as stored and as answered.
#[derive(Serialize)]
struct User {
    id: i64,
    email: String,
    request_id: String,
}

impl FromRow for User {
    fn from_row(row: &Row) -> Result<Self, DecodeError> {
        Ok(User {
            id: row.try_get("id")?,
            email: row.try_get("email")?,
            request_id: row.try_get("request_id")?,
        })
    }
}

/// `POST /signup`: 201 and the user, the first time and for every replay of the same `request_id`
/// (the client's, after a lost answer, or the stack's own after a lost connection): the insert
/// returns the row either way, so no second `SELECT` is needed.
async fn signup(State(db): State<Db>, Json(body): Json<SignupRequest>) -> Response {
    if !body.email.contains('@') || body.email.len() > 254 {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid",
            "email must be an address of at most 254 bytes",
        );
    }
    if body.request_id.is_empty() || body.request_id.len() > 200 {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid",
            "request_id must be 1 to 200 bytes",
        );
    }
    // `DO UPDATE` rather than `DO NOTHING`: it returns the existing row on a replay. Its `WHERE` keeps
    // a request id reused for another email from answering with someone else's row.
    let insert = Query::write(
        "INSERT INTO rampart_signup_users AS u (email, request_id) VALUES ($1, $2) \
         ON CONFLICT (request_id) DO UPDATE SET request_id = EXCLUDED.request_id \
         WHERE u.email = EXCLUDED.email \
         RETURNING id, email, request_id",
    )
    .bind(&body.email) // borrowed from the request: copied once into the query
    .bind(&body.request_id)
    .idempotency_key(body.request_id.as_str());
    match db.run(insert).await.and_then(|answer| answer.opt::<User>()) {
        Ok(Some(user)) => (StatusCode::CREATED, Json(user)).into_response(),
        Ok(None) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "request_id_reused",
            "this request_id was used for another email",
        ),
        Err(err) => failure(&err, Some(&body.request_id)),
    }
}

/// `GET /signup/{request_id}`: what that request did, for a client told the outcome is unknown.
async fn lookup(State(db): State<Db>, Path(request_id): Path<String>) -> Response {
    let query =
        Query::read("SELECT id, email, request_id FROM rampart_signup_users WHERE request_id = $1")
            .bind(&request_id);
    match db.run(query).await.and_then(|answer| answer.opt::<User>()) {
        Ok(Some(user)) => (StatusCode::OK, Json(user)).into_response(),
        Ok(None) => problem(
            StatusCode::NOT_FOUND,
            "not_found",
            "no sign-up with this request_id",
        ),
        Err(err) => failure(&err, None),
    }
}

fn problem(status: StatusCode, error: &str, message: &str) -> Response {
    (status, Json(json!({ "error": error, "message": message }))).into_response()
}

/// A rampart error as an HTTP answer, in the order the crate docs suggest. The body is fixed text,
/// never the database's message (which may quote data).
pub(crate) fn failure(err: &Error, request_id: Option<&str>) -> Response {
    let sqlstate = err.code().map(|c| c.code());
    if err.is_outcome_unknown() {
        // It may have been applied: say how to find out. A resend of the same request is harmless too.
        let check = request_id.map(|id| format!("/signup/{id}"));
        return (
            StatusCode::ACCEPTED,
            Json(json!({
                "error": "outcome_unknown",
                "message": "the write may or may not have been applied; check, or send the same request again",
                "check": check,
            })),
        )
            .into_response();
    }
    let retry_after = match err.kind() {
        ErrorKind::CircuitOpen => Some(err.retry_in().unwrap_or(Duration::from_secs(1))),
        _ if err.classification() == Classification::Transient => Some(Duration::from_secs(1)),
        _ if matches!(sqlstate, Some("40001" | "40P01")) => Some(Duration::from_secs(1)),
        _ => None,
    };
    if let Some(after) = retry_after {
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            err.kind().as_str(),
            "the database is unavailable; try again shortly",
        );
        let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    match sqlstate {
        Some("23505") => problem(StatusCode::CONFLICT, "conflict", "already signed up"),
        Some(c) if c.starts_with("22") || c.starts_with("23") => problem(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the database refused the input",
        ),
        _ if err.kind() == ErrorKind::InvalidRequest => problem(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the request is malformed",
        ),
        _ => {
            tracing::error!(error = %err, "sign-up failed");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}
