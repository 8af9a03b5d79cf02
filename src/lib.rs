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
//! let (id, email): (i64, String) = db
//!     .run(rampart::Query::read("SELECT id, email FROM users WHERE id = $1").bind(7i64))
//!     .await?
//!     .one()?;
//! # let _ = (id, email); Ok(()) }
//! ```
//!
//! That stack is deadline → retry (exponential backoff, full jitter, a retry budget) → circuit breaker →
//! per-attempt timeout → pool rebuilds → [`PgService`] over a [`Pool`] that validates connections idle past
//! a bypass window before handing them out. Every piece is also usable on its own; see [`Stack`] for what
//! each does and its defaults, and [`layers`] for the generic middleware.
//!
//! # The rules it keeps
//!
//! - **Bad SQL is never retried** and never trips the breaker ([`PgClassifier`] has the SQLSTATE table).
//! - **A write whose outcome is unknown is never silently replayed**: [`Query::write`] is not idempotent
//!   unless marked so (or given an idempotency key); the error says [`Error::is_outcome_unknown`].
//! - **No query hangs**: a deadline and a per-attempt timeout are on by default; a request that is given up
//!   on is cancelled on the server and its connection discarded.
//! - **No password leaks** into `Debug`, `Display`, logs, errors or health reports ([`PgConfig::redacted_url`]).
//!
//! # Rows and binds
//!
//! [`Response::one`], [`opt`](Response::opt), [`scalar`](Response::scalar) and [`all`](Response::all)
//! map rows to types through [`FromRow`] (tuples, or your own struct with [`postgres::Row::try_get`]): a
//! row that does not fit is an [`ErrorKind::Decode`] or [`ErrorKind::RowCount`] error, never a panic.
//! [`Query::bind`] takes owned and borrowed values ([`IntoParam`]), copying a borrowed one once.
//!
//! # Errors to HTTP statuses
//!
//! What an [`Error`] suggests for an HTTP service, checked in this order (`examples/signup` does it):
//! transient failures are 503 with `Retry-After`, an unknown outcome is 202 or 409 with a way to check,
//! permanent ones are 4xx when the caller's input is wrong and 500 otherwise.
//!
//! | error | status | why |
//! |---|---|---|
//! | `is_outcome_unknown()` | 202 Accepted, or 409 for a create, with the key to check or resend | a write may or may not have been applied: resending the same idempotency key tells which |
//! | `ReplyLost` (`was_applied()`) | the success status, after reading the rows again (or 202 if they cannot be) | the write was applied; only its reply, with its `RETURNING` rows, was lost |
//! | `CircuitOpen` | 503 with `Retry-After` from `retry_in()` | nothing was sent; the database is failing |
//! | `Timeout`, `DeadlineExceeded` (transient) | 503 with `Retry-After` (or 504 behind a gateway) | the database did not answer in time |
//! | other transient (`Connect`, `ConnectionLost` before sending, `PoolExhausted`) | 503 with `Retry-After` | try again shortly |
//! | `Db` with SQLSTATE 23505 | 409 Conflict | the row exists |
//! | `Db` with class 22 or 23, `InvalidRequest` | 400 or 422 | the input is wrong |
//! | `Db` 40001 / 40P01 (after the transactor's re-runs) | 503 with `Retry-After` | contention; a new try will likely pass |
//! | `Decode`, `RowCount`, other permanent | 500 | a bug: the code and the schema disagree |
//!
//! # Metrics
//!
//! With the `metrics` feature, through the [`metrics`](https://docs.rs/metrics) facade (install an
//! exporter in your application): the layers' counters as they happen, and the stack's gauges when
//! [`Db::publish_metrics`] or [`Db::publish_metrics_every`] runs. Every metric rampart publishes:
//!
//! | name | kind | labels | unit | what |
//! |---|---|---|---|---|
//! | `rampart_outcomes_resolved_total` | counter | `server`, `result` (`committed`, `aborted`, `unknown`) | lost replies | of plain writes and transactions, looked up on the server ([`StackBuilder::resolve_outcomes`]) |
//! | `rampart_pool_max_size` | gauge | `server` | connections | the most the pool opens |
//! | `rampart_pool_connections` | gauge | `server` | connections | open now |
//! | `rampart_pool_idle` | gauge | `server` | connections | open and idle in the pool |
//! | `rampart_pool_in_use` | gauge | `server` | connections | checked out |
//! | `rampart_pool_waiting` | gauge | `server` | callers | waiting for a connection |
//! | `rampart_pool_created_total` | counter | `server` | connections | created |
//! | `rampart_pool_connect_failures_total` | counter | `server` | attempts | connects that failed |
//! | `rampart_pool_recycled_total` | counter | `server` | checkouts | of an existing connection |
//! | `rampart_pool_validated_total` | counter | `server` | checkouts | that ran a validation round trip |
//! | `rampart_pool_discarded_total` | counter | `server` | connections | discarded after a failed or abandoned request |
//! | `rampart_pool_checkout_timeouts_total` | counter | `server` | checkouts | that gave up waiting |
//! | `rampart_pool_evicted_total` | counter | `server`, `reason` (`closed`, `validation`, `lifetime`, `idle`, `read_only`) | connections | dropped by the pool |
//! | `rampart_pool_rebuilds_total` | counter | `server` | rebuilds | of the whole pool after consecutive connection failures |
//! | `rampart_breaker_state` | gauge | `name`, `state` | 1 or 0 | 1 for the breaker's current state, 0 for the others |
//! | `rampart_mux_connections` | gauge | `server` | connections | shared connections open (multiplexed stacks) |
//! | `rampart_mux_ready` | gauge | `server` | connections | shared connections accepting statements |
//! | `rampart_mux_in_flight` | gauge | `server` | statements | sent on shared connections, unanswered: the queue depth |
//! | `rampart_mux_{shared,exclusive,spilled}_total` | counter | `server` | statements | routed to a shared connection, to a connection of its own, to the pool for want of a shared one |
//! | `rampart_mux_{connects,connect_failures,lost,validated,retired}_total` | counter | `server` | connections | shared connections made, failed, lost, checked, retired by age |
//! | `rampart_retry_attempts_total` | counter | | attempts | every attempt the retry layer made, the first included |
//! | `rampart_retry_retries_total` | counter | `class` | attempts | retries, by the failure's classification |
//! | `rampart_retry_exhausted_total` | counter | `reason` | requests | given up on (attempts, elapsed time, ...) |
//! | `rampart_retry_budget_exhausted_total` | counter | | retries | refused by the retry budget |
//! | `rampart_breaker_transitions_total` | counter | `name`, `from`, `to` | transitions | state changes of a breaker |
//! | `rampart_breaker_rejections_total` | counter | `name`, `state` | calls | refused by an open breaker |
//! | `rampart_deadline_exceeded_total` | counter | | requests | past their overall deadline |
//! | `rampart_attempt_timeouts_total` | counter | | attempts | cut by the per-attempt timeout |
//! | `rampart_validate_checks_total` | counter | `outcome` | checks | connection validations |
//! | `rampart_validate_replacements_total` | counter | | connections | replaced after a failed validation |
//! | `rampart_recreate_rebuilds_total` | counter | `reason` | rebuilds | of the inner service (the pool) |
//! | `rampart_recreate_failed_attempts_total` | counter | | attempts | rebuilds that failed |
//! | `rampart_chaos_faults_total` | counter | `fault` | faults | injected by the chaos layer (tests and drills) |
//!
//! # The map
//!
//! Data flows one way, down this list: no module imports one above it.
//!
//! | file | the decision it holds |
//! |---|---|
//! | `gauges.rs` | which figures of a stack are published as metrics (feature `metrics`) |
//! | `stack/` | the ready-made stacks: which layers, in what order, with which defaults (`mod.rs`); `Db` (`db.rs`); the layers that know a request: its outcome settled and its attempts recorded (`settle.rs`), its log line (`request.rs`), a slow statement cut by the server (`slow.rs`), reads sent to replicas and falling back to the primary (`replica.rs`) |
//! | `health.rs` | the health verdict, from the outcomes recorded at the top of a stack |
//! | `tx/` | transactions re-run whole, through the retry layer; `Tx`, the transaction a closure sees |
//! | `stream.rs` | streamed reads: retried until the first row, never after |
//! | `service.rs` | a query's path: to a shared connection or a pooled one |
//! | `mux/` | multiplexing: which statements share a connection, and where each goes |
//! | `pooler.rs` | what a statement looks like behind a pooler in transaction mode |
//! | `resolve.rs` | lost replies of plain writes: which writes are marked, when COMMIT may go, what the server's answer means |
//! | `session.rs` | what a statement does to its session: shared, its own connection, closed after, or refused |
//! | `pool/` | the pool: checkout, validation, which connections are suspect after one is found dead (and which are retired after a write refused as read-only), lifetime, eviction, what becomes of a connection after a request |
//! | `exec.rs` | how a statement is sent on a connection, and the `statement_timeout` it carries |
//! | `outcome.rs` | what a failure means for its request, and whether the connection survives it |
//! | `classify.rs` | what a SQLSTATE or a pooler's message means; what the breaker and the rebuild count |
//! | `error.rs` | the one error type; layers' errors converted once |
//! | `row.rs` | how a row becomes a typed value, and what a row that does not fit is |
//! | `query.rs`, `xact.rs`, `param.rs`, `config/`, `tls/`, `cache.rs`, `sync.rs` | requests and their parameters, a marked write's transaction id, settings (libpq's keywords; several hosts taken one at a time, `config/hosts.rs`), TLS connectors (one host at a time, naming the host that answered) and their failures, the bounded SQL cache, locks |
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

