//! Start-up shared by the `http_health` and `grpc` examples' `main`s: the database, logs, and a shutdown
//! signal.

use std::error::Error;

use rampart::testing::Cluster;
use rampart::{Db, MuxConfig, Stack};

/// The stack over `DATABASE_URL`, or over a throwaway cluster so that `cargo run --example` needs no
/// setup. Keep the cluster alive as long as the stack: dropping it stops the server and removes it.
/// `RAMPART_MULTIPLEX=1` pipelines independent statements over a shared connection
/// ([`rampart::mux`]).
pub(crate) async fn database() -> Result<(Db, Option<Cluster>), Box<dyn Error>> {
    let stack = |url: &str| {
        // For a serverless host (Neon and the like), `Stack::serverless` has the longer timeouts it needs.
        let stack = Stack::server(url);
        match std::env::var("RAMPART_MULTIPLEX").as_deref() {
            Ok("1" | "true") => stack.multiplex(MuxConfig::default()),
            _ => stack,
        }
    };
    match std::env::var("DATABASE_URL") {
        Ok(url) => Ok((stack(&url).build()?, None)),
        Err(_) => {
            println!("DATABASE_URL is not set: starting a throwaway PostgreSQL cluster");
            let cluster = Cluster::new().await?;
            println!(
                "  on port {} in {}; Ctrl-C (or SIGTERM) stops the server and removes the cluster.\n  \
                 For a database that outlives the example, start one and set DATABASE_URL.",
                cluster.port(),
                cluster.data_dir().display()
            );
            let db = stack(&cluster.url()).build()?;
            Ok((db, Some(cluster)))
        }
    }
}

/// Logs to stderr, `info` and above unless `RUST_LOG` says otherwise.
pub(crate) fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on Ctrl-C or SIGTERM, so the server stops gracefully and the throwaway cluster is removed.
pub(crate) async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
    eprintln!("shutting down");
}

/// The HTTP examples' listener: on `PORT` (8080 by default) at the loopback address, announced with the
/// database it serves. Returns the listener and its base URL. (The gRPC example binds its own.)
#[allow(dead_code)]
pub(crate) async fn http_listener(
    db: &Db,
) -> Result<(tokio::net::TcpListener, String), Box<dyn Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?} is not a port number"))?,
        Err(_) => 8080,
    };
    let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    println!("database: {}", db.pool().server());
    println!("listening on {url}   (Ctrl-C to stop)\n");
    Ok((listener, url))
}
