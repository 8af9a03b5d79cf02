//! The README's sign-up service as an axum server: typed rows, borrowed binds, an insert that answers
//! a replay with its row, and rampart's errors as HTTP statuses.
//!
//! ```text
//! cargo run --example signup                       # a throwaway PostgreSQL cluster, port 8080
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test PORT=3000 cargo run --example signup
//! RUST_LOG=info,rampart::query=debug cargo run --example signup   # the query spans' attributes
//! ```
//!
//! | route | what it answers |
//! |---|---|
//! | `POST /signup` | `{"email": ..., "request_id": ...}`: 201 and the user, on the first request and on every replay of its `request_id`; 409 when the email is signed up under another `request_id`; 422 when the `request_id` was used for another email |
//! | `GET /signup/{request_id}` | 200 and the user, or 404: how a client told "outcome unknown" (202) checks |
//!
//! Failures follow the crate docs' mapping (`app.rs`, `failure`): transient ones are 503 with
//! `Retry-After`, an unknown outcome 202 with the URL to check, a caller's mistake 4xx, a bug 500.

#[path = "../common/startup.rs"]
mod startup;

mod app;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    startup::logs();
    let (db, _cluster) = startup::database().await?;
    app::prepare(&db).await?;

    let (listener, url) = startup::http_listener(&db).await?;
    println!(
        "  curl -i -X POST {url}/signup -H 'content-type: application/json' \\\n       \
         -d '{{\"email\": \"ada@example.com\", \"request_id\": \"req-1\"}}'"
    );
    println!("  curl -i {url}/signup/req-1\n");

    axum::serve(listener, app::app(db))
        .with_graceful_shutdown(startup::shutdown_signal())
        .await?;
    Ok(())
}
