//! An axum server over the ready-made stack: health, Prometheus metrics, and an idempotent sign-up.
//!
//! ```text
//! cargo run --example http_health                        # a throwaway PostgreSQL cluster, port 8080
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test PORT=3000 cargo run --example http_health
//! RAMPART_MULTIPLEX=1 cargo run --example http_health        # statements over a shared connection
//! ```
//!
//! | route | what it answers |
//! |---|---|
//! | `GET /health` | the [`rampart::HealthReport`] as JSON; 200 when up or degraded, 503 when down (probe bounded by 1 s) |
//! | `GET /metrics` | Prometheus text: rampart's counters (feature `metrics`), the pool's statistics as gauges, and the multiplexer's (`rampart_mux_*`) when `RAMPART_MULTIPLEX=1` |
//! | `POST /signup` | `{"email": ..., "request_id": ...}`: 201 and the new id, or 200 and the same id when that `request_id` was signed up before |
//! | `GET /users/count` | `{"count": n}` |
//!
//! Failures map to statuses in one place (`app.rs`, `failure`): an open breaker is 503 with
//! `Retry-After`, a timeout 504, an unknown outcome 502 with a body that says to resend the same
//! `request_id`, a duplicate email 409, bad input 400.
//!
//! The Prometheus exporter is installed here, in the application: the library reports through the
//! `metrics` facade and has no exporter of its own. No response or log line holds the database
//! password: the server is always named by its redacted URL.

#[path = "../common/signups.rs"]
mod signups;
#[path = "../common/startup.rs"]
mod startup;

mod app;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    startup::logs();
    // Before the stack is built, so the layers' first counters are recorded.
    let metrics = app::recorder();
    let (db, _cluster) = startup::database().await?;
    signups::prepare(&db).await?;

    let (listener, url) = startup::http_listener(&db).await?;
    println!("  curl -i {url}/health");
    println!("  curl -s {url}/metrics | grep ^rampart_");
    println!(
        "  curl -i -X POST {url}/signup -H 'content-type: application/json' \\\n       \
         -d '{{\"email\": \"ada@example.com\", \"request_id\": \"req-1\"}}'"
    );
    println!("  curl -i {url}/users/count\n");

    axum::serve(listener, app::app(db, metrics))
        .with_graceful_shutdown(startup::shutdown_signal())
        .await?;
    Ok(())
}
