//! A tonic gRPC service over the ready-made stack: `Signup(email, request_id) -> id` and `Health()`.
//!
//! ```text
//! cargo run --example grpc                                   # serve on 127.0.0.1:50051 (a throwaway cluster)
//! cargo run --example grpc -- signup ada@example.com req-1   # call it, from another terminal
//! cargo run --example grpc -- health
//! grpcurl -plaintext -import-path examples/grpc -proto signups.proto \
//!     -d '{"email": "ada@example.com", "request_id": "req-1"}' 127.0.0.1:50051 rampart.example.Signups/Signup
//! ```
//!
//! `PORT` changes the port, `DATABASE_URL` uses your database instead of a throwaway cluster.
//!
//! Errors become gRPC status codes in one place (`service.rs`, `status_of`): an open breaker or an
//! unreachable database is `UNAVAILABLE` (with `grpc-retry-pushback-ms` when the breaker knows its
//! wait), a timeout `DEADLINE_EXCEEDED`, an unknown outcome `UNKNOWN` with `rampart-outcome: unknown`
//! (resend the same `request_id` to learn it), a duplicate email `ALREADY_EXISTS`, bad input
//! `INVALID_ARGUMENT`, a serialization failure `ABORTED`.
//!
//! Why no generated code: `tonic-prost-build` needs a `build.rs`, which in this package would run for
//! every build of the library, and a `protoc`. The two messages and the two-arm router are short enough
//! to write by hand (`service.rs`); `signups.proto` documents the same service for other clients.
//!
//! # The layers on both sides
//!
//! The server's handlers reach the database through rampart's ready-made stack. The client mode
//! (`signup`, `health`) goes through the same generic layers, this time around the tonic channel
//! (`client.rs`): an overall deadline (sent to the server as `grpc-timeout`), retry with backoff and a
//! budget, a circuit breaker, and a timeout per attempt, with one classifier for gRPC statuses
//! (`UNAVAILABLE` and `DEADLINE_EXCEEDED` transient, `UNKNOWN` ambiguous, the rest permanent). Run the
//! client before the server is up to watch it retry `UNAVAILABLE`; the retries are logged on stderr.

#[allow(dead_code)] // shared with http_health, which also counts
#[path = "../common/signups.rs"]
mod signups;
#[path = "../common/startup.rs"]
mod startup;

mod client;
mod service;

use std::net::{Ipv4Addr, SocketAddr};

use client::{ClientSettings, ResilientClient, describe};
use service::{SignupsClient, SignupsServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?} is not a port number"))?,
        Err(_) => 50051,
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => serve(addr).await,
        ["signup", email, request_id] => {
            let mut client = resilient_client(addr)?;
            match client.signup(email, request_id).await {
                Ok(reply) => println!("id: {}, created: {}", reply.id, reply.created),
                Err(err) => println!("{}", describe(&err)),
            }
            summary(&client);
            Ok(())
        }
        ["health"] => {
            let mut client = resilient_client(addr)?;
            match client.health().await {
                Ok(reply) => println!("{}", reply.report_json),
                Err(err) => println!("{}", describe(&err)),
            }
            summary(&client);
            Ok(())
        }
        _ => Err("usage: grpc [signup EMAIL REQUEST_ID | health]".into()),
    }
}

/// The client-side stack around a channel to `addr`, which connects on the first call (so a server
/// that is not up yet is `UNAVAILABLE`, retried), with its retries logged on stderr.
fn resilient_client(addr: SocketAddr) -> Result<ResilientClient, Box<dyn std::error::Error>> {
    startup::logs();
    Ok(ResilientClient::new(
        SignupsClient::lazy(addr),
        ClientSettings::default(),
    )?)
}

/// What the client's stack did.
fn summary(client: &ResilientClient) {
    let breaker = client.breaker().metrics();
    println!(
        "client stack: {} retries; breaker {:?} is {} after {} calls, {} failed",
        client.retries(),
        client.breaker().name(),
        breaker.state,
        breaker.calls,
        breaker.failures
    );
}

async fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    startup::logs();
    let (db, _cluster) = startup::database().await?;
    signups::prepare(&db).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("database: {}", db.pool().server());
    println!(
        "serving {} on {}   (Ctrl-C to stop)\n",
        service::SERVICE,
        listener.local_addr()?
    );
    println!("  cargo run --example grpc -- signup ada@example.com req-1");
    println!("  cargo run --example grpc -- health");
    println!(
        "  grpcurl -plaintext -import-path examples/grpc -proto signups.proto \\\n      \
         -d '{{\"email\": \"ada@example.com\", \"request_id\": \"req-1\"}}' {addr} {}/Signup\n",
        service::SERVICE
    );
    tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(
            SignupsServer::new(db),
            tonic::transport::server::TcpIncoming::from(listener),
            startup::shutdown_signal(),
        )
        .await?;
    Ok(())
}
