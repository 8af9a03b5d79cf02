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

#[allow(dead_code)] // shared with http_health, which also counts
#[path = "../common/signups.rs"]
mod signups;
#[path = "../common/startup.rs"]
mod startup;

mod service;

use std::net::{Ipv4Addr, SocketAddr};

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
            let reply = SignupsClient::connect(addr)
                .await?
                .signup(email, request_id)
                .await;
            match reply {
                Ok(reply) => println!("id: {}, created: {}", reply.id, reply.created),
                Err(status) => println!("{:?}: {}", status.code(), status.message()),
            }
            Ok(())
        }
        ["health"] => {
            let reply = SignupsClient::connect(addr).await?.health().await?;
            println!("{}", reply.report_json);
            Ok(())
        }
        _ => Err("usage: grpc [signup EMAIL REQUEST_ID | health]".into()),
    }
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