mod cache;
mod classify;
mod config;
mod error;
mod exec;
#[cfg(feature = "metrics")]
mod gauges;
mod health;
mod mux;
mod outcome;
mod param;
mod pool;
mod pooler;
mod query;
mod resolve;
mod row;
mod service;
mod session;
mod stack;
mod stream;
mod sync;
mod tls;
mod tx;
mod xact;

#[cfg(feature = "testing")]
pub mod testing;

pub use rampart_layers as layers;
/// tokio-postgres, the driver underneath, for its types (rows, `ToSql`, SQLSTATEs): use it from here so
/// your code and rampart agree on one copy.
pub use tokio_postgres as postgres;

/// The README's Rust examples, compiled as doc tests so the front page can't drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use classify::{PgClassifier, classify_pooler_message, classify_sqlstate};
pub use config::{ChannelBinding, PgConfig, PoolerMode, Preset, RootCert, TlsMode, TlsNegotiation};
pub use error::{ConfigError, Error, ErrorKind};
#[cfg(feature = "metrics")]
pub use gauges::MetricsPublisher;
pub use health::{BreakerReport, HealthReport, RecentError, ServerReport, Status};
pub use mux::{MuxConfig, MuxConfigBuilder, MuxStats};
pub use param::IntoParam;
pub use pool::{Pool, PoolConfig, PoolConfigBuilder, PoolStats};
pub use query::{Param, Query, Response};
pub use row::{DecodeError, FromRow};
pub use service::PgService;
pub use stack::{Db, DbFuture, Stack, StackBuilder};
pub use stream::RowStream;
pub use tx::{IsolationLevel, Params, Transactor, Tx, TxFuture};
pub use xact::Resolved;
