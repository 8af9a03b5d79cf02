//! rampart: resilience for database access, built on tower.
//!
//! The database is a `tower::Service` ([`PgService`]); the layers of [`rampart_layers`] (re-exported as
//! [`layers`]) add validation, exponential-backoff retry, circuit breaking, pool recreation and timeouts.
//! This crate holds everything that knows about Postgres: connection settings with keepalive and timeout
//! presets ([`PgConfig`]), the pool ([`Pool`], on deadpool-postgres) with validation, max lifetime and idle
//! eviction, SQLSTATE classification ([`PgClassifier`]), and the test harness (feature `testing`).
//!
//! # Quick start
//!
//! From a URL to a resilient query service in three lines:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let db = rampart::Stack::serverless(&std::env::var("DATABASE_URL")?).build()?;
//! let rows = db.run(rampart::Query::read("SELECT id, email FROM users WHERE id = $1").bind(7i64)).await?;
//! # let _ = rows; Ok(()) }
//! ```
//!
//! That stack is deadline → retry (exponential backoff, full jitter, a retry budget) → circuit breaker →
//! per-attempt timeout → pool rebuilds → [`PgService`] over a [`Pool`] that validates connections idle past
//! a bypass window before handing them out. Every piece is also usable on its own; see [`stack`] for what
//! each does and its defaults, and [`layers`] for the generic middleware.
//!
//! # The rules it keeps
//!
//! - **Bad SQL is never retried** and never trips the breaker ([`classify`] has the SQLSTATE table).
//! - **A write whose outcome is unknown is never silently replayed**: [`Query::write`] is not idempotent
//!   unless marked so (or given an idempotency key); the error says [`Error::is_outcome_unknown`].
//! - **No query hangs**: a deadline and a per-attempt timeout are on by default; a request that is given up
//!   on is cancelled on the server and its connection discarded.
//! - **No password leaks** into `Debug`, `Display`, logs, errors or health reports ([`PgConfig::redacted_url`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

pub mod classify;
pub mod config;
mod error;
pub mod health;
pub mod mux;
pub mod pool;
pub mod pooler;
pub mod query;
pub mod service;
pub mod stack;
mod tls;
pub mod tx;

#[cfg(feature = "testing")]
pub mod testing;

pub use rampart_layers as layers;

/// The README's Rust examples, compiled as doc tests so the front page can't drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use classify::PgClassifier;
pub use config::{ChannelBinding, PgConfig, PoolerMode, Preset, RootCert, TlsMode, TlsNegotiation};
pub use error::{ConfigError, Error, ErrorKind};
pub use health::{HealthReport, Status};
pub use mux::{MuxConfig, MuxStats};
pub use pool::{Pool, PoolConfig, PoolStats};
pub use query::{Query, Response};
pub use service::PgService;
pub use stack::{Db, Stack, StackBuilder};
