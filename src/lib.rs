//! rampart: resilience for database access, built on tower.
//!
//! The database is a `tower::Service` ([`PgService`]); the layers of [`rampart_layers`] (re-exported as
//! [`layers`]) add validation, exponential-backoff retry, circuit breaking, pool recreation and timeouts.
//! This crate holds everything that knows about Postgres: connection settings with keepalive and timeout
//! presets ([`PgConfig`]), the pool ([`Pool`], on deadpool-postgres) with validation, max lifetime and idle
//! eviction, SQLSTATE classification ([`PgClassifier`]), and the test harness (feature `testing`).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

pub mod classify;
pub mod config;
mod error;
pub mod health;
pub mod pool;
pub mod query;
pub mod service;
pub mod stack;
mod tls;
pub mod tx;

#[cfg(feature = "testing")]
pub mod testing;

pub use rampart_layers as layers;

pub use classify::PgClassifier;
pub use config::{PgConfig, Preset, TlsMode};
pub use error::{ConfigError, Error, ErrorKind};
pub use health::{HealthReport, Status};
pub use pool::{Pool, PoolConfig, PoolStats};
pub use query::{Query, Response};
pub use service::PgService;
pub use stack::{Db, Stack, StackBuilder};
